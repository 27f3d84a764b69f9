//! palisade-audit in real Envoy (V8, 2 workers) shipping to a loopback Kafka REST Proxy:
//! under load every event arrives exactly once by id and validates against its Avro schema;
//! through a collector outage every event is delivered or counted dropped, and Envoy's stats
//! say `sent + dropped == emitted`.

// Test infrastructure outside any proxy: the wall clock is the right one here.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use palisade::envoy::{self, Bootstrap, EnvoyProcess, Filter};
use palisade::plugins;
use palisade::upstream::EchoUpstream;
use palisade_host_tests::audit_events;
use palisade_host_tests::collector::KafkaRestCollector;
use palisade_host_tests::envoy_harness::{
    envoy_wasm_dir, workspace, BrokenUpstream as Broken, WORKERS,
};
use palisade_kit::reply::denial_details;
use serde_json::json;

const TOPICS: [&str; 4] = [
    "palisade.events.data",
    "palisade.events.system",
    "palisade.events.audit",
    "palisade.events.security",
];

struct Setup {
    envoy: EnvoyProcess,
    collector: KafkaRestCollector,
    _upstream: EchoUpstream,
    _dir: tempfile::TempDir,
    agent: ureq::Agent,
}

/// Envoy with `front` (other Palisade filters) and then palisade-audit, shipping to a fresh
/// collector.
fn start_with(front: Vec<Filter>) -> Setup {
    start_full(front, None)
}

/// As [`start_with`]; `broken` replaces the collector's cluster (the collector still runs,
/// unreached), with a 1 s sink timeout and one retry.
fn start_full(front: Vec<Filter>, broken: Option<Broken>) -> Setup {
    let collector = KafkaRestCollector::start(0, &TOPICS).unwrap();
    let upstream = EchoUpstream::start(0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = json!({
        "sink": {"kafka_rest": {
            "upstream": "kafka-rest",
            "authority": collector.addr().to_string(),
            "timeout": "5s",
        }},
        "batch": {"max_events": 20, "max_interval": "200ms", "max_buffered_events": 5000},
        "delivery": {"max_retries": 3, "backoff_base": "100ms", "backoff_max": "1s"},
        "classification": [
            {"event_type": "admin_operation", "paths": ["/admin/**"]},
            {"event_type": "data_access", "methods": ["GET"], "paths": ["/api/**"]},
        ],
    });
    let mut config = config;
    if broken.is_some() {
        config["sink"]["kafka_rest"]["timeout"] = json!("1s");
        config["delivery"] =
            json!({"max_retries": 1, "backoff_base": "100ms", "backoff_max": "100ms"});
    }
    let audit = plugins::find("audit").unwrap();
    let bootstrap = Bootstrap {
        listen_port: 0,
        upstream: upstream.addr(),
        wasm_dir: envoy_wasm_dir(),
        filters: front
            .into_iter()
            .chain([Filter::new(audit, config.to_string())])
            .collect(),
        native_filters: Vec::new(),
        route_filter_configs: json!({}),
    };
    let mut envoy_config = bootstrap.to_json(dir.path());
    envoy_config["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "name": "kafka-rest",
            "type": "STATIC",
            "connect_timeout": "0.25s",
            "load_assignment": {
                "cluster_name": "kafka-rest",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1",
                    "port_value": collector.addr().port(),
                }}}}]}],
            },
        }));
    if let Some(how) = broken {
        let cluster = envoy_config["static_resources"]["clusters"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|c| c["name"] == "kafka-rest")
            .unwrap();
        *cluster = how.cluster("kafka-rest");
    }
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
        collector,
        _upstream: upstream,
        _dir: dir,
        agent,
    }
}

fn start() -> Setup {
    start_with(Vec::new())
}

impl Setup {
    /// `requests` requests from 4 client threads, each with its own `x-request-id`.
    fn load(&self, tag: &str, requests: usize) {
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let agent = self.agent.clone();
                let envoy = &self.envoy;
                scope.spawn(move || {
                    for i in (thread..requests).step_by(4) {
                        let path = match i % 3 {
                            0 => "/api/orders?page=2",
                            1 => "/admin/users",
                            _ => "/health",
                        };
                        let reply = agent
                            .get(envoy.url(path))
                            .header("x-request-id", format!("{tag}-{i}"))
                            .header("authorization", "Bearer s3cr3t-Zq9")
                            .call()
                            .unwrap();
                        assert_eq!(reply.status(), 200);
                    }
                });
            }
        });
    }

    fn stats(&self) -> BTreeMap<String, i64> {
        self.envoy
            .stats()
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                let name = name.strip_prefix("wasmcustom.palisade_audit_")?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    /// Waits until nothing is buffered in any worker and `emitted` reached `emitted`.
    fn settled(&self, emitted: i64, limit: Duration) -> BTreeMap<String, i64> {
        let start = Instant::now();
        loop {
            let stats = self.stats();
            let get = |name: &str| stats.get(name).copied().unwrap_or(-1);
            if get("events_emitted") == emitted && get("queue_depth") == 0 {
                return stats;
            }
            assert!(
                start.elapsed() < limit,
                "not settled after {limit:?}: {stats:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The record's Kafka key (docs/audit.md): the subject, or the event id when there is none.
fn assert_keyed(record: &palisade_host_tests::collector::Produced) {
    let key = match &record.value["subject"] {
        serde_json::Value::Null => &record.value["event_id"],
        subject => subject,
    };
    assert!(key.is_string(), "{record:?}");
    assert_eq!(&record.key, key, "the record key: {record:?}");
}

#[test]
fn every_event_under_load_arrives_exactly_once_and_validates() {
    let setup = start();
    const N: usize = 300;
    setup.load("load", N);
    let stats = setup.settled(N as i64, Duration::from_secs(30));
    assert_eq!(stats["events_sent"], N as i64, "{stats:?}");
    assert_eq!(stats["events_dropped"], 0, "{stats:?}");

    let records = setup.collector.records();
    let answers = setup.collector.answers();
    assert_eq!(
        records.len(),
        N,
        "exactly once: {stats:?}, collector answers {answers:?}"
    );
    let ids: BTreeSet<&str> = records
        .iter()
        .map(|r| r.value["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), N, "unique ids");
    let request_ids: BTreeSet<String> = records
        .iter()
        .map(|r| r.value["request_id"].as_str().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = (0..N).map(|i| format!("load-{i}")).collect();
    assert_eq!(request_ids, expected);
    for record in &records {
        let event_type = audit_events::validate(&record.value).unwrap();
        let topic = match event_type.as_str() {
            "data_access" => "palisade.events.data",
            "admin_operation" => "palisade.events.audit",
            "api_call" => "palisade.events.system",
            other => panic!("unexpected {other}"),
        };
        assert_eq!(record.topic, topic);
        assert_eq!(record.value["status"], 200);
        assert_eq!(record.value["route"], "default");
        assert_eq!(record.value["upstream_cluster"], "upstream");
        assert!(record.value["latency_ms"].is_u64());
        assert!(record.value["bytes_out"].as_u64().unwrap() > 0);
        assert!(!record.value.to_string().contains("s3cr3t"));
        assert_keyed(record);
    }
    assert!(answers.iter().all(|&s| s == 200), "{answers:?}");
}

#[test]
fn through_a_collector_outage_every_event_is_delivered_or_counted_dropped() {
    let mut setup = start();
    setup.load("before", 100);
    setup.settled(100, Duration::from_secs(20));
    setup.collector.stop();
    setup.load("during", 100);
    // Longer than the retry budget (3 retries, 100 ms base): some batches run out of retries.
    std::thread::sleep(Duration::from_secs(2));
    setup.collector.restart().unwrap();
    setup.load("after", 100);
    let stats = setup.settled(300, Duration::from_secs(30));
    eprintln!("after the outage: {stats:?}");
    let (sent, dropped) = (stats["events_sent"], stats["events_dropped"]);
    assert_eq!(sent + dropped, 300, "{stats:?}");
    assert!(
        stats["events_retried"] > 0,
        "the outage caused retries: {stats:?}"
    );
    // 2 s down is longer than 3 retries at 100 ms base (at most 700 ms of backoff): batches
    // of the events sent during the outage ran out of retries. Those before and after it had
    // a collector.
    assert!(dropped > 0, "some batches ran out of retries: {stats:?}");
    assert!(dropped <= 100, "only events of the outage: {stats:?}");

    let records = setup.collector.records();
    let ids: BTreeSet<&str> = records
        .iter()
        .map(|r| r.value["event_id"].as_str().unwrap())
        .collect();
    // Every event counted sent reached the collector; redeliveries share their id. One that
    // reached it without being counted sent (its answer lost as the collector stopped) ended
    // counted dropped: sent <= ids <= sent + dropped.
    let received = ids.len() as i64;
    assert!(received >= sent, "{received} ids, {stats:?}");
    assert!(
        received - sent <= dropped,
        "{received} ids, {stats:?}: received but neither sent nor dropped"
    );
    assert!(ids.len() <= 300);
    let delivered: BTreeSet<String> = records
        .iter()
        .map(|r| r.value["request_id"].as_str().unwrap().to_owned())
        .collect();
    for i in 0..100 {
        assert!(delivered.contains(&format!("before-{i}")));
        assert!(delivered.contains(&format!("after-{i}")));
    }
    for record in &records {
        audit_events::validate(&record.value).unwrap();
        assert_keyed(record);
    }
}

/// A refusal by each plugin in front of palisade-audit: the event is a security event naming
/// the plugin and its reason, and the client sees no `x-palisade-denied-by` (that header is
/// for Kong, where palisade-audit's response phase runs on every reply and strips it).
#[test]
fn a_local_reply_from_an_earlier_filter_is_a_security_event_naming_it() {
    struct Refusal {
        plugin: &'static str,
        config: &'static str,
        /// Requests sent first, each answered 200.
        admitted: usize,
        /// The body sent without a length, so that only its bytes show it is too large.
        chunked: bool,
        status: u16,
        kind: &'static str,
        reason: &'static str,
        /// The subject the event names when the client claims `mallory`: none when the
        /// refusing plugin is palisade-auth or runs before it; without palisade-auth in the
        /// chain, nothing removes the claim (audit's docs: deploy it behind auth).
        subject: Option<&'static str>,
    }
    let refusals = [
        Refusal {
            plugin: "header-security",
            config: r#"{"limits":{"max_body_bytes":1024}}"#,
            admitted: 0,
            chunked: false,
            status: 413,
            kind: "body_too_large",
            reason: "request body too large",
            subject: None,
        },
        Refusal {
            plugin: "auth",
            config: "{}",
            admitted: 0,
            chunked: false,
            status: 401,
            kind: "unauthenticated",
            reason: "missing token",
            subject: None,
        },
        Refusal {
            plugin: "rate-limit",
            config: r#"{"limits":[{"name":"one","rate":1,"period":"1h","key":["method"]}]}"#,
            admitted: 1,
            chunked: false,
            status: 429,
            kind: "rate_limited",
            reason: "rate limit exceeded",
            subject: Some("mallory"),
        },
        // Refused at the body, after palisade-auth has run on the headers: the identity
        // headers are then auth's own and stay for the event. Without auth in front, as here,
        // the claim stays, as for rate-limit.
        Refusal {
            plugin: "header-security",
            config: r#"{"limits":{"max_body_bytes":1024}}"#,
            admitted: 0,
            chunked: true,
            status: 413,
            kind: "body_too_large",
            reason: "request body too large",
            subject: Some("mallory"),
        },
    ];
    for refusal in refusals {
        let plugin = plugins::find(refusal.plugin).unwrap();
        let setup = start_with(vec![Filter::new(plugin, refusal.config)]);
        let post = |id: String| {
            let request = setup
                .agent
                .post(setup.envoy.url("/api/orders"))
                .header("x-request-id", id)
                .header("content-type", "application/json")
                .header("x-palisade-subject", "mallory")
                .header("X-Palisade-Consumer", "mallory");
            let body = vec![b'x'; 4096];
            if refusal.chunked {
                request
                    .send(ureq::SendBody::from_owned_reader(std::io::Cursor::new(
                        body,
                    )))
                    .unwrap()
            } else {
                request.send(&body[..]).unwrap()
            }
        };
        for i in 0..refusal.admitted {
            assert_eq!(post(format!("ok-{i}")).status(), 200, "{}", refusal.plugin);
        }
        let reply = post("refused-1".to_owned());
        assert_eq!(reply.status(), refusal.status, "{}", refusal.plugin);
        assert_eq!(
            reply.headers().get("x-palisade-denied-by"),
            None,
            "{}: the client saw the denial note",
            refusal.plugin
        );
        setup.settled(refusal.admitted as i64 + 1, Duration::from_secs(10));
        let records = setup.collector.records();
        let refused: Vec<_> = records
            .iter()
            .filter(|r| r.value["request_id"] == "refused-1")
            .collect();
        assert_eq!(refused.len(), 1, "{}: {records:?}", refusal.plugin);
        let event = &refused[0].value;
        assert_eq!(audit_events::validate(event).unwrap(), "security");
        assert_eq!(refused[0].topic, "palisade.events.security");
        assert_keyed(refused[0]);
        assert_eq!(event["security_kind"], refusal.kind, "{event}");
        assert_eq!(event["status"], refusal.status);
        assert_eq!(
            event["denied_by"],
            json!({"plugin": plugin.full_name, "reason": refusal.reason}),
            "{event}"
        );
        assert_eq!(event["method"], "POST");
        assert_eq!(event["subject"], json!(refusal.subject), "{event}");
        assert_eq!(event["consumer"], json!(refusal.subject), "{event}");
        // Envoy skips palisade-audit's response phase for a reply sent before it: the details
        // are how it learns who refused.
        assert_eq!(
            event["response_code_details"],
            denial_details(plugin.full_name, refusal.reason)
        );
        // A streamed body's first bytes go upstream before its size is known.
        if !refusal.chunked {
            assert_eq!(
                event["upstream_address"],
                serde_json::Value::Null,
                "never reached the upstream"
            );
        }
        assert!(event["latency_ms"].is_u64(), "{event}");
    }
}

/// #9: a collector behind a cluster with no endpoint, a dead port, or a host that never
/// answers: no request waits for it (audit ships after the response, from the timer), every
/// call-out ends within the sink timeout (1 s) plus one retry, and every event is counted:
/// `dropped == emitted`, none sent, none lost silently.
#[test]
fn a_cluster_with_no_endpoint_a_dead_port_or_a_silent_collector_drops_and_counts_every_event() {
    const REQUESTS: usize = 30;
    for how in Broken::ALL {
        let setup = start_full(Vec::new(), Some(how));
        let mut slowest = Duration::ZERO;
        for i in 0..REQUESTS {
            let started = Instant::now();
            let reply = setup
                .agent
                .get(setup.envoy.url("/api/orders"))
                .header("x-request-id", format!("broken-{i}"))
                .call()
                .unwrap();
            assert_eq!(reply.status(), 200, "{how:?}");
            slowest = slowest.max(started.elapsed());
        }
        assert!(
            slowest < Duration::from_millis(500),
            "{how:?}: a request waited {slowest:?} on the collector"
        );
        // Each batch: a 1 s timeout at most, 100 ms backoff, one retry.
        let waiting = Instant::now();
        let stats = setup.settled(REQUESTS as i64, Duration::from_secs(20));
        let settled = waiting.elapsed();
        eprintln!("{how:?}: slowest request {slowest:?}, settled after {settled:?}, {stats:?}");
        // Two attempts of at most the 1 s timeout each, 100 ms backoff, the 200 ms batch
        // interval, and slack for a loaded machine.
        assert!(
            settled < Duration::from_millis(2 * 1000 + 100 + 200 + 1500),
            "{how:?}: took {settled:?}"
        );
        if how == Broken::Silent {
            assert!(
                settled >= Duration::from_secs(2),
                "only the timeout ends a silent collector's call-outs, twice: {settled:?}"
            );
        } else {
            assert!(
                settled < Duration::from_millis(1500),
                "{how:?}: fails at once, well within the timeout: {settled:?}"
            );
        }
        assert_eq!(stats["events_sent"], 0, "{how:?}: {stats:?}");
        assert_eq!(
            stats["events_dropped"], REQUESTS as i64,
            "{how:?}: {stats:?}"
        );
        assert!(
            stats["events_retried"] > 0,
            "{how:?}: retried first: {stats:?}"
        );
        assert!(setup.collector.records().is_empty(), "{how:?}");
    }
}

/// Istio changes a `WasmPlugin` by pushing a new filter config (ECDS): Envoy tears the old
/// root context down, which holds the events of the last batch interval and a batch in flight.
/// Done at once, those would be counted dropped, and the batch in flight cancelled uncounted;
/// the root delivers them first, then tells Envoy it is done.
#[test]
fn a_pushed_configuration_delivers_what_the_old_one_held() {
    use palisade_host_tests::envoy_harness::{eventually, static_cluster, EnvoyTest};
    let collector = KafkaRestCollector::start(0, &TOPICS).unwrap();
    let audit = plugins::find("audit").unwrap();
    // Batches leave only when full (1000) or a minute old: the events wait in the buffer.
    let config = |marker: &str| {
        json!({
            "sink": {"kafka_rest": {"upstream": "kafka-rest",
                "authority": collector.addr().to_string(), "timeout": "5s"}},
            "batch": {"max_events": 1000, "max_interval": "60s"},
            "capture_headers": [marker],
        })
        .to_string()
    };
    let port = collector.addr().port();
    let test = EnvoyTest::start_edited(
        vec![Filter::new(audit, config("x-one")).discovered()],
        |bootstrap| {
            bootstrap["static_resources"]["clusters"]
                .as_array_mut()
                .unwrap()
                .push(static_cluster("kafka-rest", port));
        },
    );
    for i in 0..40 {
        let reply = test.get("/api/x", &[("x-request-id", &format!("held-{i}"))]);
        assert_eq!(reply.status, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(collector.records().is_empty(), "nothing due yet");
    test.push_discovered(&Filter::new(audit, config("x-two")).discovered());
    eventually(Duration::from_secs(10), "the held events delivered", || {
        collector.records().len() >= 40
    });
    let ids: BTreeSet<String> = collector
        .records()
        .iter()
        .map(|r| r.value["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, (0..40).map(|i| format!("held-{i}")).collect());
    // Each worker that held events said so, and finished without a failure.
    assert!(
        !test.log_lines("delivering").is_empty(),
        "{}",
        test.envoy.log()
    );
    assert!(test.log_lines("could not finish shutting down").is_empty());
    assert!(test.log_lines("counted as dropped").is_empty());
    // The new configuration serves and ships as before.
    let reply = test.get("/api/x", &[("x-request-id", "after")]);
    assert_eq!(reply.status, 200);
}
