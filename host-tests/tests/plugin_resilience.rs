//! palisade-resilience in the test host, under Envoy and Kong: configuration refusal and
//! pass-through.

mod plugin_support;

use palisade_host_tests::wasm_host::{Failure, Plugin};
use plugin_support::{assert_pass_through, assert_rejected};

#[test]
fn too_many_retries_are_refused_with_one_line() -> Result<(), Failure> {
    assert_rejected(
        Plugin::Resilience,
        r#"{"retry":{"max_retries":11}}"#,
        "[palisade-resilience] configuration rejected: retry.max_retries: must be at most 10",
    )
}

#[test]
fn requests_pass_through_untouched() -> Result<(), Failure> {
    assert_pass_through(Plugin::Resilience, "")?;
    assert_pass_through(
        Plugin::Resilience,
        r#"{"circuit_breaker":{"consecutive_failures":3},"timeouts":{"default":"5s"}}"#,
    )
}
