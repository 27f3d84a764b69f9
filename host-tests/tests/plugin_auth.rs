//! palisade-auth in the test host, under Envoy and Kong: configuration refusal and pass-through
//! (token verification has not landed yet).

mod plugin_support;

use palisade_host_tests::wasm_host::{Failure, Plugin};
use plugin_support::{assert_pass_through, assert_rejected};

#[test]
fn a_provider_without_algorithms_is_refused_with_one_line() -> Result<(), Failure> {
    assert_rejected(
        Plugin::Auth,
        r#"{"providers":[{"name":"idp","issuer":"https://idp.example","algorithms":[]}]}"#,
        "[palisade-auth] configuration rejected: providers[0].algorithms: must list at least one algorithm",
    )
}

#[test]
fn requests_pass_through_untouched() -> Result<(), Failure> {
    assert_pass_through(Plugin::Auth, "")?;
    assert_pass_through(
        Plugin::Auth,
        r#"{"providers":[{"name":"idp","issuer":"https://idp.example","algorithms":["RS256"]}]}"#,
    )
}
