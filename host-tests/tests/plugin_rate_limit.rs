//! palisade-rate-limit in the test host, under Envoy and Kong: configuration refusal, exact
//! limits across interleaved worker VMs on one shared store, burst and window rollover on the
//! virtual clock, key extraction edge cases, a full slot table, the 429 reply and the
//! RateLimit headers, metrics, fuel.

mod plugin_support;

use std::time::Duration;

use palisade_host_tests::wasm_host::{
    Failure, Host, KongVersion, LogLevel, LogOrigin, MetricValue, Outcome, Plugin, PluginVms,
    Profile, Request, Response, SharedDataFault,
};
use plugin_support::{assert_pass_through, assert_rejected, headers, send, PROFILES};

#[test]
fn a_zero_rate_is_refused_with_one_line() -> Result<(), Failure> {
    assert_rejected(
        Plugin::RateLimit,
        r#"{"limits":[{"name":"per-tenant","rate":0,"period":"1s","key":[{"header":"x-tenant"}]}]}"#,
        "[palisade-rate-limit] configuration rejected: limits[0].rate: must be at least 1",
    )
}

#[test]
fn requests_within_the_limit_pass_through_untouched() -> Result<(), Failure> {
    assert_pass_through(Plugin::RateLimit, "{}")?;
    assert_pass_through(
        Plugin::RateLimit,
        r#"{"rate_limit_headers":false,"limits":[{"name":"per-tenant","rate":100,"period":"1s",
            "burst":10,"key":[{"header":"x-tenant"}],"slots":16}]}"#,
    )
}

/// Loads the plugin on `workers` VMs sharing one store and asserts the config was accepted.
fn load(profile: Profile, config: &str, workers: usize) -> Result<(Host, PluginVms), Failure> {
    let host = Host::new(profile);
    let vms = host.load_workers(Plugin::RateLimit, config, workers)?;
    assert!(vms.is_accepted(), "{profile:?}: {:?}", vms.logs());
    // Every worker found or stored the proxy's fingerprint key, none fell back to its own.
    assert!(
        !vms.logs()
            .iter()
            .any(|l| l.message.contains("fingerprint key")),
        "{:?}",
        vms.logs()
    );
    let keys = host.shared_data_keys();
    assert!(
        keys.iter().any(|k| k == "palisade/rate-limit/hash-key"),
        "{keys:?}"
    );
    Ok((host, vms))
}

fn admitted(
    vms: &PluginVms,
    workers: usize,
    requests: usize,
    make: impl Fn(usize) -> Request,
) -> Result<usize, Failure> {
    let mut admitted = 0;
    for i in 0..requests {
        if send(vms, i % workers, make(i))?.is_none() {
            admitted += 1;
        }
    }
    Ok(admitted)
}

fn counter(host: &Host, name: &str) -> u64 {
    let metrics = host.metrics();
    let found = metrics
        .iter()
        .find(|(key, _)| key.ends_with(name))
        .map(|(_, value)| value.clone());
    match found {
        Some(MetricValue::Counter(n)) => n,
        other => panic!(
            "{name}: {other:?} in {:?}",
            metrics.keys().collect::<Vec<_>>()
        ),
    }
}

const ONE_BUDGET: &str = r#"{"limits":[{"name":"all","rate":1,"period":"1h","burst":9,
    "key":[{"constant":"all"}],"slots":4}]}"#;

#[test]
fn several_workers_interleaving_on_one_store_admit_exactly_the_budget() -> Result<(), Failure> {
    for profile in PROFILES {
        let (host, vms) = load(profile, ONE_BUDGET, 3)?;
        assert_eq!(
            admitted(&vms, 3, 40, |_| Request::get("/"))?,
            10,
            "{profile:?}"
        );
        assert_eq!(counter(&host, "palisade_rate_limit.all.allowed"), 10);
        assert_eq!(counter(&host, "palisade_rate_limit.all.limited"), 30);
        assert_eq!(counter(&host, "palisade_rate_limit.all.store_failures"), 0);
    }
    Ok(())
}

#[test]
fn a_refusal_is_429_with_the_json_body_retry_after_and_ratelimit_headers() -> Result<(), Failure> {
    for profile in PROFILES {
        let (_host, vms) = load(profile, ONE_BUDGET, 2)?;
        // Admitted responses carry the headers too, counting down.
        let mut stream = vms.worker(0).http_request(Request::get("/"))?;
        assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
        stream.send_response_headers(Response::status(200).header("x-up", "1"), true)?;
        assert_eq!(
            stream.response_headers().without(":status"),
            headers(&[
                ("x-up", "1"),
                ("ratelimit-policy", "\"all\";q=10;w=3600"),
                ("ratelimit", "\"all\";r=9;t=3600"),
            ]),
            "{profile:?}"
        );
        stream.finish()?;
        admitted(&vms, 2, 9, |_| Request::get("/"))?;
        let reply =
            send(&vms, 1, Request::get("/").header("x-request-id", "req-7"))?.expect("refused");
        assert_eq!(reply.status, 429);
        let mut expected = vec![
            ("content-type", "application/json"),
            ("retry-after", "3600"),
            ("ratelimit-policy", "\"all\";q=10;w=3600"),
            ("ratelimit", "\"all\";r=0;t=36000"),
        ];
        // Who refused, for palisade-audit: Envoy keeps it in the details; Kong has none, so
        // there it is a header (palisade-audit strips it in its response phase).
        if profile.is_kong() {
            expected.push((
                "x-palisade-denied-by",
                r#"palisade-rate-limit; reason="rate limit exceeded""#,
            ));
        }
        assert_eq!(reply.headers, headers(&expected), "{profile:?}");
        // Kong makes the details the status line's reason phrase: none there, so the client
        // sees a plain `429 Too Many Requests`.
        let details = if profile.is_kong() {
            ""
        } else {
            "palisade-rate-limit{rate_limit_exceeded}"
        };
        assert_eq!(reply.details, details, "{profile:?}");
        let body = String::from_utf8(reply.body).unwrap();
        assert_eq!(
            body.trim_end(),
            r#"{"error":"rate limit exceeded","status":429,"request_id":"req-7"}"#
        );
    }
    Ok(())
}

#[test]
fn burst_then_steady_rate_then_rollover_on_the_virtual_clock() -> Result<(), Failure> {
    // 6 per minute (one every 10 s), 3 more at once.
    let config = r#"{"limits":[{"name":"m","rate":6,"period":"60s","burst":3,
        "key":[{"header":"x-tenant"}],"slots":8}]}"#;
    for profile in PROFILES {
        let (host, vms) = load(profile, config, 2)?;
        let tenant = |_| Request::get("/").header("x-tenant", "acme");
        assert_eq!(admitted(&vms, 2, 10, tenant)?, 4, "{profile:?}: burst + 1");
        host.advance_clock(Duration::from_secs(9))?;
        assert_eq!(admitted(&vms, 2, 3, tenant)?, 0, "{profile:?}: not yet");
        host.advance_clock(Duration::from_secs(1))?;
        assert_eq!(
            admitted(&vms, 2, 3, tenant)?,
            1,
            "{profile:?}: one interval on"
        );
        // Idle for a whole period (plus the burst's worth): the full budget again.
        host.advance_clock(Duration::from_secs(60))?;
        assert_eq!(
            admitted(&vms, 2, 10, tenant)?,
            4,
            "{profile:?}: rolled over"
        );
        // Another tenant never shared any of it.
        let other = |_| Request::get("/").header("x-tenant", "globex");
        assert_eq!(admitted(&vms, 2, 10, other)?, 4, "{profile:?}");
    }
    Ok(())
}

#[test]
fn a_request_without_the_header_is_not_limited_by_a_limit_keyed_on_it() -> Result<(), Failure> {
    let config = r#"{"limits":[{"name":"t","rate":1,"period":"1h","key":[{"header":"x-tenant"}],"slots":8}]}"#;
    for profile in PROFILES {
        let (_host, vms) = load(profile, config, 2)?;
        assert_eq!(
            admitted(&vms, 2, 5, |_| Request::get("/"))?,
            5,
            "{profile:?}"
        );
        let tenant = |_| Request::get("/").header("x-tenant", "acme");
        assert_eq!(admitted(&vms, 2, 5, tenant)?, 1, "{profile:?}");
    }
    Ok(())
}

#[test]
fn spoofed_forwarded_for_entries_beyond_the_trusted_hops_share_one_budget() -> Result<(), Failure> {
    let config = r#"{"client_ip":{"trusted_hops":1},
        "limits":[{"name":"ip","rate":1,"period":"1h","burst":2,"key":["client_ip"],"slots":16}]}"#;
    for profile in PROFILES {
        let (_host, vms) = load(profile, config, 2)?;
        // Each request claims another origin on the left; the trusted proxy's entry is the same.
        let spoofing = |i: usize| {
            Request::get("/").header("x-forwarded-for", format!("198.18.0.{i}, 203.0.113.7"))
        };
        assert_eq!(admitted(&vms, 2, 8, spoofing)?, 3, "{profile:?}");
        let honest = |_| Request::get("/").header("x-forwarded-for", "203.0.113.8");
        assert_eq!(admitted(&vms, 2, 8, honest)?, 3, "{profile:?}");
    }
    Ok(())
}

#[test]
fn the_connection_address_is_the_default_client_ip_on_both_hosts() -> Result<(), Failure> {
    let config =
        r#"{"limits":[{"name":"ip","rate":1,"period":"1h","key":["client_ip"],"slots":16}]}"#;
    for profile in PROFILES {
        let (_host, vms) = load(profile, config, 1)?;
        // x-forwarded-for is not trusted without trusted_hops.
        let spoofing =
            |i: usize| Request::get("/").header("x-forwarded-for", format!("198.18.0.{i}"));
        assert_eq!(admitted(&vms, 1, 4, spoofing)?, 1, "{profile:?}");
        let elsewhere = |_| Request::get("/").property("source.address", "10.0.0.99:5000");
        assert_eq!(admitted(&vms, 1, 4, elsewhere)?, 1, "{profile:?}");
    }
    Ok(())
}

#[test]
fn a_full_slot_table_follows_the_failure_mode() -> Result<(), Failure> {
    for (mode, status) in [("allow", None), ("deny", Some(503))] {
        let config = format!(
            r#"{{"on_store_failure":"{mode}","limits":[{{"name":"ip","rate":1,"period":"1h","key":["client_ip"],"slots":1}}]}}"#
        );
        for profile in PROFILES {
            let (host, vms) = load(profile, &config, 2)?;
            assert_eq!(send(&vms, 0, Request::get("/"))?, None);
            let other = || Request::get("/").property("source.address", "10.0.0.99:5000");
            let reply = send(&vms, 1, other())?;
            assert_eq!(
                reply.as_ref().map(|r| r.status),
                status,
                "{profile:?} {mode}"
            );
            assert_eq!(counter(&host, "palisade_rate_limit.ip.store_failures"), 1);
            // The first client idle again: its slot goes to the other one.
            host.advance_clock(Duration::from_secs(3600))?;
            assert_eq!(send(&vms, 1, other())?, None, "{profile:?} {mode}");
            assert_eq!(send(&vms, 0, other())?.map(|r| r.status), Some(429));
        }
    }
    Ok(())
}

/// Shared data that fails (every write lost to contention, or a host error on every call)
/// follows `on_store_failure`: `allow` lets requests through unchecked, `deny` answers 503.
/// Either way one warning per worker says so, `store_failures` counts each, and nothing is
/// charged: once the store is back, the budget is what it was before.
#[test]
fn a_failing_store_follows_the_failure_mode_and_charges_nothing() -> Result<(), Failure> {
    const WARNING: &str = "[palisade-rate-limit] a limit could not be checked (its slots are \
        full, or shared data failed): on_store_failure applies; store_failures counts each \
        (logged at most once a minute)";
    for (mode, status) in [("allow", None), ("deny", Some(503))] {
        let config = ONE_BUDGET.replacen('{', &format!(r#"{{"on_store_failure":"{mode}","#), 1);
        for fault in [
            SharedDataFault::LoseEveryWrite,
            SharedDataFault::Status(10), // InternalFailure
        ] {
            for profile in PROFILES {
                let case = format!("{profile:?} {mode} {fault:?}");
                let (host, vms) = load(profile, &config, 2)?;
                assert_eq!(admitted(&vms, 2, 3, |_| Request::get("/"))?, 3, "{case}");
                host.fail_shared_data(Some(fault));
                for i in 0..4 {
                    let reply = send(&vms, i % 2, Request::get("/").header("x-request-id", "r-1"))?;
                    assert_eq!(reply.as_ref().map(|r| r.status), status, "{case}");
                    if let Some(reply) = reply {
                        assert_eq!(
                            String::from_utf8_lossy(&reply.body).trim_end(),
                            r#"{"error":"rate limiter unavailable","status":503,"request_id":"r-1"}"#,
                            "{case}"
                        );
                        assert_eq!(
                            reply.headers.get("content-type"),
                            Some("application/json"),
                            "{case}"
                        );
                        assert_eq!(reply.headers.get("retry-after"), None, "{case}");
                    }
                }
                let warnings: Vec<String> = vms
                    .logs()
                    .into_iter()
                    .filter(|l| l.origin == LogOrigin::Plugin && l.level == LogLevel::Warn)
                    .map(|l| l.message)
                    .collect();
                assert_eq!(warnings, [WARNING, WARNING], "{case}: once per worker");
                // A minute later, still failing: each worker says so again, once.
                host.advance_clock(Duration::from_secs(60))?;
                for i in 0..4 {
                    send(&vms, i % 2, Request::get("/"))?;
                }
                let again = vms
                    .logs()
                    .into_iter()
                    .filter(|l| l.origin == LogOrigin::Plugin && l.level == LogLevel::Warn)
                    .count();
                assert_eq!(again, 4, "{case}");
                assert_eq!(
                    counter(&host, "palisade_rate_limit.all.store_failures"),
                    8,
                    "{case}"
                );
                assert_eq!(
                    counter(&host, "palisade_rate_limit.all.allowed"),
                    3 + 8 * u64::from(status.is_none()),
                    "{case}"
                );
                host.fail_shared_data(None);
                assert_eq!(
                    admitted(&vms, 2, 12, |_| Request::get("/"))?,
                    7,
                    "{case}: the budget left before the fault, no more, no less"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn shared_data_stays_within_the_configured_slots() -> Result<(), Failure> {
    let config =
        r#"{"limits":[{"name":"ip","rate":1,"period":"1s","key":["client_ip"],"slots":8}]}"#;
    for profile in PROFILES {
        let (host, vms) = load(profile, config, 2)?;
        for i in 0..200 {
            let request = Request::get("/")
                .property("source.address", format!("10.1.{}.{}:1", i / 200, i % 200));
            send(&vms, i % 2, request)?;
            host.advance_clock(Duration::from_millis(300))?;
        }
        // One table, `palisade/rate-limit/ip/<definition>/`, and the proxy's fingerprint key.
        let keys = host.shared_data_keys();
        let table = keys
            .iter()
            .find_map(|key| {
                let rest = key.strip_prefix("palisade/rate-limit/ip/")?;
                Some(format!(
                    "palisade/rate-limit/ip/{}/",
                    rest.split_once('/')?.0
                ))
            })
            .expect("the limit's table");
        assert!(
            keys.iter()
                .all(|key| key.starts_with(&table) || key == "palisade/rate-limit/hash-key"),
            "{keys:?}"
        );
        let slots: Vec<bool> = (0..9)
            .map(|n| host.shared_data(&format!("{table}{n}")).is_some())
            .collect();
        assert_eq!(
            slots,
            [true, true, true, true, true, true, true, true, false],
            "{profile:?}"
        );
    }
    Ok(())
}

#[test]
fn per_route_overrides_by_path_and_method() -> Result<(), Failure> {
    let config = r#"{"limits":[{"name":"default","rate":1,"period":"1h","burst":1,"key":[{"constant":"d"}],"slots":4}],
        "routes":[{"match":{"path_prefix":"/search","methods":["GET"]},
                   "limits":[{"name":"search","rate":1,"period":"1h","key":[{"constant":"s"}],"slots":4}]},
                  {"match":{"path":"/health"},"limits":[]}]}"#;
    for profile in PROFILES {
        let (_host, vms) = load(profile, config, 2)?;
        assert_eq!(
            admitted(&vms, 2, 3, |_| Request::get("/search?q=1"))?,
            1,
            "{profile:?}"
        );
        assert_eq!(
            admitted(&vms, 2, 5, |_| Request::get("/health"))?,
            5,
            "{profile:?}"
        );
        assert_eq!(
            admitted(&vms, 2, 5, |_| Request::post("/search"))?,
            2,
            "{profile:?}"
        );
    }
    Ok(())
}

#[test]
fn metrics_off_for_kong_before_3_8_and_the_limit_still_holds() -> Result<(), Failure> {
    let config = ONE_BUDGET.replacen('{', r#"{"metrics":false,"#, 1);
    // 3.4: the oldest Kong, no metrics, and shared data only in the named zone `palisade`.
    let old_kong = Profile::Kong(KongVersion::V3_4);
    let (host, vms) = load(old_kong, &config, 2)?;
    assert_eq!(admitted(&vms, 2, 12, |_| Request::get("/"))?, 10);
    assert!(host.metrics().is_empty());
    Ok(())
}

/// Kong's shared-data version is a u32 that wraps to 0 after 2^32 writes of one key (a busy
/// constant-key slot: days at 10k req/s), and a key at version 0 takes only a write naming 0.
/// The store reads it as absent: the key's budget starts over once, and the limit goes on.
/// Before, every read of the key failed for good: the limit let everything through (with
/// `on_store_failure: deny`, refused everything with 503).
#[test]
fn a_slot_whose_kong_version_wrapped_to_zero_keeps_limiting() -> Result<(), Failure> {
    let (host, vms) = load(Profile::kong(), ONE_BUDGET, 2)?;
    assert_eq!(admitted(&vms, 2, 4, |_| Request::get("/"))?, 4);
    let slot = host
        .shared_data_keys()
        .into_iter()
        .find(|key| {
            key.starts_with("palisade/rate-limit/all/")
                && host
                    .shared_data(key)
                    .is_some_and(|(value, _)| !value.is_empty())
        })
        .expect("the key's slot");
    assert!(host.age_shared_data(&slot, u32::MAX));
    // This admission's write wraps the version to 0.
    assert_eq!(admitted(&vms, 2, 1, |_| Request::get("/"))?, 1);
    assert_eq!(host.shared_data(&slot).map(|(_, cas)| cas), Some(0));
    // Read as fresh: a whole budget of 10 again, then refusals, never a 503.
    for i in 0..12 {
        match send(&vms, i % 2, Request::get("/"))? {
            None => assert!(i < 10, "request {i} admitted past the budget"),
            Some(reply) => assert_eq!((i.max(10), reply.status), (i, 429)),
        }
    }
    Ok(())
}

#[test]
fn fuel_per_admitted_request() -> Result<(), Failure> {
    let config =
        r#"{"limits":[{"name":"c","rate":1000000,"period":"1h","key":["consumer"],"slots":4096}]}"#;
    for profile in PROFILES {
        let (_host, vms) = load(profile, config, 1)?;
        let mut fuel = Vec::new();
        for i in 0..5 {
            let request = Request::get("/api").header("x-palisade-consumer", format!("c-{i}"));
            let mut stream = vms.http_request(request)?;
            assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
            stream.send_response_headers(Response::status(200), true)?;
            stream.finish()?;
            fuel.push(stream.fuel());
        }
        println!("{profile:?}: fuel per admitted request {fuel:?}");
        // Each new key costs what the first did: no work grows with the keys already stored
        // (ceilings per request are in plugin_host_calls).
        let (least, most) = (fuel.iter().min().unwrap(), fuel.iter().max().unwrap());
        assert!(
            *least > 0 && most * 10 <= least * 11,
            "{profile:?}: {fuel:?}"
        );
    }
    Ok(())
}
