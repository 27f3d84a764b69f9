//! Every audit event type palisade-audit builds validates against its Avro schema in
//! `manifests/events/`, and the check is strict enough to catch a drifted field.

use palisade_audit::config::AuditConfig;
use palisade_audit::engine::{Audit, Facts, Verdict};
use palisade_audit::event::Denial;
use palisade_host_tests::audit_events::{self, EVENT_TYPES};
use palisade_kit::config::load;
use palisade_kit::random::Xoshiro256;
use serde_json::Value;

const RULES: &str = r#"{"classification":[
    {"event_type":"admin_operation","paths":["/admin/**"]},
    {"event_type":"data_access","methods":["GET"],"paths":["/api/**"]},
    {"event_type":"user_action","methods":["POST"],"paths":["/api/**"]}
],"capture_headers":["x-tenant"]}"#;

fn event(method: &str, path: &str, status: u16, full: bool) -> Value {
    let audit = Audit::build(&load::<AuditConfig>(RULES.as_bytes()).unwrap()).unwrap();
    let mut pairs: Vec<(&[u8], &[u8])> =
        vec![(b":method", method.as_bytes()), (b":path", path.as_bytes())];
    if full {
        pairs.extend([
            (&b":authority"[..], &b"shop.example.com"[..]),
            (b"user-agent", b"curl/8.5.0"),
            (b"x-request-id", b"req-1"),
            (
                b"traceparent",
                b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            (b"x-palisade-subject", b"alice"),
            (b"x-palisade-consumer", b"web"),
            (b"x-tenant", b"acme"),
        ]);
    }
    let facts = Facts {
        request_headers: &pairs,
        status,
        code_details: full.then(|| "via_upstream".to_owned()),
        latency_ms: full.then_some(12),
        bytes_in: full.then_some(100),
        bytes_out: full.then_some(2000),
        client_address: full.then(|| "10.0.0.1:4000".to_owned()),
        upstream_address: full.then(|| "10.0.0.9:8080".to_owned()),
        route: full.then(|| "orders".to_owned()),
        cluster: full.then(|| "orders-svc".to_owned()),
        denial: (full && status >= 400).then(|| Denial {
            plugin: "palisade-auth".into(),
            reason: "token expired".into(),
        }),
        client_host: Default::default(),
    };
    match audit.event(
        &facts,
        &mut Xoshiro256::from_seed([5; 32]),
        1_764_567_890_123,
    ) {
        Verdict::Emit(event) => serde_json::from_slice(&event.to_json()).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_event_type_validates_with_all_fields_and_with_nulls() {
    let cases = [
        ("GET", "/health", 200, "api_call"),
        ("POST", "/api/orders", 201, "user_action"),
        ("GET", "/api/orders?page=2", 200, "data_access"),
        ("DELETE", "/admin/users/7", 204, "admin_operation"),
        ("GET", "/api/orders", 401, "security"),
        ("GET", "/api/orders", 429, "security"),
    ];
    let mut seen = Vec::new();
    for (method, path, status, expected) in cases {
        for full in [true, false] {
            let json = event(method, path, status, full);
            assert_eq!(
                audit_events::validate(&json),
                Ok(expected.to_owned()),
                "{json}"
            );
            seen.push(expected);
        }
    }
    for event_type in EVENT_TYPES {
        assert!(seen.contains(&event_type), "{event_type} not covered");
    }
}

#[test]
fn a_drifted_event_is_refused() {
    let good = event("GET", "/api/orders", 200, true);

    let mut extra = good.clone();
    extra["tenant"] = Value::from("acme");
    assert!(audit_events::validate(&extra)
        .unwrap_err()
        .contains("fields"));

    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("trace_id");
    assert!(audit_events::validate(&missing)
        .unwrap_err()
        .contains("fields"));

    let mut wrong_type = good.clone();
    wrong_type["status"] = Value::from("200");
    assert!(audit_events::validate(&wrong_type)
        .unwrap_err()
        .contains("does not resolve"));

    let mut bad_id = good.clone();
    bad_id["event_id"] = Value::from("not-a-uuid");
    assert!(audit_events::validate(&bad_id).is_err());

    let mut bad_kind = event("GET", "/x", 403, true);
    bad_kind["security_kind"] = Value::Null;
    assert!(
        audit_events::validate(&bad_kind).is_err(),
        "security events name their kind"
    );
}
