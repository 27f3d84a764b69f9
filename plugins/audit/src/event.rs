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

/// The plugins a [`Denial`] can name: the Palisade plugins that refuse requests.
pub const PALISADE_PLUGINS: [&str; 5] = [
    "palisade-header-security",
    "palisade-auth",
    "palisade-rate-limit",
    "palisade-resilience",
    "palisade-audit",
];

/// The longest reason a [`Denial`] keeps, in bytes: Palisade's own reasons are short, stable
/// texts far below it.
pub const MAX_DENIAL_REASON: usize = 128;

impl Denial {
    /// A refusal as the event records it: only one naming a Palisade plugin, its reason cut to
    /// [`MAX_DENIAL_REASON`] bytes (at a character boundary). On Kong the note is a response
    /// header, which an upstream can send too: it must not write a plugin of its own choosing,
    /// or text of any length, into the audit trail.
    pub fn recorded(plugin: String, mut reason: String) -> Option<Denial> {
        if !PALISADE_PLUGINS.contains(&plugin.as_str()) {
            return None;
        }
        if reason.len() > MAX_DENIAL_REASON {
            let end = (0..=MAX_DENIAL_REASON)
                .rev()
                .find(|&i| reason.is_char_boundary(i))
                .unwrap_or(0);
            reason.truncate(end);
        }
        Some(Denial { plugin, reason })
    }

    /// From Kong's `x-palisade-denied-by` response header.
    pub fn from_header(value: &[u8]) -> Option<Denial> {
        let (plugin, reason) = palisade_kit::reply::parse_denied_by(value)?;
        Denial::recorded(plugin, reason)
    }

    /// From Envoy's response code details (`palisade-auth{missing_token}`).
    pub fn from_details(details: &str) -> Option<Denial> {
        let (plugin, reason) = palisade_kit::reply::parse_denial_details(details)?;
        Denial::recorded(plugin, reason)
    }
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
    /// Envoy's response code details (`upstream_reset_before_response_started{overflow}`, a
    /// Palisade refusal's `palisade-auth{missing_token}`, ...).
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

impl SecurityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityKind::Unauthenticated => "unauthenticated",
            SecurityKind::Forbidden => "forbidden",
            SecurityKind::RateLimited => "rate_limited",
            SecurityKind::CircuitOpen => "circuit_open",
            SecurityKind::BodyTooLarge => "body_too_large",
        }
    }
}

impl AuditEvent {
    /// The event as one JSON object (no newline), byte for byte what `serde_json` writes for
    /// it (a test holds them equal), written by hand: it runs for every request, and serde's
    /// writer, one small write per key, quote and colon, was two thirds of the event's cost.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(768);
        let mut json = JsonObject::open(&mut out);
        json.string("event_id", &self.event_id);
        json.string("event_type", self.event_type.as_str());
        json.optional_str(
            "security_kind",
            self.security_kind.map(SecurityKind::as_str),
        );
        json.number("timestamp_ms", self.timestamp_ms);
        json.optional_str("subject", self.subject.as_deref());
        json.optional_str("consumer", self.consumer.as_deref());
        json.string("method", &self.method);
        json.string("path", &self.path);
        json.optional_str("host", self.host.as_deref());
        json.optional_str("route", self.route.as_deref());
        json.optional_str("upstream_cluster", self.upstream_cluster.as_deref());
        json.optional_str("upstream_address", self.upstream_address.as_deref());
        json.number("status", u64::from(self.status));
        json.optional_str(
            "response_code_details",
            self.response_code_details.as_deref(),
        );
        json.optional_number("latency_ms", self.latency_ms);
        json.optional_number("bytes_in", self.bytes_in);
        json.optional_number("bytes_out", self.bytes_out);
        json.optional_str("client_address", self.client_address.as_deref());
        json.optional_str("user_agent", self.user_agent.as_deref());
        json.optional_str("request_id", self.request_id.as_deref());
        json.optional_str("trace_id", self.trace_id.as_deref());
        json.key("denied_by");
        match &self.denied_by {
            Some(denial) => {
                let mut inner = JsonObject::open(json.out);
                inner.string("plugin", &denial.plugin);
                inner.string("reason", &denial.reason);
                inner.close();
            }
            None => json.out.extend_from_slice(b"null"),
        }
        json.key("headers");
        let mut inner = JsonObject::open(json.out);
        for (name, value) in &self.headers {
            inner.escaped_key(name);
            push_json_string(inner.out, value);
        }
        inner.close();
        json.close();
        out
    }
}

/// Writes one JSON object's members, commas between them.
struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> JsonObject<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    fn close(self) {
        self.out.push(b'}');
    }

    fn separate(&mut self) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
    }

    /// One of the event's own field names: plain ASCII, nothing to escape.
    fn key(&mut self, key: &'static str) {
        self.separate();
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// A name that comes from configuration.
    fn escaped_key(&mut self, key: &str) {
        self.separate();
        push_json_string(self.out, key);
        self.out.push(b':');
    }

    fn string(&mut self, key: &'static str, value: &str) {
        self.key(key);
        push_json_string(self.out, value);
    }

    fn optional_str(&mut self, key: &'static str, value: Option<&str>) {
        match value {
            Some(value) => self.string(key, value),
            None => {
                self.key(key);
                self.out.extend_from_slice(b"null");
            }
        }
    }

    fn number(&mut self, key: &'static str, value: u64) {
        self.key(key);
        palisade_kit::decimal::push_u64_bytes(self.out, value);
    }

    fn optional_number(&mut self, key: &'static str, value: Option<u64>) {
        match value {
            Some(value) => self.number(key, value),
            None => {
                self.key(key);
                self.out.extend_from_slice(b"null");
            }
        }
    }
}

/// Lower-case hex digits, for `\u00XX` escapes and UUIDs.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// A JSON string literal, escaped as serde_json escapes: `"`, `\\`, and control characters
/// (short forms where JSON has them, else `\\u00XX`); everything else copied in runs.
fn push_json_string(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    out.push(b'"');
    let mut run_start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let short: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(bytes.get(run_start..i).unwrap_or_default());
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            for nibble in [byte >> 4, byte & 0x0f] {
                out.push(HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'));
            }
        } else {
            out.extend_from_slice(short);
        }
        run_start = i + 1;
    }
    out.extend_from_slice(bytes.get(run_start..).unwrap_or_default());
    out.push(b'"');
}

/// A random (version 4, RFC 9562) UUID in its canonical text form.
pub fn uuid_v4(rng: &mut Xoshiro256) -> String {
    // Hex digits and dashes are ASCII.
    String::from_utf8(palisade_kit::uuid::v4(rng).to_vec()).unwrap_or_default()
}

/// The trace id of a valid W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all
/// zeros, version not `ff`): the same check palisade-header-security keeps the header by.
pub fn trace_id(traceparent: &str) -> Option<String> {
    let id = palisade_kit::traceparent::trace_id(traceparent.as_bytes())?;
    // 32 lower-case hex digits.
    std::str::from_utf8(id).ok().map(str::to_owned)
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
    fn trace_ids_come_from_valid_traceparents_only() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for invalid in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-XYZ-00f067aa0ba902b7-01",
            "",
            // Version ff is invalid.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // No parent id, or no flags.
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            // An all-zero parent id.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Version 00 has exactly four fields.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(trace_id(invalid), None, "{invalid}");
        }
    }

    #[test]
    fn denials_name_a_palisade_plugin_and_a_short_reason() {
        let denial = |plugin: &str, reason: &str| {
            Some(Denial {
                plugin: plugin.into(),
                reason: reason.into(),
            })
        };
        assert_eq!(
            Denial::from_header(br#"palisade-auth; reason="missing token""#),
            denial("palisade-auth", "missing token")
        );
        assert_eq!(
            Denial::from_details("palisade-rate-limit{rate_limit_exceeded}"),
            denial("palisade-rate-limit", "rate limit exceeded")
        );
        for plugin in PALISADE_PLUGINS {
            let value = palisade_kit::reply::denied_by(plugin, "no");
            assert_eq!(Denial::from_header(value.as_bytes()), denial(plugin, "no"));
        }
        // An upstream's header on Kong names no plugin of its own choosing.
        for value in [
            &br#"my-upstream; reason="all good""#[..],
            br#"palisade-admin; reason="approved by the security team""#,
            br#"palisade-auth-bypass; reason="x""#,
            b"Palisade-Auth",
        ] {
            assert_eq!(
                Denial::from_header(value),
                None,
                "{}",
                String::from_utf8_lossy(value)
            );
        }
        assert_eq!(Denial::from_details("palisade-upstream{made_up}"), None);
        // Nor text of any length: the reason stops at 128 bytes, on a character boundary.
        let long = format!("palisade-auth; reason=\"{}\"", "x".repeat(10_000));
        assert_eq!(
            Denial::from_header(long.as_bytes()).map(|d| d.reason.len()),
            Some(MAX_DENIAL_REASON)
        );
        let wide = format!("a{}", "€".repeat(100));
        let cut = Denial::recorded("palisade-audit".into(), wide).map(|d| d.reason);
        assert_eq!(cut, Some(format!("a{}", "€".repeat(42))));
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
        assert_eq!(event.to_json(), serde_json::to_vec(&event).unwrap());
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = String> {
            // Control characters, quotes, backslashes, non-ASCII and plain text.
            proptest::string::string_regex("[\\x00-\\x1f\"\\\\a-z/é€😀 ]{0,24}").unwrap()
        }

        prop_compose! {
            fn events()(
                strings in proptest::collection::vec(text(), 12),
                optional in proptest::collection::vec(any::<bool>(), 16),
                numbers in proptest::collection::vec(any::<u64>(), 4),
                status in any::<u16>(),
                kind in 0usize..6,
                headers in proptest::collection::btree_map(text(), text(), 0..3),
            ) -> AuditEvent {
                let s = |i: usize| strings.get(i).cloned().unwrap_or_default();
                let on = |i: usize| optional.get(i).copied().unwrap_or(false);
                let o = |i: usize, v: String| on(i).then_some(v);
                let n = |i: usize| numbers.get(i).copied().unwrap_or(0);
                let kinds = [None, Some(SecurityKind::Unauthenticated), Some(SecurityKind::Forbidden),
                    Some(SecurityKind::RateLimited), Some(SecurityKind::CircuitOpen), Some(SecurityKind::BodyTooLarge)];
                AuditEvent {
                    event_id: s(0),
                    event_type: EventType::ALL.get(kind % 5).copied().unwrap_or(EventType::ApiCall),
                    security_kind: kinds.get(kind).copied().flatten(),
                    timestamp_ms: n(0),
                    subject: o(0, s(1)),
                    consumer: o(1, s(2)),
                    method: s(3),
                    path: s(4),
                    host: o(2, s(5)),
                    route: o(3, s(6)),
                    upstream_cluster: o(4, s(7)),
                    upstream_address: o(5, s(8)),
                    status,
                    response_code_details: o(6, s(9)),
                    latency_ms: on(7).then(|| n(1)),
                    bytes_in: on(8).then(|| n(2)),
                    bytes_out: on(9).then(|| n(3)),
                    client_address: o(10, s(10)),
                    user_agent: o(11, s(11)),
                    request_id: o(12, s(1)),
                    trace_id: o(13, s(2)),
                    denied_by: o(14, s(3)).map(|plugin| Denial { plugin, reason: s(4) }),
                    headers,
                }
            }
        }

        proptest! {
            #[test]
            fn hand_written_json_is_what_serde_writes(event in events()) {
                prop_assert_eq!(
                    String::from_utf8(event.to_json()).unwrap(),
                    serde_json::to_string(&event).unwrap()
                );
            }
        }
    }
}
