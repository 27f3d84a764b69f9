//! End-to-end tests in real Envoy: one Envoy (V8 runtime, 2 workers) with a chain of Palisade
//! plugins in front of the echo upstream, stopped when the test ends, pass or fail.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use palisade::envoy::{self, Bootstrap, Delivery, EnvoyError, EnvoyProcess, Filter};
use palisade::upstream::EchoUpstream;
use serde_json::Value;

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

/// The plugins as Envoy gets them (`palisade::envoy_module`: without the callbacks each does
/// nothing in), written once per test process under `target/wasm32-wasip1/release/envoy`.
pub fn envoy_wasm_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let built = wasm_dir();
        palisade::envoy_module::write_envoy_builds(&built, &built.join("envoy"))
    })
    .clone()
    .unwrap_or_else(|err| panic!("the Envoy builds: {err}"))
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

    /// Starts Envoy with these filters after `edit` changed its bootstrap (HTTP connection
    /// manager options through [`hcm`], extra clusters); the test fails if it does not start.
    pub fn start_edited(filters: Vec<Filter>, edit: impl FnOnce(&mut Value)) -> Self {
        match Self::try_start_edited(filters, Vec::new(), serde_json::json!({}), edit) {
            Ok(test) => test,
            Err(err) => panic!("Envoy did not start: {err}"),
        }
    }

    fn try_start_with(
        filters: Vec<Filter>,
        native_filters: Vec<serde_json::Value>,
        route_filter_configs: serde_json::Value,
    ) -> Result<Self, EnvoyError> {
        Self::launch(
            filters,
            native_filters,
            route_filter_configs,
            |binary, bootstrap, dir| EnvoyProcess::start(binary, bootstrap, dir, WORKERS),
        )
    }

    fn try_start_edited(
        filters: Vec<Filter>,
        native_filters: Vec<serde_json::Value>,
        route_filter_configs: serde_json::Value,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Self, EnvoyError> {
        Self::launch(
            filters,
            native_filters,
            route_filter_configs,
            |binary, bootstrap, dir| {
                for filter in &bootstrap.filters {
                    if filter.delivery == Delivery::Discovered {
                        let path = Bootstrap::discovery_file(dir, filter);
                        std::fs::write(&path, bootstrap.discovery_response(filter).to_string())
                            .map_err(|source| EnvoyError::Files { path, source })?;
                    }
                }
                let mut config = bootstrap.to_json(dir);
                edit(&mut config);
                EnvoyProcess::start_config(binary, &config, dir, WORKERS)
            },
        )
    }

    fn launch(
        filters: Vec<Filter>,
        native_filters: Vec<serde_json::Value>,
        route_filter_configs: serde_json::Value,
        start: impl FnOnce(&Path, &Bootstrap, &Path) -> Result<EnvoyProcess, EnvoyError>,
    ) -> Result<Self, EnvoyError> {
        let upstream = EchoUpstream::start(0).map_err(EnvoyError::Spawn)?;
        let dir = tempfile::tempdir().map_err(EnvoyError::Spawn)?;
        let bootstrap = Bootstrap {
            listen_port: 0,
            upstream: upstream.addr(),
            wasm_dir: envoy_wasm_dir(),
            filters,
            native_filters,
            route_filter_configs,
        };
        let binary = envoy::default_binary(&workspace());
        let envoy = start(binary.as_path(), &bootstrap, dir.path())?;
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
        // A body that cannot be read (cut short, too large) is a failure, not an empty body.
        let body = response.body_mut().read_to_vec().unwrap_or_else(|err| {
            panic!(
                "{method} {path}: reading the {status} answer's body failed: {err}\n{}",
                self.envoy.log()
            )
        });
        let body = String::from_utf8_lossy(&body).into_owned();
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

impl EnvoyTest {
    /// Sends `request` as written, byte for byte, on a fresh connection (so it may carry what
    /// no HTTP library sends: invalid UTF-8, unknown methods, raw path tricks) and reads the
    /// answer until Envoy closes the connection. Put `connection: close` in the request.
    pub fn raw(&self, request: &[u8]) -> RawReply {
        raw_exchange(self.envoy.port(), request)
            .unwrap_or_else(|err| panic!("raw request failed: {err}\n{}", self.envoy.log()))
    }

    /// A GET of `path` exactly as written (no normalisation by a client library), with extra
    /// header lines.
    pub fn raw_get(&self, path: &str, headers: &[(&str, &str)]) -> RawReply {
        let mut request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("connection: close\r\n\r\n");
        self.raw(request.as_bytes())
    }

    /// A counter or gauge of Envoy's admin `/stats`, by its full name.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let prefix = format!("{name}: ");
        self.envoy
            .stats()
            .lines()
            .find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
    }
}

/// An HTTP/1.1 answer read off the wire.
#[derive(Debug, Clone)]
pub struct RawReply {
    pub status: u16,
    /// Names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How long a raw exchange may take before the test calls it hung (generous: a loaded 2-core
/// machine).
pub const RAW_TIMEOUT: Duration = Duration::from_secs(20);

/// Writes `request` to `127.0.0.1:port` and reads the whole answer (to EOF). Only the first
/// response on the connection is parsed.
pub fn raw_exchange(port: u16, request: &[u8]) -> std::io::Result<RawReply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(RAW_TIMEOUT))?;
    stream.set_write_timeout(Some(RAW_TIMEOUT))?;
    stream.write_all(request)?;
    let mut bytes = Vec::new();
    // A reset after the answer (Envoy closing on a refused request) still leaves the answer.
    // A timeout does not, nor a body shorter than its Content-Length (parse_response).
    if let Err(err) = stream.read_to_end(&mut bytes) {
        let reset = matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        );
        if bytes.is_empty() || !reset {
            return Err(err);
        }
    }
    parse_response(&bytes).ok_or_else(|| {
        std::io::Error::other(format!(
            "not an HTTP response: {:?}",
            String::from_utf8_lossy(&bytes)
        ))
    })
}

fn parse_response(bytes: &[u8]) -> Option<RawReply> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(bytes.get(..end)?).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = bytes.get(end + 4..)?;
    let body = match headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        // Cut short: not a whole response.
        Some(len) => rest.get(..len)?.to_vec(),
        None => rest.to_vec(),
    };
    Some(RawReply {
        status,
        headers,
        body,
    })
}

/// The HTTP connection manager's typed config in a bootstrap from [`Bootstrap::to_json`], to set
/// its options (`normalize_path`, `use_remote_address`, ...).
pub fn hcm(config: &mut Value) -> &mut Value {
    &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]
}

impl Drop for EnvoyTest {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- Envoy log ----\n{}", self.envoy.log());
        }
    }
}

/// A cluster of one loopback endpoint at `port`.
pub fn static_cluster(name: &str, port: u16) -> Value {
    serde_json::json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1",
                "port_value": port,
            }}}}]}],
        },
    })
}

/// How a fault test breaks the cluster a plugin calls out to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BrokenUpstream {
    /// A cluster with no endpoint at all (Envoy answers "no healthy upstream" at once).
    NoEndpoints,
    /// Its one endpoint is a port nothing listens on (connection refused).
    DeadPort,
    /// Its one endpoint accepts connections and never answers (only the timeout ends it).
    Silent,
}

impl BrokenUpstream {
    pub const ALL: [BrokenUpstream; 3] = [Self::NoEndpoints, Self::DeadPort, Self::Silent];

    /// The cluster `name`, broken this way.
    pub fn cluster(self, name: &str) -> Value {
        match self {
            Self::NoEndpoints => serde_json::json!({
                "name": name,
                "type": "STATIC",
                "connect_timeout": "0.25s",
                "load_assignment": {"cluster_name": name, "endpoints": []},
            }),
            Self::DeadPort => static_cluster(
                name,
                crate::ratelimit_server::free_port().expect("a free loopback port"),
            ),
            Self::Silent => static_cluster(name, silent_port()),
        }
    }
}

/// A loopback port that accepts every connection and never answers; lives for the test.
pub fn silent_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}
