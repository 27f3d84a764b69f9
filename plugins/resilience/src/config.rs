//! palisade-resilience's configuration, with the platform's defaults.

use std::time::Duration;

use palisade_kit::config::{PluginConfig, Problems};
use palisade_kit::duration::ConfigDuration;
use schemars::JsonSchema;
use serde::Deserialize;

/// palisade-resilience configuration. Every section has the platform's defaults.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResilienceConfig {
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
}

/// When a circuit opens, and for how long.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    /// Consecutive failures that open the circuit.
    pub consecutive_failures: u32,
    /// How long the circuit stays open the first time; each consecutive opening lasts longer.
    pub base_ejection: ConfigDuration,
    /// The longest an opening lasts.
    pub max_ejection: ConfigDuration,
    /// At most this share of a cluster's endpoints is ejected at once (percent).
    pub max_ejected_percent: u8,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: ConfigDuration::from_secs(30),
            max_ejection: ConfigDuration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// The retry policy set on each request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff interval; doubles each retry, with jitter.
    pub base_interval: ConfigDuration,
    /// Backoff never grows beyond this.
    pub max_interval: ConfigDuration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 3,
            base_interval: ConfigDuration::from_millis(25),
            max_interval: ConfigDuration::from_millis(250),
        }
    }
}

/// Upstream timeouts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    /// Timeout of an ordinary request.
    pub default: ConfigDuration,
    /// Timeout of a long-running query route.
    pub long_running: ConfigDuration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            default: ConfigDuration::from_secs(60),
            long_running: ConfigDuration::from_secs(3600),
        }
    }
}

impl PluginConfig for ResilienceConfig {
    fn validate(&self, problems: &mut Problems) {
        problems.field("circuit_breaker", |p| {
            let cb = &self.circuit_breaker;
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
            if cb.max_ejected_percent > 100 {
                p.push_at("max_ejected_percent", "must be between 0 and 100");
            }
        });
        problems.field("retry", |p| {
            let retry = &self.retry;
            if retry.max_retries > 10 {
                p.push_at("max_retries", "must be at most 10");
            }
            if retry.base_interval.get().is_zero() {
                p.push_at("base_interval", "must be longer than 0s");
            }
            if retry.max_interval < retry.base_interval {
                p.push_at(
                    "max_interval",
                    format!("must be at least base_interval ({})", retry.base_interval),
                );
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
        assert_eq!(config.circuit_breaker.consecutive_failures, 5);
        assert_eq!(
            config.circuit_breaker.base_ejection.get(),
            Duration::from_secs(30)
        );
        assert_eq!(config.circuit_breaker.max_ejected_percent, 50);
        assert_eq!(config.retry.max_retries, 3);
        assert_eq!(config.timeouts.default.get(), Duration::from_secs(60));
        assert_eq!(
            config.timeouts.long_running.get(),
            Duration::from_secs(3600)
        );
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
    fn inconsistent_policy_is_refused() {
        let err = load::<ResilienceConfig>(
            br#"{"circuit_breaker":{"consecutive_failures":0,"base_ejection":"1m","max_ejection":"30s","max_ejected_percent":101},
                 "retry":{"max_retries":11},"timeouts":{"default":"0s"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "circuit_breaker.consecutive_failures: must be at least 1; \
             circuit_breaker.max_ejection: must be at least base_ejection (1m); \
             circuit_breaker.max_ejected_percent: must be between 0 and 100; \
             retry.max_retries: must be at most 10; timeouts.default: must be between 1ms and 24h"
        );
    }
}
