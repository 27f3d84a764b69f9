//! Shared-data growth under 100 000 distinct keys, in the test host under Envoy (which never
//! evicts shared data) and Kong (whose shm zone evicts under memory pressure).
//!
//! - palisade-rate-limit keeps exactly `slots` keys per limit whatever the traffic; at the bound
//!   a new key whose candidate slots all hold limited keys gets the `on_store_failure` answer,
//!   tracked keys stay limited, and idle slots are taken over. Under Kong, evicted slots are
//!   re-created and the limiter keeps deciding.
//! - palisade-resilience keeps one circuit and one in-flight count per upstream cluster (or
//!   route): names the operator configures, never a client. Under Kong, an evicted count starts
//!   again from zero and never underflows.
//! - palisade-auth and palisade-header-security keep nothing in shared data.

mod plugin_support;

use std::time::Duration;

use palisade_host_tests::wasm_host::{
    Failure, Host, KongVersion, MetricValue, Outcome, Plugin, PluginVms, Profile, Request, Response,
};
use plugin_support::send;

const DISTINCT: usize = 100_000;
const KONG: Profile = Profile::Kong(KongVersion::V3_10);

fn load(profile: Profile, plugin: Plugin, config: &str) -> Result<(Host, PluginVms), Failure> {
    let host = Host::new(profile);
    let vms = host.load_workers(plugin, config, 2)?;
    assert!(vms.is_accepted(), "{profile:?}: {:?}", vms.logs());
    Ok((host, vms))
}

/// The `i`-th distinct client address (Envoy's `ip:port` form).
fn client(i: usize) -> String {
    format!(
        "10.{}.{}.{}:4000",
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    )
}

fn counter(host: &Host, suffix: &str) -> u64 {
    match host
        .metrics()
        .iter()
        .find(|(name, _)| name.ends_with(suffix))
        .map(|(_, value)| value.clone())
    {
        Some(MetricValue::Counter(n)) => n,
        other => panic!("{suffix}: {other:?}"),
    }
}

/// A gauge by the end of its name (Kong prefixes metric names with the filter's).
fn gauge(host: &Host, suffix: &str) -> i64 {
    match host
        .metrics()
        .iter()
        .find(|(name, _)| name.ends_with(suffix))
        .map(|(_, value)| value.clone())
    {
        Some(MetricValue::Gauge(n)) => n,
        other => panic!("{suffix}: {other:?}"),
    }
}

// ---- palisade-rate-limit ----

const SLOTS: usize = 1024;

/// One request per hour per client address, at most [`SLOTS`] addresses tracked.
fn per_ip(on_store_failure: &str) -> String {
    format!(
        r#"{{"on_store_failure":"{on_store_failure}","limits":[{{"name":"per-ip","rate":1,
            "period":"1h","key":["client_ip"],"slots":{SLOTS}}}]}}"#
    )
}

/// The limit's slot keys, checking that nothing else is stored but the proxy's one
/// fingerprint key.
fn slot_keys(host: &Host) -> Vec<String> {
    let (hash_key, keys): (Vec<String>, Vec<String>) = host
        .shared_data_keys()
        .into_iter()
        .partition(|key| key == "palisade/rate-limit/hash-key");
    assert_eq!(hash_key.len(), 1, "the proxy's one fingerprint key");
    let table = keys.first().map(|key| table_of(key));
    for key in &keys {
        assert_eq!(Some(table_of(key)), table, "one table: {key}");
        let n: usize = key
            .rsplit_once('/')
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or_else(|| panic!("a key outside the limit's slots: {key}"));
        assert!(n < SLOTS, "{key}");
    }
    keys
}

/// The table a slot key is in: `palisade/rate-limit/per-ip/<definition, 8 hex digits>/`.
fn table_of(key: &str) -> String {
    let scope = key
        .strip_prefix("palisade/rate-limit/per-ip/")
        .and_then(|rest| rest.split_once('/'))
        .map(|(scope, _)| scope)
        .unwrap_or_else(|| panic!("a key outside the limit's slots: {key}"));
    assert!(
        scope.len() == 8 && scope.bytes().all(|b| b.is_ascii_hexdigit()),
        "{key}"
    );
    format!("palisade/rate-limit/per-ip/{scope}/")
}

/// Sends clients `range` once each, alternating workers; counts what each outcome got.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    admitted: usize,
    limited: usize,
    unavailable: usize,
}

fn flood(vms: &PluginVms, range: std::ops::Range<usize>) -> Result<Tally, Failure> {
    let mut tally = Tally::default();
    for i in range {
        match send(
            vms,
            i % 2,
            Request::get("/").property("source.address", client(i)),
        )? {
            None => tally.admitted += 1,
            Some(reply) if reply.status == 429 => tally.limited += 1,
            Some(reply) => {
                assert_eq!(reply.status, 503);
                assert_eq!(
                    String::from_utf8_lossy(&reply.body).trim_end(),
                    r#"{"error":"rate limiter unavailable","status":503,"request_id":null}"#
                );
                tally.unavailable += 1;
            }
        }
    }
    Ok(tally)
}

#[test]
fn rate_limit_keeps_exactly_its_slots_under_100k_clients_in_envoy() -> Result<(), Failure> {
    let (host, vms) = load(Profile::Envoy, Plugin::RateLimit, &per_ip("deny"))?;
    assert_eq!(slot_keys(&host).len(), SLOTS, "created when configured");

    // Every client sends once within the hour: each admitted one holds its slot all hour, so
    // once every slot is held, new clients get the failure mode (deny: 503).
    let tally = flood(&vms, 0..DISTINCT)?;
    assert_eq!(
        tally,
        Tally {
            admitted: SLOTS,
            limited: 0,
            unavailable: DISTINCT - SLOTS
        }
    );
    assert_eq!(slot_keys(&host).len(), SLOTS, "no key beyond the slots");
    assert_eq!(
        counter(&host, "palisade_rate_limit.per-ip.store_failures"),
        (DISTINCT - SLOTS) as u64
    );

    // A tracked client (the first, admitted into an empty table) is still limited at the bound.
    assert_eq!(
        send(
            &vms,
            1,
            Request::get("/").property("source.address", client(0))
        )?
        .map(|r| r.status),
        Some(429)
    );

    // An hour later every slot is idle: new clients take them over, still within the bound.
    host.advance_clock(Duration::from_secs(3601))?;
    // A client probes a bounded neighbourhood of slots, so a few idle slots may lie outside
    // every newcomer's reach: nearly all are taken over, never more than the bound.
    let later = flood(&vms, DISTINCT..DISTINCT + 2 * SLOTS)?;
    assert!(
        later.admitted <= SLOTS && later.admitted >= SLOTS * 95 / 100,
        "{later:?}"
    );
    assert_eq!(slot_keys(&host).len(), SLOTS);
    Ok(())
}

#[test]
fn rate_limit_at_the_bound_lets_new_clients_through_with_allow() -> Result<(), Failure> {
    // The default failure mode: availability first, every such request counted.
    let (host, vms) = load(Profile::Envoy, Plugin::RateLimit, &per_ip("allow"))?;
    let tally = flood(&vms, 0..DISTINCT)?;
    assert_eq!(
        tally,
        Tally {
            admitted: DISTINCT,
            limited: 0,
            unavailable: 0
        }
    );
    assert_eq!(
        counter(&host, "palisade_rate_limit.per-ip.store_failures"),
        (DISTINCT - SLOTS) as u64
    );
    assert_eq!(slot_keys(&host).len(), SLOTS);
    Ok(())
}

#[test]
fn rate_limit_under_kong_survives_evicted_slots_and_stays_bounded() -> Result<(), Failure> {
    let (host, vms) = load(KONG, Plugin::RateLimit, &per_ip("deny"))?;
    assert_eq!(slot_keys(&host).len(), SLOTS);
    let first = flood(&vms, 0..DISTINCT / 2)?;
    assert_eq!(first.admitted, SLOTS, "{first:?}");

    // The shm zone evicts half the slots (every other one), as slru does under pressure.
    let table = table_of(&slot_keys(&host)[0]);
    for n in (0..SLOTS).step_by(2) {
        assert!(host.evict_shared_data(&format!("{table}{n}"))?);
    }
    assert_eq!(slot_keys(&host).len(), SLOTS / 2);

    // The limiter keeps deciding: an evicted slot reads as free and is written back with Kong's
    // "must not exist" write, so new clients take exactly the evicted slots.
    let second = flood(&vms, DISTINCT / 2..DISTINCT)?;
    assert_eq!(
        second,
        Tally {
            admitted: SLOTS / 2,
            limited: 0,
            unavailable: DISTINCT / 2 - SLOTS / 2
        }
    );
    assert_eq!(slot_keys(&host).len(), SLOTS, "re-created, never more");
    // Kong's host refused no call and the plugin trapped on none: every request was answered.
    assert_eq!(
        counter(&host, "palisade_rate_limit.per-ip.allowed"),
        (SLOTS + SLOTS / 2) as u64
    );
    Ok(())
}

// ---- palisade-resilience ----

const CLUSTERS: [&str; 3] = [
    "outbound|8080||orders.shop.svc.cluster.local",
    "outbound|8080||billing.shop.svc.cluster.local",
    "outbound|9090||search.shop.svc.cluster.local",
];

/// Every [`FAILING_EVERY`]-th request gets a 503 from its upstream: each circuit records
/// failures (a closed circuit that only ever sees successes is read, never written, so its key
/// would not exist), never enough in a row to open.
const FAILING_EVERY: usize = 101;

fn upstream_status(i: usize) -> u16 {
    if i.is_multiple_of(FAILING_EVERY) {
        503
    } else {
        200
    }
}

/// Requests varying everything a client controls (address, path, query, headers) over three
/// clusters, a few always in flight; returns the requests shed.
fn resilience_flood(
    vms: &PluginVms,
    count: usize,
    request: impl Fn(usize) -> Request,
    mut at: impl FnMut(usize) -> Result<(), Failure>,
) -> Result<usize, Failure> {
    const IN_FLIGHT: usize = 5;
    let mut open = std::collections::VecDeque::new();
    let mut shed = 0;
    for i in 0..count {
        at(i)?;
        let mut stream = vms.worker(i % 2).http_request(request(i))?;
        match stream.send_request_headers(true)? {
            Outcome::Continue => open.push_back((i, stream)),
            Outcome::LocalReply(reply) => {
                assert_eq!(reply.status, 503, "{reply:?}");
                shed += 1;
                stream.finish()?;
            }
            other => panic!("unexpected {other:?}"),
        }
        if open.len() > IN_FLIGHT {
            if let Some((j, mut done)) = open.pop_front() {
                done.send_response_headers(Response::status(upstream_status(j)), true)?;
                done.finish()?;
            }
        }
    }
    for (j, mut done) in open {
        done.send_response_headers(Response::status(upstream_status(j)), true)?;
        done.finish()?;
    }
    Ok(shed)
}

fn client_varied(i: usize) -> Request {
    Request::get(&format!("/orders/{i}?page={i}"))
        .property("source.address", client(i))
        .header(
            "x-forwarded-for",
            format!("198.18.{}.{}", (i >> 8) & 0xff, i & 0xff),
        )
        .header("x-tenant", format!("tenant-{i}"))
        .header("x-request-id", format!("req-{i}"))
}

#[test]
fn resilience_keeps_one_circuit_and_count_per_cluster_under_100k_clients_in_envoy(
) -> Result<(), Failure> {
    let config = r#"{"concurrency":{"max_requests":1000}}"#;
    let (host, vms) = load(Profile::Envoy, Plugin::Resilience, config)?;
    let shed = resilience_flood(
        &vms,
        DISTINCT,
        |i| client_varied(i).property("xds.cluster_name", CLUSTERS[i % 3]),
        |_| Ok(()),
    )?;
    assert_eq!(shed, 0);
    let mut expected: Vec<String> = CLUSTERS
        .iter()
        .flat_map(|c| {
            [
                format!("palisade/resilience/cb/{c}"),
                format!("palisade/resilience/inflight/{c}"),
            ]
        })
        .collect();
    expected.sort();
    assert_eq!(host.shared_data_keys(), expected);
    assert_eq!(counter(&host, "palisade_resilience.circuit_opened"), 0);
    // Every slot given back.
    for gauge_name in [
        "palisade_resilience.inflight.outbound_8080__orders.shop.svc.cluster.local",
        "palisade_resilience.inflight.outbound_8080__billing.shop.svc.cluster.local",
        "palisade_resilience.inflight.outbound_9090__search.shop.svc.cluster.local",
    ] {
        assert_eq!(gauge(&host, gauge_name), 0, "{gauge_name}");
    }
    Ok(())
}

#[test]
fn resilience_under_kong_survives_evicted_state_and_never_underflows() -> Result<(), Failure> {
    // Kong has no xds.cluster_name: the circuit is named in the configuration.
    let config = r#"{"proxy":"kong","circuit_breaker":{"key":"orders"},
                     "concurrency":{"max_requests":1000}}"#;
    let (host, vms) = load(KONG, Plugin::Resilience, config)?;
    let keys = [
        "palisade/resilience/cb/orders",
        "palisade/resilience/inflight/orders",
    ];
    let shed = resilience_flood(&vms, DISTINCT, client_varied, |i| {
        // The shm zone evicts both keys now and then, with requests in flight.
        if i % 20_000 == 10_000 {
            for key in keys {
                host.evict_shared_data(key)?;
            }
            assert!(host.shared_data_keys().is_empty());
        }
        Ok(())
    })?;
    assert_eq!(shed, 0);
    // Both come back: the count with the next request, the circuit with the next failure.
    assert_eq!(host.shared_data_keys(), keys);
    assert_eq!(counter(&host, "palisade_resilience.circuit_opened"), 0);
    // Slots taken before an eviction and given back after it saturate at zero.
    assert_eq!(gauge(&host, "palisade_resilience.inflight.orders"), 0);
    Ok(())
}

// ---- plugins without shared state ----

#[test]
fn auth_and_header_security_keep_nothing_in_shared_data() -> Result<(), Failure> {
    const REQUESTS: usize = 10_000;
    let auth = format!(
        r#"{{"allow_missing":true,"providers":[{{"name":"idp","issuer":"https://idp.example",
            "algorithms":["HS256"],"hmac_secret":"{}"}}]}}"#,
        palisade_host_tests::auth_tokens::HMAC_SECRET
    );
    for profile in [Profile::Envoy, KONG] {
        for (plugin, config) in [
            (Plugin::Auth, auth.clone()),
            (
                Plugin::HeaderSecurity,
                r#"{"security_headers":{"preset":"api"}}"#.to_owned(),
            ),
        ] {
            let (host, vms) = load(profile, plugin.clone(), &config)?;
            for i in 0..REQUESTS {
                let request = client_varied(i)
                    .header("authorization", format!("Bearer garbage.{i}.token"))
                    .header("x-palisade-subject", format!("spoofed-{i}"));
                send(&vms, i % 2, request)?;
            }
            assert_eq!(
                host.shared_data_keys(),
                Vec::<String>::new(),
                "{profile:?} {plugin:?}"
            );
        }
    }
    Ok(())
}
