//! palisade-audit's configuration.

use std::time::Duration;

use palisade_kit::config::{PluginConfig, Problems};
use palisade_kit::duration::ConfigDuration;
use palisade_kit::scheme::Scheme;
use schemars::JsonSchema;
use serde::Deserialize;

/// palisade-audit configuration.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Where batches go. Without a sink, events are counted but not shipped.
    #[serde(default)]
    pub sink: Option<Sink>,
    /// Topic (Kafka) or stream name per event class.
    #[serde(default)]
    pub topics: Topics,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// Rules that name a request's event type; the first rule that matches wins. Security
    /// outcomes (401, 403, 429, 413, 503 from an open circuit) are security events whatever
    /// the rules say.
    #[serde(default)]
    pub classification: Vec<ClassificationRule>,
    /// The event type of a request no rule matches.
    #[serde(default)]
    pub default_event_type: EventTypeName,
    #[serde(default)]
    pub sampling: Sampling,
    #[serde(default)]
    pub redaction: Redaction,
    /// Request headers copied into the event's `headers` (lower-case names). Secrets
    /// (`authorization`, cookies, API keys, `redaction.headers`) cannot be captured.
    #[serde(default)]
    pub capture_headers: Vec<String>,
    /// Define and record metrics. Kong 3.4–3.7 has no metrics (their host functions trap):
    /// set `false` there.
    #[serde(default = "enabled")]
    pub metrics: bool,
}

fn enabled() -> bool {
    true
}

/// The audit event types a rule can name (security events come from the response status).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventTypeName {
    #[default]
    ApiCall,
    UserAction,
    DataAccess,
    AdminOperation,
}

/// `{"event_type": "admin_operation", "methods": ["POST", "DELETE"], "paths": ["/admin/**"]}`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassificationRule {
    pub event_type: EventTypeName,
    /// Upper-case methods; empty matches every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path patterns (the path without its query): `*` is one segment, a trailing `/**` any
    /// rest (also none), anything else literal. Empty matches every path.
    #[serde(default)]
    pub paths: Vec<String>,
}

/// The share of events of each audit type kept, from 0.0 (none) to 1.0 (all). Security
/// events are always kept.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Sampling {
    pub api_call: f64,
    pub user_action: f64,
    pub data_access: f64,
    pub admin_operation: f64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            api_call: 1.0,
            user_action: 1.0,
            data_access: 1.0,
            admin_operation: 1.0,
        }
    }
}

/// What never leaves the proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Redaction {
    /// What happens to the path's query string.
    pub query: QueryMode,
    /// Parameters whose values are kept under `redact_values`.
    pub keep_query_params: Vec<String>,
    /// Parameters removed entirely under `keep` (besides well-known secret names such as
    /// `access_token`, `api_key`, `password`).
    pub redact_query_params: Vec<String>,
    /// More header names that must never be captured (lower-case), besides `authorization`,
    /// `proxy-authorization`, `cookie`, `set-cookie` and API key headers.
    pub headers: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueryMode {
    /// Names kept, every value replaced by `REDACTED` except `keep_query_params`.
    #[default]
    RedactValues,
    /// No query at all.
    Drop,
    /// The query as sent, less secret parameters (removed whole).
    Keep,
}

/// The longest wait between two tries of a batch.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How batches are retried.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Retries of a failed batch before its events are dropped and counted (at most 3).
    pub max_retries: u32,
    /// First retry delay; it doubles each retry up to `backoff_max`, and each wait is drawn
    /// between half of it and all of it (jitter that keeps workers apart, never near zero).
    pub backoff_base: ConfigDuration,
    pub backoff_max: ConfigDuration,
    /// Batches awaiting an answer at once, per worker.
    pub max_in_flight: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_retries: 3,
            backoff_base: ConfigDuration::from_millis(200),
            backoff_max: ConfigDuration::from_secs(10),
            max_in_flight: 2,
        }
    }
}

/// A collector reached with `dispatch_http_call`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Sink {
    /// Kafka REST Proxy v2 produce API (Confluent REST Proxy, Redpanda HTTP proxy, Strimzi
    /// Kafka Bridge): one POST per topic to `/topics/<topic>`.
    KafkaRest(Collector),
    /// Newline-delimited JSON POSTed to one path of any HTTP collector.
    Http(Collector),
}

/// How to reach a collector from both hosts.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Collector {
    /// The upstream to call: an Envoy cluster name under Envoy, `host:port` under Kong.
    pub upstream: String,
    /// The `:authority` sent to the collector.
    pub authority: String,
    /// Request path: the NDJSON endpoint, or the REST proxy's base path (`/topics/<topic>` is
    /// appended).
    #[serde(default = "default_path")]
    pub path: String,
    /// How long a batch may take before it counts as failed and is retried.
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    /// `http` (default) or `https`. On Kong `https` turns TLS on for the call (ngx_wasm_module
    /// reads `:scheme`); under Envoy the cluster decides.
    #[serde(default = "Scheme::http")]
    pub scheme: Scheme,
}

fn default_path() -> String {
    "/".to_owned()
}

fn default_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}

/// Topic names for the platform's three event classes, plus security events.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    pub data: String,
    pub system: String,
    pub audit: String,
    pub security: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            data: "palisade.events.data".to_owned(),
            system: "palisade.events.system".to_owned(),
            audit: "palisade.events.audit".to_owned(),
            security: "palisade.events.security".to_owned(),
        }
    }
}

/// When a batch is sent, and how much may wait.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// A batch is sent when it holds this many events...
    pub max_events: u32,
    /// ...or when its oldest event has waited this long.
    pub max_interval: ConfigDuration,
    /// Events held while the collector is slow or down; beyond this they are dropped and counted.
    pub max_buffered_events: u32,
    /// Bytes those events may take (their JSON, topic and key) per worker: an event's size
    /// follows the request's path and headers, so a count alone does not bound memory.
    pub max_buffered_bytes: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_events: 100,
            max_interval: ConfigDuration::from_secs(1),
            max_buffered_events: 10_000,
            max_buffered_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Kafka's own rule for topic names.
fn is_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl PluginConfig for AuditConfig {
    fn validate(&self, problems: &mut Problems) {
        if let Some(sink) = &self.sink {
            let (variant, collector) = match sink {
                Sink::KafkaRest(c) => ("kafka_rest", c),
                Sink::Http(c) => ("http", c),
            };
            problems.field("sink", |p| {
                p.field(variant, |p| {
                    if collector.upstream.trim().is_empty() {
                        p.push_at("upstream", "must not be empty");
                    }
                    if collector.authority.trim().is_empty() {
                        p.push_at("authority", "must not be empty");
                    }
                    if !collector.path.starts_with('/') {
                        p.push_at("path", "must start with /");
                    }
                    if collector.timeout.get().is_zero() {
                        p.push_at("timeout", "must be longer than 0s");
                    }
                });
            });
        }
        problems.field("topics", |p| {
            let t = &self.topics;
            for (name, topic) in [("data", &t.data), ("system", &t.system), ("audit", &t.audit), ("security", &t.security)] {
                if !is_topic_name(topic) {
                    p.push_at(name, format!("{topic:?} is not a Kafka topic name (letters, digits, '.', '_', '-'; at most 249)"));
                }
            }
        });
        problems.field("delivery", |p| {
            let d = &self.delivery;
            if d.max_retries > 3 {
                p.push_at("max_retries", "must be at most 3");
            }
            if d.backoff_base.get().is_zero() {
                p.push_at("backoff_base", "must be longer than 0s");
            }
            if d.backoff_max.get() > MAX_BACKOFF {
                p.push_at("backoff_max", "must be at most 5m");
            }
            if d.backoff_max < d.backoff_base {
                p.push_at(
                    "backoff_max",
                    format!("must be at least backoff_base ({})", d.backoff_base),
                );
            }
            if !(1..=64).contains(&d.max_in_flight) {
                p.push_at("max_in_flight", "must be between 1 and 64");
            }
        });
        problems.field("classification", |p| {
            for (i, rule) in self.classification.iter().enumerate() {
                p.index(i, |p| {
                    for (j, method) in rule.methods.iter().enumerate() {
                        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                            p.field("methods", |p| {
                                p.index(j, |p| {
                                    p.push(format!("{method:?} is not an upper-case HTTP method"))
                                })
                            });
                        }
                    }
                    for (j, path) in rule.paths.iter().enumerate() {
                        if let Err(reason) = crate::pattern::PathPattern::parse(path) {
                            p.field("paths", |p| p.index(j, |p| p.push(reason)));
                        }
                    }
                });
            }
        });
        problems.field("sampling", |p| {
            let s = &self.sampling;
            for (name, rate) in [
                ("api_call", s.api_call),
                ("user_action", s.user_action),
                ("data_access", s.data_access),
                ("admin_operation", s.admin_operation),
            ] {
                if !(0.0..=1.0).contains(&rate) {
                    p.push_at(name, "must be between 0.0 and 1.0");
                }
            }
        });
        problems.field("redaction", |p| {
            for (j, name) in self.redaction.headers.iter().enumerate() {
                if !palisade_kit::config::is_header_name(name) {
                    p.field("headers", |p| {
                        p.index(j, |p| {
                            p.push(format!("{name:?} is not a lower-case header name"))
                        })
                    });
                }
            }
        });
        problems.field("capture_headers", |p| {
            for (j, name) in self.capture_headers.iter().enumerate() {
                p.index(j, |p| {
                    if !palisade_kit::config::is_header_name(name) {
                        p.push(format!("{name:?} is not a lower-case header name"));
                    } else if crate::redact::is_secret_header(name, &self.redaction.headers) {
                        p.push(format!("{name:?} carries secrets and is never captured"));
                    }
                });
            }
        });
        problems.field("batch", |p| {
            let b = &self.batch;
            if !(1 << 20..=256 << 20).contains(&b.max_buffered_bytes) {
                p.push_at(
                    "max_buffered_bytes",
                    "must be between 1048576 (1 MiB) and 268435456 (256 MiB)",
                );
            }
            if !(1..=10_000).contains(&b.max_events) {
                p.push_at("max_events", "must be between 1 and 10000");
            }
            if b.max_interval.get().is_zero() {
                p.push_at("max_interval", "must be longer than 0s");
            } else if b.max_interval.get() > Duration::from_secs(60) {
                p.push_at("max_interval", "must be at most 1m");
            }
            // Every buffered event is held in the worker's VM: past what its memory can take,
            // an allocation failure would end the VM, not drop and count events.
            if b.max_buffered_events > 100_000 {
                p.push_at("max_buffered_events", "must be at most 100000");
            } else if b.max_buffered_events < b.max_events {
                p.push_at(
                    "max_buffered_events",
                    format!("must be at least max_events ({})", b.max_events),
                );
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use palisade_kit::config::load;

    #[test]
    fn defaults_need_no_sink() {
        let config: AuditConfig = load(b"{}").unwrap();
        assert!(config.sink.is_none());
        assert_eq!(config.topics.audit, "palisade.events.audit");
        assert_eq!(config.batch.max_events, 100);
    }

    #[test]
    fn kafka_rest_sink() {
        let config: AuditConfig = load(
            br#"{"sink":{"kafka_rest":{"upstream":"kafka-rest","authority":"kafka-rest.kafka:8082"}}}"#,
        )
        .unwrap();
        match config.sink {
            Some(Sink::KafkaRest(c)) => {
                assert_eq!(c.path, "/");
                assert_eq!(c.timeout, ConfigDuration::from_secs(5));
            }
            other => panic!("unexpected sink {other:?}"),
        }
    }

    #[test]
    fn bad_sink_and_topics_are_refused() {
        let err = load::<AuditConfig>(
            br#"{"sink":{"http":{"upstream":"","authority":"c","path":"events"}},
                 "topics":{"audit":"bad topic"},"batch":{"max_events":500,"max_buffered_events":10}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "sink.http.upstream: must not be empty; sink.http.path: must start with /; \
             topics.audit: \"bad topic\" is not a Kafka topic name (letters, digits, '.', '_', '-'; at most 249); \
             batch.max_buffered_events: must be at least max_events (500)"
        );
    }

    #[test]
    fn batch_and_delivery_bounds_are_refused_past_what_a_vm_can_hold() {
        let err = load::<AuditConfig>(
            br#"{"batch":{"max_events":20000,"max_interval":"2m","max_buffered_events":4294967295,
                          "max_buffered_bytes":1000},
                 "delivery":{"backoff_max":"18446744073709551615ms","max_in_flight":0}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "delivery.backoff_max: must be at most 5m; \
             delivery.max_in_flight: must be between 1 and 64; \
             batch.max_buffered_bytes: must be between 1048576 (1 MiB) and 268435456 (256 MiB); \
             batch.max_events: must be between 1 and 10000; \
             batch.max_interval: must be at most 1m; \
             batch.max_buffered_events: must be at most 100000"
        );
        let edge =
            br#"{"batch":{"max_events":10000,"max_interval":"1m","max_buffered_events":100000},
                        "delivery":{"backoff_base":"5m","backoff_max":"5m","max_in_flight":64}}"#;
        assert!(load::<AuditConfig>(edge).is_ok());
    }

    #[test]
    fn unknown_sink_kind_is_refused() {
        let err = load::<AuditConfig>(br#"{"sink":{"syslog":{}}}"#).unwrap_err();
        assert_eq!(err.problems[0].path, "sink");
        assert!(err.problems[0]
            .reason
            .starts_with("unknown variant, expected"));
    }
}
