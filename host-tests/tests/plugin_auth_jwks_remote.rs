//! palisade-auth with a remote JWKS in the test host, under Envoy and Kong, with 2 workers: the
//! cold fetch, sharing one fetch across workers, refresh on the interval under a lease, key
//! rotation (one early refresh per interval, however many unknown kids), IdP outage within and
//! beyond `max_stale` and recovery, a slow IdP, and bad documents that keep the last good keys.

mod plugin_support;

use std::time::Duration;

use palisade_host_tests::auth_tokens::{self, claims, jwks, jwks_with, Signer, ISSUER};
use palisade_host_tests::wasm_host::{
    CalloutReply, Failure, Host, KongVersion, LogLevel, LogOrigin, MetricValue, Outcome, Plugin,
    PluginVms, Profile, Request, Response, SharedDataFault, START_UNIX_SECS,
};
use plugin_support::{assert_rejected, plugin_warnings, PROFILES};
use serde_json::{json, Value};

const NOW: u64 = START_UNIX_SECS;
/// A Kong `host:port`, also declared as an Envoy cluster.
const IDP: &str = "idp.example:443";
const UNAVAILABLE: &str = "the issuer's keys are unavailable";

fn config(remote: Value) -> String {
    let mut jwks = json!({"upstream": IDP, "authority": "idp.example", "path": "/jwks.json"});
    for (k, v) in remote.as_object().unwrap() {
        jwks[k] = v.clone();
    }
    auth_tokens::config(json!({"jwks": {"remote": jwks}}))
}

fn start(profile: Profile, remote: Value) -> Result<(Host, PluginVms), Failure> {
    let host = Host::new(profile);
    host.add_cluster(IDP);
    let vms = host.load_workers(Plugin::Auth, &config(remote), 2)?;
    assert!(vms.is_accepted(), "{profile:?}: {:?}", host.logs());
    Ok((host, vms))
}

fn jwks_reply(set: &Value) -> CalloutReply {
    CalloutReply::status(200)
        .header("content-type", "application/json")
        .body(set.to_string())
}

fn token(alg: &str, kid: Option<&str>, now: u64) -> String {
    Signer::for_alg(alg).kid(kid).sign(&claims(now))
}

fn bearer(token: &str) -> Request {
    Request::get("/orders").header("authorization", format!("Bearer {token}"))
}

/// The request's outcome on `worker`, with its answer when it waited for a fetch.
fn send(vms: &PluginVms, worker: usize, token: &str) -> Result<Outcome, Failure> {
    let mut stream = vms.worker(worker).http_request(bearer(token))?;
    let outcome = stream.send_request_headers(true)?;
    Ok(match outcome {
        Outcome::Pause => stream.outcome(),
        other => other,
    })
}

fn now(host: &Host) -> u64 {
    NOW + host.elapsed().as_secs()
}

fn jwks_calls(host: &Host) -> usize {
    host.http_calls()
        .iter()
        .filter(|c| c.headers.get(":path") == Some("/jwks.json"))
        .count()
}

fn count(host: &Host, name: &str) -> u64 {
    match host.metrics().get(name) {
        Some(MetricValue::Counter(n)) => *n,
        other => panic!("{name}: {other:?}"),
    }
}

fn assert_status(outcome: &Outcome, status: u16, error: &str, ctx: &str) {
    let Outcome::LocalReply(reply) = outcome else {
        panic!("{ctx}: expected a local reply, got {outcome:?}");
    };
    assert_eq!(reply.status, status, "{ctx}");
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        body,
        json!({"error": error, "status": status, "request_id": null}),
        "{ctx}"
    );
}

fn warnings(host: &Host) -> Vec<String> {
    plugin_warnings(host.logs())
}

#[test]
fn a_cold_request_fetches_and_the_other_worker_reuses_the_shared_keys() -> Result<(), Failure> {
    for profile in PROFILES {
        let (host, vms) = start(profile, json!({"scheme": "http"}))?;
        host.script_http_call(IDP, jwks_reply(&jwks()).after(Duration::from_millis(500)));
        let rs = token("RS256", Some("rsa-1"), NOW);
        // The first request waits for the fetch, then goes on.
        let mut stream = vms
            .worker(0)
            .http_request(bearer(&rs).header("x-palisade-subject", "mallory"))?;
        assert_eq!(
            stream.send_request_headers(true)?,
            Outcome::Pause,
            "{profile:?}"
        );
        host.advance_clock(Duration::from_millis(499))?;
        assert_eq!(stream.outcome(), Outcome::Pause);
        host.advance_clock(Duration::from_millis(1))?;
        assert_eq!(stream.outcome(), Outcome::Continue, "{profile:?}");
        assert_eq!(
            stream.upstream_request_headers().get("x-palisade-subject"),
            Some("alice")
        );
        let calls = host.http_calls();
        assert_eq!(calls.len(), 1, "{profile:?}");
        let call = &calls[0];
        assert_eq!(call.upstream, IDP);
        assert_eq!(call.worker, 0);
        assert_eq!(call.headers.get(":method"), Some("GET"));
        assert_eq!(call.headers.get(":path"), Some("/jwks.json"));
        assert_eq!(call.headers.get(":authority"), Some("idp.example"));
        assert_eq!(call.headers.get(":scheme"), Some("http"));
        assert_eq!(call.timeout, Duration::from_secs(5));
        // The second worker never fetches: it parses what the first stored.
        for alg in ["RS256", "ES256", "EdDSA"] {
            let outcome = send(&vms, 1, &Signer::for_alg(alg).sign(&claims(NOW)))?;
            assert_eq!(outcome, Outcome::Continue, "{profile:?} {alg}");
        }
        assert_eq!(host.http_calls().len(), 1, "{profile:?}");
        let key = host
            .shared_data_keys()
            .into_iter()
            .find(|k| k.starts_with("palisade/auth/jwks/"))
            .expect("a shared record");
        let (value, _) = host.shared_data(&key).unwrap();
        assert!(
            value.len() > auth_tokens::JWKS.len() / 2,
            "the document is shared"
        );
        // Ticks take in the record without fetching until the interval is over.
        host.advance_clock(Duration::from_secs(30))?;
        assert_eq!(host.http_calls().len(), 1);
        assert_eq!(count(&host, "palisade_auth.jwks.idp.fetched"), 1);
        assert_eq!(count(&host, "palisade_auth.allowed.idp"), 4);
        assert!(warnings(&host).is_empty(), "{:?}", warnings(&host));
    }
    Ok(())
}

#[test]
fn the_timer_refreshes_on_the_interval_with_one_worker_fetching() -> Result<(), Failure> {
    for profile in PROFILES {
        let (host, vms) = start(profile, json!({"refresh_interval": "1m"}))?;
        host.script_http_call(IDP, jwks_reply(&jwks_with(&["rsa-1"])));
        assert_eq!(
            send(&vms, 0, &token("RS256", Some("rsa-1"), NOW))?,
            Outcome::Continue
        );
        // The new set drops rsa-1 and brings rsa-2; the timer fetches it, once for both workers.
        host.script_http_call(IDP, jwks_reply(&jwks_with(&["rsa-2"])));
        host.advance_clock(Duration::from_secs(59))?;
        assert_eq!(jwks_calls(&host), 1, "{profile:?}: not yet due");
        host.advance_clock(Duration::from_secs(2))?;
        assert_eq!(jwks_calls(&host), 2, "{profile:?}: one refresh");
        let t = now(&host);
        let rsa2 = Signer::for_alg("RS256")
            .kid(Some("rsa-2"))
            .key(jsonwebtoken::EncodingKey::from_rsa_der(auth_tokens::RSA2));
        for worker in [0, 1] {
            assert_eq!(
                send(&vms, worker, &rsa2.sign(&claims(t)))?,
                Outcome::Continue
            );
        }
        // rsa-1 is gone; its tokens now name an unknown kid (the early refresh finds the
        // same set and the answer is 401).
        host.script_http_call(IDP, jwks_reply(&jwks_with(&["rsa-2"])));
        let outcome = send(&vms, 1, &token("RS256", Some("rsa-1"), t))?;
        assert_status(
            &outcome,
            401,
            "token kid matches no key of its issuer",
            "removed key",
        );
        assert_eq!(jwks_calls(&host), 3);
        assert_eq!(count(&host, "palisade_auth.jwks.idp.fetched"), 3);
    }
    Ok(())
}

#[test]
fn an_unknown_kid_triggers_one_early_refresh_per_interval() -> Result<(), Failure> {
    for profile in PROFILES {
        let (host, vms) = start(profile, json!({"unknown_kid_refresh_interval": "30s"}))?;
        host.script_http_call(IDP, jwks_reply(&jwks_with(&["rsa-1"])));
        assert_eq!(
            send(&vms, 0, &token("RS256", Some("rsa-1"), NOW))?,
            Outcome::Continue
        );
        // Key rotation: a token with the new kid waits for one early refresh and passes.
        host.script_http_call(IDP, jwks_reply(&jwks()));
        assert_eq!(
            send(&vms, 1, &token("ES256", Some("ec256-1"), NOW))?,
            Outcome::Continue,
            "{profile:?}"
        );
        assert_eq!(jwks_calls(&host), 2);
        // The other worker has it too, without a fetch.
        assert_eq!(
            send(&vms, 0, &token("ES256", Some("ec256-1"), NOW))?,
            Outcome::Continue
        );
        assert_eq!(jwks_calls(&host), 2);
        // A flood of unknown kids on both workers: no fetch within the interval, each 401.
        for i in 0..20 {
            let outcome = send(
                &vms,
                i % 2,
                &token("RS256", Some(&format!("nope-{i}")), NOW),
            )?;
            assert_status(
                &outcome,
                401,
                "token kid matches no key of its issuer",
                &format!("{profile:?} flood {i}"),
            );
        }
        assert_eq!(jwks_calls(&host), 2, "{profile:?}");
        // After the interval, one more early refresh, then none again.
        host.advance_clock(Duration::from_secs(30))?;
        host.script_http_call(IDP, jwks_reply(&jwks()));
        for i in 0..10 {
            let t = now(&host);
            let outcome = send(&vms, i % 2, &token("RS256", Some(&format!("new-{i}")), t))?;
            assert_status(
                &outcome,
                401,
                "token kid matches no key of its issuer",
                "later",
            );
        }
        assert_eq!(jwks_calls(&host), 3, "{profile:?}");
        assert_eq!(
            count(&host, "palisade_auth.denied.idp.unknown_kid"),
            30,
            "{profile:?}"
        );
    }
    Ok(())
}

/// A rotation that makes the JWKS longer replaces the cached document with a longer value. On
/// Kong 3.4-3.7 that write, in place, would overrun shared memory (the host traps on it): it
/// must go as a delete and an insert.
#[test]
fn a_longer_jwks_after_rotation_never_overruns_kongs_shared_memory() -> Result<(), Failure> {
    for version in KongVersion::ALL {
        let profile = Profile::Kong(version);
        let host = Host::new(profile);
        host.add_cluster(IDP);
        let mut config: Value = serde_json::from_str(&config(json!({}))).unwrap();
        config["metrics"] = json!(false);
        let vms = host.load_workers(Plugin::Auth, &config.to_string(), 2)?;
        assert!(vms.is_accepted(), "{profile:?}: {:?}", host.logs());
        host.script_http_call(IDP, jwks_reply(&jwks_with(&["rsa-1"])));
        assert_eq!(
            send(&vms, 0, &token("RS256", Some("rsa-1"), NOW))?,
            Outcome::Continue,
            "Kong {version}"
        );
        host.script_http_call(IDP, jwks_reply(&jwks()));
        assert_eq!(
            send(&vms, 1, &token("ES256", Some("ec256-1"), NOW))?,
            Outcome::Continue,
            "Kong {version}: the longer set is stored"
        );
        // The other worker reads the new set from shared data, and the old key still works.
        assert_eq!(
            send(&vms, 0, &token("ES256", Some("ec256-1"), NOW))?,
            Outcome::Continue,
            "Kong {version}"
        );
        assert_eq!(
            send(&vms, 1, &token("RS256", Some("rsa-1"), NOW))?,
            Outcome::Continue,
            "Kong {version}"
        );
        assert_eq!(jwks_calls(&host), 2, "Kong {version}");
    }
    Ok(())
}

#[test]
fn an_idp_outage_is_served_from_stale_keys_then_fails_closed_then_recovers() -> Result<(), Failure>
{
    for profile in PROFILES {
        let (host, vms) = start(
            profile,
            json!({"refresh_interval": "1m", "max_stale": "2m", "timeout": "1s"}),
        )?;
        host.script_http_call(IDP, jwks_reply(&jwks()));
        assert_eq!(
            send(&vms, 0, &token("RS256", Some("rsa-1"), NOW))?,
            Outcome::Continue
        );
        // The IdP goes down: the first refresh is refused, later ones time out.
        host.script_http_call(IDP, CalloutReply::failure("connection refused"));
        host.advance_clock(Duration::from_secs(179))?;
        let failed = count(&host, "palisade_auth.jwks.idp.fetch_failed");
        assert!(
            (15..=25).contains(&failed),
            "{profile:?}: one worker retries every ~6s: {failed}"
        );
        let in_flight = jwks_calls(&host) - 1 - failed as usize;
        assert!(in_flight <= 1, "{profile:?}: {in_flight}");
        let t = now(&host);
        for worker in [0, 1] {
            assert_eq!(
                send(&vms, worker, &token("RS256", Some("rsa-1"), t))?,
                Outcome::Continue,
                "{profile:?}: within max_stale"
            );
        }
        let refresh_failed = "[palisade-auth] JWKS fetch for provider \"idp\" failed (refresh): \
                              JWKS server unreachable or timed out; keeping the last good keys";
        assert_eq!(
            warnings(&host),
            vec![refresh_failed; failed as usize],
            "{profile:?}"
        );
        // Past refresh_interval + max_stale: 503, and one line per worker saying why.
        host.advance_clock(Duration::from_secs(2))?;
        for worker in [0, 1, 0, 1] {
            let t = now(&host);
            let mut stream =
                vms.worker(worker)
                    .http_request(bearer(&token("RS256", Some("rsa-1"), t)))?;
            if stream.send_request_headers(true)? == Outcome::Pause {
                // It asked the IdP itself (outside the hold-off): the answer never comes.
                host.advance_clock(Duration::from_secs(1))?;
            }
            assert_status(
                &stream.outcome(),
                503,
                UNAVAILABLE,
                &format!("{profile:?} stale"),
            );
        }
        let stale_line = "[palisade-auth] keys of provider \"idp\" are older than \
                          refresh_interval + max_stale: its tokens are refused until a JWKS \
                          fetch succeeds";
        let logged: Vec<_> = host
            .logs()
            .into_iter()
            .filter(|e| e.message == stale_line)
            .map(|e| (e.worker, e.level))
            .collect();
        assert_eq!(
            logged,
            [(0, LogLevel::Error), (1, LogLevel::Error)],
            "{profile:?}"
        );
        assert_eq!(count(&host, "palisade_auth.denied.idp.keys_unavailable"), 4);
        // The IdP comes back: the timer's next fetch restores service on both workers.
        host.script_http_call(IDP, jwks_reply(&jwks()));
        host.advance_clock(Duration::from_secs(8))?;
        assert_eq!(
            count(&host, "palisade_auth.jwks.idp.fetched"),
            2,
            "{profile:?}"
        );
        let t = now(&host);
        for worker in [0, 1] {
            assert_eq!(
                send(&vms, worker, &token("RS256", Some("rsa-1"), t))?,
                Outcome::Continue,
                "{profile:?}: recovered"
            );
        }
    }
    Ok(())
}

#[test]
fn a_slow_idp_on_a_cold_start_fails_closed_after_the_timeout() -> Result<(), Failure> {
    for profile in PROFILES {
        let (host, vms) = start(profile, json!({"timeout": "2s"}))?;
        host.script_http_call(IDP, CalloutReply::never());
        let mut stream = vms
            .worker(0)
            .http_request(bearer(&token("RS256", Some("rsa-1"), NOW)))?;
        assert_eq!(
            stream.send_request_headers(true)?,
            Outcome::Pause,
            "{profile:?}"
        );
        host.advance_clock(Duration::from_millis(1999))?;
        assert_eq!(stream.outcome(), Outcome::Pause);
        host.advance_clock(Duration::from_millis(1))?;
        assert_status(&stream.outcome(), 503, UNAVAILABLE, &format!("{profile:?}"));
        assert!(
            warnings(&host).contains(
                &"[palisade-auth] JWKS fetch for provider \"idp\" failed (no usable keys): JWKS \
                  server unreachable or timed out; no usable keys"
                    .to_owned()
            ),
            "{:?}",
            warnings(&host)
        );
        // Within the 5s hold-off nobody calls again, not even the timers: refused at once.
        let outcome = send(&vms, 1, &token("RS256", Some("rsa-1"), NOW + 2))?;
        assert_status(&outcome, 503, UNAVAILABLE, "held off");
        host.advance_clock(Duration::from_millis(4900))?;
        assert_eq!(jwks_calls(&host), 1, "{profile:?}");
        // After it, one timer fetches; a slow but timely answer restores service.
        host.script_http_call(IDP, jwks_reply(&jwks()).after(Duration::from_millis(1500)));
        host.advance_clock(Duration::from_secs(3))?;
        assert_eq!(jwks_calls(&host), 2, "{profile:?}");
        assert_eq!(count(&host, "palisade_auth.jwks.idp.fetched"), 1);
        let t = now(&host);
        for worker in [0, 1] {
            assert_eq!(
                send(&vms, worker, &token("RS256", Some("rsa-1"), t))?,
                Outcome::Continue
            );
        }
    }
    Ok(())
}

#[test]
fn bad_jwks_documents_keep_the_last_good_keys() -> Result<(), Failure> {
    for profile in PROFILES {
        let (host, vms) = start(
            profile,
            json!({"refresh_interval": "10s", "max_response_bytes": 8192}),
        )?;
        host.script_http_call(IDP, jwks_reply(&jwks()));
        assert_eq!(
            send(&vms, 0, &token("RS256", Some("rsa-1"), NOW))?,
            Outcome::Continue
        );
        let huge = format!("{{\"keys\":[],\"pad\":\"{}\"}}", "x".repeat(9000));
        let bad = [
            (
                CalloutReply::status(200).body("<html>oops</html>"),
                "JWKS document refused: not a JWKS document: expected value at line 1 column 1",
            ),
            (
                CalloutReply::status(200).body(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#),
                "JWKS document holds no usable signature key",
            ),
            (
                CalloutReply::status(200).body(huge),
                "JWKS document of 9020 bytes exceeds 8192",
            ),
            (
                CalloutReply::status(404),
                "JWKS server answered with status 404",
            ),
        ];
        let mut expected = Vec::new();
        for (reply, reason) in bad {
            host.script_http_call(IDP, reply);
            // Due after 10s (then every 5s after a failure): one fetch takes this reply.
            let before = count(&host, "palisade_auth.jwks.idp.fetch_failed");
            for _ in 0..12 {
                host.advance_clock(Duration::from_secs(1))?;
                if count(&host, "palisade_auth.jwks.idp.fetch_failed") > before {
                    break;
                }
            }
            expected.push(format!(
                "[palisade-auth] JWKS fetch for provider \"idp\" failed (refresh): {reason}; \
                 keeping the last good keys"
            ));
            let t = now(&host);
            for worker in [0, 1] {
                assert_eq!(
                    send(&vms, worker, &token("ES384", Some("ec384-1"), t))?,
                    Outcome::Continue,
                    "{profile:?}: {reason}"
                );
            }
        }
        assert_eq!(
            warnings(&host),
            expected,
            "{profile:?}: one line per bad fetch"
        );
        assert_eq!(count(&host, "palisade_auth.jwks.idp.fetch_failed"), 4);
        assert_eq!(count(&host, "palisade_auth.jwks.idp.fetched"), 1);
    }
    Ok(())
}

#[test]
fn remote_jwks_refusals_name_the_field() -> Result<(), Failure> {
    let cases = [
        (
            json!({"refresh_interval": "0s"}),
            "providers[0].jwks.remote.refresh_interval: must be between 1s and 24h",
        ),
        (
            json!({"upstream": "not a host"}),
            "providers[0].jwks.remote.upstream: must be an Envoy cluster name or a Kong `host:port`, without spaces",
        ),
        (
            json!({"max_response_bytes": 1}),
            "providers[0].jwks.remote.max_response_bytes: must be between 256 and 1048576",
        ),
    ];
    for (remote, reason) in cases {
        assert_rejected(
            Plugin::Auth,
            &config(remote),
            &format!("[palisade-auth] configuration rejected: {reason}"),
        )?;
    }
    let _ = ISSUER;
    Ok(())
}

#[test]
fn kong_3_8_never_answering_a_failed_refresh_does_not_stop_later_refreshes() -> Result<(), Failure>
{
    // Kong 3.4–3.8 log a failed dispatch and never call the plugin back: the lease and the
    // worker's in-flight entry run out after timeout + 1s, and the next tick tries again.
    let profile = Profile::Kong(palisade_host_tests::wasm_host::KongVersion::V3_8);
    let host = Host::new(profile);
    let vms = host.load(Plugin::Auth, &config(json!({"refresh_interval": "1m"})))?;
    assert!(vms.is_accepted(), "{:?}", host.logs());
    host.script_http_call(IDP, jwks_reply(&jwks()));
    assert_eq!(
        send(&vms, 0, &token("RS256", Some("rsa-1"), NOW))?,
        Outcome::Continue
    );
    host.script_http_call(IDP, CalloutReply::failure("connection refused"));
    host.advance_clock(Duration::from_secs(61))?;
    assert_eq!(jwks_calls(&host), 2, "the refresh was tried");
    assert!(host
        .logs()
        .iter()
        .any(|e| e.origin == LogOrigin::Host && e.message.contains("dispatch failed")));
    host.script_http_call(IDP, jwks_reply(&jwks()));
    host.advance_clock(Duration::from_secs(8))?;
    assert_eq!(jwks_calls(&host), 3, "tried again after timeout + 1s");
    assert_eq!(count(&host, "palisade_auth.jwks.idp.fetched"), 2);
    Ok(())
}

#[test]
fn kong_3_8_resuming_a_failed_cold_fetch_refuses_its_response() -> Result<(), Failure> {
    // Kong 3.4-3.8 resume the request when its call-out fails, without calling the plugin
    // back (docs/auth.md "Kong"): the request goes on unauthenticated, but the identity
    // headers were stripped before the call, so a spoofed identity never reaches upstream.
    // Its response is replaced by the 503 Kong 3.9+ give the request, and while the fetch's
    // lease runs (timeout + 1 s) the next requests get that 503 before the upstream.
    let profile = Profile::Kong(palisade_host_tests::wasm_host::KongVersion::V3_8);
    let host = Host::new(profile);
    let vms = host.load(Plugin::Auth, &config(json!({})))?;
    host.script_http_call(IDP, CalloutReply::failure("connection refused"));
    let rs = token("RS256", Some("rsa-1"), NOW);
    let mut stream = vms.http_request(
        bearer(&rs)
            .header("x-palisade-subject", "mallory")
            .header("x-palisade-claim-email", "mallory@evil.example"),
    )?;
    assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
    let upstream = stream.upstream_request_headers();
    assert!(
        upstream.contains("authorization"),
        "it went on: {upstream:?}"
    );
    assert!(!upstream.contains("x-palisade-subject"), "{upstream:?}");
    assert!(!upstream.contains("x-palisade-claim-email"));
    assert!(!upstream.contains("x-palisade-auth-provider"));
    let outcome = stream.send_response_headers(Response::status(200), false)?;
    assert_status(&outcome, 503, UNAVAILABLE, "the resumed request's response");
    assert_eq!(
        warnings(&host),
        ["[palisade-auth] the JWKS call-out failed and the host sent the request upstream without calling the plugin back (Kong before 3.9): the request went without identity, and its response is replaced by this plugin's refusal"]
    );
    host.advance_clock(Duration::from_millis(5900))?;
    assert_status(&send(&vms, 0, &rs)?, 503, UNAVAILABLE, "held");
    assert_eq!(jwks_calls(&host), 1, "no call while held (timeout 5s + 1s)");
    // Then the fetch's lease has run out too: the timer fetches the keys.
    host.script_http_call(IDP, jwks_reply(&jwks()));
    host.advance_clock(Duration::from_millis(1100))?;
    assert_eq!(jwks_calls(&host), 2);
    assert_eq!(send(&vms, 0, &rs)?, Outcome::Continue);
    assert_eq!(jwks_calls(&host), 2);
    Ok(())
}

/// Reading the old record again is no sign that shared data works: after a failure, a worker
/// says the record answers again only when a write has landed (its own, or one it reads as a
/// record newer than its keys). Reads failing, then writes losing over the stored record for
/// eleven minutes of ticks: one warning per worker and nothing else; then the store back: one
/// recovery line per worker.
#[test]
fn recovery_is_logged_when_a_write_lands_not_when_an_old_record_reads() -> Result<(), Failure> {
    for profile in PROFILES {
        let (host, vms) = start(profile, json!({"scheme": "http"}))?;
        host.script_http_call(IDP, jwks_reply(&jwks()));
        let rs = token("RS256", Some("rsa-1"), NOW);
        assert_eq!(send(&vms, 0, &rs)?, Outcome::Continue, "{profile:?}");
        assert_eq!(send(&vms, 1, &rs)?, Outcome::Continue, "{profile:?}");
        let before = host.logs().len();
        let since = |host: &Host| -> Vec<String> {
            host.logs()
                .into_iter()
                .skip(before)
                .filter(|e| e.origin == LogOrigin::Plugin && e.level >= LogLevel::Info)
                .map(|e| e.message)
                .collect()
        };
        host.fail_shared_data(Some(SharedDataFault::Status(10)));
        host.advance_clock(Duration::from_secs(5))?;
        host.fail_shared_data(Some(SharedDataFault::LoseEveryWrite));
        host.advance_clock(Duration::from_secs(11 * 60))?;
        let fresh = token("RS256", Some("rsa-1"), now(&host));
        assert_eq!(send(&vms, 1, &fresh)?, Outcome::Continue, "{profile:?}");
        assert_eq!(
            jwks_calls(&host),
            1,
            "{profile:?}: the timer never won the lease"
        );
        let warning = "[palisade-auth] provider \"idp\": could not read the shared JWKS record: the host refused the shared-data call with status 10 (workers fetch and keep keys on their own until shared data answers)";
        assert_eq!(since(&host), [warning, warning], "{profile:?}");

        host.fail_shared_data(None);
        host.script_http_call(IDP, jwks_reply(&jwks()));
        host.advance_clock(Duration::from_secs(2))?;
        assert_eq!(jwks_calls(&host), 2, "{profile:?}");
        let recovered = "[palisade-auth] provider \"idp\": the shared JWKS record answers again";
        let lines = since(&host);
        assert_eq!(
            lines.iter().filter(|l| *l == recovered).count(),
            2,
            "{profile:?}: {lines:?}"
        );
    }
    Ok(())
}

/// Shared data that fails must not take the keys away: a request without keys fetches them
/// for its own worker, later requests use them, and the failure is logged once per worker,
/// not on every tick. Once the store answers again, the timer refreshes through the shared
/// record as before. Contention that outlasts every retry still lets a cold request fetch.
#[test]
fn a_failing_store_still_serves_each_worker_from_its_own_fetch() -> Result<(), Failure> {
    for fault in [SharedDataFault::Status(10), SharedDataFault::LoseEveryWrite] {
        for profile in PROFILES {
            let case = format!("{profile:?} {fault:?}");
            let (host, vms) = start(profile, json!({"scheme": "http"}))?;
            host.fail_shared_data(Some(fault));
            let rs = token("RS256", Some("rsa-1"), NOW);
            for worker in [0, 1] {
                host.script_http_call(IDP, jwks_reply(&jwks()));
                assert_eq!(send(&vms, worker, &rs)?, Outcome::Continue, "{case}");
            }
            for i in 0..4 {
                assert_eq!(send(&vms, i % 2, &rs)?, Outcome::Continue, "{case}");
            }
            assert_eq!(jwks_calls(&host), 2, "{case}: one fetch per worker");
            // Past the refresh interval, the store still failing: no tick logs again.
            host.advance_clock(Duration::from_secs(11 * 60))?;
            assert_eq!(
                send(&vms, 0, &rs)?,
                Outcome::Continue,
                "{case}: stale keys serve"
            );
            let expected = match fault {
                SharedDataFault::Status(_) => vec![
                    "[palisade-auth] provider \"idp\": could not read the shared JWKS record: the host refused the shared-data call with status 10 (workers fetch and keep keys on their own until shared data answers)";
                    2
                ],
                SharedDataFault::LoseEveryWrite => vec![
                    "[palisade-auth] provider \"idp\": JWKS fetched but not shared with other workers: gave up after 4 conflicting writes (workers fetch and keep keys on their own until shared data answers)";
                    2
                ],
            };
            assert_eq!(warnings(&host), expected, "{case}: once per worker");

            host.fail_shared_data(None);
            host.script_http_call(IDP, jwks_reply(&jwks()));
            host.advance_clock(Duration::from_secs(2))?;
            assert_eq!(
                jwks_calls(&host),
                3,
                "{case}: one refresh, under the shared lease"
            );
            assert!(
                host.shared_data_keys()
                    .iter()
                    .any(|k| k.starts_with("palisade/auth/jwks/")),
                "{case}: shared again"
            );
            assert_eq!(warnings(&host), expected, "{case}: nothing more to warn of");
            let recovered: Vec<String> = host
                .logs()
                .into_iter()
                .filter(|e| e.origin == LogOrigin::Plugin && e.message.contains("answers again"))
                .map(|e| e.message)
                .collect();
            assert_eq!(
                recovered,
                ["[palisade-auth] provider \"idp\": the shared JWKS record answers again"; 2],
                "{case}: once per worker, by the one that refreshed and the one that read it"
            );
        }
    }
    Ok(())
}
