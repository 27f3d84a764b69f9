//! Everything palisade-audit decides about one request, host-free: which event type it is,
//! whether it is sampled, and the event itself, built from what the adapter read off the
//! finished stream.

use std::collections::BTreeMap;

use palisade_kit::config::{ConfigError, Problems};
use palisade_kit::header_pairs::{get as header, ClientHost};
use palisade_kit::identity;
use palisade_kit::random::Xoshiro256;
use palisade_kit::reply::CIRCUIT_OPEN;

use crate::config::{AuditConfig, Redaction, Topics};
use crate::event::{self, AuditEvent, Denial, EventType, SecurityKind};
use crate::pattern::PathPattern;
use crate::redact;

/// What the adapter read off a finished stream. Everything but the request headers may be
/// missing (a host lacking the property, a request refused before it was parsed).
#[derive(Debug, Default)]
pub struct Facts<'a> {
    pub request_headers: &'a [(&'a [u8], &'a [u8])],
    pub status: u16,
    pub code_details: Option<String>,
    pub latency_ms: Option<u64>,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    /// `address[:port]` as the host gives it; the port is dropped.
    pub client_address: Option<String>,
    pub upstream_address: Option<String>,
    pub route: Option<String>,
    pub cluster: Option<String>,
    /// From the refusing plugin's `x-palisade-denied-by` header.
    pub denial: Option<Denial>,
    /// Where `request_headers` hold the client's Host (Kong: `host`).
    pub client_host: ClientHost,
}

#[derive(Debug, Clone)]
struct Rule {
    event_type: EventType,
    methods: Vec<String>,
    paths: Vec<PathPattern>,
}

impl Rule {
    fn matches(&self, method: &str, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path)))
    }
}

/// The share of an event type kept, as a threshold on a uniform `u64` draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    All,
    None,
    Below(u64),
}

impl Keep {
    fn from_rate(rate: f64) -> Self {
        if rate >= 1.0 {
            Keep::All
        } else if rate <= 0.0 {
            Keep::None
        } else {
            // rate in (0, 1): the product is below 2^64 and the cast saturates anyway.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Keep::Below((rate * 18_446_744_073_709_551_616.0) as u64)
        }
    }

    fn draw(self, rng: &mut Xoshiro256) -> bool {
        match self {
            Keep::All => true,
            Keep::None => false,
            Keep::Below(threshold) => rng.next_u64() < threshold,
        }
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Emit(Box<AuditEvent>),
    SampledOut(EventType),
}

/// palisade-audit's compiled configuration.
#[derive(Debug, Clone)]
pub struct Audit {
    rules: Vec<Rule>,
    default_type: EventType,
    keep: [Keep; 4],
    redaction: Redaction,
    capture: Vec<String>,
    topics: Topics,
}

impl Audit {
    pub fn build(config: &AuditConfig) -> Result<Self, ConfigError> {
        let mut problems = Problems::default();
        let mut rules = Vec::new();
        problems.field("classification", |p| {
            for (i, rule) in config.classification.iter().enumerate() {
                p.index(i, |p| {
                    let mut paths = Vec::new();
                    for (j, path) in rule.paths.iter().enumerate() {
                        match PathPattern::parse(path) {
                            Ok(pattern) => paths.push(pattern),
                            Err(reason) => p.field("paths", |p| p.index(j, |p| p.push(reason))),
                        }
                    }
                    rules.push(Rule {
                        event_type: rule.event_type.into(),
                        methods: rule.methods.clone(),
                        paths,
                    });
                });
            }
        });
        problems.into_result()?;
        let s = &config.sampling;
        Ok(Self {
            rules,
            default_type: config.default_event_type.into(),
            keep: [
                Keep::from_rate(s.api_call),
                Keep::from_rate(s.user_action),
                Keep::from_rate(s.data_access),
                Keep::from_rate(s.admin_operation),
            ],
            redaction: config.redaction.clone(),
            capture: config.capture_headers.clone(),
            topics: config.topics.clone(),
        })
    }

    /// The Kafka topic an event type goes to: data access to `data`, API calls to `system`,
    /// user actions and admin operations to `audit`, security events to `security`.
    pub fn topic(&self, event_type: EventType) -> &str {
        match event_type {
            EventType::DataAccess => &self.topics.data,
            EventType::ApiCall => &self.topics.system,
            EventType::UserAction | EventType::AdminOperation => &self.topics.audit,
            EventType::Security => &self.topics.security,
        }
    }

    /// The event type by the rules (first match), before security outcomes are considered.
    pub fn classify(&self, method: &str, path: &str) -> EventType {
        self.rules
            .iter()
            .find(|rule| rule.matches(method, path))
            .map_or(self.default_type, |rule| rule.event_type)
    }

    /// The request headers [`Self::event`] reads by name (pseudo-headers aside, which hosts
    /// hand over first). Kong hands over the first 100 pairs of a map, and the identity and
    /// request id headers other plugins add come last: past the cap, the adapter asks for
    /// these one by one. A captured `x-palisade-*` header is not among them: past the cap only
    /// a client could have put it there (palisade-auth refuses such a request, removing the
    /// identity headers it knows by name).
    pub fn headers_read_by_name(&self) -> impl Iterator<Item = &str> + '_ {
        [
            ":method",
            ":path",
            ":authority",
            identity::SUBJECT,
            identity::CONSUMER,
            "host",
            "user-agent",
            "x-request-id",
            "traceparent",
        ]
        .into_iter()
        .chain(
            self.capture
                .iter()
                .map(String::as_str)
                .filter(|name| !identity::is_owned(name.as_bytes())),
        )
    }

    /// Decides and builds the event of a finished request.
    pub fn event(&self, facts: &Facts<'_>, rng: &mut Xoshiro256, now_ms: u64) -> Verdict {
        let text = |name: &str| {
            header(facts.request_headers, name).map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let method = text(":method").unwrap_or_default();
        let raw_path = text(":path").unwrap_or_default();
        let bare_path = raw_path.split('?').next().unwrap_or_default();
        let security = security_kind(facts);
        let event_type = match security {
            Some(_) => EventType::Security,
            // On the normalised path, so `//admin` is still an admin operation.
            None => self.classify(&method, &palisade_kit::path::normalize_str(bare_path)),
        };
        let keep = match event_type {
            EventType::ApiCall => self.keep[0],
            EventType::UserAction => self.keep[1],
            EventType::DataAccess => self.keep[2],
            EventType::AdminOperation => self.keep[3],
            EventType::Security => Keep::All,
        };
        if !keep.draw(rng) {
            return Verdict::SampledOut(event_type);
        }
        let mut headers = BTreeMap::new();
        for name in &self.capture {
            let values: Vec<String> = facts
                .request_headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| {
                    redact::redact_header_value(&String::from_utf8_lossy(v), &self.redaction)
                })
                .collect();
            if !values.is_empty() {
                headers.insert(name.clone(), values.join(","));
            }
        }
        Verdict::Emit(Box::new(AuditEvent {
            event_id: event::uuid_v4(rng),
            event_type,
            security_kind: security,
            timestamp_ms: now_ms,
            subject: text(identity::SUBJECT),
            consumer: text(identity::CONSUMER),
            path: redact::redact_path(&raw_path, &self.redaction),
            method,
            host: text(facts.client_host.name()),
            route: facts.route.clone(),
            upstream_cluster: facts.cluster.clone(),
            upstream_address: facts.upstream_address.clone(),
            status: facts.status,
            response_code_details: facts.code_details.clone(),
            latency_ms: facts.latency_ms,
            bytes_in: facts.bytes_in,
            bytes_out: facts.bytes_out,
            client_address: facts.client_address.as_deref().map(strip_port),
            user_agent: text("user-agent"),
            request_id: text("x-request-id"),
            trace_id: text("traceparent").as_deref().and_then(event::trace_id),
            denied_by: facts.denial.clone(),
            headers,
        }))
    }
}

/// 401, 403, 429 and 413 are security events whoever answered; a 503 only when a circuit was
/// open (palisade-resilience said so, or Envoy's breaker overflowed), not when load was shed
/// or a fault injected.
fn security_kind(facts: &Facts<'_>) -> Option<SecurityKind> {
    match facts.status {
        401 => Some(SecurityKind::Unauthenticated),
        403 => Some(SecurityKind::Forbidden),
        429 => Some(SecurityKind::RateLimited),
        413 => Some(SecurityKind::BodyTooLarge),
        503 => {
            let by_resilience = facts
                .denial
                .as_ref()
                .is_some_and(|d| d.plugin == "palisade-resilience" && d.reason == CIRCUIT_OPEN);
            let overflow = facts
                .code_details
                .as_deref()
                .is_some_and(|d| d.contains("overflow"));
            (by_resilience || overflow).then_some(SecurityKind::CircuitOpen)
        }
        _ => None,
    }
}

/// `10.0.0.1:5000` -> `10.0.0.1`, `[::1]:5000` -> `::1`; Kong gives the address alone.
fn strip_port(address: &str) -> String {
    if let Some(v6) = address.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6).to_owned();
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host.to_owned()
        }
        _ => address.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use palisade_kit::config::load;

    fn audit(config: &str) -> Audit {
        Audit::build(&load::<AuditConfig>(config.as_bytes()).unwrap()).unwrap()
    }

    const RULES: &str = r#"{"classification":[
        {"event_type":"admin_operation","paths":["/admin/**"]},
        {"event_type":"data_access","methods":["GET","HEAD"],"paths":["/api/**"]},
        {"event_type":"user_action","methods":["POST","PUT","PATCH","DELETE"],"paths":["/api/**"]}
    ],"capture_headers":["x-tenant","referer"]}"#;

    fn request<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<(&'a [u8], &'a [u8])> {
        pairs
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect()
    }

    fn emit(audit: &Audit, facts: &Facts<'_>) -> AuditEvent {
        match audit.event(
            facts,
            &mut Xoshiro256::from_seed([1; 32]),
            1_700_000_000_123,
        ) {
            Verdict::Emit(event) => *event,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn classification_follows_the_first_matching_rule() {
        let a = audit(RULES);
        assert_eq!(
            a.classify("DELETE", "/admin/users/7"),
            EventType::AdminOperation
        );
        assert_eq!(a.classify("GET", "/api/orders"), EventType::DataAccess);
        assert_eq!(a.classify("POST", "/api/orders"), EventType::UserAction);
        assert_eq!(a.classify("OPTIONS", "/api/orders"), EventType::ApiCall);
        assert_eq!(a.classify("GET", "/health"), EventType::ApiCall);
        assert_eq!(a.topic(EventType::DataAccess), "palisade.events.data");
        assert_eq!(a.topic(EventType::AdminOperation), "palisade.events.audit");
        assert_eq!(a.topic(EventType::ApiCall), "palisade.events.system");
        assert_eq!(a.topic(EventType::Security), "palisade.events.security");
    }

    #[test]
    fn an_event_carries_every_fact_and_no_secret() {
        let a = audit(RULES);
        let headers = request(&[
            (":method", "GET"),
            (":path", "/api/orders?page=2&access_token=s3cr3t"),
            (":authority", "shop.example.com"),
            ("authorization", "Bearer s3cr3t"),
            ("cookie", "session=s3cr3t"),
            ("x-api-key", "s3cr3t"),
            ("user-agent", "curl/8.5.0"),
            ("x-request-id", "req-1"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-palisade-subject", "alice"),
            ("x-palisade-consumer", "shop-web"),
            ("x-tenant", "acme"),
            ("x-tenant", "acme-eu"),
            (
                "referer",
                "https://shop.example.com/cb?code=s3cr3t#access_token=s3cr3t",
            ),
        ]);
        let facts = Facts {
            request_headers: &headers,
            status: 200,
            code_details: Some("via_upstream".into()),
            latency_ms: Some(12),
            bytes_in: Some(300),
            bytes_out: Some(1200),
            client_address: Some("10.0.0.1:40000".into()),
            upstream_address: Some("10.1.0.5:8080".into()),
            route: Some("orders".into()),
            cluster: Some("orders-svc".into()),
            denial: None,
            client_host: ClientHost::Authority,
        };
        let event = emit(&a, &facts);
        assert_eq!(event.event_type, EventType::DataAccess);
        assert_eq!(event.security_kind, None);
        assert_eq!(event.timestamp_ms, 1_700_000_000_123);
        assert_eq!(event.method, "GET");
        assert_eq!(
            event.path,
            "/api/orders?page=REDACTED&access_token=REDACTED"
        );
        assert_eq!(event.host.as_deref(), Some("shop.example.com"));
        assert_eq!(event.subject.as_deref(), Some("alice"));
        assert_eq!(event.consumer.as_deref(), Some("shop-web"));
        assert_eq!(event.client_address.as_deref(), Some("10.0.0.1"));
        assert_eq!(event.upstream_address.as_deref(), Some("10.1.0.5:8080"));
        assert_eq!(event.route.as_deref(), Some("orders"));
        assert_eq!(event.upstream_cluster.as_deref(), Some("orders-svc"));
        assert_eq!((event.status, event.latency_ms), (200, Some(12)));
        assert_eq!((event.bytes_in, event.bytes_out), (Some(300), Some(1200)));
        assert_eq!(event.user_agent.as_deref(), Some("curl/8.5.0"));
        assert_eq!(event.request_id.as_deref(), Some("req-1"));
        assert_eq!(
            event.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            event.headers,
            BTreeMap::from([
                ("x-tenant".to_owned(), "acme,acme-eu".to_owned()),
                // A URL's query is a path's: redacted the same way, its fragment dropped.
                (
                    "referer".to_owned(),
                    "https://shop.example.com/cb?code=REDACTED".to_owned()
                ),
            ])
        );
        let json = String::from_utf8(event.to_json()).unwrap();
        assert!(!json.contains("s3cr3t"), "{json}");

        // Kong's `:authority` is nginx's server name: the client's Host is `host` there.
        let mut pairs = headers.clone();
        pairs.push((&b"Host"[..], &b"shop.example.com"[..]));
        for pair in &mut pairs {
            if pair.0 == &b":authority"[..] {
                pair.1 = b"kong:8000";
            }
        }
        let facts = Facts {
            request_headers: &pairs,
            client_host: ClientHost::HostHeader,
            ..facts
        };
        assert_eq!(emit(&a, &facts).host.as_deref(), Some("shop.example.com"));
    }

    #[test]
    fn a_path_written_to_dodge_a_rule_is_classified_as_the_upstream_reads_it() {
        let a = audit(RULES);
        for path in [
            "//admin/users/7",
            "/api/../admin/users/7",
            "/%61dmin/users/7?x=1",
        ] {
            let pairs = [(":method", "DELETE"), (":path", path)];
            let headers = request(&pairs);
            let facts = Facts {
                request_headers: &headers,
                status: 204,
                ..Facts::default()
            };
            assert_eq!(
                emit(&a, &facts).event_type,
                EventType::AdminOperation,
                "{path}"
            );
        }
    }

    #[test]
    fn security_outcomes_override_the_rules() {
        let a = audit(RULES);
        let headers = request(&[(":method", "DELETE"), (":path", "/admin/users/7")]);
        let kind = |status: u16, denial: Option<Denial>, details: Option<&str>| {
            let facts = Facts {
                request_headers: &headers,
                status,
                denial,
                code_details: details.map(str::to_owned),
                ..Facts::default()
            };
            let event = emit(&a, &facts);
            (event.event_type, event.security_kind)
        };
        let security = |k| (EventType::Security, Some(k));
        assert_eq!(
            kind(401, None, None),
            security(SecurityKind::Unauthenticated)
        );
        assert_eq!(kind(403, None, None), security(SecurityKind::Forbidden));
        assert_eq!(kind(429, None, None), security(SecurityKind::RateLimited));
        assert_eq!(kind(413, None, None), security(SecurityKind::BodyTooLarge));
        let resilience = |reason: &str| Denial {
            plugin: "palisade-resilience".into(),
            reason: reason.into(),
        };
        assert_eq!(
            kind(503, Some(resilience("upstream circuit open")), None),
            security(SecurityKind::CircuitOpen)
        );
        // Load shed and an injected fault are palisade-resilience's 503s too, not open circuits.
        for reason in ["overloaded", "fault injected"] {
            assert_eq!(
                kind(503, Some(resilience(reason)), None),
                (EventType::AdminOperation, None),
                "{reason}"
            );
        }
        assert_eq!(
            kind(
                503,
                None,
                Some("upstream_reset_before_response_started{overflow}")
            ),
            security(SecurityKind::CircuitOpen)
        );
        assert_eq!(kind(503, None, None), (EventType::AdminOperation, None));
        assert_eq!(kind(500, None, None), (EventType::AdminOperation, None));
    }

    #[test]
    fn sampling_is_per_type_and_never_drops_security_events() {
        let a = audit(r#"{"sampling":{"api_call":0.25,"data_access":0.0}}"#);
        let get = request(&[(":method", "GET"), (":path", "/x")]);
        let mut rng = Xoshiro256::from_seed([9; 32]);
        let mut kept = 0;
        for _ in 0..4000 {
            let facts = Facts {
                request_headers: &get,
                status: 200,
                ..Facts::default()
            };
            if let Verdict::Emit(_) = a.event(&facts, &mut rng, 0) {
                kept += 1;
            }
        }
        assert!((850..1150).contains(&kept), "kept {kept} of 4000 at 25%");
        let nothing = audit(r#"{"sampling":{"api_call":0.0}}"#);
        for status in [200, 401, 403, 413, 429] {
            let facts = Facts {
                request_headers: &get,
                status,
                ..Facts::default()
            };
            let verdict = nothing.event(&facts, &mut rng, 0);
            if status == 200 {
                assert_eq!(verdict, Verdict::SampledOut(EventType::ApiCall));
            } else {
                assert!(matches!(verdict, Verdict::Emit(_)), "{status}");
            }
        }
    }

    #[test]
    fn a_request_refused_before_parsing_still_makes_an_event() {
        let a = audit("{}");
        let facts = Facts {
            status: 400,
            ..Facts::default()
        };
        let event = emit(&a, &facts);
        assert_eq!((event.method.as_str(), event.path.as_str()), ("", ""));
        assert_eq!(event.event_type, EventType::ApiCall);
    }

    #[test]
    fn ports_are_stripped_from_client_addresses() {
        assert_eq!(strip_port("10.0.0.1:5000"), "10.0.0.1");
        assert_eq!(strip_port("[::1]:5000"), "::1");
        assert_eq!(strip_port("2001:db8::1"), "2001:db8::1");
        assert_eq!(strip_port("10.0.0.1"), "10.0.0.1");
    }
}
