//! palisade-resilience's configuration, with the platform's defaults.

use std::time::Duration;

use palisade_kit::config::{is_header_name, PluginConfig, Problems};
use palisade_kit::duration::ConfigDuration;
use schemars::JsonSchema;
use serde::Deserialize;

/// palisade-resilience configuration. Every section has the platform's defaults.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ResilienceConfig {
    /// Which proxy runs the plugin: Envoy's router honours the retry and timeout headers this
    /// plugin sets; Kong's does not, so on Kong they are not sent (see docs/resilience.md).
    pub proxy: Proxy,
    /// Define and record metrics. Kong 3.4–3.7 have no metrics (the calls trap): set `false`.
    pub metrics: bool,
    pub circuit_breaker: CircuitBreakerConfig,
    pub concurrency: ConcurrencyConfig,
    pub retry: RetryConfig,
    pub timeouts: TimeoutConfig,
    pub fault: FaultConfig,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        Self {
            proxy: Proxy::Envoy,
            metrics: true,
            circuit_breaker: CircuitBreakerConfig::default(),
            concurrency: ConcurrencyConfig::default(),
            retry: RetryConfig::default(),
            timeouts: TimeoutConfig::default(),
            fault: FaultConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Proxy {
    Envoy,
    Kong,
}

/// Which upstream answers count as failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureOn {
    /// Any 5xx (including the proxy's own 502/503/504 for connect failures, resets, timeouts).
    #[serde(rename = "5xx")]
    ServerErrors,
    /// Only 502, 503 and 504: an application's 500 does not open the circuit.
    GatewayErrors,
}

/// When a circuit opens, and for how long.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    pub enabled: bool,
    /// The circuit's name. Unset: the upstream cluster (Envoy's `xds.cluster_name`, Kong's
    /// `kong.service_name`, 3.9+). Kong 3.4–3.8 should set it (a filter chain serves one
    /// service anyway).
    pub key: Option<String>,
    /// Consecutive failures that open the circuit.
    pub consecutive_failures: u32,
    pub failure_on: FailureOn,
    /// Also open when the failure rate over a sliding window passes a threshold.
    pub failure_rate: Option<FailureRateConfig>,
    /// How long the circuit stays open the first time; each consecutive opening lasts one
    /// base longer (Envoy's outlier-detection rule), up to `max_ejection`.
    pub base_ejection: ConfigDuration,
    /// The longest an opening lasts.
    pub max_ejection: ConfigDuration,
    /// Trial requests let through at once while half-open.
    pub half_open_trials: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            key: None,
            consecutive_failures: 5,
            failure_on: FailureOn::ServerErrors,
            failure_rate: None,
            base_ejection: ConfigDuration::from_secs(30),
            max_ejection: ConfigDuration::from_secs(300),
            half_open_trials: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailureRateConfig {
    /// Open when at least this share of the window's requests failed (percent, 1–100).
    pub threshold_percent: u8,
    /// The sliding window (counted in ten buckets).
    #[serde(default = "default_window")]
    pub window: ConfigDuration,
    /// Below this many requests in the window the rate is not judged.
    #[serde(default = "default_minimum_requests")]
    pub minimum_requests: u32,
}

fn default_window() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}

fn default_minimum_requests() -> u32 {
    20
}

/// Where concurrent requests are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConcurrencyScope {
    /// Per upstream cluster (the circuit's key).
    Cluster,
    /// Per route (Envoy's `xds.route_name`, Kong's `kong.route_name`).
    Route,
}

/// Load shedding: at most this many requests in flight at once, across every worker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConcurrencyConfig {
    /// Unset: no limit (requests are still counted when the retry budget is on).
    pub max_requests: Option<u32>,
    pub scope: ConcurrencyScope,
    /// The `Retry-After` a shed request gets, in whole seconds rounded up (at least 1).
    pub retry_after: ConfigDuration,
    /// How long the slots of a VM that stopped renewing them still count. A VM renews its
    /// slots every third of this from its timer; one that trapped (or was torn down with
    /// requests in flight) never gives them back, so they free once the lease has run out.
    pub lease: ConfigDuration,
}

impl Default for ConcurrencyConfig {
    fn default() -> Self {
        Self {
            max_requests: None,
            scope: ConcurrencyScope::Cluster,
            retry_after: ConfigDuration::from_secs(1),
            lease: ConfigDuration::from_secs(30),
        }
    }
}

/// The retry policy set on each request through Envoy's router headers. Backoff is Envoy's:
/// 25 ms base, exponential with full jitter, capped at 10 times the base (a route's
/// `retry_back_off` changes it; no header does).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retries after the first attempt (`x-envoy-max-retries`).
    pub max_retries: u32,
    /// `x-envoy-retry-on` for idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE).
    pub retry_on: String,
    /// `x-envoy-retry-on` for other methods: only conditions where the upstream never saw the
    /// request. Envoy adds these to the route's own retry policy, never narrows it
    /// (docs/resilience.md); `""` sends no retries for them.
    pub retry_on_non_idempotent: String,
    /// `x-envoy-upstream-rq-per-try-timeout-ms`; unset: each try may use the whole timeout.
    pub per_try_timeout: Option<ConfigDuration>,
    /// Retry budget; unset (the default): every request may retry. Costs two shared-data
    /// writes per request. Set it under Istio: Envoy's own cap on concurrent retries (the
    /// cluster's `max_retries` circuit-breaker threshold, 3) is lifted to the maximum on every
    /// cluster Istio generates unless a DestinationRule sets one.
    pub budget: Option<RetryBudgetConfig>,
    /// Keep `x-envoy-*` retry and timeout headers the client sent (only behind a trusted
    /// hop); by default they are removed and the plugin's own are set.
    pub trust_client_headers: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 3,
            retry_on: "connect-failure,refused-stream,reset,gateway-error".to_owned(),
            retry_on_non_idempotent: "connect-failure,refused-stream".to_owned(),
            per_try_timeout: None,
            budget: None,
            trust_client_headers: false,
        }
    }
}

/// Retries are granted to at most this share of the requests in flight (shared across
/// workers); the rest go out with `x-envoy-max-retries: 0`. Envoy's retry-budget defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetConfig {
    pub percent: u8,
    /// Requests that may always retry, however few are in flight.
    pub min_concurrency: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            percent: 20,
            min_concurrency: 3,
        }
    }
}

/// Upstream timeouts, and the client's deadline.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    /// Timeout of an ordinary request.
    pub default: ConfigDuration,
    /// Timeout of a long-running query route.
    pub long_running: ConfigDuration,
    /// Path prefixes of the long-running routes.
    pub long_running_prefixes: Vec<String>,
    /// A request header carrying the client's deadline as Unix epoch milliseconds. A deadline
    /// already passed gets 504 without reaching the upstream; a later one caps the timeout.
    pub deadline_header: Option<String>,
    /// The router's timeout on a request whose deadline capped its timeout below this counts
    /// as neither success nor failure for the circuit: a client's haste, not the upstream's
    /// failure (else a 1 ms deadline would open the circuit for everyone). From this on, it
    /// counts, so a hung upstream still opens the circuit for callers that pass deadlines on.
    pub deadline_counted_from: ConfigDuration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            default: ConfigDuration::from_secs(60),
            long_running: ConfigDuration::from_secs(3600),
            long_running_prefixes: Vec::new(),
            deadline_header: None,
            deadline_counted_from: ConfigDuration::from_secs(1),
        }
    }
}

/// Fault injection for chaos tests. Off unless a section is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    pub abort: Option<AbortFault>,
    pub delay: Option<DelayFault>,
    /// Only requests carrying this header are eligible.
    pub only_with_header: Option<String>,
    /// With `only_with_header`: the value the header must have. Without one any client that
    /// sends the header is eligible, and an injected delay holds its concurrency slot (and a
    /// half-open trial) while it waits: set a value only the chaos tooling knows.
    pub only_with_header_value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AbortFault {
    pub status: u16,
    /// Share of eligible requests aborted, 0–100 (fractions allowed: 0.5).
    pub percent: Percent,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DelayFault {
    pub duration: ConfigDuration,
    pub percent: Percent,
}

/// A percentage with up to two decimals, kept as hundredths of a percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[schemars(with = "f64")]
pub struct Percent(pub u32);

impl Percent {
    /// 100% in hundredths.
    pub const WHOLE: u32 = 10_000;
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor, so that a refused value is an error of the number being read: the
        // deserializer then knows where it is (`config::load` names the field from that).
        struct Number;
        impl serde::de::Visitor<'_> for Number {
            type Value = Percent;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("f64")
            }
            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Percent, E> {
                if !(0.0..=100.0).contains(&value) {
                    return Err(E::custom(format!(
                        "{value} is not a percentage between 0 and 100"
                    )));
                }
                // Bounded above, so the cast cannot truncate.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Ok(Percent((value * 100.0).round() as u32))
            }
            #[allow(clippy::cast_precision_loss)]
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Percent, E> {
                self.visit_f64(value as f64)
            }
            #[allow(clippy::cast_precision_loss)]
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Percent, E> {
                self.visit_f64(value as f64)
            }
        }
        deserializer.deserialize_f64(Number)
    }
}

/// `x-envoy-retry-on` conditions Envoy's router knows.
const RETRY_CONDITIONS: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
];

fn check_retry_on(p: &mut Problems, field: &str, value: &str) {
    if value.is_empty() {
        return;
    }
    // Envoy trims the spaces around each condition.
    for condition in value.split(',').map(str::trim) {
        if !RETRY_CONDITIONS.contains(&condition) {
            p.push_at(
                field,
                format!("unknown retry condition {condition:?} (Envoy's x-envoy-retry-on values)"),
            );
            return;
        }
    }
}

fn check_header(p: &mut Problems, field: &str, name: &Option<String>) {
    if let Some(name) = name {
        if !is_header_name(name) || name.bytes().any(|b| b.is_ascii_uppercase()) {
            p.push_at(field, "must be a lower-case header name");
        }
    }
}

/// Why `fault.delay` is refused on Kong (by `proxy: kong`, and by the filter on Kong).
pub const KONG_NO_DELAY: &str =
    "not available on Kong: ngx_wasm_module cannot resume a request from a timer";

impl PluginConfig for ResilienceConfig {
    fn validate(&self, problems: &mut Problems) {
        problems.field("circuit_breaker", |p| {
            let cb = &self.circuit_breaker;
            if cb
                .key
                .as_ref()
                .is_some_and(|k| k.is_empty() || k.len() > 200)
            {
                p.push_at("key", "must be 1 to 200 characters");
            }
            if cb.consecutive_failures == 0 {
                p.push_at("consecutive_failures", "must be at least 1");
            }
            if cb.base_ejection.get().is_zero() {
                p.push_at("base_ejection", "must be longer than 0s");
            }
            if cb.max_ejection < cb.base_ejection {
                p.push_at(
                    "max_ejection",
                    format!("must be at least base_ejection ({})", cb.base_ejection),
                );
            }
            if cb.half_open_trials == 0 || cb.half_open_trials > 100 {
                p.push_at("half_open_trials", "must be between 1 and 100");
            }
            if let Some(rate) = &cb.failure_rate {
                p.field("failure_rate", |p| {
                    if rate.threshold_percent == 0 || rate.threshold_percent > 100 {
                        p.push_at("threshold_percent", "must be between 1 and 100");
                    }
                    if rate.window.get() < Duration::from_millis(100) {
                        p.push_at("window", "must be at least 100ms");
                    }
                    if rate.minimum_requests == 0 {
                        p.push_at("minimum_requests", "must be at least 1");
                    }
                });
            }
        });
        problems.field("concurrency", |p| {
            if self.concurrency.max_requests == Some(0) {
                p.push_at("max_requests", "must be at least 1 (unset it for no limit)");
            }
            if self.concurrency.retry_after.get() < Duration::from_secs(1) {
                p.push_at(
                    "retry_after",
                    "must be at least 1s (Retry-After counts seconds)",
                );
            }
            let lease = self.concurrency.lease.get();
            if lease < Duration::from_secs(3) || lease > Duration::from_secs(3600) {
                p.push_at("lease", "must be between 3s and 1h");
            }
        });
        problems.field("retry", |p| {
            let retry = &self.retry;
            if retry.max_retries > 10 {
                p.push_at("max_retries", "must be at most 10");
            }
            check_retry_on(p, "retry_on", &retry.retry_on);
            check_retry_on(p, "retry_on_non_idempotent", &retry.retry_on_non_idempotent);
            if retry.per_try_timeout.is_some_and(|t| t.get().is_zero()) {
                p.push_at("per_try_timeout", "must be longer than 0s");
            } else if self.proxy == Proxy::Envoy
                && retry
                    .per_try_timeout
                    .is_some_and(|t| t.get() >= self.timeouts.default.get())
            {
                // Envoy's router drops a per-try timeout not shorter than the request's.
                p.push_at(
                    "per_try_timeout",
                    format!(
                        "must be shorter than timeouts.default ({}), or Envoy ignores it",
                        self.timeouts.default
                    ),
                );
            }
            if let Some(budget) = &retry.budget {
                if budget.percent > 100 {
                    p.push_at("budget.percent", "must be between 0 and 100");
                } else if self.proxy == Proxy::Kong {
                    // It would count every request in shared data for retries Kong never makes
                    // on the plugin's word.
                    p.push_at(
                        "budget",
                        "does not apply on Kong, whose router reads no retry header: leave it unset (Kong retries per its service's `retries`)",
                    );
                }
            }
        });
        problems.field("timeouts", |p| {
            let day = Duration::from_secs(86_400);
            for (name, timeout) in [
                ("default", self.timeouts.default),
                ("long_running", self.timeouts.long_running),
            ] {
                if timeout.get().is_zero() || timeout.get() > day {
                    p.push_at(name, "must be between 1ms and 24h");
                }
            }
            if self.timeouts.deadline_counted_from.get() > Duration::from_secs(3600) {
                p.push_at("deadline_counted_from", "must be at most 1h");
            }
            for (i, prefix) in self.timeouts.long_running_prefixes.iter().enumerate() {
                if !prefix.starts_with('/') {
                    p.field("long_running_prefixes", |p| {
                        p.index(i, |p| p.push("must start with /"));
                    });
                }
            }
            check_header(p, "deadline_header", &self.timeouts.deadline_header);
        });
        problems.field("fault", |p| {
            if let Some(abort) = &self.fault.abort {
                if !(200..=599).contains(&abort.status) {
                    p.push_at("abort.status", "must be between 200 and 599");
                }
            }
            if let Some(delay) = &self.fault.delay {
                if self.proxy == Proxy::Kong {
                    // The delay resumes its request from the root's timer, which Kong cannot
                    // do (docs/kong-proxy-wasm.md, fact 18); the filter checks the host too.
                    p.push_at("delay", KONG_NO_DELAY);
                } else if delay.duration.get().is_zero()
                    || delay.duration.get() > Duration::from_secs(60)
                {
                    p.push_at("delay.duration", "must be between 1ms and 60s");
                }
            }
            check_header(p, "only_with_header", &self.fault.only_with_header);
            if let Some(value) = &self.fault.only_with_header_value {
                if self.fault.only_with_header.is_none() {
                    p.push_at("only_with_header_value", "needs only_with_header");
                } else if value.is_empty() || !palisade_kit::config::is_header_value(value) {
                    p.push_at("only_with_header_value", "must be a non-empty header value");
                }
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
    fn defaults_are_the_platforms() {
        let config: ResilienceConfig = load(b"").unwrap();
        assert_eq!(config.proxy, Proxy::Envoy);
        assert!(config.circuit_breaker.enabled);
        assert_eq!(config.circuit_breaker.consecutive_failures, 5);
        assert_eq!(
            config.circuit_breaker.base_ejection.get(),
            Duration::from_secs(30)
        );
        assert_eq!(config.retry.max_retries, 3);
        assert_eq!(config.timeouts.default.get(), Duration::from_secs(60));
        assert_eq!(
            config.timeouts.long_running.get(),
            Duration::from_secs(3600)
        );
        assert_eq!(config.fault, FaultConfig::default());
        assert_eq!(config.concurrency.max_requests, None);
    }

    #[test]
    fn a_partial_section_keeps_the_other_defaults() {
        let config: ResilienceConfig =
            load(br#"{"circuit_breaker":{"consecutive_failures":3}}"#).unwrap();
        assert_eq!(config.circuit_breaker.consecutive_failures, 3);
        assert_eq!(
            config.circuit_breaker.base_ejection.get(),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn percentages_keep_two_decimals() {
        let config: ResilienceConfig =
            load(br#"{"fault":{"abort":{"status":503,"percent":12.5}}}"#).unwrap();
        assert_eq!(config.fault.abort.unwrap().percent, Percent(1250));
        let err =
            load::<ResilienceConfig>(br#"{"fault":{"delay":{"duration":"1s","percent":101}}}"#)
                .unwrap_err();
        assert!(err.to_string().contains("101 is not a percentage"), "{err}");
    }

    /// Kong cannot resume a request from a timer: `palisade validate` refuses a delay for it,
    /// as the filter does on Kong whatever `proxy` says.
    #[test]
    fn a_delay_is_refused_for_kong() {
        let err = load::<ResilienceConfig>(
            br#"{"proxy":"kong","circuit_breaker":{"key":"orders"},"fault":{"delay":{"duration":"1s","percent":1}}}"#,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), format!("fault.delay: {KONG_NO_DELAY}"));
        load::<ResilienceConfig>(br#"{"fault":{"delay":{"duration":"1s","percent":1}}}"#).unwrap();
    }

    #[test]
    fn the_slot_lease_is_bounded() {
        for lease in ["2s", "61m"] {
            let json = format!(r#"{{"concurrency":{{"lease":"{lease}"}}}}"#);
            let err = load::<ResilienceConfig>(json.as_bytes()).unwrap_err();
            assert_eq!(
                err.to_string(),
                "concurrency.lease: must be between 3s and 1h"
            );
        }
        let config: ResilienceConfig = load(br#"{"concurrency":{"lease":"3s"}}"#).unwrap();
        assert_eq!(config.concurrency.lease.get(), Duration::from_secs(3));
    }

    #[test]
    fn a_misspelt_field_is_refused() {
        let err = load::<ResilienceConfig>(br#"{"circuit_breaker":{"consecutive_failure":3}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("consecutive_failure"), "{err}");
    }

    #[test]
    fn a_per_try_timeout_envoy_would_ignore_is_refused() {
        let err = load::<ResilienceConfig>(
            br#"{"retry":{"per_try_timeout":"60s"},"timeouts":{"default":"60s"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "retry.per_try_timeout: must be shorter than timeouts.default (1m), or Envoy ignores it"
        );
        let config: ResilienceConfig =
            load(br#"{"retry":{"per_try_timeout":"59s"},"timeouts":{"default":"1m"}}"#).unwrap();
        assert!(config.retry.per_try_timeout.is_some());
    }

    #[test]
    fn retry_conditions_may_be_spaced_as_envoy_reads_them() {
        let config: ResilienceConfig =
            load(br#"{"retry":{"retry_on":"connect-failure, refused-stream"}}"#).unwrap();
        assert_eq!(config.retry.retry_on, "connect-failure, refused-stream");
    }

    #[test]
    fn a_per_try_timeout_is_checked_against_envoys_timeout_only_on_envoy() {
        load::<ResilienceConfig>(
            br#"{"proxy":"kong","retry":{"per_try_timeout":"60s"},"timeouts":{"default":"60s"}}"#,
        )
        .unwrap();
    }

    #[test]
    fn a_retry_budget_on_kong_is_refused() {
        let err =
            load::<ResilienceConfig>(br#"{"proxy":"kong","retry":{"budget":{}}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "retry.budget: does not apply on Kong, whose router reads no retry header: leave it unset (Kong retries per its service's `retries`)"
        );
        load::<ResilienceConfig>(br#"{"retry":{"budget":{}}}"#).unwrap();
    }

    #[test]
    fn inconsistent_policy_is_refused() {
        let err = load::<ResilienceConfig>(
            br#"{"circuit_breaker":{"consecutive_failures":0,"base_ejection":"1m","max_ejection":"30s"},
                 "retry":{"max_retries":11,"retry_on":"5xx,sometimes"},"timeouts":{"default":"0s"},
                 "concurrency":{"max_requests":0},"fault":{"abort":{"status":42,"percent":1}}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "circuit_breaker.consecutive_failures: must be at least 1; \
             circuit_breaker.max_ejection: must be at least base_ejection (1m); \
             concurrency.max_requests: must be at least 1 (unset it for no limit); \
             retry.max_retries: must be at most 10; \
             retry.retry_on: unknown retry condition \"sometimes\" (Envoy's x-envoy-retry-on values); \
             timeouts.default: must be between 1ms and 24h; \
             fault.abort.status: must be between 200 and 599"
        );
    }
}
