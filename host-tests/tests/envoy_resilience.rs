//! palisade-resilience in real Envoy (2 workers) in front of an upstream that fails on command:
//! the circuit's whole life, no slot leaked by a burst of client aborts, injected faults.
//!
//! Requests go on fresh connections so both workers take part: one keep-alive connection would
//! keep every request on one worker.

// Real Envoy runs on the wall clock: waiting for it needs the wall clock too.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use palisade::envoy::Filter;
use palisade::plugins;
use palisade::upstream::{DELAY_HEADER, STATUS_HEADER};
use palisade_host_tests::envoy_harness::EnvoyTest;

fn resilience(config: &str) -> EnvoyTest {
    EnvoyTest::start(vec![Filter::new(
        plugins::find("resilience").unwrap(),
        config,
    )])
}

fn port(test: &EnvoyTest) -> u16 {
    let url = test.envoy.url("");
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// One HTTP/1.1 request on a new connection; returns the status and the whole response text.
fn request(test: &EnvoyTest, headers: &[(&str, &str)]) -> (u16, String) {
    let mut conn = TcpStream::connect(("127.0.0.1", port(test))).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut text = String::from("GET /orders HTTP/1.1\r\nhost: shop\r\nconnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    conn.write_all(text.as_bytes()).unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    (status, response)
}

/// The value of one of the plugin's stats (`wasmcustom.<name>`) in Envoy's admin /stats.
fn stat(test: &EnvoyTest, name: &str) -> Option<i64> {
    let stats = test
        .envoy
        .admin_get("/stats?filter=palisade_resilience")
        .unwrap();
    let wanted = format!("wasmcustom.{name}: ");
    stats
        .lines()
        .find_map(|line| line.strip_prefix(wanted.as_str()))
        .map(|value| value.trim().parse().unwrap())
}

/// Waits up to `limit` for a stat to reach `value` (stream ends are asynchronous to clients).
fn stat_reaches(test: &EnvoyTest, name: &str, value: i64, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if stat(test, name) == Some(value) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn the_circuit_opens_after_five_failures_fast_fails_half_opens_and_closes() {
    let test = resilience(
        r#"{"circuit_breaker":{"base_ejection":"8s","max_ejection":"20s"},"retry":{"max_retries":0}}"#,
    );
    let fail = [(STATUS_HEADER, "503")];
    for i in 0..4 {
        assert_eq!(
            request(&test, &fail).0,
            503,
            "request {i} reached the upstream"
        );
    }
    assert_eq!(stat(&test, "palisade_resilience.circuit_opened"), Some(0));
    assert_eq!(request(&test, &fail).0, 503);
    assert_eq!(test.upstream.seen().len(), 5);
    assert_eq!(stat(&test, "palisade_resilience.circuit_opened"), Some(1));
    assert_eq!(stat(&test, "palisade_resilience.circuit.upstream"), Some(1));

    // Open: answered by the plugin, the upstream sees nothing more.
    for i in 0..6 {
        let (status, response) = request(&test, &[]);
        assert_eq!(
            status,
            503,
            "request {i} after opening: {}",
            test.envoy.log()
        );
        // Whole seconds left of the 8 s opening (how many passed depends on this machine's
        // load, not on the plugin).
        let retry_after: u64 = response
            .lines()
            .find_map(|l| l.strip_prefix("retry-after: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no retry-after: {response}"));
        assert!((1..=8).contains(&retry_after), "{response}");
        // Envoy gave the request an x-request-id; the body quotes it.
        let body = response.split("\r\n\r\n").nth(1).unwrap();
        assert!(
            body.starts_with(r#"{"error":"upstream circuit open","status":503,"request_id":""#),
            "{response}"
        );
    }
    assert_eq!(test.upstream.seen().len(), 5);
    assert_eq!(stat(&test, "palisade_resilience.circuit_rejected"), Some(6));
    assert_eq!(
        test.log_lines("circuit upstream opened for 8s (5 consecutive failures)")
            .len(),
        1,
        "logged once across both workers"
    );

    // After the open time the next request is the trial; its success closes the circuit.
    std::thread::sleep(Duration::from_millis(8_100));
    assert_eq!(request(&test, &[]).0, 200);
    assert_eq!(test.upstream.seen().len(), 6);
    assert_eq!(
        stat(&test, "palisade_resilience.circuit_half_opened"),
        Some(1)
    );
    assert_eq!(stat(&test, "palisade_resilience.circuit_closed"), Some(1));
    assert_eq!(stat(&test, "palisade_resilience.circuit.upstream"), Some(0));
    for _ in 0..4 {
        assert_eq!(request(&test, &[]).0, 200);
    }
}

/// Envoy's own overflow 503 (the cluster's `circuit_breakers` refuse every request: a
/// DestinationRule's `connectionPool` in Istio) tried no upstream: the plugin tells it by its
/// response code details and never opens the circuit on it, in real Envoy.
#[test]
fn envoys_own_overflow_never_opens_the_circuit() {
    let test = EnvoyTest::start_edited(
        vec![Filter::new(
            plugins::find("resilience").unwrap(),
            r#"{"retry":{"max_retries":0}}"#,
        )],
        |config| {
            let clusters = config["static_resources"]["clusters"]
                .as_array_mut()
                .unwrap();
            let upstream = clusters
                .iter_mut()
                .find(|c| c["name"] == "upstream")
                .unwrap();
            upstream["circuit_breakers"] = serde_json::json!({"thresholds": [{"max_requests": 0}]});
        },
    );
    for i in 0..8 {
        let (status, response) = request(&test, &[]);
        assert_eq!(status, 503, "request {i}: {response}");
        assert!(
            response
                .to_ascii_lowercase()
                .contains("x-envoy-overloaded: true"),
            "Envoy's overflow, not the plugin's refusal: {response}"
        );
    }
    assert!(test.upstream.seen().is_empty());
    assert_eq!(stat(&test, "palisade_resilience.circuit_opened"), Some(0));
    assert_eq!(stat(&test, "palisade_resilience.circuit_rejected"), Some(0));
}

#[test]
fn a_burst_of_client_aborts_leaks_no_slot() {
    let test = resilience(r#"{"concurrency":{"max_requests":50}}"#);
    let gauge = "palisade_resilience.inflight.upstream";
    let clients: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut conn = TcpStream::connect(("127.0.0.1", port(&test))).unwrap();
            let text = format!("GET /slow HTTP/1.1\r\nhost: shop\r\n{DELAY_HEADER}: 3000\r\n\r\n");
            conn.write_all(text.as_bytes()).unwrap();
            conn
        })
        .collect();
    assert!(
        stat_reaches(&test, gauge, 20, Duration::from_secs(5)),
        "all 20 in flight: {:?}",
        stat(&test, gauge)
    );
    drop(clients); // every client leaves before its answer
                   // The gauge records the shared count each change left; one request alone afterwards
                   // takes a slot and gives it back, so the count it leaves is exact: 0 unless one leaked.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(request(&test, &[]).0, 200);
    assert!(
        stat_reaches(&test, gauge, 0, Duration::from_secs(5)),
        "slots given back: {:?}",
        stat(&test, gauge)
    );
}

#[test]
fn injected_faults_hit_the_configured_share() {
    let test = resilience(
        r#"{"fault":{"abort":{"status":418,"percent":50},"delay":{"duration":"200ms","percent":100},"only_with_header":"x-chaos"}}"#,
    );
    // Without the header: untouched.
    for _ in 0..10 {
        assert_eq!(request(&test, &[]).0, 200);
    }
    let mut aborted = 0;
    for _ in 0..60 {
        let started = Instant::now();
        let (status, _) = request(&test, &[("x-chaos", "1")]);
        // Every eligible request is delayed first: none can come back sooner.
        assert!(started.elapsed() >= Duration::from_millis(200) || status == 418);
        match status {
            418 => aborted += 1,
            200 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!((15..=45).contains(&aborted), "{aborted} of 60 aborted");
    assert_eq!(
        stat(&test, "palisade_resilience.fault_aborted"),
        Some(aborted)
    );
    assert_eq!(
        stat(&test, "palisade_resilience.fault_delayed"),
        Some(60 - aborted)
    );
}

#[test]
fn envoy_retries_and_times_out_as_the_plugin_says() {
    let test = resilience(r#"{"timeouts":{"deadline_header":"x-request-deadline-ms"}}"#);
    // A GET failing with 503 is retried 3 times; the client's own ask for 9 is dropped.
    let (status, _) = request(
        &test,
        &[(STATUS_HEADER, "503"), ("x-envoy-max-retries", "9")],
    );
    assert_eq!(status, 503);
    let seen = test.upstream.seen();
    assert_eq!(seen.len(), 4, "one try and three retries");
    // The router consumes its headers: the upstream sees none of them.
    for request in &seen {
        assert!(
            !request.headers.iter().any(|(name, _)| {
                name.starts_with("x-envoy-retry")
                    || name.starts_with("x-envoy-max")
                    || name.starts_with("x-envoy-upstream-rq")
            }),
            "{request:?}"
        );
    }

    // A deadline 400 ms away becomes the upstream timeout: Envoy answers 504 itself.
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 400;
    let (status, response) = request(
        &test,
        &[
            (DELAY_HEADER, "5000"),
            ("x-request-deadline-ms", &deadline.to_string()),
        ],
    );
    assert_eq!(status, 504, "{response}");
    assert!(response.contains("upstream request timeout"), "{response}");
    assert_eq!(
        stat(&test, "palisade_resilience.deadline_exceeded"),
        Some(0),
        "Envoy's own timeout is not the plugin's refusal"
    );
    // A deadline already passed never reaches the upstream.
    let before = test.upstream.seen().len();
    let (status, response) = request(&test, &[("x-request-deadline-ms", "1000")]);
    assert_eq!(status, 504);
    assert!(
        response.contains(r#""error":"deadline exceeded""#),
        "{response}"
    );
    assert_eq!(test.upstream.seen().len(), before);
    assert!(
        stat_reaches(
            &test,
            "palisade_resilience.deadline_exceeded",
            1,
            Duration::from_secs(2)
        ),
        "{:?}",
        stat(&test, "palisade_resilience.deadline_exceeded")
    );
}
