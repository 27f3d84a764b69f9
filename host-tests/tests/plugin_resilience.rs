//! palisade-resilience in the test host: every circuit transition on the virtual clock across
//! two workers, slots given back on client aborts, router headers under Envoy and their
//! degraded form under Kong, deadlines and injected faults.

mod plugin_support;

use std::time::Duration;

use palisade_host_tests::wasm_host::{
    Configured, Failure, Headers, Host, HttpStream, KongVersion, LogLevel, LogOrigin, MetricValue,
    Outcome, Plugin, PluginVms, Profile, Request, Response, SharedDataFault, START_UNIX_SECS,
};
use plugin_support::assert_rejected;

const CLUSTER: &str = "outbound|8080||orders.shop.svc.cluster.local";
const GAUGE: &str = "palisade_resilience.circuit.outbound_8080__orders.shop.svc.cluster.local";

fn start(profile: Profile, config: &str) -> Result<(Host, PluginVms), Failure> {
    let host = Host::new(profile);
    let vms = host.load_workers(Plugin::Resilience, config, 2)?;
    assert!(vms.is_accepted(), "{:?}", vms.logs());
    Ok((host, vms))
}

fn get(path: &str) -> Request {
    Request::get(path)
        .property("xds.cluster_name", CLUSTER)
        .property("xds.route_name", "orders")
        .header("x-request-id", "req-1")
}

/// A request on `worker` answered with `status`, start to end.
fn exchange(vms: &PluginVms, worker: usize, status: u16) -> Result<HttpStream, Failure> {
    let mut stream = vms.worker(worker).http_request(get("/orders"))?;
    match stream.send_request_headers(true)? {
        Outcome::Continue => {
            stream.send_response_headers(Response::status(status), true)?;
        }
        // Refused here: the caller checks the reply.
        Outcome::LocalReply(_) => {}
        other => panic!("worker {worker}: the request neither went on nor was answered: {other:?}"),
    }
    stream.finish()?;
    Ok(stream)
}

fn plugin_lines(vms: &PluginVms, level: LogLevel) -> Vec<String> {
    vms.logs()
        .into_iter()
        .filter(|e| e.origin == LogOrigin::Plugin && e.level == level)
        .map(|e| e.message)
        .collect()
}

fn metric(host: &Host, name: &str) -> Option<MetricValue> {
    host.metrics().get(name).cloned()
}

fn assert_fast_fail(stream: &HttpStream, retry_after: &str) {
    let reply = stream.local_reply().expect("a local reply");
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers.get("retry-after"), Some(retry_after));
    assert_eq!(reply.headers.get("content-type"), Some("application/json"));
    assert_eq!(
        String::from_utf8(reply.body).unwrap(),
        r#"{"error":"upstream circuit open","status":503,"request_id":"req-1"}"#
    );
}

#[test]
fn too_many_retries_are_refused_with_one_line() -> Result<(), Failure> {
    assert_rejected(
        Plugin::Resilience,
        r#"{"retry":{"max_retries":11}}"#,
        "[palisade-resilience] configuration rejected: retry.max_retries: must be at most 10",
    )
}

#[test]
fn the_circuit_opens_after_exactly_five_failures_across_workers_and_fast_fails(
) -> Result<(), Failure> {
    let (host, vms) = start(Profile::Envoy, "")?;
    for i in 0..4 {
        let stream = exchange(&vms, i % 2, 503)?;
        assert_eq!(stream.response_status(), 503, "the upstream's own answer");
        assert_eq!(stream.local_reply(), None, "the upstream's own answer");
    }
    assert_eq!(
        metric(&host, "palisade_resilience.circuit_opened"),
        Some(MetricValue::Counter(0))
    );
    exchange(&vms, 0, 502)?;
    assert_eq!(
        metric(&host, "palisade_resilience.circuit_opened"),
        Some(MetricValue::Counter(1))
    );
    assert_eq!(metric(&host, GAUGE), Some(MetricValue::Gauge(1)));
    assert_eq!(
        plugin_lines(&vms, LogLevel::Warn),
        [format!(
            "[palisade-resilience] circuit {CLUSTER} opened for 30s (5 consecutive failures)"
        )],
        "logged once, by the worker whose write opened it"
    );
    // Both workers now answer at once, without the upstream.
    for worker in [0, 1] {
        let mut stream = vms.worker(worker).http_request(get("/orders"))?;
        assert!(matches!(
            stream.send_request_headers(true)?,
            Outcome::LocalReply(_)
        ));
        assert_fast_fail(&stream, "30");
        stream.finish()?;
    }
    host.advance_clock(Duration::from_millis(10_500))?;
    let stream = exchange(&vms, 1, 200)?;
    assert_fast_fail(&stream, "20");
    assert_eq!(
        metric(&host, "palisade_resilience.circuit_rejected"),
        Some(MetricValue::Counter(3))
    );
    Ok(())
}

/// Twelve requests in flight on two workers, admitted while the circuit was healthy, answered
/// failure and success in turn: never more than two failures in a row, so the circuit stays
/// closed.
/// (Before, a success admitted with nothing counted reported nothing, and the six failures
/// opened it.)
#[test]
fn scattered_failures_among_concurrent_successes_keep_the_circuit_closed() -> Result<(), Failure> {
    let (host, vms) = start(Profile::Envoy, "")?;
    let mut streams = Vec::new();
    for i in 0..12 {
        let mut stream = vms.worker(i % 2).http_request(get("/orders"))?;
        assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
        streams.push(stream);
    }
    // Each worker answers failure, success, failure, ...: six failures, at most two in a row.
    for (i, mut stream) in streams.into_iter().enumerate() {
        let status = if i % 4 < 2 { 503 } else { 200 };
        stream.send_response_headers(Response::status(status), true)?;
        stream.finish()?;
    }
    assert_eq!(
        metric(&host, "palisade_resilience.circuit_opened"),
        Some(MetricValue::Counter(0))
    );
    assert_eq!(plugin_lines(&vms, LogLevel::Warn), Vec::<String>::new());
    assert_eq!(exchange(&vms, 0, 200)?.response_status(), 200);
    Ok(())
}

/// A gRPC call answered HTTP 200: its `grpc-status` (trailers-only in the headers, else in the
/// trailers) is what the circuit judges, mapped as Envoy's router maps it for its outlier
/// detection (UNAVAILABLE = 503). On Kong, which calls no trailer callback, only trailers-only
/// errors count.
#[test]
fn grpc_errors_count_by_their_grpc_status() -> Result<(), Failure> {
    let grpc =
        |vms: &PluginVms, worker: usize, headers: &[(&str, &str)], trailers: &[(&str, &str)]| {
            let request = get("/orders.Orders/Get").header("content-type", "application/grpc");
            let mut stream = vms.worker(worker).http_request(request)?;
            assert_eq!(stream.send_request_headers(false)?, Outcome::Continue);
            let response = headers.iter().fold(
                Response::status(200).header("content-type", "application/grpc"),
                |r, (n, v)| r.header(n, v),
            );
            stream.send_response_headers(response, trailers.is_empty())?;
            if !trailers.is_empty() {
                stream.send_response_body(b"\0\0\0\0\0", false)?;
                let trailers = trailers
                    .iter()
                    .fold(Headers::new(), |t, (n, v)| t.with(n, v));
                stream.send_response_trailers(trailers)?;
            }
            stream.finish()?;
            Ok::<_, Failure>(())
        };
    let opened = |host: &Host| metric(host, "palisade_resilience.circuit_opened");
    // Envoy: four UNAVAILABLE in the trailers, an OK resets, then five (trailers-only and
    // trailers mixed, on both workers) open the circuit.
    let (host, vms) = start(Profile::Envoy, "")?;
    for i in 0..4 {
        grpc(&vms, i % 2, &[], &[("grpc-status", "14")])?;
    }
    grpc(&vms, 0, &[], &[("grpc-status", "0")])?;
    assert_eq!(opened(&host), Some(MetricValue::Counter(0)));
    for i in 0..4 {
        grpc(&vms, i % 2, &[("grpc-status", "14")], &[])?;
    }
    // NOT_FOUND is the caller's problem, not the upstream's: no failure, the count resets.
    grpc(&vms, 1, &[], &[("grpc-status", "5")])?;
    grpc(&vms, 1, &[], &[("grpc-status", "4")])?;
    grpc(&vms, 0, &[], &[("grpc-status", "13")])?;
    grpc(&vms, 1, &[("grpc-status", "14")], &[])?;
    grpc(&vms, 0, &[("grpc-status", "2")], &[])?;
    assert_eq!(opened(&host), Some(MetricValue::Counter(0)));
    grpc(&vms, 1, &[], &[("grpc-status", "14")])?;
    assert_eq!(opened(&host), Some(MetricValue::Counter(1)));
    assert_eq!(
        plugin_lines(&vms, LogLevel::Warn),
        [format!(
            "[palisade-resilience] circuit {CLUSTER} opened for 30s (5 consecutive failures)"
        )]
    );
    // A call reset after its headers (no trailers) counts as neither: four failures, a reset,
    // then the fifth failure opens the circuit.
    let (host, vms) = start(Profile::Envoy, "")?;
    for i in 0..4 {
        grpc(&vms, i % 2, &[], &[("grpc-status", "14")])?;
    }
    let request = get("/orders.Orders/Watch").header("content-type", "application/grpc");
    let mut reset = vms.worker(0).http_request(request)?;
    reset.send_request_headers(false)?;
    reset.send_response_headers(Response::status(200), false)?;
    reset.finish()?;
    assert_eq!(opened(&host), Some(MetricValue::Counter(0)));
    grpc(&vms, 1, &[], &[("grpc-status", "14")])?;
    assert_eq!(opened(&host), Some(MetricValue::Counter(1)));
    // Half-open: a trial is judged when its answer starts (a stream may outlive the trial's
    // lease), so a long-lived call's 200 closes the circuit before any trailer.
    host.advance_clock(Duration::from_secs(30))?;
    let request = get("/orders.Orders/Watch").header("content-type", "application/grpc");
    let mut trial = vms.worker(0).http_request(request)?;
    assert_eq!(trial.send_request_headers(false)?, Outcome::Continue);
    trial.send_response_headers(Response::status(200), false)?;
    assert_eq!(
        plugin_lines(&vms, LogLevel::Info)
            .last()
            .map(String::as_str),
        Some(
            format!("[palisade-resilience] circuit {CLUSTER} closed: the trial succeeded").as_str()
        )
    );
    trial.finish()?;
    // Kong: trailers never reach the plugin, so a status there is unseen; trailers-only counts.
    let config = r#"{"proxy":"kong","metrics":false,"circuit_breaker":{"key":"orders"}}"#;
    let (_, vms) = start(Profile::kong(), config)?;
    for i in 0..5 {
        grpc(&vms, i % 2, &[], &[("grpc-status", "14")])?;
    }
    assert!(plugin_lines(&vms, LogLevel::Warn).is_empty());
    for i in 0..5 {
        grpc(&vms, i % 2, &[("grpc-status", "14")], &[])?;
    }
    assert_eq!(
        plugin_lines(&vms, LogLevel::Warn),
        ["[palisade-resilience] circuit orders opened for 30s (5 consecutive failures)"]
    );
    Ok(())
}

#[test]
fn half_open_lets_one_trial_through_and_its_success_closes_the_circuit() -> Result<(), Failure> {
    let (host, vms) = start(Profile::Envoy, "")?;
    for i in 0..5 {
        exchange(&vms, i % 2, 500)?;
    }
    host.advance_clock(Duration::from_secs(30))?;
    let mut trial = vms.worker(0).http_request(get("/orders"))?;
    assert_eq!(trial.send_request_headers(true)?, Outcome::Continue);
    assert_eq!(
        metric(&host, GAUGE),
        Some(MetricValue::Gauge(2)),
        "half-open"
    );
    // While the trial is out, the other worker still fast-fails.
    let waiting = exchange(&vms, 1, 200)?;
    assert_eq!(waiting.local_reply().map(|r| r.status), Some(503));
    trial.send_response_headers(Response::status(200), true)?;
    trial.finish()?;
    assert_eq!(metric(&host, GAUGE), Some(MetricValue::Gauge(0)), "closed");
    assert_eq!(
        plugin_lines(&vms, LogLevel::Info)
            .into_iter()
            .filter(|l| l.contains("circuit"))
            .collect::<Vec<_>>(),
        [
            format!("[palisade-resilience] circuit {CLUSTER} half-open: trial requests go through"),
            format!("[palisade-resilience] circuit {CLUSTER} closed: the trial succeeded"),
        ]
    );
    for worker in [0, 1] {
        let stream = exchange(&vms, worker, 200)?;
        assert_eq!(stream.response_status(), 200);
        assert!(stream.local_reply().is_none());
    }
    Ok(())
}

#[test]
fn a_failed_trial_reopens_for_one_base_time_longer() -> Result<(), Failure> {
    let (host, vms) = start(
        Profile::Envoy,
        r#"{"circuit_breaker":{"base_ejection":"10s"}}"#,
    )?;
    for i in 0..5 {
        exchange(&vms, i % 2, 504)?;
    }
    host.advance_clock(Duration::from_secs(10))?;
    let trial = exchange(&vms, 1, 503)?;
    assert!(
        trial.local_reply().is_none(),
        "the trial reached the upstream"
    );
    assert_eq!(metric(&host, GAUGE), Some(MetricValue::Gauge(1)));
    assert_eq!(
        plugin_lines(&vms, LogLevel::Warn)
            .last()
            .map(String::as_str),
        Some(
            format!(
                "[palisade-resilience] circuit {CLUSTER} opened for 20s (0 consecutive failures)"
            )
            .as_str()
        )
    );
    host.advance_clock(Duration::from_secs(19))?;
    assert_fast_fail(&exchange(&vms, 0, 200)?, "1");
    host.advance_clock(Duration::from_secs(1))?;
    assert!(exchange(&vms, 0, 200)?.local_reply().is_none());
    assert_eq!(metric(&host, GAUGE), Some(MetricValue::Gauge(0)));
    Ok(())
}

#[test]
fn a_trial_whose_client_left_lets_the_next_request_try() -> Result<(), Failure> {
    let (host, vms) = start(Profile::Envoy, "")?;
    for i in 0..5 {
        exchange(&vms, i % 2, 500)?;
    }
    host.advance_clock(Duration::from_secs(30))?;
    let mut trial = vms.worker(0).http_request(get("/orders"))?;
    assert_eq!(trial.send_request_headers(true)?, Outcome::Continue);
    trial.finish()?; // the client went away before any answer
    let next = exchange(&vms, 1, 200)?;
    assert!(
        next.local_reply().is_none(),
        "the freed trial place was taken"
    );
    assert_eq!(metric(&host, GAUGE), Some(MetricValue::Gauge(0)));
    Ok(())
}

#[test]
fn client_aborts_give_every_slot_back() -> Result<(), Failure> {
    let (host, vms) = start(Profile::Envoy, r#"{"concurrency":{"max_requests":2}}"#)?;
    let inflight = "palisade_resilience.inflight.outbound_8080__orders.shop.svc.cluster.local";
    let mut held = Vec::new();
    for worker in [0, 1] {
        let mut stream = vms.worker(worker).http_request(get("/orders"))?;
        assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
        held.push(stream);
    }
    assert_eq!(metric(&host, inflight), Some(MetricValue::Gauge(2)));
    let mut shed = vms.worker(0).http_request(get("/orders"))?;
    let Outcome::LocalReply(reply) = shed.send_request_headers(true)? else {
        panic!("the third request is shed")
    };
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers.get("retry-after"), Some("1"));
    assert_eq!(
        String::from_utf8(reply.body).unwrap(),
        r#"{"error":"overloaded","status":503,"request_id":"req-1"}"#
    );
    shed.finish()?;
    // A burst of clients that leave mid-request, on both workers.
    for stream in &mut held {
        stream.finish()?;
    }
    for i in 0..20 {
        let mut stream = vms.worker(i % 2).http_request(get("/orders"))?;
        assert_eq!(
            stream.send_request_headers(true)?,
            Outcome::Continue,
            "request {i}"
        );
        stream.finish()?;
    }
    assert_eq!(
        metric(&host, inflight),
        Some(MetricValue::Gauge(0)),
        "no slot leaked"
    );
    assert_eq!(
        metric(&host, "palisade_resilience.shed"),
        Some(MetricValue::Counter(1))
    );
    Ok(())
}

/// Shared data that fails (every write lost to contention, or a host error on every call) must
/// not fail traffic: requests go on unjudged (never shed, never fast-failed), one warning says
/// so, a counter counts each, and nothing is left behind: once the store is back, the cap and
/// the circuit count exactly from where they were.
#[test]
fn a_failing_store_lets_requests_through_unjudged_and_leaves_nothing_behind() -> Result<(), Failure>
{
    const WARNING: &str =
        "[palisade-resilience] shared data unavailable or contended: requests go on unjudged";
    let inflight = "palisade_resilience.inflight.outbound_8080__orders.shop.svc.cluster.local";
    for fault in [
        SharedDataFault::LoseEveryWrite,
        SharedDataFault::Status(10), // InternalFailure
    ] {
        let (host, vms) = start(Profile::Envoy, r#"{"concurrency":{"max_requests":1}}"#)?;
        host.fail_shared_data(Some(fault));
        // Over the cap of one, and failing more than five times in a row: all go through.
        let mut held = Vec::new();
        for i in 0..6 {
            let mut stream = vms.worker(i % 2).http_request(get("/orders"))?;
            assert_eq!(
                stream.send_request_headers(true)?,
                Outcome::Continue,
                "{fault:?}: request {i} goes on"
            );
            held.push(stream);
        }
        for mut stream in held {
            stream.send_response_headers(Response::status(503), true)?;
            stream.finish()?;
            assert_eq!(stream.response_status(), 503, "the upstream's own answer");
        }
        assert_eq!(
            plugin_lines(&vms, LogLevel::Warn),
            [WARNING, WARNING],
            "{fault:?}: once per worker"
        );
        // Each request could neither take a slot nor have its failure counted.
        assert_eq!(
            metric(&host, "palisade_resilience.store_unavailable"),
            Some(MetricValue::Counter(12)),
            "{fault:?}"
        );
        assert_eq!(
            metric(&host, "palisade_resilience.circuit_opened"),
            Some(MetricValue::Counter(0)),
            "{fault:?}: unjudged failures do not count"
        );

        host.fail_shared_data(None);
        // The cap holds from zero: no slot was left taken by the failed writes.
        let mut first =
            try_slot(&vms, 0)?.unwrap_or_else(|| panic!("{fault:?}: the cap's one slot is free"));
        assert!(try_slot(&vms, 1)?.is_none(), "{fault:?}: and exact");
        first.send_response_headers(Response::status(503), true)?;
        first.finish()?;
        assert_eq!(
            metric(&host, inflight),
            Some(MetricValue::Gauge(0)),
            "{fault:?}"
        );
        // The circuit counts failures afresh: four more keep it closed, the fifth opens it.
        for i in 0..4 {
            exchange(&vms, i % 2, 503)?;
        }
        assert_eq!(
            metric(&host, "palisade_resilience.circuit_opened"),
            Some(MetricValue::Counter(1)),
            "{fault:?}: five counted failures since the store came back"
        );
    }
    Ok(())
}

/// A slot whose release could not be written still counts in the shared table. It must not
/// keep shedding other workers' requests for a whole lease: the VM's timer writes its true
/// count at the next renewal, a third of the lease later.
#[test]
fn a_release_that_failed_is_written_at_the_next_renewal() -> Result<(), Failure> {
    let (host, vms) = start(
        Profile::Envoy,
        r#"{"concurrency":{"max_requests":1,"lease":"30s"}}"#,
    )?;
    let mut held = try_slot(&vms, 0)?.expect("the one slot");
    host.fail_shared_data(Some(SharedDataFault::LoseEveryWrite));
    held.send_response_headers(Response::status(200), true)?;
    held.finish()?;
    host.fail_shared_data(None);
    assert!(
        try_slot(&vms, 1)?.is_none(),
        "the stale share still counts on the other worker"
    );
    host.advance_clock(Duration::from_secs(11))?;
    let mut next =
        try_slot(&vms, 1)?.expect("renewed: the stale share is gone well within the lease");
    next.send_response_headers(Response::status(200), true)?;
    next.finish()?;
    let (value, _) = host
        .shared_data(&format!("palisade/resilience/inflight/{CLUSTER}"))
        .expect("the scope's table");
    assert!(
        value.iter().skip(1).all(|b| *b == 0),
        "an empty table once both are done"
    );
    Ok(())
}

/// Whether a request on `worker` is admitted (its stream returned to hold the slot) or shed.
fn try_slot(vms: &PluginVms, worker: usize) -> Result<Option<HttpStream>, Failure> {
    let mut stream = vms.worker(worker).http_request(get("/orders"))?;
    match stream.send_request_headers(true)? {
        Outcome::Continue => Ok(Some(stream)),
        Outcome::LocalReply(reply) => {
            assert_eq!(reply.status, 503);
            // Kong's reply body ends with a newline.
            assert_eq!(
                String::from_utf8(reply.body).unwrap().trim_end(),
                r#"{"error":"overloaded","status":503,"request_id":"req-1"}"#
            );
            stream.finish()?;
            Ok(None)
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// The in-flight table holds a share per worker, in 8 slots, then 16. On Kong 3.4-3.7 a longer
/// value written over a key no longer than the old value overruns shared memory (the host traps
/// on it): the ninth worker's share must not be written in place.
#[test]
fn shares_of_many_workers_never_overrun_kongs_shared_memory() -> Result<(), Failure> {
    const WORKERS: usize = 10;
    for version in KongVersion::ALL {
        let host = Host::new(Profile::Kong(version));
        let vms = host.load_workers(
            Plugin::Resilience,
            r#"{"proxy":"kong","metrics":false,"circuit_breaker":{"key":"orders"},
                "concurrency":{"max_requests":10,"lease":"30s"}}"#,
            WORKERS,
        )?;
        assert!(vms.is_accepted(), "{:?}", vms.logs());
        let mut held = Vec::new();
        for worker in 0..WORKERS {
            held.push(try_slot(&vms, worker)?.expect("room"));
        }
        assert!(
            try_slot(&vms, 0)?.is_none(),
            "Kong {version}: every share counts"
        );
        for mut stream in held {
            stream.send_response_headers(Response::status(200), true)?;
            stream.finish()?;
        }
        let mut again = try_slot(&vms, 9)?.expect("every slot given back");
        again.send_response_headers(Response::status(200), true)?;
        again.finish()?;
    }
    Ok(())
}

/// A VM that traps with slots held never gives them back: they keep counting (the cap stays
/// exact) until the VM's share is a lease old, then free. The live VM's own long request keeps
/// its slot past the lease, renewed by its timer. Under Envoy and Kong.
#[test]
fn a_crashed_vms_slots_free_after_the_lease_and_a_live_vms_stay() -> Result<(), Failure> {
    for (profile, config) in [
        (
            Profile::Envoy,
            r#"{"concurrency":{"max_requests":4,"lease":"30s"}}"#,
        ),
        (
            Profile::Kong(KongVersion::V3_10),
            r#"{"proxy":"kong","circuit_breaker":{"key":"orders"},
                "concurrency":{"max_requests":4,"lease":"30s"}}"#,
        ),
    ] {
        let (host, vms) = start(profile, config)?;
        let mut doomed = Vec::new();
        for _ in 0..3 {
            doomed.push(try_slot(&vms, 0)?.expect("room for three"));
        }
        let mut long = try_slot(&vms, 1)?.expect("the fourth");
        assert!(try_slot(&vms, 1)?.is_none(), "{profile:?}: full");

        vms.worker(0).crash("trap with three slots held")?;
        drop(doomed);
        // Until the lease runs out the crashed VM's slots count: the cap stays exact.
        host.advance_clock(Duration::from_secs(29))?;
        assert!(
            try_slot(&vms, 1)?.is_none(),
            "{profile:?}: still held at 29s"
        );
        host.advance_clock(Duration::from_secs(2))?;

        // Freed; the live VM's long request still holds its slot (renewed on its timer).
        let mut taken = Vec::new();
        while let Some(stream) = try_slot(&vms, 1)? {
            taken.push(stream);
            assert!(taken.len() <= 3, "{profile:?}: over the cap");
        }
        assert_eq!(taken.len(), 3, "{profile:?}: the crashed VM's three");
        // Much later, the live VM's slots still count.
        for mut stream in taken {
            stream.finish()?;
        }
        host.advance_clock(Duration::from_secs(120))?;
        let mut again = Vec::new();
        while let Some(stream) = try_slot(&vms, 1)? {
            again.push(stream);
            assert!(
                again.len() <= 3,
                "{profile:?}: the long request's slot lost"
            );
        }
        assert_eq!(again.len(), 3, "{profile:?}");
        long.send_response_headers(Response::status(200), true)?;
        long.finish()?;
        for mut stream in again {
            stream.finish()?;
        }
        let inflight = if profile == Profile::Envoy {
            "palisade_resilience.inflight.outbound_8080__orders.shop.svc.cluster.local"
        } else {
            "palisade_resilience.inflight.orders"
        };
        let gauge = host
            .metrics()
            .into_iter()
            .find(|(name, _)| name.ends_with(inflight))
            .map(|(_, value)| value);
        assert_eq!(gauge, Some(MetricValue::Gauge(0)), "{profile:?}");
        // One key for the scope whatever VMs come and go, holding no share once all is back.
        let (value, _) = host
            .shared_data(&format!(
                "palisade/resilience/inflight/{}",
                if profile == Profile::Envoy {
                    CLUSTER
                } else {
                    "orders"
                }
            ))
            .expect("the scope's table");
        // The table format's version, then 8 share slots, all empty (zeros: padding).
        assert_eq!(value.first(), Some(&2), "{profile:?}");
        assert_eq!(
            value.len(),
            1 + 8 * 24,
            "{profile:?}: the padded length stays"
        );
        assert!(
            value.iter().skip(1).all(|b| *b == 0),
            "{profile:?}: an empty table"
        );
    }
    Ok(())
}

#[test]
fn envoy_gets_the_retry_and_timeout_headers_and_loses_the_clients() -> Result<(), Failure> {
    let (_host, vms) = start(
        Profile::Envoy,
        r#"{"timeouts":{"long_running_prefixes":["/reports/"]}}"#,
    )?;
    let mut stream = vms.worker(0).http_request(
        get("/reports/q3")
            .header("x-envoy-max-retries", "25")
            .header("x-envoy-upstream-rq-per-try-timeout-ms", "1"),
    )?;
    assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
    let upstream = stream.upstream_request_headers();
    assert_eq!(upstream.get("x-envoy-max-retries"), Some("3"));
    assert_eq!(
        upstream.get("x-envoy-retry-on"),
        Some("connect-failure,refused-stream,reset,gateway-error")
    );
    assert_eq!(
        upstream.get("x-envoy-upstream-rq-timeout-ms"),
        Some("3600000")
    );
    assert!(!upstream.contains("x-envoy-upstream-rq-per-try-timeout-ms"));
    let mut post = vms
        .worker(1)
        .http_request(Request::post("/orders").property("xds.cluster_name", CLUSTER))?;
    assert_eq!(post.send_request_headers(true)?, Outcome::Continue);
    let upstream = post.upstream_request_headers();
    assert_eq!(
        upstream.get("x-envoy-retry-on"),
        Some("connect-failure,refused-stream")
    );
    assert_eq!(
        upstream.get("x-envoy-upstream-rq-timeout-ms"),
        Some("60000")
    );
    Ok(())
}

#[test]
fn kong_ignores_router_headers_so_none_are_sent_and_the_breaker_still_works() -> Result<(), Failure>
{
    let config = r#"{"proxy":"kong","circuit_breaker":{"key":"orders"}}"#;
    let (host, vms) = start(Profile::Kong(KongVersion::V3_10), config)?;
    let mut stream = vms
        .worker(0)
        .http_request(Request::get("/orders").header("x-envoy-retry-on", "5xx"))?;
    assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
    let upstream = stream.upstream_request_headers();
    assert!(
        !upstream.names().iter().any(|n| n.starts_with("x-envoy-")),
        "{upstream:?}"
    );
    stream.send_response_headers(Response::status(200), true)?;
    stream.finish()?;
    // Past the 100 pairs Kong hands over, a client's router header is removed unseen (an
    // Envoy sidecar behind Kong would obey it).
    let mut request = Request::get("/orders");
    for i in 0..100 {
        request = request.header(&format!("x-filler-{i}"), "1");
    }
    let mut stream = vms
        .worker(0)
        .http_request(request.header("x-envoy-max-retries", "50"))?;
    assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
    let upstream = stream.upstream_request_headers();
    assert_eq!(upstream.get("x-envoy-max-retries"), None);
    assert_eq!(upstream.get("x-filler-99"), Some("1"));
    stream.send_response_headers(Response::status(200), true)?;
    stream.finish()?;
    for i in 0..5 {
        let mut s = vms.worker(i % 2).http_request(Request::get("/orders"))?;
        s.send_request_headers(true)?;
        s.send_response_headers(Response::status(503), true)?;
        s.finish()?;
    }
    let mut refused = vms.worker(1).http_request(Request::get("/orders"))?;
    let Outcome::LocalReply(reply) = refused.send_request_headers(true)? else {
        panic!("open on Kong too")
    };
    assert_eq!(reply.status, 503);
    assert_eq!(
        metric(&host, "palisade_resilience.circuit.orders"),
        Some(MetricValue::Gauge(1))
    );
    Ok(())
}

#[test]
fn an_expired_deadline_gets_504_without_the_upstream() -> Result<(), Failure> {
    let (host, vms) = start(
        Profile::Envoy,
        r#"{"timeouts":{"deadline_header":"x-request-deadline-ms"}}"#,
    )?;
    let now_ms = START_UNIX_SECS * 1000;
    let mut late = vms
        .worker(0)
        .http_request(get("/orders").header("x-request-deadline-ms", now_ms.to_string()))?;
    let Outcome::LocalReply(reply) = late.send_request_headers(true)? else {
        panic!("refused")
    };
    assert_eq!(reply.status, 504);
    assert_eq!(
        String::from_utf8(reply.body).unwrap(),
        r#"{"error":"deadline exceeded","status":504,"request_id":"req-1"}"#
    );
    assert!(!late.reached_upstream());
    assert_eq!(
        metric(&host, "palisade_resilience.deadline_exceeded"),
        Some(MetricValue::Counter(1))
    );
    let mut soon = vms.worker(1).http_request(
        get("/orders").header("x-request-deadline-ms", (now_ms + 1500).to_string()),
    )?;
    assert_eq!(soon.send_request_headers(true)?, Outcome::Continue);
    assert_eq!(
        soon.upstream_request_headers()
            .get("x-envoy-upstream-rq-timeout-ms"),
        Some("1500")
    );
    assert_eq!(
        metric(&host, "palisade_resilience.deadline_exceeded"),
        Some(MetricValue::Counter(1)),
        "a deadline still ahead is not counted"
    );
    Ok(())
}

/// Kong hands a plugin the first 100 pairs of a request's headers: what resilience reads by
/// name past them is asked for one by one.
#[test]
fn on_kong_headers_past_the_first_100_pairs_still_count() -> Result<(), Failure> {
    let (_host, vms) = start(
        Profile::Kong(KongVersion::V3_10),
        r#"{"proxy":"kong","circuit_breaker":{"key":"orders"},
            "timeouts":{"deadline_header":"x-request-deadline-ms"},
            "fault":{"abort":{"status":418,"percent":100},"only_with_header":"x-chaos"}}"#,
    )?;
    let crowded = |path: &str| {
        let mut request = Request::get(path);
        for i in 0..100 {
            request = request.header(&format!("x-filler-{i}"), "1");
        }
        request
    };
    let now_ms = START_UNIX_SECS * 1000;
    let mut late = vms
        .worker(0)
        .http_request(crowded("/orders").header("x-request-deadline-ms", now_ms.to_string()))?;
    let Outcome::LocalReply(reply) = late.send_request_headers(true)? else {
        panic!("an expired deadline past the cap is seen")
    };
    assert_eq!(reply.status, 504);
    let mut chaos = vms
        .worker(0)
        .http_request(crowded("/orders").header("x-chaos", "1"))?;
    let Outcome::LocalReply(reply) = chaos.send_request_headers(true)? else {
        panic!("a fault header past the cap is seen")
    };
    assert_eq!(reply.status, 418);
    // A gRPC request past the cap: its HTTP 200 with a failing grpc-status (trailers-only,
    // which Kong shows) counts against the circuit.
    for _ in 0..5 {
        let mut call = vms.worker(1).http_request(
            crowded("/orders.Orders/List").header("content-type", "application/grpc"),
        )?;
        assert_eq!(call.send_request_headers(true)?, Outcome::Continue);
        call.send_response_headers(
            Response::status(200)
                .header("content-type", "application/grpc")
                .header("grpc-status", "14"),
            true,
        )?;
        call.finish()?;
    }
    let mut refused = vms.worker(1).http_request(Request::get("/orders"))?;
    let Outcome::LocalReply(reply) = refused.send_request_headers(true)? else {
        panic!("five gRPC failures past the cap open the circuit")
    };
    assert_eq!(reply.status, 503);
    Ok(())
}

/// Kong cannot resume a request from a timer (its proxy_set_effective_context does nothing,
/// and the resume from the root context crashes the worker), so a delay is refused there with
/// one line; the Kong profiles crash a test that tries.
#[test]
fn an_injected_delay_is_refused_on_kong() -> Result<(), Failure> {
    let config = r#"{"proxy":"kong","circuit_breaker":{"key":"orders"},"fault":{"delay":{"duration":"2s","percent":100}}}"#;
    for version in KongVersion::ALL {
        let host = Host::new(Profile::Kong(version));
        let vms = host.load(Plugin::Resilience, config)?;
        let line = "[palisade-resilience] configuration rejected: fault.delay: not available on \
                    Kong: ngx_wasm_module cannot resume a request from a timer";
        assert_eq!(
            vms.configured(),
            &Configured::Rejected {
                log: Some(line.to_owned())
            },
            "{version:?}: {:?}",
            vms.logs()
        );
    }
    // An abort needs no timer: accepted.
    start(
        Profile::Kong(KongVersion::V3_10),
        r#"{"proxy":"kong","circuit_breaker":{"key":"orders"},"fault":{"abort":{"status":503,"percent":1}}}"#,
    )?;
    Ok(())
}

#[test]
fn an_injected_delay_pauses_the_request_until_the_timer_resumes_it() -> Result<(), Failure> {
    {
        let profile = Profile::Envoy;
        let config = r#"{"proxy":"envoy","fault":{"delay":{"duration":"2s","percent":100},"only_with_header":"x-chaos"}}"#;
        let (host, vms) = start(profile, config)?;
        let mut plain = vms.worker(0).http_request(get("/orders"))?;
        assert_eq!(
            plain.send_request_headers(true)?,
            Outcome::Continue,
            "{profile:?}"
        );
        let mut chaos = vms
            .worker(0)
            .http_request(get("/orders").header("x-chaos", "1"))?;
        assert_eq!(
            chaos.send_request_headers(true)?,
            Outcome::Pause,
            "{profile:?}"
        );
        host.advance_clock(Duration::from_millis(1_900))?;
        assert_eq!(chaos.outcome(), Outcome::Pause, "{profile:?}");
        host.advance_clock(Duration::from_millis(200))?;
        assert_eq!(
            chaos.outcome(),
            Outcome::Continue,
            "{profile:?}: {:?}",
            vms.logs()
        );
        chaos.send_response_headers(Response::status(200), true)?;
        chaos.finish()?;
        // A client that leaves during its delay is forgotten, not resumed.
        let mut gone = vms
            .worker(1)
            .http_request(get("/orders").header("x-chaos", "1"))?;
        assert_eq!(gone.send_request_headers(true)?, Outcome::Pause);
        gone.finish()?;
        host.advance_clock(Duration::from_secs(3))?;
        assert!(
            plugin_lines(&vms, LogLevel::Warn).is_empty()
                && plugin_lines(&vms, LogLevel::Error).is_empty(),
            "{profile:?}: {:?}",
            vms.logs()
        );
    }
    Ok(())
}

#[test]
fn an_injected_abort_hits_the_configured_share() -> Result<(), Failure> {
    let (host, vms) = start(
        Profile::Envoy,
        r#"{"fault":{"abort":{"status":418,"percent":30}}}"#,
    )?;
    let mut aborted = 0;
    for i in 0..400 {
        let stream = exchange(&vms, i % 2, 200)?;
        if let Some(reply) = stream.local_reply() {
            assert_eq!(reply.status, 418);
            aborted += 1;
        }
    }
    assert!((90..150).contains(&aborted), "{aborted} of 400");
    assert_eq!(
        metric(&host, "palisade_resilience.fault_aborted"),
        Some(MetricValue::Counter(aborted))
    );
    Ok(())
}

/// Fuel of one healthy GET per feature set (printed with `--nocapture`, for the benchmark
/// notes); a healthy closed circuit is read, never written.
#[test]
fn fuel_of_a_healthy_request_by_feature() -> Result<(), Failure> {
    let configs = [
        ("defaults", "{}"),
        ("with a retry budget", r#"{"retry":{"budget":{}}}"#),
        (
            "with a concurrency limit",
            r#"{"concurrency":{"max_requests":100}}"#,
        ),
        (
            "breaker only, fixed key",
            r#"{"retry":{"budget":null,"max_retries":0},"circuit_breaker":{"key":"orders"}}"#,
        ),
        (
            "router headers only",
            r#"{"retry":{"budget":null},"circuit_breaker":{"enabled":false}}"#,
        ),
        (
            "breaker only, kong",
            r#"{"retry":{"budget":null},"proxy":"kong"}"#,
        ),
        (
            "nothing on",
            r#"{"retry":{"budget":null},"circuit_breaker":{"enabled":false},"proxy":"kong"}"#,
        ),
    ];
    for (name, config) in configs {
        let (host, vms) = start(Profile::Envoy, config)?;
        let mut fuel = Vec::new();
        // The first request also defines metrics and first-use state; the second is the
        // steady state.
        for _ in 0..2 {
            let mut stream = vms.worker(0).http_request(
                get("/api/orders?page=2")
                    .header("accept", "application/json")
                    .header("user-agent", "palisade-bench/1"),
            )?;
            assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
            stream.send_response_headers(Response::status(200), true)?;
            stream.finish()?;
            fuel.push(stream.fuel());
        }
        println!(
            "{name:<26} {:>8} fuel/req (first request {:>8})",
            fuel[1], fuel[0]
        );
        assert_eq!(
            host.shared_data(&format!("palisade/resilience/cb/{CLUSTER}")),
            None,
            "{name}: a healthy closed circuit is never written"
        );
    }
    Ok(())
}

/// Kong 3.4, the oldest release, has no metrics, no `kong.*` properties and no default shm_kv
/// zone: with `metrics: false` and a fixed key the breaker works in the `palisade` zone, and
/// nothing the plugin calls traps.
#[test]
fn kong_3_4_with_metrics_off_and_a_fixed_key() -> Result<(), Failure> {
    let config = r#"{"proxy":"kong","metrics":false,"circuit_breaker":{"key":"orders","base_ejection":"5s"}}"#;
    let (host, vms) = start(Profile::Kong(KongVersion::V3_4), config)?;
    for i in 0..5 {
        let mut s = vms.worker(i % 2).http_request(Request::get("/orders"))?;
        assert_eq!(s.send_request_headers(true)?, Outcome::Continue);
        s.send_response_headers(Response::status(502), true)?;
        s.finish()?;
    }
    let mut refused = vms.worker(0).http_request(Request::get("/orders"))?;
    let Outcome::LocalReply(reply) = refused.send_request_headers(true)? else {
        panic!("open")
    };
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers.get("retry-after"), Some("5"));
    refused.finish()?;
    host.advance_clock(Duration::from_secs(5))?;
    let mut trial = vms.worker(1).http_request(Request::get("/orders"))?;
    assert_eq!(trial.send_request_headers(true)?, Outcome::Continue);
    trial.send_response_headers(Response::status(200), true)?;
    trial.finish()?;
    assert!(host.metrics().is_empty(), "{:?}", host.metrics());
    assert_eq!(
        plugin_lines(&vms, LogLevel::Info)
            .last()
            .map(String::as_str),
        Some("[palisade-resilience] circuit orders closed: the trial succeeded")
    );
    Ok(())
}

/// The retry budget (20% of the requests in flight, at least 3) over 20 requests held at once
/// on two workers: a request is granted retries while fewer than max(20% of those in flight,
/// itself included, 3) hold a grant. So the first three, then none until the twentieth
/// (20% of 20 = 4). Each goes upstream with `x-envoy-max-retries` 3 or 0; once all have ended
/// nothing is held, and the next request is granted again.
#[test]
fn the_retry_budget_grants_retries_to_a_share_of_the_requests_in_flight() -> Result<(), Failure> {
    const INFLIGHT: &str =
        "palisade_resilience.inflight.outbound_8080__orders.shop.svc.cluster.local";
    let (host, vms) = start(
        Profile::Envoy,
        r#"{"retry":{"budget":{"percent":20,"min_concurrency":3}}}"#,
    )?;
    let mut held = Vec::new();
    let mut retries = Vec::new();
    for i in 0..20 {
        let mut stream = vms.worker(i % 2).http_request(get("/orders"))?;
        assert_eq!(stream.send_request_headers(true)?, Outcome::Continue, "{i}");
        let upstream = stream.upstream_request_headers();
        retries.push(
            upstream
                .get("x-envoy-max-retries")
                .unwrap_or("none")
                .to_owned(),
        );
        held.push(stream);
    }
    let expected: Vec<&str> = (1..=20)
        .map(|n| if n <= 3 || n == 20 { "3" } else { "0" })
        .collect();
    assert_eq!(retries, expected);
    assert_eq!(metric(&host, INFLIGHT), Some(MetricValue::Gauge(20)));
    for (i, mut stream) in held.into_iter().enumerate() {
        stream.send_response_headers(Response::status(200), true)?;
        stream.finish()?;
        assert_eq!(
            metric(&host, INFLIGHT),
            Some(MetricValue::Gauge(19 - i as i64)),
            "each end gives its slot back"
        );
    }
    let mut next = vms.worker(1).http_request(get("/orders"))?;
    assert_eq!(next.send_request_headers(true)?, Outcome::Continue);
    assert_eq!(
        next.upstream_request_headers().get("x-envoy-max-retries"),
        Some("3"),
        "the budget is free again"
    );
    next.send_response_headers(Response::status(200), true)?;
    next.finish()?;
    assert_eq!(metric(&host, INFLIGHT), Some(MetricValue::Gauge(0)));
    Ok(())
}

/// Envoy's own overflow 503 (a connection-pool limit, e.g. a DestinationRule's
/// `connectionPool`, refused the request; its code details say `{overflow}`) tried no
/// upstream: it never counts, also as a gRPC trailers-only UNAVAILABLE. An upstream's 503 with
/// `x-envoy-overloaded` counts: the header is not proof. On Kong nothing is exempt.
#[test]
fn envoys_own_overflow_503_never_opens_the_circuit() -> Result<(), Failure> {
    let overloaded = |vms: &PluginVms, worker: usize, grpc: bool| {
        let request = if grpc {
            get("/orders.Orders/Get").header("content-type", "application/grpc")
        } else {
            get("/orders")
        };
        let response = if grpc {
            Response::status(200)
                .header("content-type", "application/grpc")
                .header("grpc-status", "14")
        } else {
            Response::status(503)
        };
        let mut stream = vms.worker(worker).http_request(request)?;
        assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
        stream.send_response_headers(response.header("x-envoy-overloaded", "true"), true)?;
        stream.finish()?;
        Ok::<_, Failure>(())
    };
    let (host, vms) = start(Profile::Envoy, "")?;
    host.set_property(
        "response.code_details",
        "upstream_reset_before_response_started{overflow}",
    );
    for i in 0..10 {
        overloaded(&vms, i % 2, i >= 5)?;
    }
    assert_eq!(
        metric(&host, "palisade_resilience.circuit_opened"),
        Some(MetricValue::Counter(0))
    );
    assert_eq!(
        host.shared_data(&format!("palisade/resilience/cb/{CLUSTER}")),
        None
    );
    // The upstream's own 503s still count, `x-envoy-overloaded` or not.
    host.set_property("response.code_details", "via_upstream");
    for i in 0..5 {
        overloaded(&vms, i % 2, false)?;
    }
    assert_eq!(
        metric(&host, "palisade_resilience.circuit_opened"),
        Some(MetricValue::Counter(1))
    );
    let config = r#"{"proxy":"kong","metrics":false,"circuit_breaker":{"key":"orders"}}"#;
    let (_, vms) = start(Profile::kong(), config)?;
    for i in 0..5 {
        let mut stream = vms.worker(i % 2).http_request(Request::get("/orders"))?;
        assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
        stream.send_response_headers(
            Response::status(503).header("x-envoy-overloaded", "true"),
            true,
        )?;
        stream.finish()?;
    }
    assert_eq!(
        plugin_lines(&vms, LogLevel::Warn),
        ["[palisade-resilience] circuit orders opened for 30s (5 consecutive failures)"]
    );
    Ok(())
}

/// A client's deadline shortens the timeout the router gets: the router's 504 on such a stream
/// is the client's haste, not the upstream's failure. Ten 1 ms deadlines (HTTP and gRPC) open
/// nothing; a trial with one neither reopens the circuit nor keeps its place, and goes out
/// without retries.
#[test]
fn a_client_deadline_cannot_open_the_circuit() -> Result<(), Failure> {
    let (host, vms) = start(
        Profile::Envoy,
        r#"{"timeouts":{"deadline_header":"x-request-deadline-ms"}}"#,
    )?;
    let hasty = |host: &Host, vms: &PluginVms, worker: usize, grpc: bool| {
        let now_ms = host
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let deadline = (now_ms + 1).to_string();
        let request = get(if grpc {
            "/orders.Orders/Get"
        } else {
            "/orders"
        })
        .header("x-request-deadline-ms", deadline);
        let request = if grpc {
            request.header("content-type", "application/grpc")
        } else {
            request
        };
        let mut stream = vms.worker(worker).http_request(request)?;
        assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
        let upstream = stream.upstream_request_headers();
        assert_eq!(upstream.get("x-envoy-upstream-rq-timeout-ms"), Some("1"));
        let max_retries = upstream.get("x-envoy-max-retries").map(str::to_owned);
        // The router's timeout, as Envoy answers it (a gRPC call gets it trailers-only).
        let response = if grpc {
            Response::status(200)
                .header("content-type", "application/grpc")
                .header("grpc-status", "14")
                .header("grpc-message", "upstream request timeout")
        } else {
            Response::status(504)
        };
        stream.send_response_headers(response, true)?;
        stream.finish()?;
        Ok::<_, Failure>(max_retries)
    };
    for i in 0..10 {
        hasty(&host, &vms, i % 2, i >= 5)?;
    }
    assert_eq!(
        metric(&host, "palisade_resilience.circuit_opened"),
        Some(MetricValue::Counter(0))
    );
    // A deadline of `deadline_counted_from` (1s) or more is the upstream's to meet: a hung
    // upstream still opens the circuit for callers that pass their deadlines on.
    for i in 0..4 {
        let now_ms = host
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let request = get("/orders").header("x-request-deadline-ms", (now_ms + 2_000).to_string());
        let mut stream = vms.worker(i % 2).http_request(request)?;
        assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
        let upstream = stream.upstream_request_headers();
        assert_eq!(upstream.get("x-envoy-upstream-rq-timeout-ms"), Some("2000"));
        stream.send_response_headers(Response::status(504), true)?;
        stream.finish()?;
    }
    // The upstream's own timeouts (no deadline) count too: the fifth in a row opens it.
    for i in 0..1 {
        exchange(&vms, i % 2, 504)?;
    }
    assert_eq!(metric(&host, GAUGE), Some(MetricValue::Gauge(1)));
    host.advance_clock(Duration::from_secs(30))?;
    let max_retries = hasty(&host, &vms, 0, false)?;
    assert_eq!(max_retries.as_deref(), Some("0"), "a trial is one attempt");
    assert_eq!(
        metric(&host, GAUGE),
        Some(MetricValue::Gauge(2)),
        "still half-open"
    );
    let next = exchange(&vms, 1, 200)?;
    assert!(
        next.local_reply().is_none(),
        "the trial's place was given back"
    );
    assert_eq!(metric(&host, GAUGE), Some(MetricValue::Gauge(0)), "closed");
    Ok(())
}

/// 501 (gRPC UNIMPLEMENTED) is the caller asking for a method the upstream does not have: a
/// client calling it over and over must not open the circuit for everyone.
#[test]
fn unimplemented_never_opens_the_circuit() -> Result<(), Failure> {
    let (host, vms) = start(Profile::Envoy, "")?;
    for i in 0..5 {
        exchange(&vms, i % 2, 501)?;
    }
    for i in 0..5 {
        let request = get("/orders.Orders/Missing").header("content-type", "application/grpc");
        let mut stream = vms.worker(i % 2).http_request(request)?;
        assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
        stream.send_response_headers(
            Response::status(200)
                .header("content-type", "application/grpc")
                .header("grpc-status", "12"),
            true,
        )?;
        stream.finish()?;
    }
    assert_eq!(
        metric(&host, "palisade_resilience.circuit_opened"),
        Some(MetricValue::Counter(0))
    );
    assert_eq!(exchange(&vms, 0, 200)?.local_reply(), None);
    Ok(())
}

/// A long-running route keeps its whole timeout for one try: no per-try timeout is sent there.
#[test]
fn a_long_running_route_gets_no_per_try_timeout() -> Result<(), Failure> {
    let (_host, vms) = start(
        Profile::Envoy,
        r#"{"retry":{"per_try_timeout":"15s"},"timeouts":{"long_running_prefixes":["/reports/"]}}"#,
    )?;
    let mut report = vms.worker(0).http_request(get("/reports/q3"))?;
    assert_eq!(report.send_request_headers(true)?, Outcome::Continue);
    let upstream = report.upstream_request_headers();
    assert_eq!(
        upstream.get("x-envoy-upstream-rq-timeout-ms"),
        Some("3600000")
    );
    assert_eq!(upstream.get("x-envoy-upstream-rq-per-try-timeout-ms"), None);
    let mut order = vms.worker(1).http_request(get("/orders"))?;
    assert_eq!(order.send_request_headers(true)?, Outcome::Continue);
    assert_eq!(
        order
            .upstream_request_headers()
            .get("x-envoy-upstream-rq-per-try-timeout-ms"),
        Some("15000")
    );
    Ok(())
}

#[test]
fn a_per_try_timeout_envoy_would_ignore_is_refused_with_one_line() -> Result<(), Failure> {
    assert_rejected(
        Plugin::Resilience,
        r#"{"retry":{"per_try_timeout":"90s"}}"#,
        "[palisade-resilience] configuration rejected: retry.per_try_timeout: must be shorter than timeouts.default (1m), or Envoy ignores it",
    )
}

/// Kong traps on a metric name past 256 bytes with its `pw:<filter>:` prefix: a circuit named
/// after a long Kong service gets a gauge cut to a bounded name with a hash, not a trap per
/// request.
#[test]
fn a_long_upstream_name_gets_a_bounded_gauge_on_kong() -> Result<(), Failure> {
    let service = format!("svc-{}", "a".repeat(240));
    let (host, vms) = start(Profile::Kong(KongVersion::V3_10), r#"{"proxy":"kong"}"#)?;
    let request = || {
        Request::get("/orders")
            .property("kong.service_name", service.as_str())
            .property("kong.route_name", "orders")
    };
    for i in 0..5 {
        let mut s = vms.worker(i % 2).http_request(request())?;
        assert_eq!(s.send_request_headers(true)?, Outcome::Continue);
        s.send_response_headers(Response::status(503), true)?;
        s.finish()?;
    }
    let mut refused = vms.worker(1).http_request(request())?;
    let Outcome::LocalReply(reply) = refused.send_request_headers(true)? else {
        panic!("open")
    };
    assert_eq!(reply.status, 503);
    let name =
        palisade_kit::metric_name::bounded(&format!("palisade_resilience.circuit.{service}"))
            .into_owned();
    assert!(name.len() <= palisade_kit::metric_name::MAX_NAME, "{name}");
    assert_eq!(metric(&host, &name), Some(MetricValue::Gauge(1)));
    Ok(())
}

/// A gauge is defined once per VM, on first use, and found again after: not once per request
/// (Envoy hands out a new metric id per definition).
#[test]
fn gauges_are_defined_once_per_vm() -> Result<(), Failure> {
    let (_host, vms) = start(Profile::Envoy, r#"{"concurrency": {"max_requests": 100}}"#)?;
    let defines = |stream: &HttpStream| {
        stream
            .host_calls()
            .iter()
            .filter(|(_, name)| *name == "proxy_define_metric")
            .count()
    };
    // Two clusters taking turns, so the last-used gauge is never the one asked for.
    let on = |cluster: &str| -> Result<HttpStream, Failure> {
        let mut stream = vms.worker(0).http_request(
            Request::get("/orders")
                .property("xds.cluster_name", cluster)
                .property("xds.route_name", "orders"),
        )?;
        assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
        stream.send_response_headers(Response::status(200), true)?;
        stream.finish()?;
        Ok(stream)
    };
    for cluster in ["a", "b"] {
        let first = on(cluster)?;
        assert!(defines(&first) > 0, "{cluster}: {:?}", first.host_calls());
    }
    for cluster in ["a", "b", "a", "b"] {
        let again = on(cluster)?;
        assert_eq!(defines(&again), 0, "{cluster}: {:?}", again.host_calls());
    }
    Ok(())
}
