//! palisade-audit in the test host, under Envoy and Kong: the events it ships (content per
//! scenario, Avro-valid, no secret byte), sampling, batching by size and by interval on the
//! virtual clock, retries, drops, and the accounting `sent + dropped == emitted`.

mod plugin_support;

use std::collections::BTreeMap;
use std::time::Duration;

use palisade_host_tests::audit_events;
use palisade_host_tests::wasm_host::{
    CalloutReply, Failure, Host, HttpCall, KongVersion, MetricValue, Outcome, Plugin, PluginVms,
    Profile, Request, Response,
};
use plugin_support::{assert_rejected, load, plugin_warnings};
use serde_json::Value;

const SECRET: &str = "s3cr3t-Zq9";

/// Envoy names a cluster, Kong `host:port`: the one config difference between the hosts.
fn upstream(profile: Profile) -> &'static str {
    if profile.is_kong() {
        "127.0.0.1:8082"
    } else {
        "kafka-rest"
    }
}

fn config(profile: Profile, extra: &str) -> String {
    format!(
        r#"{{"sink":{{"kafka_rest":{{"upstream":"{}","authority":"kafka-rest.kafka:8082","timeout":"2s"}}}},
            "classification":[
                {{"event_type":"admin_operation","paths":["/admin/**"]}},
                {{"event_type":"data_access","methods":["GET"],"paths":["/api/**"]}},
                {{"event_type":"user_action","methods":["POST","DELETE"],"paths":["/api/**"]}}],
            "capture_headers":["x-tenant"],
            "redaction":{{"headers":["x-tenant-pin"]}}{extra}}}"#,
        upstream(profile)
    )
}

fn produced(n: usize) -> CalloutReply {
    let offsets: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"partition":0,"offset":{i},"error_code":null,"error":null}}"#))
        .collect();
    CalloutReply::status(200)
        .header("content-type", "application/vnd.kafka.v2+json")
        .body(format!(
            r#"{{"key_schema_id":null,"value_schema_id":null,"offsets":[{}]}}"#,
            offsets.join(",")
        ))
}

/// A request with every secret a client could send, through to its response, finished.
fn exchange(vms: &PluginVms, method: &str, path: &str, status: u16) -> Result<(), Failure> {
    let mut stream = vms.http_request(
        Request::new(method, path)
            .authority("shop.example.com")
            .header("authorization", format!("Bearer {SECRET}"))
            .header("cookie", format!("session={SECRET}"))
            .header("x-api-key", SECRET)
            .header("x-tenant-pin", SECRET)
            .header("x-tenant", "acme")
            .header("user-agent", "curl/8.5.0")
            .header("x-request-id", "req-1")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .header("x-palisade-subject", "alice")
            .header("x-palisade-consumer", "shop-web"),
    )?;
    assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
    let mut response = Response::status(status).header("set-cookie", format!("sid={SECRET}"));
    if status == 401 {
        response = response.header(
            "x-palisade-denied-by",
            r#"palisade-auth; reason="token expired""#,
        );
    }
    assert_eq!(
        stream.send_response_headers(response, true)?,
        Outcome::Continue
    );
    assert!(
        !stream.response_headers().contains("x-palisade-denied-by"),
        "the denial note never reaches the client"
    );
    stream.finish()
}

/// The events of one dispatched batch, each checked against its Avro schema, and each record
/// keyed as docs/audit.md says: by the subject, or by the event id when there is none.
fn events(call: &HttpCall) -> Vec<Value> {
    let body: Value = serde_json::from_slice(&call.body).unwrap();
    body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| {
            let value = record["value"].clone();
            audit_events::validate(&value).unwrap();
            let key = match &value["subject"] {
                Value::Null => &value["event_id"],
                subject => subject,
            };
            assert!(key.is_string(), "{record}");
            assert_eq!(&record["key"], key, "the record key: {record}");
            value
        })
        .collect()
}

/// The plugin's own lines at `warn` or above.
fn warnings(vms: &PluginVms) -> Vec<String> {
    plugin_warnings(vms.logs())
}

fn counter(host: &Host, name: &str) -> u64 {
    match host.metrics().get(name) {
        Some(MetricValue::Counter(n)) => *n,
        other => panic!("{name}: {other:?}"),
    }
}

fn gauge(host: &Host, name: &str) -> i64 {
    match host.metrics().get(name) {
        Some(MetricValue::Gauge(n)) => *n,
        other => panic!("{name}: {other:?}"),
    }
}

fn totals(host: &Host) -> [u64; 4] {
    [
        "palisade_audit_events_emitted",
        "palisade_audit_events_sent",
        "palisade_audit_events_retried",
        "palisade_audit_events_dropped",
    ]
    .map(|name| counter(host, name))
}

#[test]
fn bad_configurations_are_refused_with_one_line() -> Result<(), Failure> {
    assert_rejected(
        Plugin::Audit,
        r#"{"batch":{"max_events":0}}"#,
        "[palisade-audit] configuration rejected: batch.max_events: must be between 1 and 10000",
    )?;
    assert_rejected(
        Plugin::Audit,
        r#"{"capture_headers":["authorization"]}"#,
        "[palisade-audit] configuration rejected: capture_headers[0]: \"authorization\" carries secrets and is never captured",
    )
}

#[test]
fn each_scenario_ships_its_event_to_its_topic_without_a_secret_byte() -> Result<(), Failure> {
    for profile in [Profile::Envoy, Profile::Kong(KongVersion::V3_10)] {
        let (host, vms) = load(profile, Plugin::Audit, &config(profile, ""))?;
        for _ in 0..5 {
            host.script_http_call(upstream(profile), produced(1));
        }
        // Envoy's answer for every stream here; the plugin asks only for an error's.
        host.set_property("response.code_details", "jwt_authn_access_denied");
        exchange(&vms, "GET", "/api/orders?page=2&access_token=abc", 200)?;
        exchange(&vms, "POST", "/api/orders", 201)?;
        exchange(&vms, "DELETE", "/admin/users/7", 204)?;
        exchange(&vms, "GET", "/health", 200)?;
        exchange(&vms, "GET", "/api/orders", 401)?;
        assert!(
            host.http_calls().is_empty(),
            "{profile:?}: nothing before the interval"
        );
        host.advance_clock(Duration::from_secs(1))?;
        let calls = host.http_calls();
        let mut by_topic = BTreeMap::new();
        let mut shipped = Vec::new();
        for call in &calls {
            assert_eq!(call.upstream, upstream(profile));
            assert_eq!(call.headers.get(":method"), Some("POST"));
            assert_eq!(
                call.headers.get(":authority"),
                Some("kafka-rest.kafka:8082")
            );
            assert_eq!(
                call.headers.get("content-type"),
                Some("application/vnd.kafka.json.v2+json")
            );
            assert_eq!(
                call.headers.get("accept"),
                Some("application/vnd.kafka.v2+json"),
                "{profile:?}: a REST proxy is asked for its v2 answer"
            );
            assert_eq!(call.timeout, Duration::from_secs(2));
            let everything = format!("{:?}{}", call.headers, String::from_utf8_lossy(&call.body));
            assert!(!everything.contains(SECRET), "{profile:?}: {everything}");
            assert!(
                !everything.contains("abc"),
                "{profile:?}: the token in the query"
            );
            let topic = call.headers.get(":path").unwrap().to_owned();
            for event in events(call) {
                shipped.push((
                    event["method"].as_str().unwrap().to_owned(),
                    event["path"].as_str().unwrap().to_owned(),
                    event["event_type"].as_str().unwrap().to_owned(),
                    topic.clone(),
                ));
                by_topic.insert(topic.clone(), event);
            }
        }
        // Every exchange's event, once, on its topic (by_topic keeps one per topic).
        shipped.sort();
        let expected = [
            ("DELETE", "/admin/users/7", "admin_operation", "audit"),
            ("GET", "/api/orders", "security", "security"),
            (
                "GET",
                "/api/orders?page=REDACTED&access_token=REDACTED",
                "data_access",
                "data",
            ),
            ("GET", "/health", "api_call", "system"),
            ("POST", "/api/orders", "user_action", "audit"),
        ]
        .map(|(method, path, event_type, topic)| {
            (
                method.to_owned(),
                path.to_owned(),
                event_type.to_owned(),
                format!("/topics/palisade.events.{topic}"),
            )
        });
        assert_eq!(shipped, expected, "{profile:?}");
        let topics: Vec<&str> = by_topic.keys().map(String::as_str).collect();
        assert_eq!(
            topics,
            [
                "/topics/palisade.events.audit",
                "/topics/palisade.events.data",
                "/topics/palisade.events.security",
                "/topics/palisade.events.system"
            ],
            "{profile:?}"
        );
        let data = &by_topic["/topics/palisade.events.data"];
        assert_eq!(data["event_type"], "data_access");
        assert_eq!(
            data["path"],
            "/api/orders?page=REDACTED&access_token=REDACTED"
        );
        assert_eq!(data["method"], "GET");
        assert_eq!(data["host"], "shop.example.com");
        assert_eq!(data["status"], 200);
        assert_eq!(data["subject"], "alice");
        assert_eq!(data["consumer"], "shop-web");
        assert_eq!(data["user_agent"], "curl/8.5.0");
        assert_eq!(data["request_id"], "req-1");
        assert_eq!(data["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(data["client_address"], "10.0.0.1");
        assert_eq!(data["headers"], serde_json::json!({"x-tenant": "acme"}));
        assert_eq!(data["denied_by"], Value::Null);
        assert_eq!(data["response_code_details"], Value::Null, "{profile:?}");
        let security = &by_topic["/topics/palisade.events.security"];
        assert_eq!(security["security_kind"], "unauthenticated");
        let details = match profile {
            Profile::Envoy => serde_json::json!("jwt_authn_access_denied"),
            _ => Value::Null,
        };
        assert_eq!(security["response_code_details"], details, "{profile:?}");
        // Kong: from the refusing plugin's header. Envoy: Palisade plugins name themselves in
        // the response code details (here Envoy's own), so a header can only have come from
        // the upstream and names nobody (it is still stripped).
        let denied_by = match profile {
            Profile::Envoy => Value::Null,
            _ => serde_json::json!({"plugin": "palisade-auth", "reason": "token expired"}),
        };
        assert_eq!(security["denied_by"], denied_by, "{profile:?}");
        assert_eq!(totals(&host), [5, 5, 0, 0], "{profile:?}");
        assert_eq!(gauge(&host, "palisade_audit_queue_depth"), 0);
    }
    Ok(())
}

#[test]
fn a_full_batch_leaves_at_the_next_tick_before_the_interval() -> Result<(), Failure> {
    let profile = Profile::Envoy;
    let (host, vms) = load(
        profile,
        Plugin::Audit,
        &config(profile, r#","batch":{"max_events":3,"max_interval":"5s"}"#),
    )?;
    host.script_http_call("kafka-rest", produced(3));
    for _ in 0..4 {
        exchange(&vms, "GET", "/health", 200)?;
    }
    host.advance_clock(Duration::from_millis(100))?;
    let calls = host.http_calls();
    assert_eq!(calls.len(), 1, "one full batch of 3 at the first tick");
    assert_eq!(events(&calls[0]).len(), 3);
    host.advance_clock(Duration::from_millis(4800))?;
    assert_eq!(
        host.http_calls().len(),
        1,
        "the fourth waits for its interval"
    );
    host.advance_clock(Duration::from_millis(200))?;
    let calls = host.http_calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(events(&calls[1]).len(), 1);
    Ok(())
}

#[test]
fn sampling_drops_audit_events_but_never_security_events() -> Result<(), Failure> {
    let profile = Profile::Envoy;
    let (host, vms) = load(
        profile,
        Plugin::Audit,
        &config(profile, r#","sampling":{"api_call":0.0,"data_access":0.0}"#),
    )?;
    host.script_http_call("kafka-rest", produced(1));
    for _ in 0..10 {
        exchange(&vms, "GET", "/health", 200)?;
    }
    exchange(&vms, "GET", "/api/orders", 401)?;
    host.advance_clock(Duration::from_secs(1))?;
    let calls = host.http_calls();
    assert_eq!(calls.len(), 1);
    let shipped = events(&calls[0]);
    assert_eq!(shipped.len(), 1);
    assert_eq!(shipped[0]["event_type"], "security");
    assert_eq!(counter(&host, "palisade_audit_events_sampled_out"), 10);
    assert_eq!(totals(&host), [1, 1, 0, 0]);
    Ok(())
}

#[test]
fn failed_batches_are_retried_with_backoff_then_dropped_and_counted() -> Result<(), Failure> {
    let profile = Profile::Envoy;
    let (host, vms) = load(profile, Plugin::Audit, &config(profile, ""))?;
    host.script_http_call(
        "kafka-rest",
        CalloutReply::status(500).body(r#"{"error_code":50001,"message":"Kafka unavailable"}"#),
    );
    host.script_http_call("kafka-rest", CalloutReply::failure("connection refused"));
    host.script_http_call("kafka-rest", produced(2));
    exchange(&vms, "GET", "/health", 200)?;
    exchange(&vms, "GET", "/health", 200)?;
    host.advance_clock(Duration::from_secs(1))?;
    assert_eq!(host.http_calls().len(), 1);
    assert_eq!(totals(&host), [2, 0, 2, 0]);
    // Retry 1 after 100..=200 ms, retry 2 after 200..=400 ms more.
    host.advance_clock(Duration::from_millis(700))?;
    let calls = host.http_calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(
        calls[0].body, calls[2].body,
        "a retry resends the same events and ids"
    );
    assert_eq!(totals(&host), [2, 2, 4, 0]);
    let warnings: Vec<String> = vms
        .logs()
        .into_iter()
        .filter(|e| e.message.contains("batch not delivered") || e.message.contains("again"))
        .map(|e| e.message)
        .collect();
    assert_eq!(
        warnings,
        [
            "[palisade-audit] batch not delivered: status 500 (error_code 50001: Kafka unavailable); 2 events to retry, 0 dropped (further failures are counted, not logged)",
            "[palisade-audit] collector answering again after 2 failed batches"
        ]
    );

    // A collector that stays down: 1 try + 3 retries, then the events are dropped.
    for _ in 0..4 {
        host.script_http_call("kafka-rest", CalloutReply::status(503));
    }
    exchange(&vms, "GET", "/health", 200)?;
    host.advance_clock(Duration::from_secs(10))?;
    assert_eq!(host.http_calls().len(), 7);
    assert_eq!(totals(&host), [3, 2, 7, 1]);
    assert_eq!(gauge(&host, "palisade_audit_queue_depth"), 0);
    Ok(())
}

/// A collector (or the proxy in front of it) refusing a batch as too large: the halves go at
/// once, and every event arrives, none dropped.
#[test]
fn a_batch_too_large_is_split_and_every_event_arrives() -> Result<(), Failure> {
    for profile in [Profile::Envoy, Profile::Kong(KongVersion::V3_10)] {
        let (host, vms) = load(profile, Plugin::Audit, &config(profile, ""))?;
        let collector = upstream(profile);
        host.script_http_call(
            collector,
            CalloutReply::status(413).body("<html>413 Request Entity Too Large</html>"),
        );
        host.script_http_call(collector, produced(1));
        host.script_http_call(collector, produced(2));
        for _ in 0..3 {
            exchange(&vms, "GET", "/health", 200)?;
        }
        host.advance_clock(Duration::from_secs(1))?;
        let calls = host.http_calls();
        let sizes: Vec<usize> = calls.iter().map(|call| events(call).len()).collect();
        assert_eq!(sizes, [3, 1, 2], "{profile:?}");
        let ids = |call: &HttpCall| -> Vec<Value> {
            events(call).iter().map(|e| e["event_id"].clone()).collect()
        };
        assert_eq!(
            [ids(&calls[1]), ids(&calls[2])].concat(),
            ids(&calls[0]),
            "{profile:?}: the halves carry the same events, in order"
        );
        assert_eq!(totals(&host), [3, 3, 3, 0], "{profile:?}");
        assert_eq!(
            warnings(&vms),
            ["[palisade-audit] batch not delivered: status 413: batch of 3 split in two and sent again; 3 events to retry, 0 dropped (further failures are counted, not logged)"],
            "{profile:?}"
        );
        assert_eq!(gauge(&host, "palisade_audit_queue_depth"), 0, "{profile:?}");
    }
    Ok(())
}

#[test]
fn refused_batches_are_dropped_at_once() -> Result<(), Failure> {
    let profile = Profile::Envoy;
    let (host, vms) = load(profile, Plugin::Audit, &config(profile, ""))?;
    host.script_http_call(
        "kafka-rest",
        CalloutReply::status(404).body(r#"{"error_code":40401,"message":"Topic not found."}"#),
    );
    exchange(&vms, "GET", "/health", 200)?;
    host.advance_clock(Duration::from_secs(5))?;
    assert_eq!(host.http_calls().len(), 1);
    assert_eq!(totals(&host), [1, 0, 0, 1]);
    assert_eq!(
        warnings(&vms),
        ["[palisade-audit] batch not delivered: status 404 (error_code 40401: Topic not found.); 0 events to retry, 1 dropped (further failures are counted, not logged)"]
    );
    assert_eq!(gauge(&host, "palisade_audit_queue_depth"), 0);
    Ok(())
}

/// A REST proxy answers 200 and reports errors per record: a retriable one (50003) is sent
/// again on its own, a non-retriable one (40101) is dropped and counted, the rest count as sent.
#[test]
fn records_failing_inside_a_200_are_retried_or_dropped_by_their_error_code() -> Result<(), Failure>
{
    let profile = Profile::Envoy;
    let (host, vms) = load(profile, Plugin::Audit, &config(profile, ""))?;
    host.script_http_call(
        "kafka-rest",
        CalloutReply::status(200)
            .header("content-type", "application/vnd.kafka.v2+json")
            .body(
                r#"{"key_schema_id":null,"value_schema_id":null,"offsets":[
                    {"partition":0,"offset":0,"error_code":null,"error":null},
                    {"partition":null,"offset":null,"error_code":50003,"error":"Kafka retriable error"},
                    {"partition":null,"offset":null,"error_code":40101,"error":"Not authenticated"}]}"#,
            ),
    );
    host.script_http_call("kafka-rest", produced(1));
    for _ in 0..3 {
        exchange(&vms, "GET", "/health", 200)?;
    }
    host.advance_clock(Duration::from_secs(1))?;
    let calls = host.http_calls();
    assert_eq!(calls.len(), 1, "one batch of three");
    let first: Vec<Value> = events(&calls[0]);
    assert_eq!(first.len(), 3);
    assert_eq!(
        totals(&host),
        [3, 1, 1, 1],
        "one sent, one to retry, one dropped"
    );
    assert_eq!(
        warnings(&vms),
        ["[palisade-audit] batch not delivered: status 200: 2 of 3 records failed; 1 events to retry, 1 dropped (further failures are counted, not logged)"]
    );
    assert_eq!(
        gauge(&host, "palisade_audit_queue_depth"),
        1,
        "the one to retry"
    );
    // The retry, 100..=200 ms later, carries only the retriable record.
    host.advance_clock(Duration::from_millis(300))?;
    let calls = host.http_calls();
    assert_eq!(calls.len(), 2);
    let retried: Vec<Value> = events(&calls[1]);
    assert_eq!(retried, [first[1].clone()], "the same event, id and all");
    assert_eq!(calls[1].headers.get(":path"), calls[0].headers.get(":path"));
    assert_eq!(totals(&host), [3, 2, 1, 1], "sent + dropped == emitted");
    assert_eq!(gauge(&host, "palisade_audit_queue_depth"), 0);
    assert_eq!(warnings(&vms).len(), 1, "recovery is not a warning");
    assert!(
        vms.logs()
            .iter()
            .any(|l| l.message
                == "[palisade-audit] collector answering again after 1 failed batches"),
        "{:?}",
        vms.logs()
    );
    Ok(())
}

#[test]
fn a_full_buffer_drops_new_events_and_counts_them() -> Result<(), Failure> {
    let profile = Profile::Envoy;
    let (host, vms) = load(
        profile,
        Plugin::Audit,
        &config(
            profile,
            r#","batch":{"max_events":2,"max_interval":"1s","max_buffered_events":4},"delivery":{"max_in_flight":1}"#,
        ),
    )?;
    host.add_cluster("kafka-rest");
    for _ in 0..6 {
        exchange(&vms, "GET", "/health", 200)?;
    }
    assert_eq!(totals(&host), [6, 0, 0, 2]);
    assert_eq!(gauge(&host, "palisade_audit_queue_depth"), 4);
    Ok(())
}

/// Envoy tears a root down when its configuration is replaced (every Istio push that changes
/// the WasmPlugin) and cancels its call-outs if it is done at once. So the root answers "not
/// yet", sends what waits at once, lets the batches in flight be answered, and then tells
/// Envoy it is done: nothing is lost, nothing goes uncounted.
#[test]
fn shutting_down_delivers_what_is_held_then_finishes() -> Result<(), Failure> {
    let profile = Profile::Envoy;
    let (host, vms) = load(
        profile,
        Plugin::Audit,
        &config(profile, r#","batch":{"max_events":3,"max_interval":"5s"}"#),
    )?;
    // The first batch is answered a second after it leaves, the second (the two events that
    // were waiting) at once.
    host.script_http_call("kafka-rest", produced(3).after(Duration::from_secs(1)));
    host.script_http_call("kafka-rest", produced(2));
    for _ in 0..5 {
        exchange(&vms, "GET", "/health", 200)?;
    }
    host.advance_clock(Duration::from_millis(100))?;
    assert_eq!(host.http_calls().len(), 1, "one full batch in flight");
    let worker = vms.worker(0);
    assert!(!worker.shut_down()?, "not done: events are held");
    assert!(
        worker
            .logs()
            .iter()
            .any(|l| l.message
                == "[palisade-audit] shutting down: delivering 5 buffered events first"),
        "{:?}",
        worker.logs()
    );
    assert_eq!(host.http_calls().len(), 2, "what waited went out at once");
    host.advance_clock(Duration::from_millis(100))?;
    assert!(!worker.is_root_deleted()?, "the first batch is still out");
    host.advance_clock(Duration::from_secs(1))?;
    assert_eq!(totals(&host), [5, 5, 0, 0], "sent == emitted");
    assert!(worker.is_root_deleted()?, "proxy_done once nothing is held");
    assert_eq!(gauge(&host, "palisade_audit_queue_depth"), 0);
    Ok(())
}

/// A collector that never answers does not keep a torn-down root alive for good: each batch
/// is retried within its settings, then counted dropped, and the root is done.
#[test]
fn shutting_down_against_a_silent_collector_ends_with_everything_counted() -> Result<(), Failure> {
    let profile = Profile::Envoy;
    let (host, vms) = load(
        profile,
        Plugin::Audit,
        &config(
            profile,
            r#","delivery":{"max_retries":1,"backoff_base":"100ms","backoff_max":"1s"}"#,
        ),
    )?;
    for _ in 0..2 {
        host.script_http_call("kafka-rest", CalloutReply::never());
    }
    for _ in 0..4 {
        exchange(&vms, "GET", "/health", 200)?;
    }
    let worker = vms.worker(0);
    assert!(!worker.shut_down()?);
    // Each try waits twice the 2s timeout for an answer; one retry after a backoff.
    host.advance_clock(Duration::from_secs(12))?;
    assert_eq!(totals(&host), [4, 0, 4, 4], "retried once, then dropped");
    assert!(worker.is_root_deleted()?);
    assert_eq!(gauge(&host, "palisade_audit_queue_depth"), 0);
    // Nothing more: no ticks, no calls.
    let calls = host.http_calls().len();
    host.advance_clock(Duration::from_secs(30))?;
    assert_eq!(host.http_calls().len(), calls);
    Ok(())
}

/// A drain that outlasts its bound (here the 10-minute cap, a batch still waiting for its
/// answer) ends with everything counted: the batch in flight is counted dropped, since Envoy
/// cancels it with the root.
#[test]
fn a_drain_past_its_bound_counts_the_batch_in_flight_dropped() -> Result<(), Failure> {
    let profile = Profile::Envoy;
    let (host, vms) = load(
        profile,
        Plugin::Audit,
        r#"{"sink":{"kafka_rest":{"upstream":"kafka-rest","authority":"k:8082","timeout":"11m"}},
            "delivery":{"max_retries":3,"backoff_base":"5m","backoff_max":"5m"}}"#,
    )?;
    host.script_http_call("kafka-rest", CalloutReply::never());
    for _ in 0..3 {
        exchange(&vms, "GET", "/health", 200)?;
    }
    let worker = vms.worker(0);
    assert!(!worker.shut_down()?);
    host.advance_clock(Duration::from_secs(9 * 60))?;
    assert!(!worker.is_root_deleted()?);
    host.advance_clock(Duration::from_secs(61))?;
    assert!(worker.is_root_deleted()?);
    assert_eq!(totals(&host), [3, 0, 0, 3], "sent + dropped == emitted");
    assert!(
        worker.logs().iter().any(|l| l.message
            == "[palisade-audit] shutting down: 3 buffered events counted as dropped, 0 in flight"),
        "{:?}",
        worker.logs()
    );
    Ok(())
}

/// With nothing held, the root is done at once.
#[test]
fn shutting_down_with_nothing_held_is_done_at_once() -> Result<(), Failure> {
    let profile = Profile::Envoy;
    let (host, vms) = load(profile, Plugin::Audit, &config(profile, ""))?;
    host.script_http_call("kafka-rest", produced(1));
    exchange(&vms, "GET", "/health", 200)?;
    host.advance_clock(Duration::from_secs(2))?;
    assert_eq!(totals(&host), [1, 1, 0, 0]);
    assert!(vms.worker(0).shut_down()?);
    Ok(())
}

#[test]
fn kong_before_3_9_never_answers_a_failed_batch_and_it_is_retried_anyway() -> Result<(), Failure> {
    let profile = Profile::Kong(KongVersion::V3_8);
    let (host, vms) = load(profile, Plugin::Audit, &config(profile, ""))?;
    host.script_http_call(
        upstream(profile),
        CalloutReply::failure("connection refused"),
    );
    host.script_http_call(upstream(profile), produced(1));
    exchange(&vms, "GET", "/health", 200)?;
    host.advance_clock(Duration::from_secs(1))?;
    assert_eq!(totals(&host), [1, 0, 0, 0], "no callback: still in flight");
    // The batch counts as failed twice its timeout after it left, then is retried.
    host.advance_clock(Duration::from_millis(4500))?;
    assert_eq!(host.http_calls().len(), 2);
    assert_eq!(totals(&host), [1, 1, 1, 0]);
    Ok(())
}

#[test]
fn without_metrics_kong_3_4_still_ships() -> Result<(), Failure> {
    let profile = Profile::Kong(KongVersion::V3_4);
    let (host, vms) = load(
        profile,
        Plugin::Audit,
        &config(profile, r#","metrics":false"#),
    )?;
    host.script_http_call(upstream(profile), produced(1));
    exchange(&vms, "GET", "/health", 200)?;
    host.advance_clock(Duration::from_secs(1))?;
    assert_eq!(events(&host.http_calls()[0]).len(), 1);
    assert!(host.metrics().is_empty());
    Ok(())
}

/// Kong hands a plugin the first 100 pairs of a request's headers, and the identity headers
/// palisade-auth adds come last: past the cap, the event still names who called.
#[test]
fn on_kong_the_identity_past_the_first_100_pairs_is_recorded() -> Result<(), Failure> {
    let profile = Profile::Kong(KongVersion::V3_10);
    // A captured x-palisade-* header past the cap could only be the client's: not asked for.
    let config = config(profile, "").replace(
        r#""capture_headers":["x-tenant"]"#,
        r#""capture_headers":["x-tenant","x-palisade-role"]"#,
    );
    let (host, vms) = load(profile, Plugin::Audit, &config)?;
    host.script_http_call(upstream(profile), produced(1));
    let mut request = Request::get("/api/orders").authority("shop.example.com");
    for i in 0..100 {
        request = request.header(&format!("x-filler-{i}"), "1");
    }
    let mut stream = vms.http_request(
        request
            .header("user-agent", "curl/8.5.0")
            .header("x-request-id", "req-1")
            .header("x-tenant", "acme")
            .header("x-palisade-role", "admin")
            .header("x-palisade-subject", "alice")
            .header("x-palisade-consumer", "shop-web"),
    )?;
    assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
    stream.send_response_headers(Response::status(200), true)?;
    stream.finish()?;
    host.advance_clock(Duration::from_secs(1))?;
    let events = events(&host.http_calls()[0]);
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event["subject"], "alice", "{event}");
    assert_eq!(event["consumer"], "shop-web", "{event}");
    assert_eq!(event["user_agent"], "curl/8.5.0", "{event}");
    assert_eq!(event["request_id"], "req-1", "{event}");
    assert_eq!(
        event["headers"],
        serde_json::json!({"x-tenant": "acme"}),
        "{event}"
    );
    Ok(())
}

/// On Kong a request an earlier filter answered (auth's 431 for too many headers) reaches
/// audit at its response: audit never saw the header count, so it reads what its event needs
/// by name, never the whole map (Kong would write past its buffer, fact 11).
#[test]
fn on_kong_a_request_answered_before_audit_is_read_by_name() -> Result<(), Failure> {
    let profile = Profile::Kong(KongVersion::V3_10);
    let (host, vms) = load(profile, Plugin::Audit, &config(profile, ""))?;
    host.script_http_call(upstream(profile), produced(1));
    let mut request = Request::get("/api/orders").authority("shop.example.com");
    for i in 0..110 {
        request = request.header(&format!("x-filler-{i}"), "1");
    }
    let mut stream = vms.http_request(
        request
            .header("user-agent", "curl/8.5.0")
            .header("x-request-id", "req-9"),
    )?;
    assert_eq!(stream.earlier_filter_replied()?, Outcome::Continue);
    stream.send_response_headers(Response::status(431), true)?;
    stream.finish()?;
    host.advance_clock(Duration::from_secs(1))?;
    let events = events(&host.http_calls()[0]);
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event["method"], "GET", "{event}");
    assert_eq!(event["path"], "/api/orders", "{event}");
    assert_eq!(event["status"], 431, "{event}");
    assert_eq!(event["request_id"], "req-9", "{event}");
    assert_eq!(event["user_agent"], "curl/8.5.0", "{event}");
    Ok(())
}

#[test]
fn two_workers_batch_on_their_own_and_their_counts_add_up() -> Result<(), Failure> {
    let profile = Profile::Envoy;
    let host = Host::new(profile);
    let vms = host.load_workers(Plugin::Audit, &config(profile, ""), 2)?;
    for worker in vms.workers() {
        for _ in 0..2 {
            let mut stream = worker.http_request(Request::get("/health"))?;
            stream.send_request_headers(true)?;
            stream.send_response_headers(Response::status(200), true)?;
            stream.finish()?;
        }
    }
    assert_eq!(totals(&host), [4, 0, 0, 0]);
    assert_eq!(
        gauge(&host, "palisade_audit_queue_depth"),
        4,
        "the sum over workers"
    );
    host.script_http_call("kafka-rest", produced(2));
    host.script_http_call("kafka-rest", produced(2));
    host.advance_clock(Duration::from_secs(1))?;
    let calls = host.http_calls();
    let workers: Vec<usize> = calls.iter().map(|c| c.worker).collect();
    assert_eq!(workers, [0, 1], "one batch from each worker's root");
    assert!(calls.iter().all(|c| events(c).len() == 2));
    assert_eq!(totals(&host), [4, 4, 0, 0]);
    assert_eq!(gauge(&host, "palisade_audit_queue_depth"), 0);
    Ok(())
}

#[test]
fn envoy_explains_errors_and_missing_answers_but_not_successes() -> Result<(), Failure> {
    let profile = Profile::Envoy;
    let (host, vms) = load(profile, Plugin::Audit, &config(profile, ""))?;
    host.set_property("response.code_details", "downstream_remote_disconnect");
    // The client left before any answer: status 0, and Envoy's reason is kept.
    let mut stream = vms.http_request(Request::get("/health"))?;
    stream.send_request_headers(true)?;
    stream.finish()?;
    for status in [200, 302, 503] {
        let mut stream = vms.http_request(Request::get("/health"))?;
        stream.send_request_headers(true)?;
        stream.send_response_headers(Response::status(status), true)?;
        stream.finish()?;
    }
    host.script_http_call(upstream(profile), produced(4));
    host.advance_clock(Duration::from_secs(1))?;
    let calls = host.http_calls();
    let details: Vec<(Value, Value)> = calls
        .iter()
        .flat_map(events)
        .map(|e| (e["status"].clone(), e["response_code_details"].clone()))
        .collect();
    let reason = Value::from("downstream_remote_disconnect");
    assert_eq!(
        details,
        [
            (Value::from(0), reason.clone()),
            (Value::from(200), Value::Null),
            (Value::from(302), Value::Null),
            (Value::from(503), reason),
        ]
    );
    Ok(())
}

/// A root context configured again keeps its timer: the same tick makes no host call (Kong
/// traps on a second one), and on Kong a different one keeps the first, with a warning.
#[test]
fn a_reconfigured_root_keeps_its_tick_on_kong() -> Result<(), Failure> {
    for version in [KongVersion::V3_8, KongVersion::V3_10] {
        let profile = Profile::Kong(version);
        let (host, vms) = load(profile, Plugin::Audit, &config(profile, ""))?;
        let worker = vms.worker(0);
        assert!(worker.reconfigure(&config(profile, ""))?, "Kong {version}");
        let faster = config(profile, r#","batch":{"max_interval":"50ms"}"#);
        assert!(worker.reconfigure(&faster)?, "Kong {version}");
        let warned = host
            .logs()
            .iter()
            .any(|entry| entry.message == "[palisade-audit] the timer keeps its first period");
        assert!(warned, "Kong {version}: {:?}", host.logs());
        // The worker still serves and ships.
        host.script_http_call(upstream(profile), produced(1));
        exchange(&vms, "GET", "/health", 200)?;
        host.advance_clock(Duration::from_secs(1))?;
        assert_eq!(events(&host.http_calls()[0]).len(), 1, "Kong {version}");
    }
    Ok(())
}

/// `sink.http`: every event type in one NDJSON body, one valid event per line, POSTed to the
/// configured path, with no Kafka `Accept` header (a plain collector may refuse it with 406).
#[test]
fn an_http_sink_gets_one_ndjson_body_of_every_event() -> Result<(), Failure> {
    for profile in [Profile::Envoy, Profile::Kong(KongVersion::V3_10)] {
        let sink = format!(
            r#""sink":{{"http":{{"upstream":"{}","authority":"collector.example:8080","path":"/events","timeout":"2s"}}}}"#,
            upstream(profile)
        );
        let config = config(profile, "").replacen(
            &format!(
                r#""sink":{{"kafka_rest":{{"upstream":"{}","authority":"kafka-rest.kafka:8082","timeout":"2s"}}}}"#,
                upstream(profile)
            ),
            &sink,
            1,
        );
        assert!(config.contains(r#""http":"#), "{config}");
        let (host, vms) = load(profile, Plugin::Audit, &config)?;
        host.script_http_call(upstream(profile), CalloutReply::status(204));
        exchange(&vms, "GET", "/api/orders", 200)?;
        exchange(&vms, "POST", "/api/orders", 201)?;
        exchange(&vms, "DELETE", "/admin/users/7", 204)?;
        exchange(&vms, "GET", "/health", 401)?;
        host.advance_clock(Duration::from_secs(1))?;
        let calls = host.http_calls();
        assert_eq!(calls.len(), 1, "{profile:?}: one body for every topic");
        let call = &calls[0];
        assert_eq!(call.upstream, upstream(profile));
        assert_eq!(call.headers.get(":method"), Some("POST"));
        assert_eq!(call.headers.get(":path"), Some("/events"));
        assert_eq!(
            call.headers.get(":authority"),
            Some("collector.example:8080")
        );
        assert_eq!(
            call.headers.get("content-type"),
            Some("application/x-ndjson")
        );
        assert_eq!(call.headers.get("accept"), None, "{profile:?}");
        assert_eq!(call.timeout, Duration::from_secs(2));
        let body = String::from_utf8(call.body.clone()).unwrap();
        assert!(body.ends_with('\n'), "{profile:?}: {body}");
        let lines: Vec<&str> = body.split_terminator('\n').collect();
        let shipped: Vec<(String, String)> = lines
            .iter()
            .map(|line| {
                let event: Value = serde_json::from_str(line).unwrap();
                audit_events::validate(&event).unwrap();
                (
                    event["event_type"].as_str().unwrap().to_owned(),
                    event["path"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let expected = [
            ("data_access", "/api/orders"),
            ("user_action", "/api/orders"),
            ("admin_operation", "/admin/users/7"),
            ("security", "/health"),
        ]
        .map(|(t, p)| (t.to_owned(), p.to_owned()));
        assert_eq!(shipped, expected, "{profile:?}: in order, one a line");
        assert!(!body.contains(SECRET), "{profile:?}");
        assert_eq!(totals(&host), [4, 4, 0, 0], "{profile:?}");
        assert_eq!(gauge(&host, "palisade_audit_queue_depth"), 0);
        assert_eq!(warnings(&vms), Vec::<String>::new(), "{profile:?}");
    }
    Ok(())
}

/// Without a sink every event is counted as dropped, the configuration says so once, and
/// nothing is dispatched.
#[test]
fn without_a_sink_events_are_counted_dropped_and_nothing_is_sent() -> Result<(), Failure> {
    for profile in [Profile::Envoy, Profile::Kong(KongVersion::V3_10)] {
        let config = r#"{"capture_headers":["x-tenant"]}"#;
        let (host, vms) = load(profile, Plugin::Audit, config)?;
        host.add_cluster(upstream(profile));
        for _ in 0..3 {
            exchange(&vms, "GET", "/health", 200)?;
        }
        exchange(&vms, "GET", "/api/orders", 401)?;
        host.advance_clock(Duration::from_secs(5))?;
        assert!(host.http_calls().is_empty(), "{profile:?}");
        assert_eq!(totals(&host), [4, 0, 0, 4], "{profile:?}");
        assert_eq!(gauge(&host, "palisade_audit_queue_depth"), 0);
        assert_eq!(
            warnings(&vms),
            ["[palisade-audit] no sink configured: events are counted as dropped"],
            "{profile:?}: once, at configuration, not per event"
        );
    }
    Ok(())
}

/// A configuration delivered again to the same root context while events wait: the previous
/// buffer, and the event of a stream that started under it, still go to the previous
/// collector; what comes after goes to the new one (docs/audit.md, Teardown).
#[test]
fn events_buffered_before_a_reconfiguration_go_to_the_previous_collector() -> Result<(), Failure> {
    for profile in [Profile::Envoy, Profile::Kong(KongVersion::V3_10)] {
        let (host, vms) = load(profile, Plugin::Audit, &config(profile, ""))?;
        // Three batches: the previous buffer's two topics, and the new one's.
        for _ in 0..3 {
            host.script_http_call(upstream(profile), produced(3));
        }
        exchange(&vms, "GET", "/health", 200)?;
        exchange(&vms, "GET", "/api/orders", 200)?;
        // Started under the first configuration, finished under the second.
        let mut straddling = vms.http_request(
            Request::get("/health")
                .authority("shop.example.com")
                .header("x-request-id", "straddling"),
        )?;
        assert_eq!(straddling.send_request_headers(true)?, Outcome::Continue);
        assert_eq!(totals(&host), [2, 0, 0, 0], "{profile:?}: buffered");
        let moved = config(profile, "").replace("kafka-rest.kafka:8082", "kafka-rest-b.kafka:8082");
        assert!(vms.worker(0).reconfigure(&moved)?, "{profile:?}");
        straddling.send_response_headers(Response::status(200), true)?;
        straddling.finish()?;
        let mut after = vms.http_request(
            Request::get("/health")
                .authority("shop.example.com")
                .header("x-request-id", "after"),
        )?;
        after.send_request_headers(true)?;
        after.send_response_headers(Response::status(200), true)?;
        after.finish()?;
        host.advance_clock(Duration::from_secs(1))?;
        let mut by_authority: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for call in host.http_calls() {
            by_authority
                .entry(call.headers.get(":authority").unwrap().to_owned())
                .or_default()
                .extend(events(&call));
        }
        let summary: BTreeMap<String, Vec<(Value, Value)>> = by_authority
            .iter()
            .map(|(authority, events)| {
                let mut seen: Vec<(Value, Value)> = events
                    .iter()
                    .map(|e| (e["path"].clone(), e["request_id"].clone()))
                    .collect();
                seen.sort_by_key(|(p, r)| (p.to_string(), r.to_string()));
                (authority.clone(), seen)
            })
            .collect();
        let expected: BTreeMap<String, Vec<(Value, Value)>> = [
            (
                "kafka-rest.kafka:8082".to_owned(),
                vec![
                    (Value::from("/api/orders"), Value::from("req-1")),
                    (Value::from("/health"), Value::from("req-1")),
                    (Value::from("/health"), Value::from("straddling")),
                ],
            ),
            (
                "kafka-rest-b.kafka:8082".to_owned(),
                vec![(Value::from("/health"), Value::from("after"))],
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(summary, expected, "{profile:?}");
        assert_eq!(totals(&host), [4, 4, 0, 0], "{profile:?}");
        assert_eq!(gauge(&host, "palisade_audit_queue_depth"), 0, "{profile:?}");
        // The previous buffer is empty and nothing holds it: no more calls.
        host.advance_clock(Duration::from_secs(5))?;
        assert_eq!(host.http_calls().len(), 3, "{profile:?}");
    }
    Ok(())
}

/// The previous configuration's worker holds nothing when the configuration changes, but a
/// stream that started under it is still in flight: the worker stays (ticks and answers do not
/// let it go) until that stream's event is delivered to the previous collector.
#[test]
fn a_stream_in_flight_across_a_reconfiguration_reports_to_the_previous_collector(
) -> Result<(), Failure> {
    for profile in [Profile::Envoy, Profile::Kong(KongVersion::V3_10)] {
        let (host, vms) = load(profile, Plugin::Audit, &config(profile, ""))?;
        host.script_http_call(upstream(profile), produced(1));
        host.script_http_call(upstream(profile), produced(1));
        let mut straddling = vms.http_request(
            Request::get("/health")
                .authority("shop.example.com")
                .header("x-request-id", "straddling"),
        )?;
        assert_eq!(straddling.send_request_headers(true)?, Outcome::Continue);
        let moved = config(profile, "").replace("kafka-rest.kafka:8082", "kafka-rest-b.kafka:8082");
        assert!(vms.worker(0).reconfigure(&moved)?, "{profile:?}");
        // Ticks while the stream is still open: nothing to send, nothing let go.
        host.advance_clock(Duration::from_secs(2))?;
        assert!(host.http_calls().is_empty(), "{profile:?}");
        straddling.send_response_headers(Response::status(200), true)?;
        straddling.finish()?;
        let mut after = vms.http_request(
            Request::get("/health")
                .authority("shop.example.com")
                .header("x-request-id", "after"),
        )?;
        after.send_request_headers(true)?;
        after.send_response_headers(Response::status(200), true)?;
        after.finish()?;
        host.advance_clock(Duration::from_secs(1))?;
        let mut shipped: Vec<(String, Value)> = host
            .http_calls()
            .iter()
            .flat_map(|call| {
                let authority = call.headers.get(":authority").unwrap().to_owned();
                events(call)
                    .into_iter()
                    .map(move |e| (authority.clone(), e["request_id"].clone()))
            })
            .collect();
        shipped.sort_by_key(|(a, r)| (a.clone(), r.to_string()));
        assert_eq!(
            shipped,
            [
                ("kafka-rest-b.kafka:8082".to_owned(), Value::from("after")),
                (
                    "kafka-rest.kafka:8082".to_owned(),
                    Value::from("straddling")
                ),
            ],
            "{profile:?}"
        );
        assert_eq!(totals(&host), [2, 2, 0, 0], "{profile:?}");
        assert_eq!(gauge(&host, "palisade_audit_queue_depth"), 0, "{profile:?}");
    }
    Ok(())
}

/// Kong 3.9+ names the route and service (`kong.route_name`, `kong.service_name`); either may be
/// unnamed. An unnamed one leaves that event's fields null, and the next request's names are
/// still read. Kong 3.8 has neither property: never asked (Kong would log an error per ask).
#[test]
fn kong_route_and_service_names_are_read_per_request_where_kong_has_them() -> Result<(), Failure> {
    for (version, named) in [(KongVersion::V3_10, true), (KongVersion::V3_8, false)] {
        let profile = Profile::Kong(version);
        let (host, vms) = load(
            profile,
            Plugin::Audit,
            &config(profile, r#","batch":{"max_events":2}"#),
        )?;
        host.script_http_call(upstream(profile), produced(2));
        for names in [false, true] {
            let mut request = Request::get("/api/orders").authority("shop.example.com");
            if names {
                request = request
                    .property("kong.route_name", "orders-route")
                    .property("kong.service_name", "orders");
            }
            let mut stream = vms.http_request(request)?;
            stream.send_request_headers(true)?;
            stream.send_response_headers(Response::status(200), true)?;
            stream.finish()?;
        }
        host.advance_clock(Duration::from_millis(100))?;
        let calls = host.http_calls();
        let sent = events(calls.first().expect("one batch"));
        let names: Vec<(Value, Value)> = sent
            .iter()
            .map(|e| (e["route"].clone(), e["upstream_cluster"].clone()))
            .collect();
        let expected = if named {
            vec![
                (Value::Null, Value::Null),
                (Value::from("orders-route"), Value::from("orders")),
            ]
        } else {
            vec![(Value::Null, Value::Null); 2]
        };
        assert_eq!(names, expected, "Kong {version}");
        let refused: Vec<String> = host
            .refused_properties()
            .into_iter()
            .map(|r| r.path)
            .filter(|p| p.contains("_name"))
            .collect();
        assert!(refused.is_empty(), "Kong {version}: {refused:?}");
    }
    Ok(())
}
