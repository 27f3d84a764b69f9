//! palisade-audit in the test host, under Envoy and Kong: configuration refusal and
//! pass-through (shipping events has not landed yet).

mod plugin_support;

use palisade_host_tests::wasm_host::{Failure, Plugin};
use plugin_support::{assert_pass_through, assert_rejected};

#[test]
fn an_empty_batch_is_refused_with_one_line() -> Result<(), Failure> {
    assert_rejected(
        Plugin::Audit,
        r#"{"batch":{"max_events":0}}"#,
        "[palisade-audit] configuration rejected: batch.max_events: must be at least 1",
    )
}

#[test]
fn requests_pass_through_untouched() -> Result<(), Failure> {
    assert_pass_through(Plugin::Audit, "{}")?;
    assert_pass_through(
        Plugin::Audit,
        r#"{"sink":{"kafka_rest":{"upstream":"kafka-rest","authority":"kafka-rest.kafka:8082"}}}"#,
    )
}
