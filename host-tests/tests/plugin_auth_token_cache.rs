//! The verified-token cache across 2 workers, under Envoy and Kong: a token one worker verified
//! costs the other worker no signature math (fuel), claims are still checked on every request,
//! a token differing only in its signature is verified for itself, entries never outlive the
//! token's `exp`, and shared data holds at most the configured number of entries.

mod plugin_support;

use std::time::Duration;

use palisade_host_tests::auth_tokens::{claims, config, Signer};
use palisade_host_tests::wasm_host::{
    Callback, Failure, Host, LogLevel, LogOrigin, Outcome, Plugin, PluginVms, Profile, Request,
    SharedDataFault, START_UNIX_SECS,
};
use plugin_support::{assert_rejected, PROFILES};
use serde_json::{json, Value};

const NOW: u64 = START_UNIX_SECS;

fn cached_config(entries: u32) -> String {
    let mut config: Value = serde_json::from_str(&config(json!({}))).unwrap();
    config["verified_token_cache_entries"] = json!(entries);
    config.to_string()
}

fn start(profile: Profile, entries: u32) -> Result<(Host, PluginVms), Failure> {
    let host = Host::new(profile);
    let vms = host.load_workers(Plugin::Auth, &cached_config(entries), 2)?;
    assert!(vms.is_accepted(), "{:?}", host.logs());
    Ok((host, vms))
}

/// The request's outcome on `worker` and the fuel its request-headers callback burnt.
fn send(vms: &PluginVms, worker: usize, token: &str) -> Result<(Outcome, u64), Failure> {
    let mut stream = vms
        .worker(worker)
        .http_request(Request::get("/orders").header("authorization", format!("Bearer {token}")))?;
    let outcome = stream.send_request_headers(true)?;
    let fuel = stream
        .fuel_by_callback()
        .iter()
        .filter(|(callback, _)| *callback == Callback::RequestHeaders)
        .map(|(_, fuel)| fuel)
        .sum();
    Ok((outcome, fuel))
}

/// Entries holding a value (a write that lost to another worker's may leave an empty one).
fn cache_entries(host: &Host) -> usize {
    host.shared_data_keys()
        .iter()
        .filter(|k| k.starts_with("palisade/auth/vt/"))
        .filter(|k| {
            host.shared_data(k)
                .is_some_and(|(value, _)| !value.is_empty())
        })
        .count()
}

fn cache_keys(host: &Host) -> usize {
    host.shared_data_keys()
        .iter()
        .filter(|k| k.starts_with("palisade/auth/vt/"))
        .count()
}

#[test]
fn a_second_worker_skips_the_signature_math() -> Result<(), Failure> {
    for profile in PROFILES {
        for alg in ["RS256", "ES256"] {
            let (host, vms) = start(profile, 1024)?;
            let token = Signer::for_alg(alg).sign(&claims(NOW));
            let (outcome, cold) = send(&vms, 0, &token)?;
            assert_eq!(outcome, Outcome::Continue, "{profile:?} {alg}");
            let (outcome, warm) = send(&vms, 1, &token)?;
            assert_eq!(outcome, Outcome::Continue);
            let (_, again) = send(&vms, 0, &token)?;
            println!(
                "{profile:?} {alg}: cold {cold} fuel, other worker {warm}, same worker {again}"
            );
            assert!(warm * 5 < cold, "{profile:?} {alg}: {warm} vs {cold}");
            // The worker's own memo also skips decoding the token and the shared-data read.
            assert!(again * 3 < warm, "{profile:?} {alg}: {again} vs {warm}");
            assert_eq!(cache_keys(&host), 1);
            // Another token of the same claims costs the full check again.
            let mut bob = claims(NOW);
            bob["sub"] = json!("bob");
            let other = Signer::for_alg(alg).sign(&bob);
            let (outcome, fresh) = send(&vms, 1, &other)?;
            assert_eq!(outcome, Outcome::Continue);
            assert!(fresh > warm * 5, "{profile:?} {alg}: {fresh} vs {warm}");
        }
    }
    Ok(())
}

#[test]
fn claims_are_still_checked_and_signatures_are_per_token() -> Result<(), Failure> {
    for profile in PROFILES {
        let (host, vms) = start(profile, 1024)?;
        let token = Signer::for_alg("RS256").sign(&claims(NOW));
        assert_eq!(send(&vms, 0, &token)?.0, Outcome::Continue);
        // The same header and payload with another signature: verified, and refused.
        let (head, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{head}.{}", "A".repeat(342));
        let Outcome::LocalReply(reply) = send(&vms, 1, &forged)?.0 else {
            panic!("{profile:?}: forged signature accepted");
        };
        assert_eq!(reply.status, 401);
        assert_eq!(
            String::from_utf8_lossy(&reply.body).trim_end(), // Kong ends bodies with a newline
            r#"{"error":"token signature is invalid","status":401,"request_id":null}"#
        );
        assert_eq!(send(&vms, 0, &token)?.0, Outcome::Continue, "{profile:?}");
        // Past exp (600s, plus 60s leeway) the cached token is refused as expired, by the
        // worker that verified it (its memo) and by the other.
        host.advance_clock(Duration::from_secs(661))?;
        for vm in [0, 1] {
            let Outcome::LocalReply(reply) = send(&vms, vm, &token)?.0 else {
                panic!("{profile:?}: expired token accepted on {vm}");
            };
            assert_eq!(
                String::from_utf8_lossy(&reply.body).trim_end(), // Kong ends bodies with a newline
                r#"{"error":"token is expired","status":401,"request_id":null}"#
            );
        }
    }
    Ok(())
}

/// The cache only saves work: with shared data failing, every token is verified for itself,
/// a forged one is refused as before, nothing is stored and nothing warns (a cache miss is
/// not an operator's problem). Once the store is back, tokens are cached again.
#[test]
fn a_failing_store_costs_verifications_not_answers() -> Result<(), Failure> {
    for profile in PROFILES {
        for fault in [SharedDataFault::Status(10), SharedDataFault::LoseEveryWrite] {
            let case = format!("{profile:?} {fault:?}");
            let (host, vms) = start(profile, 1024)?;
            host.fail_shared_data(Some(fault));
            let token = Signer::for_alg("ES256").sign(&claims(NOW));
            let (outcome, cold) = send(&vms, 0, &token)?;
            assert_eq!(outcome, Outcome::Continue, "{case}");
            let (outcome, other) = send(&vms, 1, &token)?;
            assert_eq!(outcome, Outcome::Continue, "{case}");
            assert!(
                other * 2 > cold,
                "{case}: verified again ({other} vs {cold})"
            );
            let (head, _) = token.rsplit_once('.').unwrap();
            let forged = format!("{head}.{}", "A".repeat(86));
            let Outcome::LocalReply(reply) = send(&vms, 1, &forged)?.0 else {
                panic!("{case}: forged signature accepted");
            };
            assert_eq!(reply.status, 401, "{case}");
            assert_eq!(cache_entries(&host), 0, "{case}");
            let warnings: Vec<_> = host
                .logs()
                .into_iter()
                .filter(|e| e.origin == LogOrigin::Plugin && e.level >= LogLevel::Warn)
                .collect();
            assert!(warnings.is_empty(), "{case}: {warnings:?}");
            host.fail_shared_data(None);
            let fresh = Signer::for_alg("ES256").sign(&claims(NOW + 1));
            assert_eq!(send(&vms, 0, &fresh)?.0, Outcome::Continue, "{case}");
            assert_eq!(cache_entries(&host), 1, "{case}: cached again");
        }
    }
    Ok(())
}

#[test]
fn the_cache_stays_within_its_entries() -> Result<(), Failure> {
    for profile in PROFILES {
        let (host, vms) = start(profile, 8)?;
        let signer = Signer::for_alg("EdDSA");
        for i in 0..60 {
            let mut c = claims(NOW);
            c["sub"] = json!(format!("user-{i}"));
            assert_eq!(send(&vms, i % 2, &signer.sign(&c))?.0, Outcome::Continue);
        }
        let keys = cache_keys(&host);
        assert!((1..=8).contains(&keys), "{profile:?}: {keys}");
    }
    Ok(())
}

#[test]
fn off_by_default_and_bounded_in_configuration() -> Result<(), Failure> {
    let host = Host::new(Profile::Envoy);
    let vms = host.load(Plugin::Auth, &config(json!({})))?;
    let token = Signer::for_alg("ES256").sign(&claims(NOW));
    assert_eq!(send(&vms, 0, &token)?.0, Outcome::Continue);
    assert_eq!(cache_keys(&host), 0);
    assert_rejected(
        Plugin::Auth,
        &cached_config(2_000_000),
        "[palisade-auth] configuration rejected: verified_token_cache_entries: must be at most 1000000",
    )
}
