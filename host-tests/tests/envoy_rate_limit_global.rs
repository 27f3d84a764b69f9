//! palisade-rate-limit's global mode in real Envoy (V8, 2 workers) against a loopback
//! rate-limit service counting in a real `redis-server` (host-tests/src/ratelimit_server.rs):
//! over gRPC (the plugin's `dispatch_grpc_call` to an HTTP/2 cluster, Envoy's
//! `grpc_http1_reverse_bridge` handing the call to the service's HTTP/1.1 endpoint) and over
//! lyft's HTTP JSON form, exactly N of many concurrent requests on both workers are admitted;
//! with the service down, fail-open lets every request through and fail-closed answers 500.

// Test infrastructure outside any proxy: the wall clock is the right one here.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use palisade::envoy::{self, Bootstrap, EnvoyProcess, Filter};
use palisade::plugins;
use palisade::upstream::EchoUpstream;
use palisade_host_tests::envoy_harness::{
    envoy_wasm_dir, static_cluster, workspace, BrokenUpstream as Broken, WORKERS,
};
use palisade_host_tests::ratelimit_server::{
    free_port, RateLimitServer, Redis, Unit, GRPC_CONTENT_TYPE,
};
use serde_json::{json, Value};

/// The service's limit: N per day (a day, so that no test straddles a window).
const N: u32 = 15;
const THREADS: usize = 4;
const PER_THREAD: usize = 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    Grpc,
    Http,
}

struct Setup {
    envoy: EnvoyProcess,
    server: RateLimitServer,
    upstream: EchoUpstream,
    _redis: Redis,
    _dir: tempfile::TempDir,
    agent: ureq::Agent,
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The plugin's cluster, broken as `how` says.
fn broken_cluster(name: &str, how: Broken, http2: bool) -> Value {
    let mut cluster = how.cluster(name);
    if http2 {
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        });
    }
    cluster
}

/// Envoy with palisade-rate-limit asking the service over `transport`; with `service_down` the
/// service's cluster points at a port nothing listens on.
fn start(transport: Transport, failure_mode_deny: bool, service_down: bool) -> Setup {
    start_with(transport, failure_mode_deny, service_down, None, "2s")
}

/// As [`start`]; `broken` replaces the cluster the plugin calls; `timeout` is the plugin's.
fn start_with(
    transport: Transport,
    failure_mode_deny: bool,
    service_down: bool,
    broken: Option<Broken>,
    timeout: &str,
) -> Setup {
    let redis = Redis::start().expect("redis-server");
    let server = RateLimitServer::start(&redis, &[("all", N, Unit::Day)]).unwrap();
    let service_port = if service_down {
        free_port().unwrap()
    } else {
        server.addr().port()
    };
    let bridge_port = free_port().unwrap();
    let upstream = EchoUpstream::start(0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (transport_name, cluster) = match transport {
        Transport::Grpc => ("grpc", "ratelimit_grpc"),
        Transport::Http => ("http", "ratelimit_http"),
    };
    let config = json!({
        "global": {
            "domain": "e2e",
            "transport": transport_name,
            "upstream": cluster,
            "authority": "ratelimit.internal",
            "timeout": timeout,
            "failure_mode_deny": failure_mode_deny,
        },
        "limits": [{"name": "all", "mode": "global", "key": [{"constant": "all"}]}],
    });
    let plugin = plugins::find("palisade-rate-limit").unwrap();
    let bootstrap = Bootstrap {
        listen_port: 0,
        upstream: upstream.addr(),
        wasm_dir: envoy_wasm_dir(),
        filters: vec![Filter::new(plugin, config.to_string())],
        native_filters: Vec::new(),
        route_filter_configs: json!({}),
    };
    let mut envoy_config = bootstrap.to_json(dir.path());
    let resources = &mut envoy_config["static_resources"];
    let clusters = resources["clusters"].as_array_mut().unwrap();
    // The service's HTTP/1.1 endpoint, for the JSON form and behind the bridge.
    clusters.push(static_cluster("ratelimit_http", service_port));
    // The gRPC cluster the plugin dispatches to: HTTP/2 to the bridge listener below.
    let mut grpc = static_cluster("ratelimit_grpc", bridge_port);
    grpc["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        },
    });
    clusters.push(grpc);
    if let Some(how) = broken {
        for cluster in clusters.iter_mut() {
            if cluster["name"] == cluster_name_of(transport) {
                *cluster = broken_cluster(
                    cluster_name_of(transport),
                    how,
                    transport == Transport::Grpc,
                );
            }
        }
    }
    // gRPC in, HTTP/1.1 with the bare protobuf message out (and the reverse for the answer).
    resources["listeners"].as_array_mut().unwrap().push(json!({
        "name": "ratelimit_bridge",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": bridge_port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "ratelimit_bridge",
                "codec_type": "HTTP2",
                "route_config": {"virtual_hosts": [{
                    "name": "ratelimit",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "ratelimit_http"}}],
                }]},
                "http_filters": [
                    {
                        "name": "envoy.filters.http.grpc_http1_reverse_bridge",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_http1_reverse_bridge.v3.FilterConfig",
                            "content_type": GRPC_CONTENT_TYPE,
                            "withhold_grpc_frames": true,
                        },
                    },
                    {
                        "name": "envoy.filters.http.router",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                    },
                ],
            },
        }]}],
    }));
    let binary = envoy::default_binary(&workspace());
    let envoy = EnvoyProcess::start_config(&binary, &envoy_config, dir.path(), WORKERS)
        .unwrap_or_else(|err| panic!("Envoy did not start: {err}"));
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    Setup {
        envoy,
        server,
        upstream,
        _redis: redis,
        _dir: dir,
        agent,
    }
}

fn cluster_name_of(transport: Transport) -> &'static str {
    match transport {
        Transport::Grpc => "ratelimit_grpc",
        Transport::Http => "ratelimit_http",
    }
}

impl Setup {
    fn get(&self, id: &str) -> Reply {
        let mut response = self
            .agent
            .get(self.envoy.url("/orders"))
            .header("x-request-id", id)
            // A new connection per request, so both workers serve them.
            .header("connection", "close")
            .call()
            .unwrap_or_else(|err| panic!("{id}: {err}\n{}", self.envoy.log()));
        Reply {
            status: response.status().as_u16(),
            headers: response
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: response.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    fn concurrent(&self) -> Vec<Reply> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    scope.spawn(move || {
                        (0..PER_THREAD)
                            .map(|i| self.get(&format!("r-{t}-{i}")))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("client thread"))
                .collect()
        })
    }

    /// A counter from Envoy's stats (0 when absent).
    fn stat(&self, name: &str) -> u64 {
        self.envoy
            .stats()
            .lines()
            .find_map(|line| {
                let (n, value) = line.split_once(": ")?;
                (n == name).then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0)
    }

    /// Connections each worker accepted on the main listener: the one whose HTTP connection
    /// manager is `palisade` (its stats carry the configured address, which may say port 0).
    fn connections_per_worker(&self) -> Vec<u64> {
        let stats = self.envoy.stats();
        let Some(listener) = stats.lines().find_map(|line| {
            let (name, _) = line.split_once(": ")?;
            name.strip_suffix(".http.palisade.downstream_rq_completed")
        }) else {
            return Vec::new();
        };
        let prefix = format!("{listener}.worker_");
        let mut counts: Vec<u64> = stats
            .lines()
            .filter_map(|line| {
                let (n, value) = line.split_once(": ")?;
                let rest = n.strip_prefix(&prefix)?;
                rest.ends_with(".downstream_cx_total")
                    .then(|| value.trim().parse().ok())?
            })
            .collect();
        counts.sort_unstable();
        counts
    }
}

fn exactly_n_admitted(transport: Transport) {
    let setup = start(transport, false, false);
    let replies = setup.concurrent();
    let admitted: Vec<&Reply> = replies.iter().filter(|r| r.status == 200).collect();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(admitted.len(), N as usize, "{transport:?}: admitted");
    assert_eq!(
        refused.len(),
        THREADS * PER_THREAD - N as usize,
        "{transport:?}: the rest refused"
    );
    assert_eq!(setup.upstream.seen().len(), N as usize);

    let policy = format!("\"all\";q={N};w=86400");
    for reply in &admitted {
        assert_eq!(reply.header("ratelimit-policy"), Some(policy.as_str()));
        let remaining = reply
            .header("ratelimit")
            .and_then(|v| v.strip_prefix("\"all\";r="))
            .and_then(|v| v.split(';').next())
            .unwrap_or_else(|| panic!("{:?}", reply.header("ratelimit")));
        // The service's own header (its `response_headers_to_add`), as Envoy's filter adds it.
        assert_eq!(reply.header("ratelimit-remaining"), Some(remaining));
    }
    for reply in &refused {
        let retry: u64 = reply
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!((1..=86_400).contains(&retry), "retry-after {retry}");
        assert_eq!(reply.header("ratelimit-policy"), Some(policy.as_str()));
        assert_eq!(
            reply.header("ratelimit"),
            Some(format!("\"all\";r=0;t={retry}").as_str())
        );
        assert_eq!(reply.header("ratelimit-remaining"), Some("0"));
        let body: Value = serde_json::from_str(&reply.body).expect("JSON body");
        assert_eq!(body["error"], "rate limit exceeded");
        assert_eq!(body["status"], 429);
    }

    // Every request asked the service once, over the transport configured.
    let asked = setup.server.asked();
    assert_eq!(asked.len(), THREADS * PER_THREAD);
    let expected_transport = match transport {
        Transport::Grpc => "grpc",
        Transport::Http => "http",
    };
    for a in &asked {
        assert_eq!(a.transport, expected_transport);
        assert_eq!(a.domain, "e2e");
        assert_eq!(a.hits_addend, 1);
        assert_eq!(
            a.descriptors,
            [vec![
                ("limit".to_owned(), "all".to_owned()),
                ("generic_key".to_owned(), "all".to_owned()),
            ]]
        );
    }
    let workers = setup.connections_per_worker();
    assert_eq!(workers.len(), WORKERS as usize, "{workers:?}");
    assert!(
        workers.iter().all(|n| *n > 0),
        "both workers served: {workers:?}"
    );
    assert_eq!(
        setup.stat("wasmcustom.palisade_rate_limit.all.allowed"),
        u64::from(N)
    );
    assert_eq!(
        setup.stat("wasmcustom.palisade_rate_limit.all.limited"),
        (THREADS * PER_THREAD) as u64 - u64::from(N)
    );
    assert_eq!(
        setup.stat("wasmcustom.palisade_rate_limit.all.callout_failures"),
        0
    );
}

#[test]
fn over_grpc_exactly_n_of_many_concurrent_requests_are_admitted() {
    exactly_n_admitted(Transport::Grpc);
}

#[test]
fn over_http_json_exactly_n_of_many_concurrent_requests_are_admitted() {
    exactly_n_admitted(Transport::Http);
}

#[test]
fn with_the_service_down_fail_open_admits_and_fail_closed_answers_500() {
    for transport in [Transport::Grpc, Transport::Http] {
        for deny in [false, true] {
            let setup = start(transport, deny, true);
            for i in 0..4 {
                let reply = setup.get(&format!("down-{i}"));
                if deny {
                    assert_eq!(reply.status, 500, "{transport:?}");
                    let body: Value = serde_json::from_str(&reply.body).expect("JSON body");
                    assert_eq!(body["error"], "rate limit service unavailable");
                    assert_eq!(body["request_id"], format!("down-{i}"));
                } else {
                    assert_eq!(reply.status, 200, "{transport:?}: fail-open");
                }
            }
            assert_eq!(
                setup.upstream.seen().len(),
                if deny { 0 } else { 4 },
                "{transport:?} deny={deny}"
            );
            assert_eq!(
                setup.stat("wasmcustom.palisade_rate_limit.all.callout_failures"),
                4,
                "{transport:?} deny={deny}"
            );
            assert!(setup.server.asked().is_empty());
            let warnings = setup
                .envoy
                .log()
                .matches("the rate-limit service failed")
                .count();
            assert!(
                (1..=WORKERS as usize).contains(&warnings),
                "logged once per worker VM at most, not {warnings}:\n{}",
                setup.envoy.log()
            );
        }
    }
}

/// #9: a rate-limit service behind a cluster with no endpoint, a dead port, or a host that
/// never answers: every request ends within the plugin's timeout (1 s) and follows the failure
/// mode exactly, each failure counted; none reaches the service.
#[test]
fn a_cluster_with_no_endpoint_a_dead_port_or_a_silent_host_ends_within_the_timeout() {
    const TIMEOUT: Duration = Duration::from_secs(1);
    // Envoy's own work around the call-out, on a loaded 2-core machine.
    const SLACK: Duration = Duration::from_millis(700);
    for transport in [Transport::Grpc, Transport::Http] {
        for how in Broken::ALL {
            let deny = how != Broken::DeadPort;
            let setup = start_with(transport, deny, false, Some(how), "1s");
            for i in 0..3 {
                let started = std::time::Instant::now();
                let reply = setup.get(&format!("broken-{i}"));
                let took = started.elapsed();
                let case = format!("{transport:?} {how:?} deny={deny} request {i}: {took:?}");
                eprintln!("{case}");
                assert!(took < TIMEOUT + SLACK, "{case}");
                if how == Broken::Silent {
                    assert!(
                        took >= TIMEOUT - Duration::from_millis(50),
                        "only the timeout ends it: {case}"
                    );
                }
                if deny {
                    assert_eq!(reply.status, 500, "{case}");
                    let body: Value = serde_json::from_str(&reply.body).expect("JSON body");
                    assert_eq!(body["error"], "rate limit service unavailable", "{case}");
                    assert_eq!(body["request_id"], format!("broken-{i}"), "{case}");
                } else {
                    assert_eq!(reply.status, 200, "fail-open: {case}");
                }
            }
            let case = format!("{transport:?} {how:?}");
            assert_eq!(
                setup.upstream.seen().len(),
                if deny { 0 } else { 3 },
                "{case}"
            );
            assert_eq!(
                setup.stat("wasmcustom.palisade_rate_limit.all.callout_failures"),
                3,
                "{case}"
            );
            assert!(setup.server.asked().is_empty(), "{case}");
        }
    }
}
