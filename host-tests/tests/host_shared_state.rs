//! The test host's shared state through the ABI: shared data with each profile's CAS rule
//! (several workers interleaved), shared queues and their notifications, metrics.

use palisade_host_tests::wasm_host::{
    Failure, FailureKind, Headers, Host, KongVersion, MetricValue, Outcome, Plugin, Profile,
    Request, Worker,
};

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;

/// One request through the shared_data fixture; the headers its upstream saw.
fn request(worker: &Worker, headers: &[(&str, &str)]) -> Result<Headers, Failure> {
    let request = headers
        .iter()
        .fold(Request::get("/"), |r, (n, v)| r.header(n, v));
    let mut stream = worker.http_request(request)?;
    assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
    let seen = stream.upstream_request_headers();
    stream.finish()?;
    Ok(seen)
}

fn status(headers: &Headers) -> u32 {
    headers.get("x-status").unwrap().parse().unwrap()
}

fn set(worker: &Worker, key: &str, value: &str, cas: u32) -> Result<u32, Failure> {
    let cas = cas.to_string();
    let seen = request(
        worker,
        &[
            ("x-op", "set"),
            ("x-key", key),
            ("x-value", value),
            ("x-cas", &cas),
        ],
    )?;
    Ok(status(&seen))
}

fn delete(worker: &Worker, key: &str, cas: u32) -> Result<u32, Failure> {
    let cas = cas.to_string();
    let seen = request(
        worker,
        &[("x-op", "delete"), ("x-key", key), ("x-cas", &cas)],
    )?;
    Ok(status(&seen))
}

/// The value and cas the plugin reads, `None` on NotFound.
fn get(worker: &Worker, key: &str) -> Result<Option<(String, u32)>, Failure> {
    let seen = request(worker, &[("x-op", "get"), ("x-key", key)])?;
    Ok(match status(&seen) {
        OK => Some((
            seen.get("x-value").unwrap().to_owned(),
            seen.get("x-cas").unwrap().parse().unwrap(),
        )),
        NOT_FOUND => None,
        other => panic!("get answered status {other}"),
    })
}

#[test]
fn envoy_cas_zero_overwrites_a_stale_cas_conflicts() -> Result<(), Failure> {
    let host = Host::new(Profile::Envoy);
    let plugin = host.load(Plugin::fixture("shared_data"), "")?;
    let w = plugin.worker(0);
    assert_eq!(get(&w, "k")?, None);
    assert_eq!(set(&w, "k", "a", 0)?, OK);
    let (value, first) = get(&w, "k")?.unwrap();
    assert_eq!(value, "a");
    // cpp-host: cas 0 is an unconditional write.
    assert_eq!(set(&w, "k", "b", 0)?, OK);
    let (value, second) = get(&w, "k")?.unwrap();
    assert_eq!(value, "b");
    assert_ne!(first, second);
    assert_eq!(set(&w, "k", "c", first)?, CAS_MISMATCH);
    assert_eq!(set(&w, "k", "d", second)?, OK);
    assert_eq!(host.shared_data("k").unwrap().0, b"d");
    // A cas on a missing key is ignored.
    assert_eq!(set(&w, "new", "x", 77)?, OK);
    Ok(())
}

#[test]
fn kong_cas_must_equal_the_stored_one() -> Result<(), Failure> {
    let host = Host::new(Profile::kong());
    let plugin = host.load(Plugin::fixture("shared_data"), "")?;
    let w = plugin.worker(0);
    assert_eq!(set(&w, "palisade/k", "a", 0)?, OK);
    assert_eq!(get(&w, "palisade/k")?, Some(("a".to_owned(), 1)));
    // ngx_wa_shm_kv.c:279: cas 0 on an existing key is not written.
    assert_eq!(set(&w, "palisade/k", "b", 0)?, CAS_MISMATCH);
    assert_eq!(get(&w, "palisade/k")?, Some(("a".to_owned(), 1)));
    assert_eq!(set(&w, "palisade/k", "b", 1)?, OK);
    assert_eq!(get(&w, "palisade/k")?, Some(("b".to_owned(), 2)));
    assert_eq!(set(&w, "palisade/missing", "x", 5)?, CAS_MISMATCH);
    assert_eq!(get(&w, "palisade/missing")?, None);
    // A NULL value deletes, with the current cas only.
    assert_eq!(delete(&w, "palisade/k", 1)?, CAS_MISMATCH);
    assert_eq!(delete(&w, "palisade/k", 2)?, OK);
    assert_eq!(get(&w, "palisade/k")?, None);
    assert_eq!(set(&w, "palisade/k", "again", 0)?, OK);
    assert_eq!(get(&w, "palisade/k")?, Some(("again".to_owned(), 1)));
    Ok(())
}

#[test]
fn workers_share_data_and_a_read_modify_write_race_conflicts_on_both_profiles(
) -> Result<(), Failure> {
    for profile in [Profile::Envoy, Profile::kong()] {
        let host = Host::new(profile);
        let plugin = host.load_workers(Plugin::fixture("shared_data"), "", 2)?;
        let (w0, w1) = (plugin.worker(0), plugin.worker(1));
        assert_eq!(set(&w0, "palisade/counter", "1", 0)?, OK);
        // Both workers read the same version...
        let (_, cas0) = get(&w0, "palisade/counter")?.unwrap();
        let (value, cas1) = get(&w1, "palisade/counter")?.unwrap();
        assert_eq!((value.as_str(), cas1), ("1", cas0), "{profile:?}");
        // ...worker 1 writes first, so worker 0's write with the version it read conflicts.
        assert_eq!(set(&w1, "palisade/counter", "2", cas1)?, OK, "{profile:?}");
        assert_eq!(
            set(&w0, "palisade/counter", "2", cas0)?,
            CAS_MISMATCH,
            "{profile:?}"
        );
        let (value, fresh) = get(&w0, "palisade/counter")?.unwrap();
        assert_eq!(set(&w0, "palisade/counter", "3", fresh)?, OK, "{profile:?}");
        assert_eq!(value, "2");
        assert_eq!(host.shared_data("palisade/counter").unwrap().0, b"3");
    }
    Ok(())
}

/// Kong keeps a key `<zone>/<rest>` in the shm_kv zone `<zone>`, else in the default zone `*`;
/// the rendered kong.conf defines only `palisade`, so any other key traps, on the oldest and the
/// newest release alike.
#[test]
fn kong_keeps_shared_data_only_in_the_palisade_zone() -> Result<(), Failure> {
    for version in [KongVersion::V3_4, KongVersion::V3_10] {
        let host = Host::new(Profile::Kong(version));
        let plugin = host.load(Plugin::fixture("shared_data"), "")?;
        let w = plugin.worker(0);
        assert_eq!(set(&w, "palisade/rate-limit/l/0", "a", 0)?, OK);
        assert_eq!(
            get(&w, "palisade/rate-limit/l/0")?,
            Some(("a".to_owned(), 1))
        );
        for key in ["k", "other/k", "palisade", "palisade-auth/vt/1"] {
            // A trap ends the VM: a fresh one for each key.
            let plugin = host.load(Plugin::fixture("shared_data"), "")?;
            let err = get(&plugin.worker(0), key).err().unwrap();
            assert_eq!(err.kind, FailureKind::Refused, "{version}: {key}");
            assert!(
                err.message.contains(&format!(
                    "proxy_get_shared_data on {key:?} traps \"could not resolve namespace\""
                )),
                "{version}: {err}"
            );
        }
    }
    // Envoy has no zones: any key is a key.
    let host = Host::new(Profile::Envoy);
    let plugin = host.load(Plugin::fixture("shared_data"), "")?;
    assert_eq!(set(&plugin.worker(0), "k", "a", 0)?, OK);
    Ok(())
}

#[test]
fn queue_items_reach_the_last_registered_worker_in_order() -> Result<(), Failure> {
    let host = Host::new(Profile::Envoy);
    let plugin = host.load_workers(Plugin::fixture("queue"), "", 2)?;
    let (w0, w1) = (plugin.worker(0), plugin.worker(1));
    for (worker, item) in [(&w0, "a"), (&w1, "b"), (&w0, "c")] {
        let mut stream = worker.http_request(Request::get("/").header("x-item", item))?;
        stream.send_request_headers(true)?;
        assert_eq!(stream.upstream_request_headers().get("x-status"), Some("0"));
        stream.finish()?;
    }
    let dequeued = |worker: &Worker| -> Vec<String> {
        worker
            .logs()
            .into_iter()
            .map(|entry| entry.message)
            .collect()
    };
    // cpp-host: on_queue_ready goes to the root context that registered the name last.
    assert_eq!(dequeued(&w1), ["a", "b", "c"]);
    assert!(dequeued(&w0).is_empty());
    assert_eq!(host.queue_len("events"), 0);
    Ok(())
}

#[test]
fn kong_has_no_shared_queues() {
    let host = Host::new(Profile::kong());
    let err = host.load(Plugin::fixture("queue"), "").err().unwrap();
    assert_eq!(err.kind, FailureKind::Refused);
    assert!(
        err.message.contains(
            "kong profile (Kong 3.10): proxy_register_shared_queue is not implemented by ngx_wasm_module (docs/PROXY_WASM.md"
        ),
        "{err}"
    );
}

#[test]
fn metrics_are_shared_by_workers() -> Result<(), Failure> {
    let host = Host::new(Profile::Envoy);
    let plugin = host.load_workers(Plugin::fixture("metrics"), "", 2)?;
    let mut counts = Vec::new();
    for worker in plugin.workers() {
        let mut stream = worker.http_request(Request::get("/"))?;
        stream.send_request_headers(true)?;
        counts.push(
            stream
                .upstream_request_headers()
                .get("x-count")
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(counts, ["1", "2"]);
    let metrics = host.metrics();
    assert_eq!(metrics["requests_total"], MetricValue::Counter(2));
    assert_eq!(metrics["latency_ms"], MetricValue::Histogram(vec![5, 5]));
    Ok(())
}

#[test]
fn kong_metrics_arrive_in_3_8() -> Result<(), Failure> {
    let err = Host::new(Profile::Kong(KongVersion::V3_7))
        .load(Plugin::fixture("metrics"), "")
        .err()
        .unwrap();
    assert_eq!(err.kind, FailureKind::Refused);
    assert!(
        err.message.contains(
            "proxy_define_metric is not implemented by ngx_wasm_module (docs/PROXY_WASM.md"
        ),
        "{err}"
    );
    let host = Host::new(Profile::Kong(KongVersion::V3_8));
    let plugin = host.load(Plugin::fixture("metrics"), "")?;
    let mut stream = plugin.http_request(Request::get("/"))?;
    stream.send_request_headers(true)?;
    assert_eq!(stream.upstream_request_headers().get("x-count"), Some("1"));
    Ok(())
}

/// Envoy (`entry[0]`) and Kong (the first match) both read a repeated header's first value.
#[test]
fn a_repeated_header_reads_its_first_value_on_both_hosts() -> Result<(), Failure> {
    for profile in [Profile::Envoy, Profile::kong()] {
        let key = "palisade/a";
        let host = Host::new(profile);
        let plugin = host.load(Plugin::fixture("shared_data"), "")?;
        let seen = request(
            &plugin.worker(0),
            &[
                ("x-op", "set"),
                ("x-key", "palisade/a"),
                ("x-key", "palisade/b"),
                ("x-value", "v"),
            ],
        )?;
        assert_eq!(status(&seen), OK);
        assert_eq!(
            host.shared_data(key).map(|(v, _)| v),
            Some(b"v".to_vec()),
            "{profile:?}"
        );
    }
    Ok(())
}
