//! End-to-end tests in real Envoy: one Envoy (V8 runtime, 2 workers) with a chain of Palisade
//! plugins in front of the echo upstream, stopped when the test ends, pass or fail.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use palisade::envoy::{self, Bootstrap, EnvoyError, EnvoyProcess, Filter};
use palisade::upstream::EchoUpstream;

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Where `just build` puts the plugins; fails the test when they are not built.
pub fn wasm_dir() -> PathBuf {
    let dir = workspace().join("target/wasm32-wasip1/release");
    for plugin in &palisade::plugins::ALL {
        let wasm = dir.join(plugin.wasm_file);
        assert!(
            wasm.is_file(),
            "{} is missing: run `just build` first",
            wasm.display()
        );
    }
    dir
}

/// Polls `done` every 50 ms until it holds; fails the test naming `what` after `limit`. For
/// effects Envoy applies asynchronously (config updates, reloads), never for timing claims.
pub fn eventually(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Worker threads every test Envoy runs, so cross-worker behaviour is really exercised.
pub const WORKERS: u32 = 2;

/// A request body.
pub enum Body {
    None,
    /// Sent with `Content-Length`.
    Bytes(Vec<u8>),
    /// Sent with `Transfer-Encoding: chunked`, no length announced.
    Chunked(Vec<u8>),
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Envoy and its upstream, for one test.
pub struct EnvoyTest {
    pub envoy: EnvoyProcess,
    pub upstream: EchoUpstream,
    agent: ureq::Agent,
    bootstrap: Bootstrap,
    dir: tempfile::TempDir,
}

impl EnvoyTest {
    /// Starts Envoy with these filters; the test fails (with Envoy's log) if it does not start.
    pub fn start(filters: Vec<Filter>) -> Self {
        match Self::try_start(filters) {
            Ok(test) => test,
            Err(err) => panic!("Envoy did not start: {err}"),
        }
    }

    /// Starts Envoy with these filters, or says why it did not start.
    pub fn try_start(filters: Vec<Filter>) -> Result<Self, EnvoyError> {
        Self::try_start_with(filters, Vec::new(), serde_json::json!({}))
    }

    /// Starts Envoy with Envoy's own filters in front of the Palisade ones (and their
    /// per-route configs); the test fails if it does not start.
    pub fn start_with_native(
        filters: Vec<Filter>,
        native_filters: Vec<serde_json::Value>,
        route_filter_configs: serde_json::Value,
    ) -> Self {
        match Self::try_start_with(filters, native_filters, route_filter_configs) {
            Ok(test) => test,
            Err(err) => panic!("Envoy did not start: {err}"),
        }
    }

    fn try_start_with(
        filters: Vec<Filter>,
        native_filters: Vec<serde_json::Value>,
        route_filter_configs: serde_json::Value,
    ) -> Result<Self, EnvoyError> {
        let upstream = EchoUpstream::start(0).map_err(EnvoyError::Spawn)?;
        let dir = tempfile::tempdir().map_err(EnvoyError::Spawn)?;
        let bootstrap = Bootstrap {
            listen_port: 0,
            upstream: upstream.addr(),
            wasm_dir: wasm_dir(),
            filters,
            native_filters,
            route_filter_configs,
        };
        let binary = envoy::default_binary(&workspace());
        let envoy = EnvoyProcess::start(&binary, &bootstrap, dir.path(), WORKERS)?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Ok(Self {
            envoy,
            upstream,
            agent,
            bootstrap,
            dir,
        })
    }

    /// Delivers a new config for a discovered (ECDS) filter, as Istio does when a `WasmPlugin`
    /// changes: the discovery file is replaced in one rename, which Envoy watches for.
    pub fn push_discovered(&self, filter: &Filter) {
        let target = Bootstrap::discovery_file(self.dir.path(), filter);
        let staging = target.with_extension("staging");
        std::fs::write(
            &staging,
            self.bootstrap.discovery_response(filter).to_string(),
        )
        .unwrap_or_else(|err| panic!("write {}: {err}", staging.display()));
        std::fs::rename(&staging, &target)
            .unwrap_or_else(|err| panic!("rename to {}: {err}", target.display()));
    }

    /// A GET through Envoy with extra request headers.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", path, headers, Body::None)
    }

    /// Any request through Envoy.
    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Body) -> Reply {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(self.envoy.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let result = match body {
            Body::None => request.body(()).map(|r| self.agent.run(r)),
            Body::Bytes(bytes) => request.body(bytes).map(|r| self.agent.run(r)),
            Body::Chunked(bytes) => request
                .body(ureq::SendBody::from_owned_reader(std::io::Cursor::new(
                    bytes,
                )))
                .map(|r| self.agent.run(r)),
        };
        let mut response = result
            .unwrap_or_else(|err| panic!("bad request {method} {path}: {err}"))
            .unwrap_or_else(|err| {
                panic!(
                    "{method} {path} through Envoy failed: {err}\n{}",
                    self.envoy.log()
                )
            });
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Waits up to `limit` for `needle` to appear in Envoy's log.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.envoy.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Lines of Envoy's log that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.envoy
            .log()
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for EnvoyTest {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- Envoy log ----\n{}", self.envoy.log());
        }
    }
}
