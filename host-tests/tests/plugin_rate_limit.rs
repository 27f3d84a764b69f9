//! palisade-rate-limit in the test host, under Envoy and Kong: configuration refusal and
//! pass-through (enforcement has not landed yet).

mod plugin_support;

use palisade_host_tests::wasm_host::{Failure, Plugin};
use plugin_support::{assert_pass_through, assert_rejected};

#[test]
fn a_zero_rate_is_refused_with_one_line() -> Result<(), Failure> {
    assert_rejected(
        Plugin::RateLimit,
        r#"{"limits":[{"name":"per-tenant","rate":0,"period":"1s","key":[{"header":"x-tenant"}]}]}"#,
        "[palisade-rate-limit] configuration rejected: limits[0].rate: must be at least 1",
    )
}

#[test]
fn requests_pass_through_untouched() -> Result<(), Failure> {
    assert_pass_through(Plugin::RateLimit, "{}")?;
    assert_pass_through(
        Plugin::RateLimit,
        r#"{"limits":[{"name":"per-tenant","rate":100,"period":"1s","burst":10,"key":[{"header":"x-tenant"}]}]}"#,
    )
}
