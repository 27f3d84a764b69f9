//! The audit event: one per finished request, in the shape of `manifests/events/*.avsc` (field
//! names and types match the Avro schemas; optional fields are `null`, never absent).

use std::collections::BTreeMap;

use palisade_kit::random::Xoshiro256;
use serde::Serialize;

/// What kind of event a request makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    ApiCall,
    UserAction,
    DataAccess,
    AdminOperation,
    Security,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::ApiCall,
        EventType::UserAction,
        EventType::DataAccess,
        EventType::AdminOperation,
        EventType::Security,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ApiCall => "api_call",
            EventType::UserAction => "user_action",
            EventType::DataAccess => "data_access",
            EventType::AdminOperation => "admin_operation",
            EventType::Security => "security",
        }
    }
}

impl From<crate::config::EventTypeName> for EventType {
    fn from(name: crate::config::EventTypeName) -> Self {
        use crate::config::EventTypeName as N;
        match name {
            N::ApiCall => EventType::ApiCall,
            N::UserAction => EventType::UserAction,
            N::DataAccess => EventType::DataAccess,
            N::AdminOperation => EventType::AdminOperation,
        }
    }
}

/// Why a request is a security event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityKind {
    /// 401
    Unauthenticated,
    /// 403
    Forbidden,
    /// 429
    RateLimited,
    /// 503 from an open circuit (palisade-resilience, or Envoy's own breaker overflow)
    CircuitOpen,
    /// 413
    BodyTooLarge,
}

/// The plugin that refused the request, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    pub plugin: String,
    pub reason: String,
}

/// One audit or security event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// UUID v4: consumers deduplicate redelivered batches by it.
    pub event_id: String,
    pub event_type: EventType,
    pub security_kind: Option<SecurityKind>,
    /// When the request finished, ms since the Unix epoch.
    pub timestamp_ms: u64,
    pub subject: Option<String>,
    pub consumer: Option<String>,
    pub method: String,
    /// Path with its query redacted.
    pub path: String,
    pub host: Option<String>,
    pub route: Option<String>,
    pub upstream_cluster: Option<String>,
    pub upstream_address: Option<String>,
    pub status: u16,
    /// Envoy's response code details (`via_upstream`, `palisade_local_reply`, ...).
    pub response_code_details: Option<String>,
    pub latency_ms: Option<u64>,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    pub client_address: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub denied_by: Option<Denial>,
    /// The configured `capture_headers` the request carried (several values joined by `,`).
    pub headers: BTreeMap<String, String>,
}

impl AuditEvent {
    /// The event as one JSON object (no newline).
    pub fn to_json(&self) -> Vec<u8> {
        // Strings, numbers and maps of strings always serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A random (version 4, RFC 9562) UUID in its canonical text form.
pub fn uuid_v4(rng: &mut Xoshiro256) -> String {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        for nibble in [byte >> 4, byte & 0x0f] {
            out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
    out
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if well-formed and
/// not all zeros.
pub fn trace_id(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    let well_formed = id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && id.bytes().any(|b| b != b'0');
    well_formed.then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn uuids_are_version_4_and_distinct() {
        let mut rng = Xoshiro256::from_seed([3; 32]);
        let a = uuid_v4(&mut rng);
        let b = uuid_v4(&mut rng);
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        let dashes: Vec<usize> = a.match_indices('-').map(|(i, _)| i).collect();
        assert_eq!(dashes, [8, 13, 18, 23]);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }

    #[test]
    fn trace_ids_come_from_well_formed_traceparents_only() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id("00-XYZ-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id(""), None);
    }

    #[test]
    fn json_names_every_field_and_nulls_absent_ones() {
        let event = AuditEvent {
            event_id: "id".into(),
            event_type: EventType::Security,
            security_kind: Some(SecurityKind::RateLimited),
            timestamp_ms: 5,
            subject: None,
            consumer: None,
            method: "GET".into(),
            path: "/".into(),
            host: None,
            route: None,
            upstream_cluster: None,
            upstream_address: None,
            status: 429,
            response_code_details: None,
            latency_ms: None,
            bytes_in: None,
            bytes_out: None,
            client_address: None,
            user_agent: None,
            request_id: None,
            trace_id: None,
            denied_by: Some(Denial {
                plugin: "palisade-rate-limit".into(),
                reason: "rate limit exceeded".into(),
            }),
            headers: BTreeMap::new(),
        };
        let json: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(json["event_type"], "security");
        assert_eq!(json["security_kind"], "rate_limited");
        assert_eq!(json["subject"], serde_json::Value::Null);
        assert_eq!(json["denied_by"]["plugin"], "palisade-rate-limit");
        assert_eq!(json.as_object().unwrap().len(), 23);
    }
}
