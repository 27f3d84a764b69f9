//! `just bench`: real Envoy (2 workers, V8) on loopback in front of the same upstream, loaded by
//! `wrk` with fixed connections and duration after a warm-up, in each setup: no filter, the
//! empty Wasm filter (the floor), each Palisade plugin, Envoy's native equivalent where one
//! exists, and all five chained. Setups alternate and repeat, so drift on a noisy machine shows
//! as spread; the table reports medians, and ratios from this one run.

#![allow(clippy::print_stdout)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use palisade::envoy::{self, Bootstrap, EnvoyProcess, Filter};
use palisade::plugins::{self, PluginInfo};
use palisade_host_tests::bench_configs::{self, ES256_TOKEN, HEADER_SECURITY, RS256_TOKEN};
use palisade_host_tests::callgrind::CallgrindEnvoy;
use palisade_host_tests::envoy_harness::{envoy_wasm_dir, wasm_dir, workspace, WORKERS};
use serde_json::{json, Value};

/// The same work with Envoy's own filters: CORS, and header_mutation for the security headers.
fn native_header_security() -> (Vec<Value>, Value) {
    let set = |key: &str, value: &str| json!({"append": {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}});
    let remove = |key: &str| json!({"remove": key});
    let filters = vec![
        json!({"name": "envoy.filters.http.cors",
               "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}),
        json!({"name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"response_mutations": [
                remove("server"), remove("x-powered-by"), remove("x-envoy-upstream-service-time"),
                set("strict-transport-security", "max-age=31536000; includeSubDomains"),
                set("x-content-type-options", "nosniff"),
                set("x-frame-options", "DENY"),
                set("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
                set("referrer-policy", "no-referrer"),
                set("cache-control", "no-store"),
            ]}}}),
    ];
    let route = json!({"envoy.filters.http.cors": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"exact": "https://app.example.com"}],
        "allow_methods": "GET, POST",
        "allow_headers": "authorization, content-type",
        "max_age": "600"
    }});
    (filters, route)
}

/// Envoy's `jwt_authn` verifying a bench token (RS256 or ES256, inline JWKS), with or without its
/// verified-token cache.
fn native_jwt_authn(cache: bool) -> Value {
    let jwks = std::fs::read_to_string(workspace().join("host-tests/fixtures/bench/jwks.json"))
        .expect("host-tests/fixtures/bench/jwks.json");
    let mut provider = json!({
        "issuer": "https://idp.bench.example",
        "audiences": ["palisade-bench"],
        "local_jwks": {"inline_string": jwks},
        "forward": true,
    });
    if cache {
        provider["jwt_cache_config"] = json!({"jwt_cache_size": 1000});
    }
    json!({"name": "envoy.filters.http.jwt_authn",
           "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
               "providers": {"bench": provider},
               "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}]}})
}

/// Envoy's `local_ratelimit` with one token bucket for the whole proxy, large enough that the
/// bench is never limited: the cost of counting, not of refusing. Its rate-limit headers are on,
/// as palisade-rate-limit's are.
fn native_local_ratelimit() -> Value {
    json!({"name": "envoy.filters.http.local_ratelimit",
           "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
               "stat_prefix": "bench",
               "token_bucket": {"max_tokens": 1_000_000, "tokens_per_fill": 1_000_000, "fill_interval": "1s"},
               "filter_enabled": {"runtime_key": "rl_enabled", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
               "filter_enforced": {"runtime_key": "rl_enforced", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
               "local_rate_limit_per_downstream_connection": false,
               "enable_x_ratelimit_headers": "DRAFT_VERSION_03"}})
}

/// Envoy's `fault` filter configured but injecting nothing (0%), as chaos setups leave it.
fn native_fault() -> Value {
    json!({"name": "envoy.filters.http.fault",
           "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
               "abort": {"http_status": 503, "percentage": {"numerator": 0, "denominator": "HUNDRED"}},
               "delay": {"fixed_delay": "1s", "percentage": {"numerator": 0, "denominator": "HUNDRED"}}}})
}

struct Setup {
    name: String,
    palisade: Vec<Filter>,
    native: Vec<Value>,
    route: Value,
    /// The setup this one is the Wasm counterpart of (for the "vs native" ratio).
    native_counterpart: Option<&'static str>,
    wasm_files: Vec<PathBuf>,
    /// The bearer token every request carries: a file under host-tests/fixtures/bench.
    token: &'static str,
}

impl Setup {
    fn plain(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            palisade: Vec::new(),
            native: Vec::new(),
            route: json!({}),
            native_counterpart: None,
            wasm_files: Vec::new(),
            token: RS256_TOKEN,
        }
    }
}

const NONE: &str = "envoy, no filter";
const FLOOR: &str = "empty wasm filter (floor)";
const NATIVE_HS: &str = "native cors + header_mutation";
const NATIVE_JWT: &str = "native jwt_authn (no cache)";
const NATIVE_JWT_CACHED: &str = "native jwt_authn (cache on)";
const NATIVE_RL: &str = "native local_ratelimit";
const NATIVE_FAULT: &str = "native fault (0%)";
const NATIVE_JWT_ES256: &str = "native jwt_authn ES256 (no cache)";
const PALISADE_AUTH_ES256: &str = "palisade-auth ES256";
const PALISADE_AUTH_CACHED: &str = "palisade-auth (verified-token cache on)";
const WARM_TOKEN_MINIMUM: &str = "least Wasm filter for a warm token (cache on)";
const FLOOR_CHAINED: &str = "five empty wasm filters chained";
const CHAINED: &str = "all five chained";

fn plugin(name: &str) -> &'static PluginInfo {
    plugins::find(name).unwrap_or_else(|| panic!("no plugin {name}"))
}

/// The configuration each plugin runs with: `bench_configs`, unless `--config <plugin>=<json>`
/// says otherwise (a knob for finding where the cost goes).
struct Configs(std::collections::BTreeMap<String, String>);

impl Configs {
    fn new(args: &[String]) -> Self {
        let mut configs: std::collections::BTreeMap<String, String> = [
            ("header-security", HEADER_SECURITY.to_owned()),
            ("auth", bench_configs::auth()),
            ("rate-limit", bench_configs::RATE_LIMIT.to_owned()),
            ("resilience", bench_configs::RESILIENCE.to_owned()),
            ("audit", bench_configs::AUDIT.to_owned()),
        ]
        .into_iter()
        .map(|(name, config)| (name.to_owned(), config))
        .collect();
        for pair in args.windows(2) {
            if let [flag, value] = pair {
                if flag == "--config" {
                    let (name, config) = value
                        .split_once('=')
                        .unwrap_or_else(|| panic!("--config wants <plugin>=<json>, got {value}"));
                    assert!(configs.contains_key(name), "--config: no plugin {name}");
                    configs.insert(name.to_owned(), config.to_owned());
                }
            }
        }
        Self(configs)
    }

    fn of(&self, p: &PluginInfo) -> String {
        self.0
            .get(p.name)
            .cloned()
            .unwrap_or_else(|| panic!("no bench config for {}", p.name))
    }
}

/// Each kind of host call the probe prices, done `PROBE_CALLS` times per request.
const PROBE_OPS: &[&str] = &[
    "get_header",
    "get_absent_header",
    "get_header_map",
    "set_response_header",
    "add_request_header",
    "remove_absent_header",
    "get_route_name",
    "get_source_address",
    "shared_get",
    "shared_get_set",
    "increment_metric",
    "current_time",
    "compute",
    "compute_on_log",
    "mix",
];
const PROBE_CALLS: u32 = 50;
const PROBE_PREFIX: &str = "probe: ";

/// `--probe`: the empty filter, and the same module doing one kind of host call `PROBE_CALLS` times per
/// request: what one call costs in Envoy's V8, which the test host's fuel cannot tell.
fn probe_setups(wasm: &Path) -> Vec<Setup> {
    let floor_wasm = wasm.join("palisade_floor.wasm");
    let probe = |name: String, config: &str| Setup {
        native: vec![
            json!({"name": "floor", "typed_config": envoy::wasm_filter_config("palisade-floor", &floor_wasm, config)}),
        ],
        wasm_files: vec![floor_wasm.clone()],
        ..Setup::plain(&name)
    };
    let mut all = vec![Setup::plain(NONE), probe(FLOOR.to_owned(), "")];
    for op in PROBE_OPS {
        // The mix also once per request: the price of a few distinct calls made once each.
        let counts: &[u32] = if *op == "mix" {
            &[1, PROBE_CALLS]
        } else {
            &[PROBE_CALLS]
        };
        for n in counts {
            all.push(probe(
                format!("{PROBE_PREFIX}{op} ×{n}"),
                &format!("{op} {n}"),
            ));
        }
    }
    all
}

/// The empty filter's module without the optional stream callbacks (only the request's
/// headers left), written next to the plugins' Envoy builds.
fn floor_envoy_build(floor_wasm: &Path) -> PathBuf {
    let module =
        std::fs::read(floor_wasm).unwrap_or_else(|err| panic!("{}: {err}", floor_wasm.display()));
    let built = palisade::envoy_module::without_callbacks(
        &module,
        &palisade::envoy_module::OPTIONAL_CALLBACKS,
    )
    .unwrap_or_else(|err| panic!("the floor's Envoy build: {err}"));
    let path = envoy_wasm_dir().join("palisade_floor_request_headers.wasm");
    std::fs::write(&path, built).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    path
}

fn setups(wasm: &Path, configs: &Configs) -> Vec<Setup> {
    let floor_wasm = wasm.join("palisade_floor.wasm");
    let mut all = vec![Setup::plain(NONE)];
    all.push(Setup {
        native: vec![json!({"name": "floor", "typed_config": envoy::wasm_filter_config("palisade-floor", &floor_wasm, "")})],
        wasm_files: vec![floor_wasm.clone()],
        ..Setup::plain(FLOOR)
    });
    let (native, route) = native_header_security();
    all.push(Setup {
        native,
        route,
        ..Setup::plain(NATIVE_HS)
    });
    all.push(Setup {
        palisade: vec![Filter::new(
            plugin("header-security"),
            configs.of(plugin("header-security")),
        )],
        native_counterpart: Some(NATIVE_HS),
        wasm_files: vec![wasm.join(plugin("header-security").wasm_file)],
        ..Setup::plain("palisade-header-security")
    });
    all.push(Setup {
        native: vec![native_jwt_authn(false)],
        ..Setup::plain(NATIVE_JWT)
    });
    all.push(Setup {
        native: vec![native_jwt_authn(true)],
        ..Setup::plain(NATIVE_JWT_CACHED)
    });
    all.push(Setup {
        native: vec![native_jwt_authn(false)],
        token: ES256_TOKEN,
        ..Setup::plain(NATIVE_JWT_ES256)
    });
    // What auth's warm-cache target allows at all: a filter that only reads the token header
    // and the clock and sets one identity header, with no callback but the request's headers
    // (the empty filter's module, as an Envoy build).
    let least = floor_envoy_build(&floor_wasm);
    all.push(Setup {
        native: vec![json!({"name": "least", "typed_config": envoy::wasm_filter_config("palisade-floor", &least, "warm_token 1")})],
        native_counterpart: Some(NATIVE_JWT_CACHED),
        wasm_files: vec![least],
        ..Setup::plain(WARM_TOKEN_MINIMUM)
    });
    all.push(Setup {
        palisade: vec![Filter::new(plugin("auth"), configs.of(plugin("auth")))],
        native_counterpart: Some(NATIVE_JWT_ES256),
        wasm_files: vec![wasm.join(plugin("auth").wasm_file)],
        token: ES256_TOKEN,
        ..Setup::plain(PALISADE_AUTH_ES256)
    });
    all.push(Setup {
        native: vec![native_local_ratelimit()],
        ..Setup::plain(NATIVE_RL)
    });
    all.push(Setup {
        native: vec![native_fault()],
        ..Setup::plain(NATIVE_FAULT)
    });
    for (name, native) in [
        ("auth", Some(NATIVE_JWT)),
        ("rate-limit", Some(NATIVE_RL)),
        ("resilience", Some(NATIVE_FAULT)),
        ("audit", None),
    ] {
        let p = plugin(name);
        all.push(Setup {
            palisade: vec![Filter::new(p, configs.of(p))],
            native_counterpart: native,
            wasm_files: vec![wasm.join(p.wasm_file)],
            ..Setup::plain(p.full_name)
        });
    }
    // The same auth configuration with the verified-token cache on: the bench token is
    // verified once per proxy, then every worker skips its signature math.
    let auth = plugin("auth");
    let mut cached: Value = serde_json::from_str(&configs.of(auth)).unwrap_or(Value::Null);
    cached["verified_token_cache_entries"] = json!(1024);
    let cached = cached.to_string();
    all.push(Setup {
        palisade: vec![Filter::new(auth, cached.clone())],
        native_counterpart: Some(NATIVE_JWT_CACHED),
        wasm_files: vec![wasm.join(auth.wasm_file)],
        ..Setup::plain(PALISADE_AUTH_CACHED)
    });
    // What one module running every concern in one pass could save at most: the per-module
    // cost of five empty Wasm filters over one.
    all.push(Setup {
        native: (0..plugins::ALL.len())
            .map(|i| {
                let name = format!("floor-{i}");
                json!({"name": name, "typed_config": envoy::wasm_filter_config(&name, &floor_wasm, "")})
            })
            .collect(),
        wasm_files: vec![floor_wasm.clone(); plugins::ALL.len()],
        ..Setup::plain(FLOOR_CHAINED)
    });
    // The chain as a proxy would run it: auth with its verified-token cache, since every bench
    // request carries the same token.
    all.push(Setup {
        palisade: plugins::ALL
            .iter()
            .map(|p| {
                let config = if p.name == "auth" {
                    cached.clone()
                } else {
                    configs.of(p)
                };
                Filter::new(p, config)
            })
            .collect(),
        wasm_files: plugins::ALL
            .iter()
            .map(|p| wasm.join(p.wasm_file))
            .collect(),
        ..Setup::plain(CHAINED)
    });
    all
}

/// One measurement.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    rss_mib: f64,
    /// Envoy's CPU time (all threads) per request under load: unlike latency, barely moved by
    /// other work on a shared machine.
    cpu_us: f64,
    /// For setups with palisade-audit: events shipped per second under load, and the totals
    /// at the end of the setup's run.
    audit: Option<AuditShipping>,
}

#[derive(Debug, Clone, Copy, Default)]
struct AuditShipping {
    sent_per_s: f64,
    emitted: f64,
    sent: f64,
    dropped: f64,
}

/// palisade-audit's counters from Envoy's stats (`wasmcustom.palisade_audit_<name>`).
fn audit_counter(envoy: &EnvoyProcess, name: &str) -> f64 {
    let wanted = format!("wasmcustom.palisade_audit_{name}: ");
    envoy
        .stats()
        .lines()
        .find_map(|line| line.strip_prefix(wanted.as_str())?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn parse_latency(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// The number of requests a `wrk` run completed (`12345 requests in 5.00s, ...`).
fn parse_requests(output: &str) -> Option<f64> {
    output.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let count = fields.next()?.parse().ok()?;
        (fields.next()? == "requests" && fields.next()? == "in").then_some(count)
    })
}

/// CPU time every thread of a process has run, in nanoseconds (`/proc/<pid>/task/*/schedstat`).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Requests per second and p50/p99 from `wrk --latency` output.
fn parse_wrk(output: &str) -> Option<(f64, f64, f64)> {
    let mut p50 = None;
    let mut p99 = None;
    let mut rps = None;
    for line in output.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["50%", value] => p50 = parse_latency(value),
            ["99%", value] => p99 = parse_latency(value),
            ["Requests/sec:", value] => rps = value.parse().ok(),
            _ => {}
        }
    }
    Some((rps?, p50?, p99?))
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

struct Load {
    duration: u64,
    warmup: u64,
    connections: u32,
}

fn wrk(url: &str, token: &str, seconds: u64, connections: u32) -> String {
    let output = wrk_command(url, token, seconds, connections)
        .output()
        .unwrap_or_else(|err| panic!("wrk: {err} (run `./just setup` to install it)"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn wrk_command(url: &str, token: &str, seconds: u64, connections: u32) -> Command {
    let mut command = Command::new("wrk");
    command
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
        ])
        .args(
            request_headers(&format!("Bearer {token}"))
                .iter()
                .flat_map(|(name, value)| ["-H".to_owned(), format!("{name}: {value}")]),
        )
        .arg(url);
    command
}

/// The headers of every bench request: a browser's origin, Envoy's request id, the token.
fn request_headers(authorization: &str) -> [(&'static str, &str); 3] {
    [
        ("origin", "https://app.example.com"),
        ("x-request-id", "bench-0001"),
        ("authorization", authorization),
    ]
}

fn bootstrap(setup: &Setup, upstream: std::net::SocketAddr) -> Bootstrap {
    Bootstrap {
        listen_port: 0,
        upstream,
        wasm_dir: envoy_wasm_dir(),
        filters: setup.palisade.clone(),
        native_filters: setup.native.clone(),
        route_filter_configs: setup.route.clone(),
    }
}

fn start(setup: &Setup, upstream: std::net::SocketAddr, dir: &Path) -> EnvoyProcess {
    let binary = envoy::default_binary(&workspace());
    EnvoyProcess::start(&binary, &bootstrap(setup, upstream), dir, WORKERS)
        .unwrap_or_else(|err| panic!("{}: {err}", setup.name))
}

/// `--instructions`: each setup's Envoy (one worker) under callgrind, two at a time, the same
/// requests as `wrk` sends: Envoy's instructions per request.
fn count_instructions(setups: &[Setup], upstream: std::net::SocketAddr, requests: u32) -> Vec<f64> {
    let binary = envoy::default_binary(&workspace());
    let count = |setup: &Setup| {
        let dir = tempfile::tempdir().expect("temp dir");
        let envoy = CallgrindEnvoy::start(&binary, &bootstrap(setup, upstream), dir.path())
            .unwrap_or_else(|err| panic!("{}: {err}", setup.name));
        let token = bench_configs::token(setup.token);
        let authorization = format!("Bearer {token}");
        let per_request = envoy
            .instructions_per_request("/orders", &request_headers(&authorization), 200, requests)
            .unwrap_or_else(|err| panic!("{}: {err}", setup.name));
        println!(
            "instructions {:<45} {per_request:>10.0} per request",
            setup.name
        );
        per_request
    };
    let mut counts = Vec::with_capacity(setups.len());
    // Valgrind runs a process on one core at a time: two fill this machine's.
    for pair in setups.chunks(2) {
        std::thread::scope(|scope| {
            let running: Vec<_> = pair.iter().map(|s| scope.spawn(move || count(s))).collect();
            for handle in running {
                counts.push(handle.join().expect("instruction count"));
            }
        });
    }
    counts
}

/// The `--instructions` table: what each setup adds over Envoy without a filter, and per host
/// call for the probes.
fn instructions_table(setups: &[Setup], counts: &[f64], requests: u32) -> String {
    let of = |name: &str| {
        setups
            .iter()
            .position(|s| s.name == name)
            .and_then(|i| counts.get(i).copied())
    };
    let none = of(NONE).unwrap_or_default();
    let floor = of(FLOOR).map(|f| f - none).unwrap_or_default();
    let mut table = String::new();
    let probing = setups.iter().any(|s| probe_op(s).is_some());
    if probing {
        table.push_str("| one call of | Envoy instructions per call |\n| --- | ---: |\n");
    } else {
        table.push_str("| setup | Envoy instructions per request | added | vs floor | vs native |\n| --- | ---: | ---: | ---: | ---: |\n");
    }
    for (setup, count) in setups.iter().zip(counts) {
        let added = count - none;
        if probing {
            if let Some(op) = probe_op(setup) {
                let per_call = (added - floor) / f64::from(probe_count(setup));
                let _ = writeln!(table, "| `{op}` ×{} | {per_call:.0} |", probe_count(setup));
            }
            continue;
        }
        let vs_floor = if setup.name == NONE || floor <= 0.0 {
            String::new()
        } else {
            format!("{:.2}×", added / floor)
        };
        let vs_native = setup
            .native_counterpart
            .and_then(of)
            .map(|native| format!("{:.2}×", added / (native - none)))
            .unwrap_or_default();
        let _ = writeln!(
            table,
            "| {} | {count:.0} | {added:+.0} | {vs_floor} | {vs_native} |",
            setup.name
        );
    }
    let _ = writeln!(
        table,
        "\nEach setup's Envoy ran with one worker under Valgrind's callgrind, which counted every instruction of the process over {requests} requests on one keep-alive connection, after 200 to warm up; the requests are the ones `wrk` sends. The empty filter adds {floor:.0} instructions per request."
    );
    table
}

/// Stops the bench when `wrk` saw a failed request: a setup that refuses traffic would
/// measure its error path.
fn refuse_failed_requests(output: &str, setup: &Setup, envoy: &EnvoyProcess) {
    if let Some(errors) = output
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
    {
        panic!("{}: requests failed: {errors}\n{}", setup.name, envoy.log());
    }
}

/// Envoy's CPU µs per request since `before_ns` (from [`cpu_ns`]) over `requests` requests.
fn cpu_us_per_request(envoy: &EnvoyProcess, before_ns: u64, requests: f64) -> f64 {
    cpu_ns(envoy.pid()).saturating_sub(before_ns) as f64 / 1000.0 / requests.max(1.0)
}

/// Envoy CPU µs per request of several setups loaded at the same time, one connection each:
/// whatever the machine's neighbours do during the window, they do it to every setup alike, so
/// the differences between them hold where back-to-back runs drift by more than a plugin costs.
fn measure_together(
    setups: &[&Setup],
    upstream: std::net::SocketAddr,
    load: &Load,
) -> Vec<(f64, f64)> {
    let dirs: Vec<tempfile::TempDir> = setups
        .iter()
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let envoys: Vec<EnvoyProcess> = setups
        .iter()
        .zip(&dirs)
        .map(|(setup, dir)| start(setup, upstream, dir.path()))
        .collect();
    let load_all = |seconds: u64| -> Vec<String> {
        let runs: Vec<std::process::Child> = setups
            .iter()
            .zip(&envoys)
            .map(|(setup, envoy)| {
                wrk_command(
                    &envoy.url("/orders"),
                    &bench_configs::token(setup.token),
                    seconds,
                    1,
                )
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap_or_else(|err| panic!("wrk: {err} (run `./just setup` to install it)"))
            })
            .collect();
        runs.into_iter()
            .map(|run| {
                let output = run.wait_with_output().expect("wrk finished");
                String::from_utf8_lossy(&output.stdout).into_owned()
            })
            .collect()
    };
    load_all(load.warmup);
    let before: Vec<u64> = envoys.iter().map(|e| cpu_ns(e.pid())).collect();
    let outputs = load_all(load.duration);
    envoys
        .iter()
        .zip(before)
        .zip(outputs.iter().zip(setups))
        .map(|((envoy, before), (output, setup))| {
            refuse_failed_requests(output, setup, envoy);
            let requests = parse_requests(output).unwrap_or(0.0);
            let p50 = parse_wrk(output).map_or(0.0, |(_, p50, _)| p50);
            (cpu_us_per_request(envoy, before, requests), p50)
        })
        .collect()
}

fn measure(setup: &Setup, upstream: std::net::SocketAddr, load: &Load) -> Sample {
    let dir = tempfile::tempdir().expect("temp dir");
    let envoy = start(setup, upstream, dir.path());
    let url = envoy.url("/orders");
    let token = bench_configs::token(setup.token);
    let run = |connections| {
        let output = wrk(&url, &token, load.duration, connections);
        refuse_failed_requests(&output, setup, &envoy);
        let (rps, p50, p99) =
            parse_wrk(&output).unwrap_or_else(|| panic!("{}: wrk said\n{output}", setup.name));
        (rps, p50, p99, parse_requests(&output).unwrap_or(0.0))
    };
    wrk(&url, &token, load.warmup, load.connections);
    // Throughput and CPU per request under load; latency from one connection, where queueing
    // does not hide the time the filter itself adds.
    let ships_events = setup.palisade.iter().any(|f| f.plugin.name == "audit");
    let sent_before = audit_counter(&envoy, "events_sent");
    let cpu_before = cpu_ns(envoy.pid());
    let (rps, _, _, requests) = run(load.connections);
    let cpu_us = cpu_us_per_request(&envoy, cpu_before, requests);
    let sent_under_load = audit_counter(&envoy, "events_sent") - sent_before;
    let (_, p50_us, p99_us, _) = run(1);
    let audit = ships_events.then(|| {
        // Let the last batches go out before reading the totals.
        std::thread::sleep(Duration::from_secs(2));
        AuditShipping {
            sent_per_s: sent_under_load / load.duration as f64,
            emitted: audit_counter(&envoy, "events_emitted"),
            sent: audit_counter(&envoy, "events_sent"),
            dropped: audit_counter(&envoy, "events_dropped"),
        }
    });
    Sample {
        rps,
        p50_us,
        p99_us,
        rss_mib: rss_mib(envoy.pid()),
        cpu_us,
        audit,
    }
}

/// One round of a setup measured together with no filter and the floor: the Envoy CPU µs per
/// request each of the setup and the floor adds over no filter, in the same window.
#[derive(Debug, Clone, Copy)]
struct Together {
    added: f64,
    floor_added: f64,
    /// The setup's p50 latency minus the floor's, µs (one connection each, same window).
    p50_over_floor: f64,
}

/// A setup's rounds together with the baselines, summed up: medians of what it adds, of what
/// the floor added in the same windows, and of the per-round ratio of the two.
#[derive(Debug, Clone, Copy)]
struct TogetherSummary {
    added: f64,
    floor_added: f64,
    vs_floor: f64,
}

impl TogetherSummary {
    fn of(rounds: &[Together]) -> Option<Self> {
        if rounds.is_empty() {
            return None;
        }
        let pick = |f: fn(&Together) -> f64| median(&mut rounds.iter().map(f).collect::<Vec<_>>());
        Some(Self {
            added: pick(|t| t.added),
            floor_added: pick(|t| t.floor_added),
            // A round in which the empty filter added nothing measurable says nothing about a
            // ratio to it (a busy machine can make the floor's window cheaper than no filter's):
            // left out, and with no round left the ratio is NaN, reported as not measured.
            vs_floor: {
                let mut ratios: Vec<f64> = rounds
                    .iter()
                    .filter(|t| t.floor_added >= MIN_FLOOR_US)
                    .map(|t| t.added / t.floor_added)
                    .collect();
                if ratios.is_empty() {
                    f64::NAN
                } else {
                    median(&mut ratios)
                }
            },
        })
    }
}

/// The least the empty filter must add in a round for a ratio to it to mean anything (it adds
/// 40-50 µs on an idle machine).
const MIN_FLOOR_US: f64 = 10.0;

/// What the empty filter added over no filter, the median over every round of every setup.
fn floor_median(together: &[Vec<Together>]) -> Option<f64> {
    let mut floor: Vec<f64> = together.iter().flatten().map(|t| t.floor_added).collect();
    (!floor.is_empty()).then(|| median(&mut floor))
}

/// Every setup but the two baselines, each `rounds` times together with them.
fn measure_all_together(
    setups: &[Setup],
    upstream: std::net::SocketAddr,
    load: &Load,
    rounds: u64,
) -> Vec<Vec<Together>> {
    let mut together = vec![Vec::new(); setups.len()];
    let position = |name: &str| setups.iter().position(|s| s.name == name);
    let (Some(none), Some(floor)) = (position(NONE), position(FLOOR)) else {
        return together;
    };
    for round in 1..=rounds {
        for (i, setup) in setups.iter().enumerate() {
            if i == none || i == floor {
                continue;
            }
            let cpu = measure_together(&[&setups[none], &setups[floor], setup], upstream, load);
            if let [(none, _), (floor, floor_p50), (this, this_p50)] = cpu[..] {
                println!(
                    "together {round}/{rounds} {:<45} cpu(c=1) {this:>6.1} us/req, floor {floor:>6.1}, no filter {none:>6.1}; p50 {this_p50:.0} us, floor {floor_p50:.0}",
                    setup.name
                );
                together[i].push(Together {
                    added: this - none,
                    floor_added: floor - none,
                    p50_over_floor: this_p50 - floor_p50,
                });
            }
        }
    }
    together
}

/// The host call a probe setup makes (`get_header` of "probe: get_header ×50").
fn probe_op(setup: &Setup) -> Option<&str> {
    setup.name.strip_prefix(PROBE_PREFIX)?.split(' ').next()
}

/// How many times per request it makes it (`50` of "probe: get_header ×50").
fn probe_count(setup: &Setup) -> u32 {
    setup
        .name
        .rsplit('×')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(PROBE_CALLS)
}

/// `--probe`: what one host call costs, from each probe's rounds together with the floor.
fn probe_table(setups: &[Setup], together: &[Vec<Together>]) -> String {
    let mut costs = String::from(
        "| one call of | Envoy CPU µs per call (V8) | rounds, µs per call |\n| --- | ---: | --- |\n",
    );
    for (setup, rounds) in setups.iter().zip(together) {
        let Some(op) = probe_op(setup) else {
            continue;
        };
        let count = probe_count(setup);
        let what = if op == "compute" {
            "1000 steps of guest arithmetic (~6000 Wasm instructions)".to_owned()
        } else if op == "compute_on_log" {
            "the same in `on_log`, after the response".to_owned()
        } else if op == "mix" {
            format!("one each of clock, present header, shared get + CAS set, metric, {count} per request")
        } else {
            format!("`{op}`")
        };
        let mut per_call: Vec<f64> = rounds
            .iter()
            .map(|t| (t.added - t.floor_added) / f64::from(count))
            .collect();
        let each: Vec<String> = per_call.iter().map(|v| format!("{v:.2}")).collect();
        let _ = writeln!(
            costs,
            "| {what} | {:.2} | {} |",
            median(&mut per_call),
            each.join(", ")
        );
    }
    // Latency under three concurrent Envoys is too noisy per call; the arithmetic probes'
    // signal is large enough to say whether on_log work reaches the client.
    let latency_of = |op: &str| {
        setups
            .iter()
            .zip(together)
            .find(|(s, _)| probe_op(s) == Some(op))
            .map(|(setup, rounds)| {
                let count = f64::from(probe_count(setup));
                median(
                    &mut rounds
                        .iter()
                        .map(|t| t.p50_over_floor / count)
                        .collect::<Vec<_>>(),
                )
            })
    };
    if let (Some(request), Some(log)) = (latency_of("compute"), latency_of("compute_on_log")) {
        let _ = writeln!(
            costs,
            "\n1000 steps of arithmetic add {request:.1} µs of p50 latency (one connection) in the request callback and {log:.1} µs in `on_log`: work after the response still delays the connection's next request."
        );
    }
    let _ = writeln!(
        costs,
        "\nEach probe does its call {PROBE_CALLS} times per request (the mix also once) and runs at the same time as the empty filter and no filter (one connection each); the empty filter itself adds {:.1} µs per request (median).",
        floor_median(together).unwrap_or_default()
    );
    costs
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// (lowest, median, highest) of `values` (all 0 when there are none).
fn low_median_high(values: &mut [f64]) -> (f64, f64, f64) {
    let middle = median(values);
    let low = values.first().copied().unwrap_or(0.0);
    let high = values.last().copied().unwrap_or(0.0);
    (low, middle, high)
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let load = Load {
        duration: arg(&args, "--duration", 5),
        warmup: arg(&args, "--warmup", 2),
        connections: u32::try_from(arg(&args, "--connections", 16)).unwrap_or(16),
    };
    let rounds = arg(&args, "--rounds", 3);
    let out_dir = workspace().join("target/bench");
    std::fs::create_dir_all(&out_dir).expect("target/bench");

    let wasm = wasm_dir();
    // Knobs for finding where the cost goes: other plugin configs, and a subset of setups (by
    // name; the no-filter baseline always runs).
    let configs = Configs::new(&args);
    let only: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i > 0 && args.get(i - 1).is_some_and(|a| a == "--only"))
        .map(|(_, v)| v)
        .collect();
    let probing = args.iter().any(|a| a == "--probe");
    let setups: Vec<Setup> = if probing {
        probe_setups(&wasm)
    } else {
        setups(&wasm, &configs)
    }
    .into_iter()
    .filter(|s| {
        s.name == NONE
            || s.name == FLOOR
            || only.is_empty()
            || only.iter().any(|o| s.name.contains(o.as_str()))
    })
    .collect();
    let upstream_dir = tempfile::tempdir().expect("temp dir");
    let binary = envoy::default_binary(&workspace());
    let upstream = EnvoyProcess::start_config(
        &binary,
        &envoy::direct_response_config(0),
        upstream_dir.path(),
        1,
    )
    .unwrap_or_else(|err| panic!("upstream: {err}"));
    let upstream_addr = std::net::SocketAddr::from(([127, 0, 0, 1], upstream.port()));

    if args.iter().any(|a| a == "--instructions") {
        let requests = u32::try_from(arg(&args, "--requests", 400)).unwrap_or(400);
        let counts = count_instructions(&setups, upstream_addr, requests);
        let table = instructions_table(&setups, &counts, requests);
        println!("\n{table}");
        let file = if probing {
            "host-call-instructions.md"
        } else {
            "envoy-instructions.md"
        };
        std::fs::write(out_dir.join(file), &table).expect("write the instruction counts");
        return;
    }
    let together = measure_all_together(&setups, upstream_addr, &load, rounds);
    if probing {
        let costs = probe_table(&setups, &together);
        println!("\n{costs}");
        std::fs::write(out_dir.join("host-call-costs.md"), &costs)
            .expect("write host-call-costs.md");
        return;
    }
    let together_rounds = together;
    let together: Vec<Option<TogetherSummary>> = together_rounds
        .iter()
        .map(|rounds| TogetherSummary::of(rounds))
        .collect();
    if args.iter().any(|a| a == "--together-only") {
        for (setup, summary) in setups.iter().zip(&together) {
            if let Some(t) = summary {
                println!(
                    "{:<45} adds {:>6.1} us, the floor {:>6.1} us: {:.2}x the floor",
                    setup.name, t.added, t.floor_added, t.vs_floor
                );
            }
        }
        return;
    }

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); setups.len()];
    for round in 1..=rounds {
        for (i, setup) in setups.iter().enumerate() {
            let sample = measure(setup, upstream_addr, &load);
            println!(
                "round {round}/{rounds} {:<45} {:>9.0} req/s  cpu {:>6.1} us/req  p50 {:>7.0} us  p99 {:>7.0} us",
                setup.name, sample.rps, sample.cpu_us, sample.p50_us, sample.p99_us
            );
            samples[i].push(sample);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    struct Row {
        rps: f64,
        p50: f64,
        p99: f64,
        rss: f64,
        cpu: f64,
        spread: f64,
    }
    let rows: Vec<Row> = samples
        .iter()
        .map(|s| {
            let mut rps: Vec<f64> = s.iter().map(|x| x.rps).collect();
            let (lo, rps_median, hi) = low_median_high(&mut rps);
            Row {
                rps: rps_median,
                p50: median(&mut s.iter().map(|x| x.p50_us).collect::<Vec<_>>()),
                p99: median(&mut s.iter().map(|x| x.p99_us).collect::<Vec<_>>()),
                rss: median(&mut s.iter().map(|x| x.rss_mib).collect::<Vec<_>>()),
                cpu: median(&mut s.iter().map(|x| x.cpu_us).collect::<Vec<_>>()),
                spread: if rps_median > 0.0 {
                    (hi - lo) / rps_median * 100.0
                } else {
                    0.0
                },
            }
        })
        .collect();
    let index = |name: &str| setups.iter().position(|s| s.name == name).unwrap_or(0);
    let base = &rows[index(NONE)];
    let added = |row: &Row| row.p50 - base.p50;
    // What each setup adds to Envoy's CPU per request: from its rounds run together with no
    // filter where there are any (back-to-back runs drift by more than a small filter costs),
    // else from its own runs. Ratios compare these; latency carries the neighbours' noise.
    let floor_together = floor_median(&together_rounds);
    let added_of: Vec<f64> = setups
        .iter()
        .zip(&rows)
        .zip(&together)
        .map(
            |((setup, row), summary)| match (setup.name.as_str(), summary) {
                (NONE, _) => 0.0,
                (FLOOR, _) => floor_together.unwrap_or(row.cpu - base.cpu),
                (_, Some(t)) => t.added,
                _ => row.cpu - base.cpu,
            },
        )
        .collect();
    let added_cpu = |i: usize| added_of.get(i).copied().unwrap_or_default();
    let vms = f64::from(WORKERS + 1);

    let mut table = String::new();
    let mut csv = String::from("setup,req_per_s,cpu_us_per_req,added_cpu_us,p50_us,p99_us,added_p50_us,vs_native,vs_floor,rps_spread_pct,wasm_kib,rss_delta_per_vm_mib\n");
    table.push_str("| setup | req/s (c={c}) | Envoy CPU µs/req (c={c}) | added CPU µs (together, c=1) | p50 µs (c=1) | p99 µs (c=1) | added p50 µs | vs native | vs floor | req/s spread | .wasm KiB | Δ RSS per VM MiB |\n".replace("{c}", &load.connections.to_string()).as_str());
    table.push_str(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (i, (setup, row)) in setups.iter().zip(&rows).enumerate() {
        let add = added_cpu(i);
        let vs_native = setup
            .native_counterpart
            .map(|n| {
                let native = setups
                    .iter()
                    .position(|s| s.name == n)
                    .map_or(0.0, added_cpu);
                if native > 0.0 {
                    format!("{:.2}×", add / native)
                } else {
                    "n/a".to_owned()
                }
            })
            .unwrap_or_default();
        let vs_floor = match (setup.name.as_str(), together.get(i).copied().flatten()) {
            (NONE, _) => String::new(),
            (FLOOR, _) => "1.00×".to_owned(),
            (_, Some(t)) if t.vs_floor.is_nan() => "n/a".to_owned(),
            (_, Some(t)) => format!("{:.2}×", t.vs_floor),
            _ => match added_cpu(index(FLOOR)) {
                floor if floor > 0.0 => format!("{:.2}×", add / floor),
                _ => String::new(),
            },
        };
        let wasm_kib: u64 = setup
            .wasm_files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum::<u64>()
            / 1024;
        let wasm_text = if setup.wasm_files.is_empty() {
            String::new()
        } else {
            wasm_kib.to_string()
        };
        let rss_delta = if setup.name == NONE {
            String::new()
        } else {
            format!("{:.1}", (row.rss - base.rss) / vms)
        };
        let _ = writeln!(
            table,
            "| {} | {:.0} | {:.1} | {:+.1} | {:.0} | {:.0} | {:+.0} | {} | {} | {:.1}% | {} | {} |",
            setup.name,
            row.rps,
            row.cpu,
            add,
            row.p50,
            row.p99,
            added(row),
            vs_native,
            vs_floor,
            row.spread,
            wasm_text,
            rss_delta
        );
        let _ = writeln!(
            csv,
            "{},{:.0},{:.2},{:.2},{:.0},{:.0},{:.0},{},{},{:.1},{},{}",
            setup.name,
            row.rps,
            row.cpu,
            add,
            row.p50,
            row.p99,
            added(row),
            vs_native.trim_end_matches('×'),
            vs_floor.trim_end_matches('×'),
            row.spread,
            wasm_text,
            rss_delta
        );
    }
    // What the table says about the targets in the plugins' issues, computed from this run.
    let row_of = |name: &str| setups.iter().position(|s| s.name == name);
    let rps = |i: usize| rows.get(i).map_or(0.0, |r| r.rps);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let mut findings = String::new();
    if let (Some(one), Some(five), Some(chain)) =
        (row_of(FLOOR), row_of(FLOOR_CHAINED), row_of(CHAINED))
    {
        let saving = added_cpu(five) - added_cpu(one);
        let _ = writeln!(
            findings,
            "- One module instead of five: five empty Wasm filters add {:.1} µs of Envoy CPU per request, one adds {:.1}; so one module running all five concerns could save at most {saving:.1} µs, {:.0}% of the {:.1} µs the five plugins add chained.",
            added_cpu(five),
            added_cpu(one),
            ratio(saving, added_cpu(chain)) * 100.0,
            added_cpu(chain)
        );
    }
    for (ours, native, what) in [
        ("palisade-auth", NATIVE_JWT, "RS256"),
        (PALISADE_AUTH_ES256, NATIVE_JWT_ES256, "ES256"),
    ] {
        if let (Some(ours), Some(native)) = (row_of(ours), row_of(native)) {
            let _ = writeln!(
                findings,
                "- {what} verification, every request (no token cache on either side): palisade-auth adds {:.1} µs of CPU per request, native `jwt_authn` {:.1} µs: {:.2}× native (target: at most 3×); req/s {:.2}× native's.",
                added_cpu(ours),
                added_cpu(native),
                ratio(added_cpu(ours), added_cpu(native)),
                ratio(rps(ours), rps(native))
            );
        }
    }
    if let (Some(ours), Some(cached), Some(uncached)) = (
        row_of(PALISADE_AUTH_CACHED),
        row_of(NATIVE_JWT_CACHED),
        row_of(NATIVE_JWT),
    ) {
        let _ = writeln!(
            findings,
            "- Warm token cache, RS256: palisade-auth serves {:.0} req/s, {:.0}% of native `jwt_authn` with its cache on (target: at least 90%) and {:.2}× native `jwt_authn` without it (target: at least 1.3×); it adds {:.1} µs of CPU per request, native with its cache {:.1} µs.",
            rps(ours),
            ratio(rps(ours), rps(cached)) * 100.0,
            ratio(rps(ours), rps(uncached)),
            added_cpu(ours),
            added_cpu(cached)
        );
        // The same ratios round by round (adjacent runs), to show how far the machine's
        // drift moves them; the verdict above stays on the medians.
        let per_round = |a: usize, b: usize| -> String {
            let (Some(a), Some(b)) = (samples.get(a), samples.get(b)) else {
                return String::new();
            };
            let mut ratios: Vec<f64> = a
                .iter()
                .zip(b)
                .filter(|(_, b)| b.rps > 0.0)
                .map(|(a, b)| a.rps / b.rps)
                .collect();
            if ratios.is_empty() {
                return String::new();
            }
            let (lo, middle, hi) = low_median_high(&mut ratios);
            format!("{lo:.2}–{hi:.2}, median {middle:.2}")
        };
        let _ = writeln!(
            findings,
            "- Round by round: palisade-auth over native `jwt_authn` with its cache {}; over native without it {}; native with its cache over native without it {}.",
            per_round(ours, cached),
            per_round(ours, uncached),
            per_round(cached, uncached),
        );
        let _ = writeln!(
            findings,
            "- What those targets allow any Wasm filter here: the empty filter serves {:.0}% of native `jwt_authn` with its cache, and native `jwt_authn` with its cache {:.2}× native without it (the second target asks 1.3×).",
            row_of(FLOOR).map_or(0.0, |f| ratio(rps(f), rps(cached)) * 100.0),
            ratio(rps(cached), rps(uncached)),
        );
        if let Some(least) = row_of(WARM_TOKEN_MINIMUM) {
            let _ = writeln!(
                findings,
                "- The least a Wasm filter does for a warm token (read the token header and the clock, set one header; no callback but the request's headers) serves {:.0} req/s: {:.0}% of native `jwt_authn` with its cache, {:.2}× native without it; it adds {:.1} µs of CPU per request.",
                rps(least),
                ratio(rps(least), rps(cached)) * 100.0,
                ratio(rps(least), rps(uncached)),
                added_cpu(least)
            );
        }
    }
    // The plugins' issue target: adding at most 1.25× what the empty Wasm filter adds, judged on
    // the rounds measured together with it.
    for (setup, summary) in setups.iter().zip(&together) {
        let Some(t) = summary else { continue };
        // auth's targets are against native jwt_authn (above).
        if matches!(setup.palisade.as_slice(), [only] if only.plugin.name != "auth") {
            let verdict = if t.vs_floor.is_nan() {
                "not measured: the floor added under 10 µs in every round"
            } else if t.vs_floor <= 1.25 {
                "met"
            } else {
                "not met"
            };
            let _ = writeln!(
                findings,
                "- {}: adds {:.1} µs of Envoy CPU per request where the empty Wasm filter adds {:.1} µs in the same windows: {:.2}× the floor (target at most 1.25×: {verdict}).",
                setup.name, t.added, t.floor_added, t.vs_floor
            );
        }
    }
    if !findings.is_empty() {
        table.push_str("\n### What this run says\n\n");
        table.push_str(&findings);
    }
    let mut shipping = String::new();
    for (setup, runs) in setups.iter().zip(&samples) {
        let audit: Vec<AuditShipping> = runs.iter().filter_map(|s| s.audit).collect();
        if audit.is_empty() {
            continue;
        }
        if shipping.is_empty() {
            shipping.push_str("| setup | events sent/s under load (median) | emitted | sent | dropped | still buffered |\n| --- | ---: | ---: | ---: | ---: | ---: |\n");
        }
        let sum = |f: fn(&AuditShipping) -> f64| audit.iter().map(f).sum::<f64>();
        let (emitted, sent, dropped) = (sum(|a| a.emitted), sum(|a| a.sent), sum(|a| a.dropped));
        let _ = writeln!(
            shipping,
            "| {} | {:.0} | {emitted:.0} | {sent:.0} | {dropped:.0} | {:.0} |",
            setup.name,
            median(&mut audit.iter().map(|a| a.sent_per_s).collect::<Vec<_>>()),
            emitted - sent - dropped
        );
    }
    if !shipping.is_empty() {
        table.push_str("\n### Audit events shipped (all rounds)\n\n");
        table.push_str(&shipping);
    }
    println!("\n{table}");
    std::fs::write(out_dir.join("results.md"), &table).expect("write results.md");
    std::fs::write(out_dir.join("results.csv"), &csv).expect("write results.csv");
    let settings = format!(
        "wrk -t1 --latency: req/s with -c{} -d{}s, latency with -c1 -d{1}s, after a {}s warm-up; Envoy --concurrency {WORKERS}; {rounds} rounds, setups alternating; medians",
        load.connections, load.duration, load.warmup
    );
    std::fs::write(out_dir.join("settings.txt"), &settings).expect("write settings.txt");

    if let Some(path) = args
        .iter()
        .position(|a| a == "--report")
        .and_then(|i| args.get(i + 1))
    {
        // The command as the operator typed it: `just bench` adds the --report itself.
        let mut typed: Vec<String> = Vec::new();
        let mut rest = args.iter().skip(1);
        while let Some(arg) = rest.next() {
            if arg == "--report" {
                rest.next();
            } else {
                typed.push(arg.clone());
            }
        }
        let report = report(&table, &settings, &typed);
        std::fs::write(workspace().join(path), report).expect("write the report");
        println!("wrote {path}");
    }
}

/// BENCHMARKS.md: the table, the fuel per request from the test host, the machine, and the
/// command that reproduces it.
fn report(table: &str, settings: &str, args: &[String]) -> String {
    let shell = |command: &str| {
        Command::new("sh")
            .args(["-c", command])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let cpu = shell("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
    let envoy = shell(&format!(
        "{} --version | grep -o '[0-9]*\\.[0-9]*\\.[0-9]*/[A-Za-z]*' | head -1",
        envoy::default_binary(&workspace()).display()
    ));
    let mut out = String::from(
        "# Benchmarks\n\nWritten by `just bench`; every number below comes from one run of it.\n\n",
    );
    let _ = writeln!(out, "- Date: {}", shell("date -u +%Y-%m-%dT%H:%MZ"));
    let _ = writeln!(
        out,
        "- Machine: {} cores ({}), {} memory, {}",
        shell("nproc"),
        cpu.trim(),
        shell("free -h | awk '/Mem:/ {print $2}'"),
        shell("uname -sr")
    );
    let _ = writeln!(
        out,
        "- Envoy: {envoy} (V8), upstream: a direct-response Envoy; load: {settings}"
    );
    let _ = writeln!(out, "- Command: `just bench {}`", args.join(" ").trim());
    out.push_str("\nThe load generator, the Envoys and the upstream share the machine's cores, so absolute\n");
    out.push_str("numbers are low and noisy; compare rows of one run. \"Envoy CPU µs/req\" is the CPU time all of\n");
    out.push_str("Envoy's threads spent per request (from `/proc/<pid>/task/*/schedstat`) in the setup's own runs\n");
    out.push_str("under load. Back-to-back runs drift on a shared machine by more than a small filter costs, so\n");
    out.push_str("\"added CPU\" and every ratio come from separate rounds in which each setup runs at the same\n");
    out.push_str("time as no filter and the empty Wasm filter, one connection each: what the setup's Envoy\n");
    out.push_str("spends per request over the same window minus what Envoy without a filter spends (medians\n");
    out.push_str("over rounds). \"vs native\" divides it by the native filter's, \"vs floor\" is the median of the\n");
    out.push_str("per-round ratios to what the empty filter adds. \"added p50\" is latency at one connection in\n");
    out.push_str("the setup's own runs, noisier.\n\n");
    out.push_str(table);
    for (file, title, about) in [
        (
            "target/bench/host-call-costs.md",
            "What one host call costs in Envoy (V8)",
            "From `just bench --probe` (last run on this machine): the empty filter's module doing one kind of host call 50 times per request, measured together with the empty filter. Calls that hand a value to the plugin go back into its allocator and cost several times the others. These are warm prices (one call repeated); a plugin making each kind of call once per request pays more (docs/performance.md).",
        ),
        (
            "target/bench/envoy-instructions.md",
            "Envoy instructions per request (callgrind)",
            "From `just bench --instructions` (last run on this machine): nearly deterministic where CPU time is not: repeat runs agree within 1%, so \"vs floor\" here hardly moves between runs. Instructions are not time: the kernel's share of a request and cache misses are not in them, and a host call's instructions are dearer than a tight loop's.",
        ),
        (
            "target/bench/host-call-instructions.md",
            "What one host call costs in Envoy, in instructions (callgrind)",
            "From `just bench --probe --instructions` (last run on this machine): the empty filter's module making one kind of call 50 times per request, minus the empty filter, per call.",
        ),
    ] {
        let Ok(text) = std::fs::read_to_string(workspace().join(file)) else {
            continue;
        };
        let _ = write!(out, "\n## {title}\n\n{about}\n\n{text}");
    }
    for (file, title, about) in [
        (
            "target/palisade-fuel.csv",
            "Fuel per request (test host, wasmtime)",
            "Deterministic instruction-like counts per request with the configs above, from `plugin_fuel` in host-tests.",
        ),
        (
            "target/palisade-host-calls.csv",
            "Host calls per request (test host)",
            "Each crossing between the plugin and the proxy, from `plugin_host_calls` in host-tests (which fails if a change adds any): in V8 a call back into the guest's allocator (`into_allocator`, for every value the host hands over) costs more than the work most plugins do.",
        ),
    ] {
        let Ok(text) = std::fs::read_to_string(workspace().join(file)) else {
            continue;
        };
        let _ = write!(out, "\n## {title}\n\n{about}\n\n");
        let mut lines = text.lines();
        if let Some(header) = lines.next() {
            let columns: Vec<&str> = header.split(',').collect();
            let _ = writeln!(out, "| {} |", columns.join(" | "));
            let _ = writeln!(out, "|{}", " --- |".repeat(columns.len()));
            for line in lines {
                let _ = writeln!(
                    out,
                    "| {} |",
                    line.split(',').collect::<Vec<_>>().join(" | ")
                );
            }
        }
    }
    out
}
