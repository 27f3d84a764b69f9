//! A bounded soak in real Envoy (V8, 2 workers, loopback only): all five plugins chained as at
//! an edge (header-security, auth, rate-limit, resilience, audit shipping to a loopback Kafka
//! REST collector), hostile traffic mixed with normal traffic for at most [`SOAK_TIME`] and
//! [`MAX_ROUNDS`] rounds.
//!
//! Hostile: oversized and duplicated headers, invalid UTF-8 header values, a 64 KB bearer
//! token, malformed tokens and JSON bodies, unknown methods, request smuggling shapes, clients
//! that abort mid-body or while the upstream is still answering, and slow bodies.
//!
//! It passes when, at the end:
//! - no Wasm VM failed or panicked: nothing in Envoy's log, no VM created after start-up (a
//!   failed VM is never replaced under the default fail-closed policy, and every later request
//!   of its worker gets 503), and every request of every round got the status its kind must get;
//! - no concurrency slot leaked: palisade-resilience's in-flight gauge is back to 0;
//! - normal traffic is still served (200, on fresh connections to both workers);
//! - Envoy's memory after warm-up stayed within [`MEMORY_GROWTH_BOUND`].

// Test infrastructure outside any proxy: the wall clock is the right one here.
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use palisade::envoy::Filter;
use palisade::plugins;
use palisade_host_tests::auth_tokens::{self, claims, Signer};
use palisade_host_tests::collector::KafkaRestCollector;
use palisade_host_tests::envoy_harness::{
    eventually, hcm, raw_exchange, static_cluster, EnvoyTest, RawReply,
};
use serde_json::{json, Value};

/// Wall-clock budget of the hostile rounds (the whole test stays under a minute).
const SOAK_TIME: Duration = Duration::from_secs(40);
/// Most rounds, whatever the machine's speed.
const MAX_ROUNDS: usize = 12;
/// Rounds run before memory is first measured (V8 tiers up, pools and buffers fill).
const WARM_UP_ROUNDS: usize = 1;
/// Fewest measured rounds for the memory check to mean something.
const MIN_MEASURED_ROUNDS: usize = 2;
/// How much Envoy's allocated memory (`server.memory_allocated`) may grow from the end of the
/// warm-up to the end of the soak. A leak of one header per request (~100 requests of 10-64 KB
/// per round) would pass it within a few rounds.
const MEMORY_GROWTH_BOUND: u64 = 16 * 1024 * 1024;

const TOPICS: [&str; 4] = [
    "palisade.events.data",
    "palisade.events.system",
    "palisade.events.audit",
    "palisade.events.security",
];

fn plugin(name: &str) -> &'static palisade::plugins::PluginInfo {
    plugins::find(name).unwrap()
}

fn chain() -> Vec<Filter> {
    let header_security = json!({
        "security_headers": {"preset": "api", "remove": ["server", "x-powered-by"]},
        "cors": {"allow_origins": [{"exact": "https://app.example.com"}],
                 "allow_methods": ["GET", "POST"], "allow_headers": ["authorization", "content-type"]},
        // Room for a 64 KB token, so it reaches auth; 100 header fields at most.
        "limits": {"max_header_bytes": 131072, "max_header_count": 100, "max_body_bytes": 65536},
    });
    let mut auth: Value = serde_json::from_str(&auth_tokens::config(json!({}))).unwrap();
    auth["allow_missing"] = json!(true);
    let rate_limit = json!({
        "limits": [
            // Generous for everyone: normal traffic is never limited. The burst matters: without
            // one, GCRA spaces requests a tenth of a millisecond apart, and two concurrent
            // requests from 127.0.0.1 were refused now and then (a 429 to a normal request, or
            // a reset while the slow body was still uploading).
            {"name": "per-ip", "rate": 100000, "period": "1s", "burst": 100000, "key": ["client_ip"]},
            // Tight for one tenant header the hostile traffic varies (and repeats).
            {"name": "per-tenant", "rate": 5, "period": "1s", "burst": 5,
             "key": [{"header": "x-tenant"}], "slots": 256},
        ],
    });
    let resilience = json!({"concurrency": {"max_requests": 1000}});
    vec![
        Filter::new(plugin("header-security"), header_security.to_string()),
        Filter::new(plugin("auth"), auth.to_string()),
        Filter::new(plugin("rate-limit"), rate_limit.to_string()),
        Filter::new(plugin("resilience"), resilience.to_string()),
        Filter::new(plugin("audit"), ""),
    ]
}

fn audit_config(collector: &KafkaRestCollector) -> String {
    json!({
        "sink": {"kafka_rest": {"upstream": "kafka-rest",
                                "authority": collector.addr().to_string(), "timeout": "2s"}},
        "batch": {"max_events": 50, "max_interval": "200ms", "max_buffered_events": 2000},
        "delivery": {"max_retries": 1, "backoff_base": "100ms", "backoff_max": "500ms"},
        "classification": [{"event_type": "admin_operation", "paths": ["/admin/**"]}],
        "capture_headers": ["x-tenant"],
    })
    .to_string()
}

fn start(collector: &KafkaRestCollector) -> EnvoyTest {
    let mut filters = chain();
    if let Some(audit) = filters.last_mut() {
        audit.config = audit_config(collector);
    }
    let collector_port = collector.addr().port();
    EnvoyTest::start_edited(filters, |config| {
        // Envoy's own header limit (60 KB by default) above the 64 KB token, so the token
        // reaches the plugins; a 100 KB header is still Envoy's to refuse.
        hcm(config)["max_request_headers_kb"] = json!(96);
        config["static_resources"]["clusters"]
            .as_array_mut()
            .unwrap()
            .push(static_cluster("kafka-rest", collector_port));
    })
}

/// One raw request and the statuses it may get.
struct Case {
    name: &'static str,
    request: Vec<u8>,
    expect: &'static [u16],
}

fn request(method: &str, path: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nhost: api.example.com\r\n").into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(body);
    out
}

fn bearer(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

/// The round's requests that get an answer: normal ones first and last, hostile in between.
fn cases(round: usize, good_token: &str) -> Vec<Case> {
    let tenant = format!("tenant-{}", round % 3);
    let big_token = "A".repeat(64 * 1024);
    let huge_value = vec![b'x'; 100 * 1024];
    let dup_headers: Vec<(&str, &[u8])> = (0..150).map(|_| ("x-dup", &b"1"[..])).collect();
    let long_path = format!("/api/{}", "a/".repeat(3000));
    let normal = |name: &'static str, path: &str| Case {
        name,
        request: request(
            "GET",
            path,
            &[("authorization", bearer(good_token).as_slice())],
            b"",
        ),
        expect: &[200],
    };
    vec![
        normal("normal GET with a token", "/api/items?page=1"),
        normal("normal GET of an admin path", "/admin/users"),
        Case {
            name: "anonymous GET",
            request: request("GET", "/health", &[], b""),
            expect: &[200],
        },
        Case {
            name: "64 KB bearer token",
            request: request("GET", "/api/items", &[("authorization", bearer(&big_token).as_slice())], b""),
            // Refused every time: never let through on the first value alone.
            expect: &[401],
        },
        Case {
            name: "100 KB header (over Envoy's limit)",
            request: request("GET", "/api/items", &[("x-big", huge_value.as_slice())], b""),
            expect: &[431],
        },
        Case {
            name: "150 duplicated headers (over header-security's count)",
            request: request("GET", "/api/items", &dup_headers, b""),
            expect: &[431],
        },
        Case {
            name: "duplicated authorization headers",
            request: request(
                "GET",
                "/api/items",
                &[("authorization", bearer(good_token).as_slice()), ("authorization", &b"Bearer x.y.z"[..])],
                b"",
            ),
            expect: &[401],
        },
        Case {
            name: "invalid UTF-8 header values",
            request: request(
                "GET",
                "/api/items",
                &[("x-tenant", &b"\xff\xfe\xc0\xaf"[..]), ("user-agent", &b"\x80\x81 bot"[..]),
                  ("x-request-id", &b"\xe2\x28\xa1"[..])],
                b"",
            ),
            // The plugins pass it on (429 once the tenant budget keyed on those bytes is spent),
            // and the echo upstream answers it; header-security replaces the invalid request id.
            expect: &[200, 429],
        },
        Case {
            name: "invalid UTF-8 in the bearer token",
            request: request("GET", "/api/items", &[("authorization", &b"Bearer \xff\xfe.\xc3\x28.\xa0"[..])], b""),
            expect: &[401],
        },
        Case {
            name: "malformed tokens",
            request: request("GET", "/api/items", &[("authorization", &b"Bearer ....."[..]), ("cookie", &b"session=a.b"[..])], b""),
            expect: &[401],
        },
        Case {
            name: "alg none token",
            request: request("GET", "/api/items", &[("authorization", &b"Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."[..])], b""),
            expect: &[401],
        },
        Case {
            name: "spoofed identity headers",
            request: request("GET", "/api/items", &[("x-palisade-subject", &b"admin"[..]), ("X-Palisade-Consumer", &b"root"[..])], b""),
            expect: &[200],
        },
        Case {
            name: "malformed JSON body",
            request: request("POST", "/api/orders", &[("content-type", &b"application/json"[..]), ("x-tenant", tenant.as_bytes())],
                             b"{\"sku\": \"A-1\", \"quantity\": [1, 2, {\"nested\": tru"),
            expect: &[200, 429],
        },
        Case {
            name: "body over header-security's limit",
            request: request("POST", "/api/upload", &[("content-type", &b"application/octet-stream"[..])], &[0u8; 70_000]),
            expect: &[413],
        },
        Case {
            // Envoy's HTTP/1 codec refuses a method it does not know before any filter runs.
            name: "non-standard method",
            request: request("BREW", "/api/coffee", &[], b""),
            expect: &[400],
        },
        Case {
            name: "unknown method with a body",
            request: request("PROPPATCH", "/api/x", &[("x-tenant", tenant.as_bytes())], b"<xml/>"),
            expect: &[200, 429],
        },
        Case {
            name: "CORS preflight from an unknown origin",
            request: request("OPTIONS", "/api/items", &[("origin", &b"https://evil.example"[..]), ("access-control-request-method", &b"DELETE"[..])], b""),
            expect: &[200],
        },
        Case {
            name: "long path and query",
            request: request("GET", &format!("{long_path}?{}", "q=%ff&".repeat(500)), &[], b""),
            expect: &[200],
        },
        Case {
            name: "control character in a header value",
            request: request("GET", "/api/items", &[("x-bad", &b"a\x01b"[..])], b""),
            expect: &[400],
        },
        Case {
            name: "content-length and transfer-encoding together",
            request: b"POST /api/orders HTTP/1.1\r\nhost: api.example.com\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n0\r\n\r\n".to_vec(),
            expect: &[400],
        },
        Case {
            name: "chunked body with a malformed chunk size",
            request: b"POST /api/orders HTTP/1.1\r\nhost: api.example.com\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec(),
            expect: &[400],
        },
        normal("normal GET at the end of the round", "/api/items?page=2"),
    ]
}

/// Sends a POST announcing `length` bytes, writes a tenth of them, and hangs up.
fn abort_mid_body(port: u16, path: &str, length: usize) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to Envoy");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: api.example.com\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("send the head");
    let _ = stream.write_all(&vec![b'{'; length / 10]);
    let _ = stream.flush();
    std::thread::sleep(Duration::from_millis(50));
}

/// Sends a GET the upstream answers slowly and hangs up before the answer: the stream ends with
/// no response while resilience holds its slot.
fn abort_while_upstream_answers(port: u16) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to Envoy");
    stream
        .write_all(
            b"GET /api/slow HTTP/1.1\r\nhost: api.example.com\r\nx-upstream-delay-ms: 1500\r\n\r\n",
        )
        .expect("send the request");
    std::thread::sleep(Duration::from_millis(300));
}

/// A POST whose 2 KB body arrives in 8 pieces 100 ms apart.
fn slow_body(port: u16) -> std::io::Result<RawReply> {
    let body = vec![b'a'; 2048];
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.write_all(
        format!(
            "POST /api/slow-upload HTTP/1.1\r\nhost: api.example.com\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )?;
    for piece in body.chunks(256) {
        std::thread::sleep(Duration::from_millis(100));
        stream.write_all(piece)?;
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut bytes)?;
    let status = std::str::from_utf8(bytes.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(RawReply {
        status,
        headers: Vec::new(),
        body: bytes,
    })
}

/// One round: the cases from two client threads, while other threads abort and trickle.
/// Returns the failures (case, status) found.
fn round(test: &EnvoyTest, round: usize, good_token: &str) -> Vec<String> {
    let port = test.envoy.port();
    let cases = cases(round, good_token);
    let mut failures = Vec::new();
    std::thread::scope(|scope| {
        let aborts = scope.spawn(move || {
            for i in 0..4 {
                abort_mid_body(port, &format!("/api/upload/{i}"), 40_000);
            }
            abort_while_upstream_answers(port);
        });
        let slow = scope.spawn(move || slow_body(port));
        let halves: Vec<_> = [0, 1]
            .into_iter()
            .map(|half| {
                let cases = &cases;
                scope.spawn(move || {
                    cases
                        .iter()
                        .skip(half)
                        .step_by(2)
                        .filter_map(|case| match raw_exchange(port, &case.request) {
                            Ok(reply) if case.expect.contains(&reply.status) => None,
                            Ok(reply) => Some(format!(
                                "round {round}: {}: got {} {:?}",
                                case.name,
                                reply.status,
                                reply.body_text()
                            )),
                            Err(err) => Some(format!("round {round}: {}: {err}", case.name)),
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for half in halves {
            failures.extend(half.join().unwrap());
        }
        aborts.join().unwrap();
        match slow.join().unwrap() {
            Ok(reply) if reply.status == 200 => {}
            Ok(reply) => failures.push(format!("round {round}: slow body: got {}", reply.status)),
            Err(err) => failures.push(format!("round {round}: slow body: {err}")),
        }
    });
    failures
}

fn memory_allocated(test: &EnvoyTest) -> u64 {
    test.stat("server.memory_allocated")
        .expect("server.memory_allocated in Envoy's stats")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Log lines that mean a VM failed or a plugin panicked.
const VM_FAILURE_MARKS: [&str; 6] = [
    "panicked at",
    "Uncaught RuntimeError",
    "wasm_fail_stream",
    "Wasm VM failed",
    "failed to load",
    "configuration rejected",
];

#[test]
fn hostile_traffic_leaves_every_vm_alive_no_slot_leaked_and_memory_flat() {
    let collector = KafkaRestCollector::start(0, &TOPICS).unwrap();
    let test = start(&collector);
    let good_token = Signer::for_alg("RS256").sign(&{
        let mut c = claims(auth_tokens::unix_now());
        c["exp"] = json!(auth_tokens::unix_now() + 3600);
        c
    });
    let vms_created = test.stat("wasm.envoy.wasm.runtime.v8.created");
    assert!(vms_created.is_some_and(|n| n > 0), "{}", test.envoy.stats());

    let started = Instant::now();
    let mut failures = Vec::new();
    let mut baseline = None;
    let mut rounds = 0;
    while rounds < MAX_ROUNDS && started.elapsed() < SOAK_TIME {
        failures.extend(round(&test, rounds, &good_token));
        rounds += 1;
        if rounds == WARM_UP_ROUNDS {
            baseline = Some((memory_allocated(&test), rss_kib(test.envoy.pid())));
        }
    }
    let measured = rounds.saturating_sub(WARM_UP_ROUNDS);
    let (allocated_before, rss_before) = baseline.expect("warm-up finished");
    let allocated_after = memory_allocated(&test);
    let rss_after = rss_kib(test.envoy.pid());
    println!(
        "soak: {rounds} rounds in {:?}; server.memory_allocated {allocated_before} -> \
         {allocated_after} bytes; VmRSS {rss_before} -> {rss_after} KiB",
        started.elapsed()
    );
    assert_eq!(failures, Vec::<String>::new());

    // Normal traffic still served, by both workers (fresh connections), after the storm.
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..10 {
        let reply = test.raw_get(
            &format!("/api/final/{i}"),
            &[("authorization", &format!("Bearer {good_token}"))],
        );
        assert_eq!(reply.status, 200, "{}", reply.body_text());
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    }
    let identities = test
        .upstream
        .seen()
        .iter()
        .filter(|r| r.path.starts_with("/api/final/"))
        .filter(|r| r.header("x-palisade-subject") == Some("alice"))
        .count();
    assert_eq!(identities, 10, "auth still verifies tokens");

    // No VM failed, panicked, or was replaced.
    let log = test.envoy.log();
    for mark in VM_FAILURE_MARKS {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(mark)).collect();
        assert!(lines.is_empty(), "{mark}: {lines:#?}");
    }
    assert_eq!(test.stat("wasm.envoy.wasm.runtime.v8.created"), vms_created);

    // Every concurrency slot given back: the in-flight gauge records the shared count each
    // change left, and the last change (a final request on an idle proxy) leaves 0.
    // Stream ends reach the plugin after the client has its answer: poll, generously.
    let inflight = "wasmcustom.palisade_resilience.inflight.upstream";
    eventually(
        Duration::from_secs(15),
        "the in-flight gauge back to 0",
        || test.stat(inflight) == Some(0),
    );

    // Memory flat after warm-up.
    assert!(
        measured >= MIN_MEASURED_ROUNDS,
        "only {measured} rounds after warm-up in {SOAK_TIME:?}"
    );
    assert!(
        allocated_after <= allocated_before + MEMORY_GROWTH_BOUND,
        "Envoy's allocated memory grew {allocated_before} -> {allocated_after} bytes over {measured} rounds"
    );
}
