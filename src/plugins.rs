//! The five plugins as the CLI and the test harnesses know them: names, built artifact, where
//! they sit in the chain, and their config types (through schema and validation functions, so
//! the CLI validates with exactly the code the plugin runs).

use palisade_kit::config::{self, ConfigError, PluginConfig, Tree};

/// One Palisade plugin.
#[derive(Debug)]
pub struct PluginInfo {
    /// Short name: `auth`, `rate-limit`, ...
    pub name: &'static str,
    /// `palisade-auth`, ...: the crate, the Envoy filter/root id and the log prefix.
    pub full_name: &'static str,
    /// File name under `target/wasm32-wasip1/release/`.
    pub wasm_file: &'static str,
    /// The stream callbacks the plugin does nothing in, left out of its Envoy build
    /// ([`crate::envoy_module`]). `proxy_on_done` is also the root context's: audit keeps it.
    pub envoy_unused: &'static [&'static str],
    /// Istio `WasmPlugin` phase (`None`: unspecified, just before the router).
    pub istio_phase: Option<&'static str>,
    /// The side of a sidecar the plugin runs on (`match: [{mode: ...}]`): `SERVER`, the
    /// workload's inbound traffic, or `CLIENT`, its calls to other services. Without it Istio
    /// installs the filter on both, and every plugin also ran on the app's outbound calls.
    /// Gateways are `CLIENT` to Istio: their manifests name no mode.
    pub istio_sidecar_mode: &'static str,
    /// Keeps cross-worker state in proxy-wasm shared data whatever its configuration
    /// (rate-limit's counters, resilience's circuits): on Kong that needs the shm_kv zone
    /// `palisade` that kong.conf defines (see [`crate::render::kong_shm_kv_zone`]).
    pub shared_state: bool,
    /// A working example configuration (also the demo's).
    pub example_config: &'static str,
    schema: fn() -> serde_json::Value,
    validate: fn(&Tree) -> Result<(), ConfigError>,
}

impl PluginInfo {
    /// The plugin's configuration in `palisade run`'s demo: its example, except that auth lets
    /// a request without credentials through (the example refuses it, as a deployment should),
    /// so the demo's plain `curl`s reach the upstream, and audit ships to the demo upstream.
    pub fn demo_config(&self) -> String {
        let Ok(serde_json::Value::Object(mut config)) =
            serde_json::from_str::<serde_json::Value>(self.example_config)
        else {
            return self.example_config.to_owned();
        };
        match self.name {
            "auth" => {
                config.insert("allow_missing".to_owned(), serde_json::Value::Bool(true));
            }
            // The example ships to a Kafka REST proxy's cluster, which the demo's Envoy does
            // not have: its batches go to the demo upstream instead (it answers 200).
            "audit" => {
                if let Some(sink) = config
                    .get_mut("sink")
                    .and_then(|sink| sink.get_mut("kafka_rest"))
                    .and_then(serde_json::Value::as_object_mut)
                {
                    sink.insert("upstream".to_owned(), crate::envoy::UPSTREAM_CLUSTER.into());
                }
            }
            _ => return self.example_config.to_owned(),
        }
        serde_json::Value::Object(config).to_string()
    }

    /// The JSON Schema of the plugin's configuration.
    pub fn schema(&self) -> serde_json::Value {
        (self.schema)()
    }

    /// The plugin's Envoy build of its `module` as built: without the callbacks it does nothing
    /// in. Kong takes the module as built.
    pub fn envoy_build(&self, module: &[u8]) -> Result<Vec<u8>, crate::envoy_module::ModuleError> {
        crate::envoy_module::without_callbacks(module, self.envoy_unused)
    }

    /// Validates a configuration exactly as the plugin's `on_configure` does.
    pub fn validate(&self, config: &Tree) -> Result<(), ConfigError> {
        (self.validate)(config)
    }
}

fn validate<T: PluginConfig>(config: &Tree) -> Result<(), ConfigError> {
    config::load_tree::<T>(config).map(drop)
}

/// Every plugin, in the order they run in a full chain (edge first).
pub const ALL: [PluginInfo; 5] = [
    PluginInfo {
        name: "header-security",
        full_name: "palisade-header-security",
        wasm_file: "palisade_header_security.wasm",
        envoy_unused: &[
            "proxy_on_request_trailers",
            "proxy_on_response_body",
            "proxy_on_response_trailers",
            "proxy_on_log",
            "proxy_on_done",
        ],
        istio_phase: Some("AUTHN"),
        istio_sidecar_mode: "SERVER",
        shared_state: false,
        example_config: include_str!("../manifests/examples/header-security.json"),
        schema: config::schema::<palisade_header_security::config::HeaderSecurityConfig>,
        validate: validate::<palisade_header_security::config::HeaderSecurityConfig>,
    },
    PluginInfo {
        name: "auth",
        full_name: "palisade-auth",
        wasm_file: "palisade_auth.wasm",
        // Every optional one: auth decides in the request headers and is done.
        envoy_unused: &crate::envoy_module::OPTIONAL_CALLBACKS,
        istio_phase: Some("AUTHN"),
        istio_sidecar_mode: "SERVER",
        shared_state: false,
        example_config: include_str!("../manifests/examples/auth.json"),
        schema: config::schema::<palisade_auth::config::AuthConfig>,
        validate: validate::<palisade_auth::config::AuthConfig>,
    },
    PluginInfo {
        name: "rate-limit",
        full_name: "palisade-rate-limit",
        wasm_file: "palisade_rate_limit.wasm",
        envoy_unused: &[
            "proxy_on_request_body",
            "proxy_on_request_trailers",
            "proxy_on_response_body",
            "proxy_on_response_trailers",
            "proxy_on_log",
            "proxy_on_done",
        ],
        istio_phase: Some("AUTHZ"),
        istio_sidecar_mode: "SERVER",
        shared_state: true,
        example_config: include_str!("../manifests/examples/rate-limit.json"),
        schema: config::schema::<palisade_rate_limit::config::RateLimitConfig>,
        validate: validate::<palisade_rate_limit::config::RateLimitConfig>,
    },
    PluginInfo {
        name: "resilience",
        full_name: "palisade-resilience",
        wasm_file: "palisade_resilience.wasm",
        // The stream ends (slots back) in on_done, which Envoy calls for every stream after
        // the access log. The response trailers carry a gRPC call's status.
        envoy_unused: &[
            "proxy_on_request_body",
            "proxy_on_request_trailers",
            "proxy_on_response_body",
            "proxy_on_log",
        ],
        istio_phase: None,
        // Circuits per upstream cluster, retries and timeouts for the router, client-side
        // faults: the caller's side, as Istio's own retries and faults (VirtualService).
        istio_sidecar_mode: "CLIENT",
        shared_state: true,
        example_config: include_str!("../manifests/examples/resilience.json"),
        schema: config::schema::<palisade_resilience::config::ResilienceConfig>,
        validate: validate::<palisade_resilience::config::ResilienceConfig>,
    },
    PluginInfo {
        name: "audit",
        full_name: "palisade-audit",
        wasm_file: "palisade_audit.wasm",
        envoy_unused: &[
            "proxy_on_request_body",
            "proxy_on_request_trailers",
            "proxy_on_response_body",
            "proxy_on_response_trailers",
        ],
        istio_phase: Some("STATS"),
        istio_sidecar_mode: "SERVER",
        shared_state: false,
        example_config: include_str!("../manifests/examples/audit.json"),
        schema: config::schema::<palisade_audit::config::AuditConfig>,
        validate: validate::<palisade_audit::config::AuditConfig>,
    },
];

/// Finds a plugin by short (`auth`) or full (`palisade-auth`) name.
pub fn find(name: &str) -> Option<&'static PluginInfo> {
    ALL.iter().find(|p| p.name == name || p.full_name == name)
}

/// The short names, for error messages.
pub fn names() -> String {
    ALL.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_config_is_valid() {
        for plugin in &ALL {
            let config: Tree = serde_json::from_str(plugin.example_config).unwrap();
            plugin
                .validate(&config)
                .unwrap_or_else(|err| panic!("{}: {err}", plugin.name));
        }
    }

    #[test]
    fn finds_by_either_name() {
        assert_eq!(find("auth").unwrap().full_name, "palisade-auth");
        assert_eq!(find("palisade-rate-limit").unwrap().name, "rate-limit");
        assert!(find("waf").is_none());
    }

    #[test]
    fn every_schema_refuses_unknown_fields() {
        for plugin in &ALL {
            assert_eq!(
                plugin.schema()["additionalProperties"],
                serde_json::json!(false),
                "{}",
                plugin.name
            );
        }
    }
}
