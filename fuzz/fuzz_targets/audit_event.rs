//! Audit event building on hostile requests: any header bytes (invalid UTF-8, control
//! characters, quotes), any status and addresses. The event is valid JSON, byte for byte what
//! serde_json writes for it, and never carries a credential header's value.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_audit::config::AuditConfig;
use palisade_audit::engine::{Audit, Facts, Verdict};
use palisade_kit::config::load;
use palisade_kit::random::Xoshiro256;

fn audit() -> &'static Audit {
    static AUDIT: OnceLock<Audit> = OnceLock::new();
    AUDIT.get_or_init(|| {
        let config =
            br#"{"sampling": {"api_call": 1.0}, "capture_headers": ["x-tenant", "user-agent"],
            "classification": [{"event_type": "admin_operation", "paths": ["/admin/**"]}]}"#;
        let config: AuditConfig = load(config).expect("the fuzz audit config loads");
        Audit::build(&config).expect("the fuzz audit config builds")
    })
}

/// A value no fuzz input is likely to produce elsewhere, sent as every credential.
const SECRET: &[u8] = b"Zq9-fuzz-secret-4711";

fuzz_target!(|data: &[u8]| {
    let Some((&status, rest)) = data.split_first() else {
        return;
    };
    // The secret may only reach the event through the credential headers below: fuzz input
    // that carries it elsewhere (libFuzzer learns compared constants) is left out.
    let clean = |v: &[u8]| !v.windows(SECRET.len()).any(|w| w == SECRET);
    let fields: Vec<&[u8]> = rest.split(|&b| b == 0).filter(|f| clean(f)).collect();
    let mut headers: Vec<(&[u8], &[u8])> = fields
        .chunks(2)
        .filter_map(|pair| Some((*pair.first()?, *pair.get(1)?)))
        .collect();
    headers.push((b"authorization", SECRET));
    headers.push((b"cookie", SECRET));
    let text = |i: usize| {
        fields
            .get(i)
            .map(|f| String::from_utf8_lossy(f).into_owned())
    };
    let facts = Facts {
        request_headers: &headers,
        status: u16::from(status) * 3,
        code_details: text(0),
        latency_ms: Some(u64::from(status)),
        bytes_in: None,
        bytes_out: Some(u64::MAX),
        client_address: text(1),
        upstream_address: text(2),
        route: text(3),
        cluster: None,
        denial: None,
        client_host: Default::default(),
    };
    let mut rng = Xoshiro256::from_seed([7; 32]);
    if let Verdict::Emit(event) = audit().event(&facts, &mut rng, 1_796_083_200_000) {
        let json = event.to_json();
        assert_eq!(
            json,
            serde_json::to_vec(&event).expect("serde writes every event")
        );
        let _: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
        assert!(
            !json.windows(SECRET.len()).any(|w| w == SECRET),
            "a credential left the proxy: {}",
            String::from_utf8_lossy(&json)
        );
    }
});
