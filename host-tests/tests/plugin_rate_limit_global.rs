//! palisade-rate-limit's global mode in the test host: the request is held while the rate-limit
//! service is asked (gRPC on Envoy, lyft's JSON over HTTP on Envoy and Kong), then resumed or
//! answered 429 with the service's numbers; the local pre-limit sheds before any call-out;
//! timeouts and service errors follow `failure_mode_deny`; Kong refuses the gRPC transport.

mod plugin_support;

use std::time::Duration;

use palisade_host_tests::wasm_host::{
    CallState, CalloutReply, Failure, GrpcReply, Host, KongVersion, LocalReply, MetricValue,
    Outcome, Plugin, PluginVms, Profile, Request, Response,
};
use plugin_support::{assert_rejected, finish_at_upstream, headers, plugin_warnings, PROFILES};

fn grpc_config(extra: &str) -> String {
    format!(
        r#"{{"global":{{"domain":"edge","transport":"grpc","upstream":"ratelimit","timeout":"50ms"{extra}}},
        "limits":[{{"name":"per-tenant","mode":"global","key":[{{"header":"x-tenant"}}],
                    "pre_limit":{{"rate":1,"period":"1h","burst":4}},"slots":16}}]}}"#
    )
}

fn http_config(proxy: &str, extra: &str) -> String {
    format!(
        r#"{{"proxy":"{proxy}","global":{{"domain":"edge","transport":"http","upstream":"ratelimit:8080",
        "authority":"ratelimit.internal","timeout":"50ms"{extra}}},
        "limits":[{{"name":"per-tenant","mode":"global","key":[{{"header":"x-tenant"}}]}}]}}"#
    )
}

fn load(profile: Profile, config: &str) -> Result<(Host, PluginVms), Failure> {
    let host = Host::new(profile);
    let vms = host.load_workers(Plugin::RateLimit, config, 2)?;
    assert!(vms.is_accepted(), "{profile:?}: {:?}", vms.logs());
    Ok((host, vms))
}

/// Sends one request and lets the host deliver what is due within `wait`; `None` when it went
/// upstream, else the local reply.
fn send(
    host: &Host,
    vms: &PluginVms,
    worker: usize,
    request: Request,
    wait: Duration,
) -> Result<Option<LocalReply>, Failure> {
    let mut stream = vms.worker(worker).http_request(request)?;
    if stream.send_request_headers(true)? == Outcome::Pause {
        host.advance_clock(wait)?;
    }
    finish_at_upstream(stream)
}

fn tenant(name: &str) -> Request {
    Request::get("/orders")
        .header("x-tenant", name)
        .header("x-request-id", "req-1")
}

fn counter(host: &Host, name: &str) -> u64 {
    match host.metrics().get(name) {
        Some(MetricValue::Counter(n)) => *n,
        other => panic!("{name}: {other:?} in {:?}", host.metrics().keys()),
    }
}

// ------------------------------------------------------------------ protobuf answers

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint_field(out: &mut Vec<u8>, field: u64, n: u64) {
    varint(out, field << 3);
    varint(out, n);
}

/// A `RateLimitResponse` with one status: code (1 OK, 2 OVER_LIMIT), requests per MINUTE,
/// remaining, seconds until reset.
fn answer(code: u64, per_minute: u64, remaining: u64, reset: u64) -> Vec<u8> {
    let mut limit = Vec::new();
    varint_field(&mut limit, 1, per_minute);
    varint_field(&mut limit, 2, 2);
    let mut duration = Vec::new();
    varint_field(&mut duration, 1, reset);
    let mut status = Vec::new();
    varint_field(&mut status, 1, code);
    bytes_field(&mut status, 2, &limit);
    varint_field(&mut status, 3, remaining);
    bytes_field(&mut status, 4, &duration);
    let mut out = Vec::new();
    varint_field(&mut out, 1, code);
    bytes_field(&mut out, 2, &status);
    out
}

// ------------------------------------------------------------------ tests

#[test]
fn kong_refuses_the_grpc_transport_with_one_line() -> Result<(), Failure> {
    assert_rejected(
        Plugin::RateLimit,
        &grpc_config("").replacen('{', r#"{"proxy":"kong","#, 1),
        "[palisade-rate-limit] configuration rejected: global.transport: Kong has no gRPC \
         call-outs (proxy_grpc_call traps in ngx_wasm_module): use \"http\"",
    )
}

#[test]
fn a_grpc_ok_admits_and_sends_the_descriptor_as_protobuf() -> Result<(), Failure> {
    let (host, vms) = load(Profile::Envoy, &grpc_config(""))?;
    host.script_grpc_call(
        "ratelimit",
        GrpcReply::message(answer(1, 10, 9, 42)).after(Duration::from_millis(5)),
    );
    let mut stream = vms.worker(0).http_request(tenant("acme"))?;
    assert_eq!(stream.send_request_headers(true)?, Outcome::Pause);
    host.advance_clock(Duration::from_millis(5))?;
    assert_eq!(stream.outcome(), Outcome::Continue);
    stream.send_response_headers(Response::status(200), true)?;
    assert_eq!(
        stream.response_headers().without(":status"),
        headers(&[
            ("ratelimit-policy", "\"per-tenant\";q=10;w=60"),
            ("ratelimit", "\"per-tenant\";r=9;t=42"),
        ])
    );
    stream.finish()?;
    let calls = host.grpc_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.upstream, "ratelimit");
    assert_eq!(call.service, "envoy.service.ratelimit.v3.RateLimitService");
    assert_eq!(call.method, "ShouldRateLimit");
    assert_eq!(call.timeout, Duration::from_millis(50));
    // domain "edge", one descriptor {limit: per-tenant, x-tenant: acme}, hits_addend 1.
    assert_eq!(
        call.message,
        b"\x0a\x04edge\x12\x27\x0a\x13\x0a\x05limit\x12\x0aper-tenant\
          \x0a\x10\x0a\x08x-tenant\x12\x04acme\x18\x01"
    );
    assert_eq!(counter(&host, "palisade_rate_limit.per-tenant.allowed"), 1);
    Ok(())
}

#[test]
fn a_grpc_over_limit_is_429_with_the_services_reset_and_numbers() -> Result<(), Failure> {
    let (host, vms) = load(Profile::Envoy, &grpc_config(""))?;
    host.script_grpc_call("ratelimit", GrpcReply::message(answer(2, 10, 0, 17)));
    let reply = send(&host, &vms, 1, tenant("acme"), Duration::from_millis(1))?.expect("refused");
    assert_eq!(reply.status, 429);
    assert_eq!(
        reply.headers,
        headers(&[
            ("content-type", "application/json"),
            ("retry-after", "17"),
            ("ratelimit-policy", "\"per-tenant\";q=10;w=60"),
            ("ratelimit", "\"per-tenant\";r=0;t=17"),
        ])
    );
    assert_eq!(
        String::from_utf8(reply.body).unwrap().trim_end(),
        r#"{"error":"rate limit exceeded","status":429,"request_id":"req-1"}"#
    );
    assert_eq!(counter(&host, "palisade_rate_limit.per-tenant.limited"), 1);
    assert_eq!(counter(&host, "palisade_rate_limit.per-tenant.allowed"), 0);
    Ok(())
}

#[test]
fn the_pre_limit_sheds_locally_without_a_call_out() -> Result<(), Failure> {
    let (host, vms) = load(Profile::Envoy, &grpc_config(""))?;
    for _ in 0..5 {
        host.script_grpc_call("ratelimit", GrpcReply::message(answer(1, 100, 50, 30)));
    }
    for i in 0..5 {
        let reply = send(&host, &vms, i % 2, tenant("acme"), Duration::from_millis(1))?;
        assert_eq!(reply, None, "request {i}");
    }
    // Burst 4 spent across both workers: the sixth is refused here, the service never asked.
    let reply = send(&host, &vms, 0, tenant("acme"), Duration::from_millis(1))?.expect("shed");
    assert_eq!(reply.status, 429);
    assert_eq!(reply.headers.get("retry-after"), Some("3600"));
    assert_eq!(host.grpc_calls().len(), 5);
    assert_eq!(counter(&host, "palisade_rate_limit.per-tenant.limited"), 1);
    Ok(())
}

#[test]
fn a_timeout_lets_the_request_through_or_answers_500_by_failure_mode() -> Result<(), Failure> {
    for (extra, expected) in [("", None), (r#","failure_mode_deny":true"#, Some(500))] {
        let (host, vms) = load(Profile::Envoy, &grpc_config(extra))?;
        host.script_grpc_call("ratelimit", GrpcReply::never());
        let mut stream = vms.worker(0).http_request(tenant("acme"))?;
        assert_eq!(stream.send_request_headers(true)?, Outcome::Pause);
        host.advance_clock(Duration::from_millis(49))?;
        assert_eq!(stream.outcome(), Outcome::Pause, "held until the timeout");
        host.advance_clock(Duration::from_millis(1))?;
        match (stream.outcome(), expected) {
            (Outcome::Continue, None) => {}
            (Outcome::LocalReply(reply), Some(status)) => {
                assert_eq!(reply.status, status);
                assert_eq!(
                    String::from_utf8(reply.body).unwrap().trim_end(),
                    r#"{"error":"rate limit service unavailable","status":500,"request_id":"req-1"}"#
                );
            }
            other => panic!("{extra}: {other:?}"),
        }
        assert_eq!(host.grpc_calls()[0].state, CallState::TimedOut);
        assert_eq!(
            counter(&host, "palisade_rate_limit.per-tenant.callout_failures"),
            1
        );
        let warned: Vec<_> = host
            .logs()
            .into_iter()
            .filter(|l| l.message.contains("the rate-limit service failed"))
            .map(|l| l.message)
            .collect();
        assert_eq!(
            warned,
            ["[palisade-rate-limit] the rate-limit service failed: gRPC status 4"]
        );
    }
    Ok(())
}

#[test]
fn http_json_answers_decide_on_envoy_and_kong() -> Result<(), Failure> {
    for profile in PROFILES {
        let proxy = if profile == Profile::Envoy {
            "envoy"
        } else {
            "kong"
        };
        let (host, vms) = load(profile, &http_config(proxy, ""))?;
        host.script_http_call(
            "ratelimit:8080",
            CalloutReply::status(200)
                .header("content-type", "application/json")
                .body(r#"{"overallCode":"OK","statuses":[{"code":"OK","currentLimit":{"requestsPerUnit":2,"unit":"MINUTE"},"limitRemaining":1,"durationUntilReset":"30s"}]}"#),
        );
        host.script_http_call(
            "ratelimit:8080",
            CalloutReply::status(429)
                .header("content-type", "application/json")
                .body(r#"{"overallCode":"OVER_LIMIT","statuses":[{"code":"OVER_LIMIT","currentLimit":{"requestsPerUnit":2,"unit":"MINUTE"},"durationUntilReset":"29s"}]}"#),
        );
        let wait = Duration::from_millis(1);
        assert_eq!(
            send(&host, &vms, 0, tenant("acme"), wait)?,
            None,
            "{profile:?}"
        );
        let reply = send(&host, &vms, 1, tenant("acme"), wait)?.expect("refused");
        assert_eq!(reply.status, 429, "{profile:?}");
        assert_eq!(reply.headers.get("retry-after"), Some("29"));
        assert_eq!(
            reply.headers.get("ratelimit"),
            Some("\"per-tenant\";r=0;t=29")
        );
        let calls = host.http_calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].headers.get(":method"), Some("POST"));
        assert_eq!(calls[0].headers.get(":path"), Some("/json"));
        assert_eq!(
            calls[0].headers.get(":authority"),
            Some("ratelimit.internal")
        );
        assert_eq!(
            calls[0].headers.get("content-type"),
            Some("application/json")
        );
        assert_eq!(
            String::from_utf8(calls[0].body.clone()).unwrap(),
            r#"{"descriptors":[{"entries":[{"key":"limit","value":"per-tenant"},{"key":"x-tenant","value":"acme"}]}],"domain":"edge","hitsAddend":1}"#
        );
        assert!(host.grpc_calls().is_empty());
    }
    Ok(())
}

/// An answer with more headers than Kong hands over whole (a proxy in front of the service
/// adding many): its map is not read whole (Kong would write past its buffer), its status is
/// read by name, and the answer still decides.
#[test]
fn an_answer_with_too_many_headers_for_kong_still_decides() -> Result<(), Failure> {
    let profile = Profile::Kong(KongVersion::V3_10);
    let (host, vms) = load(profile, &http_config("kong", ""))?;
    let mut reply = CalloutReply::status(429).header("content-type", "application/json");
    for i in 0..110 {
        reply = reply.header(&format!("x-via-{i}"), "1");
    }
    host.script_http_call(
        "ratelimit:8080",
        reply.body(r#"{"overallCode":"OVER_LIMIT","statuses":[{"code":"OVER_LIMIT","currentLimit":{"requestsPerUnit":2,"unit":"MINUTE"},"durationUntilReset":"29s"}]}"#),
    );
    let refused = send(&host, &vms, 0, tenant("acme"), Duration::from_millis(1))?.expect("refused");
    assert_eq!(refused.status, 429);
    assert_eq!(refused.headers.get("retry-after"), Some("29"));
    Ok(())
}

#[test]
fn http_server_errors_follow_the_failure_mode() -> Result<(), Failure> {
    for profile in PROFILES {
        let proxy = if profile == Profile::Envoy {
            "envoy"
        } else {
            "kong"
        };
        for (extra, refused) in [("", false), (r#","failure_mode_deny":true"#, true)] {
            let (host, vms) = load(profile, &http_config(proxy, extra))?;
            host.script_http_call("ratelimit:8080", CalloutReply::status(500).body("boom"));
            host.script_http_call("ratelimit:8080", CalloutReply::status(200).body("not json"));
            host.script_http_call(
                "ratelimit:8080",
                CalloutReply::failure("connection refused"),
            );
            for i in 0..3 {
                let reply = send(&host, &vms, 0, tenant("acme"), Duration::from_millis(1))?;
                assert_eq!(
                    reply.map(|r| r.status),
                    refused.then_some(500),
                    "{profile:?} {extra} call {i}"
                );
            }
            assert_eq!(
                counter(&host, "palisade_rate_limit.per-tenant.callout_failures"),
                3,
                "{profile:?}"
            );
            // One warning for the three failures (per worker VM), naming the first; the
            // collector's body is never logged.
            assert_eq!(
                rate_limit_lines(&host),
                ["[palisade-rate-limit] the rate-limit service failed: HTTP status 500"],
                "{profile:?} {extra}"
            );
            if refused {
                host.script_http_call("ratelimit:8080", CalloutReply::status(500));
                let reply = send(&host, &vms, 0, tenant("acme"), Duration::from_millis(1))?
                    .expect("refused");
                assert_eq!(
                    String::from_utf8(reply.body).unwrap().trim_end(),
                    r#"{"error":"rate limit service unavailable","status":500,"request_id":"req-1"}"#
                );
            }
            // The first answer after failures is logged once.
            host.script_http_call(
                "ratelimit:8080",
                CalloutReply::status(200).body(r#"{"overallCode":"OK"}"#),
            );
            assert_eq!(
                send(&host, &vms, 0, tenant("acme"), Duration::from_millis(1))?,
                None
            );
            assert_eq!(
                rate_limit_lines(&host).last().map(String::as_str),
                Some("[palisade-rate-limit] the rate-limit service answers again"),
                "{profile:?} {extra}"
            );
        }
    }
    Ok(())
}

/// The plugin's log lines about the rate-limit service, in order.
fn rate_limit_lines(host: &Host) -> Vec<String> {
    host.logs()
        .into_iter()
        .map(|l| l.message)
        .filter(|m| m.contains("the rate-limit service"))
        .collect()
}

#[test]
fn a_global_refusal_gives_back_what_the_local_limit_counted() -> Result<(), Failure> {
    for profile in PROFILES {
        for deny_on_failure in [false, true] {
            let extra = if deny_on_failure {
                r#","failure_mode_deny":true"#
            } else {
                ""
            };
            let config = format!(
                r#"{{"proxy":"{}","global":{{"domain":"edge","transport":"http","upstream":"ratelimit:8080",
                "authority":"ratelimit.internal","timeout":"50ms"{extra}}},
                "limits":[{{"name":"l","rate":1,"period":"1h","burst":1,"key":[{{"constant":"l"}}]}},
                          {{"name":"per-tenant","mode":"global","key":[{{"header":"x-tenant"}}]}}]}}"#,
                proxy_of(profile)
            );
            let (host, vms) = load(profile, &config)?;
            let wait = Duration::from_millis(1);
            // Three refusals by the service (or, denying on failure, three failures): 429 or
            // 500, and none of them spends the local limit.
            for i in 0..3 {
                let (answer, status) = if deny_on_failure {
                    (CalloutReply::status(503), 500)
                } else {
                    (
                        CalloutReply::status(429).body(r#"{"overallCode":"OVER_LIMIT"}"#),
                        429,
                    )
                };
                host.script_http_call("ratelimit:8080", answer);
                let reply = send(&host, &vms, i % 2, tenant("acme"), wait)?;
                assert_eq!(reply.map(|r| r.status), Some(status), "{profile:?} {i}");
            }
            // The local limit's whole budget is left: two admitted, on either worker.
            for i in 0..2 {
                host.script_http_call(
                    "ratelimit:8080",
                    CalloutReply::status(200).body(r#"{"overallCode":"OK"}"#),
                );
                let reply = send(&host, &vms, i % 2, tenant("acme"), wait)?;
                assert_eq!(reply, None, "{profile:?} {deny_on_failure} admitted {i}");
            }
            let asked = host.http_calls().len();
            assert_eq!(asked, 5);
            let reply = send(&host, &vms, 0, tenant("acme"), wait)?.expect("local refusal");
            assert_eq!(reply.status, 429);
            assert_eq!(host.http_calls().len(), asked, "refused before asking");
            assert_eq!(counter(&host, "palisade_rate_limit.l.limited"), 1);
        }
    }
    Ok(())
}

#[test]
fn kong_before_3_9_resumes_a_failed_dispatch_itself() -> Result<(), Failure> {
    // Kong ≤ 3.8 never calls back a failed dispatch and resumes the request: fail-open whatever
    // the failure mode (documented). The worker then takes the service as failing for the
    // call's timeout (50ms) and a second: its requests get the failure mode without a call,
    // which would leave one more token in the SDK for good.
    let profile = Profile::Kong(palisade_host_tests::wasm_host::KongVersion::V3_8);
    let (host, vms) = load(
        profile,
        &http_config("kong", r#","failure_mode_deny":true"#),
    )?;
    host.script_http_call(
        "ratelimit:8080",
        CalloutReply::failure("connection refused"),
    );
    let reply = send(&host, &vms, 0, tenant("acme"), Duration::from_millis(1))?;
    assert_eq!(reply, None);
    assert_eq!(host.http_calls().len(), 1);
    let warnings = plugin_warnings(vms.logs());
    assert_eq!(
        warnings,
        ["[palisade-rate-limit] the rate-limit service failed: no answer (timeout, reset or refused connection); requests get the failure mode without a call for 1050ms"]
    );
    let reply = send(&host, &vms, 0, tenant("acme"), Duration::from_millis(1))?;
    assert_eq!(reply.map(|r| r.status), Some(500), "held: the failure mode");
    assert_eq!(host.http_calls().len(), 1, "no call while held");
    assert_eq!(
        counter(&host, "palisade_rate_limit.per-tenant.callout_failures"),
        1
    );
    host.advance_clock(Duration::from_millis(1100))?;
    host.script_http_call(
        "ratelimit:8080",
        CalloutReply::status(200).body(r#"{"overallCode":"OK","statuses":[{"code":"OK"}]}"#),
    );
    let reply = send(&host, &vms, 0, tenant("acme"), Duration::from_millis(1))?;
    assert_eq!(reply, None);
    assert_eq!(host.http_calls().len(), 2, "asked again after the hold");
    Ok(())
}

/// A `config.core.v3.HeaderValue` as field `field` of a `RateLimitResponse`.
fn header_field(out: &mut Vec<u8>, field: u64, key: &str, value: &str) {
    let mut header = Vec::new();
    bytes_field(&mut header, 1, key.as_bytes());
    bytes_field(&mut header, 2, value.as_bytes());
    bytes_field(out, field, &header);
}

fn proxy_of(profile: Profile) -> &'static str {
    if profile == Profile::Envoy {
        "envoy"
    } else {
        "kong"
    }
}

#[test]
fn the_services_headers_reach_the_upstream_request_and_the_response() -> Result<(), Failure> {
    let (host, vms) = load(Profile::Envoy, &grpc_config(""))?;
    let mut ok = answer(1, 10, 9, 42);
    header_field(&mut ok, 3, "RateLimit-Limit", "10");
    header_field(&mut ok, 3, "x-palisade-consumer", "forged");
    header_field(&mut ok, 4, "x-ratelimit-tier", "gold");
    header_field(&mut ok, 4, "x-palisade-subject", "forged");
    host.script_grpc_call(
        "ratelimit",
        GrpcReply::message(ok).after(Duration::from_millis(1)),
    );
    let mut refused = answer(2, 10, 0, 17);
    header_field(&mut refused, 3, "x-ratelimit-reset", "17");
    header_field(&mut refused, 3, "content-type", "text/plain");
    host.script_grpc_call("ratelimit", GrpcReply::message(refused));

    let mut stream = vms.worker(0).http_request(tenant("acme"))?;
    assert_eq!(stream.send_request_headers(true)?, Outcome::Pause);
    host.advance_clock(Duration::from_millis(1))?;
    assert_eq!(stream.outcome(), Outcome::Continue);
    let upstream = stream.upstream_request_headers();
    assert_eq!(upstream.get("x-ratelimit-tier"), Some("gold"));
    assert_eq!(upstream.get("x-palisade-subject"), None);
    stream.send_response_headers(Response::status(200), true)?;
    assert_eq!(
        stream.response_headers().without(":status"),
        headers(&[
            ("ratelimit-policy", "\"per-tenant\";q=10;w=60"),
            ("ratelimit", "\"per-tenant\";r=9;t=42"),
            ("ratelimit-limit", "10"),
        ])
    );
    stream.finish()?;

    let reply = send(&host, &vms, 1, tenant("acme"), Duration::from_millis(1))?.expect("refused");
    assert_eq!(reply.status, 429);
    assert_eq!(
        reply.headers,
        headers(&[
            ("content-type", "application/json"),
            ("retry-after", "17"),
            ("ratelimit-policy", "\"per-tenant\";q=10;w=60"),
            ("ratelimit", "\"per-tenant\";r=0;t=17"),
            ("x-ratelimit-reset", "17"),
        ])
    );
    assert_eq!(
        String::from_utf8(reply.body).unwrap().trim_end(),
        r#"{"error":"rate limit exceeded","status":429,"request_id":"req-1"}"#
    );
    Ok(())
}

#[test]
fn json_answers_headers_apply_on_envoy_and_kong() -> Result<(), Failure> {
    for profile in PROFILES {
        let (host, vms) = load(profile, &http_config(proxy_of(profile), ""))?;
        host.script_http_call(
            "ratelimit:8080",
            CalloutReply::status(200).body(
                r#"{"overallCode":"OK","responseHeadersToAdd":[{"key":"RateLimit-Remaining","value":"4"}],
                "requestHeadersToAdd":[{"key":"x-ratelimit-tier","value":"gold"}]}"#,
            ).after(Duration::from_millis(1)),
        );
        let mut stream = vms.worker(0).http_request(tenant("acme"))?;
        assert_eq!(stream.send_request_headers(true)?, Outcome::Pause);
        host.advance_clock(Duration::from_millis(1))?;
        assert_eq!(stream.outcome(), Outcome::Continue, "{profile:?}");
        assert_eq!(
            stream.upstream_request_headers().get("x-ratelimit-tier"),
            Some("gold"),
            "{profile:?}"
        );
        stream.send_response_headers(Response::status(200), true)?;
        assert_eq!(
            stream.response_headers().get("ratelimit-remaining"),
            Some("4"),
            "{profile:?}"
        );
        stream.finish()?;
    }
    Ok(())
}

/// Two global limits: `per-tenant` (the tenant header) and `everyone` (a constant).
fn two_limits(transport: &str, upstream: &str, proxy: &str, extra: &str) -> String {
    format!(
        r#"{{"proxy":"{proxy}","global":{{"domain":"edge","transport":"{transport}","upstream":"{upstream}",
        "authority":"ratelimit.internal","timeout":"50ms","call_per_limit":true{extra}}},
        "limits":[{{"name":"per-tenant","mode":"global","key":[{{"header":"x-tenant"}}]}},
                  {{"name":"everyone","mode":"global","key":[{{"constant":"all"}}]}}]}}"#
    )
}

#[test]
fn call_per_limit_asks_once_per_limit_and_any_refusal_refuses() -> Result<(), Failure> {
    // gRPC on Envoy.
    let (host, vms) = load(
        Profile::Envoy,
        &two_limits("grpc", "ratelimit", "envoy", ""),
    )?;
    host.script_grpc_call("ratelimit", GrpcReply::message(answer(1, 10, 9, 42)));
    host.script_grpc_call(
        "ratelimit",
        GrpcReply::message(answer(2, 100, 0, 7)).after(Duration::from_millis(3)),
    );
    let mut stream = vms.worker(0).http_request(tenant("acme"))?;
    assert_eq!(stream.send_request_headers(true)?, Outcome::Pause);
    host.advance_clock(Duration::from_millis(1))?;
    assert_eq!(stream.outcome(), Outcome::Pause, "held until both answer");
    host.advance_clock(Duration::from_millis(2))?;
    let Outcome::LocalReply(reply) = stream.outcome() else {
        panic!("{:?}", stream.outcome())
    };
    assert_eq!(reply.status, 429);
    assert_eq!(reply.headers.get("retry-after"), Some("7"));
    assert_eq!(
        reply.headers.get("ratelimit-policy"),
        Some("\"per-tenant\";q=10;w=60, \"everyone\";q=100;w=60")
    );
    let calls = host.grpc_calls();
    assert_eq!(calls.len(), 2);
    // One descriptor each: {limit: per-tenant, x-tenant: acme}, then {limit: everyone,
    // generic_key: all}.
    assert_eq!(
        calls[0].message,
        b"\x0a\x04edge\x12\x27\x0a\x13\x0a\x05limit\x12\x0aper-tenant\
          \x0a\x10\x0a\x08x-tenant\x12\x04acme\x18\x01"
    );
    assert_eq!(
        calls[1].message,
        b"\x0a\x04edge\x12\x27\x0a\x11\x0a\x05limit\x12\x08everyone\
          \x0a\x12\x0a\x0bgeneric_key\x12\x03all\x18\x01"
    );
    assert_eq!(counter(&host, "palisade_rate_limit.everyone.limited"), 1);
    assert_eq!(counter(&host, "palisade_rate_limit.per-tenant.limited"), 0);
    assert_eq!(counter(&host, "palisade_rate_limit.per-tenant.allowed"), 0);

    // HTTP on both hosts: both OK admits; one failed call follows the failure mode.
    for profile in PROFILES {
        for (extra, refused) in [("", None), (r#","failure_mode_deny":true"#, Some(500))] {
            let config = two_limits("http", "ratelimit:8080", proxy_of(profile), extra);
            let (host, vms) = load(profile, &config)?;
            let ok = || {
                CalloutReply::status(200).body(r#"{"overallCode":"OK","statuses":[{"code":"OK"}]}"#)
            };
            host.script_http_call("ratelimit:8080", ok());
            host.script_http_call("ratelimit:8080", ok());
            let wait = Duration::from_millis(1);
            assert_eq!(
                send(&host, &vms, 0, tenant("acme"), wait)?,
                None,
                "{profile:?}"
            );
            let bodies: Vec<String> = host
                .http_calls()
                .iter()
                .map(|c| String::from_utf8(c.body.clone()).unwrap())
                .collect();
            assert_eq!(
                bodies,
                [
                    r#"{"descriptors":[{"entries":[{"key":"limit","value":"per-tenant"},{"key":"x-tenant","value":"acme"}]}],"domain":"edge","hitsAddend":1}"#,
                    r#"{"descriptors":[{"entries":[{"key":"limit","value":"everyone"},{"key":"generic_key","value":"all"}]}],"domain":"edge","hitsAddend":1}"#,
                ],
                "{profile:?}"
            );

            host.script_http_call("ratelimit:8080", ok());
            host.script_http_call("ratelimit:8080", CalloutReply::status(503).body("down"));
            let reply = send(&host, &vms, 1, tenant("acme"), wait)?;
            assert_eq!(reply.map(|r| r.status), refused, "{profile:?} {extra}");
            assert_eq!(
                counter(&host, "palisade_rate_limit.everyone.callout_failures"),
                1,
                "{profile:?}"
            );
            // Only the limit whose own call failed counts it.
            assert_eq!(
                counter(&host, "palisade_rate_limit.per-tenant.callout_failures"),
                0,
                "{profile:?}"
            );
        }
    }
    Ok(())
}

/// Kong 3.4–3.6 resume a request at the first call's answer unless its callback sends another
/// (ngx_wasm_module tracks one call per filter until 3.7), and 3.7 can crash when one of two
/// pending calls fails (fixed in 3.8): with `call_per_limit` the calls go one at a time there,
/// each from the previous one's answer, so the second limit's refusal still refuses. Kong 3.8+
/// and Envoy send them together.
#[test]
fn call_per_limit_on_kong_before_3_8_sends_one_call_at_a_time() -> Result<(), Failure> {
    let ok = || {
        CalloutReply::status(200)
            .body(r#"{"overallCode":"OK","statuses":[{"code":"OK"}]}"#)
            .after(Duration::from_millis(2))
    };
    let over = || {
        CalloutReply::status(429)
            .body(r#"{"overallCode":"OVER_LIMIT","statuses":[{"code":"OVER_LIMIT","currentLimit":{"requestsPerUnit":2,"unit":"MINUTE"},"durationUntilReset":"29s"}]}"#)
            .after(Duration::from_millis(2))
    };
    for (version, at_once) in [
        (KongVersion::V3_4, 1),
        (KongVersion::V3_6, 1),
        (KongVersion::V3_7, 1),
        (KongVersion::V3_8, 2),
    ] {
        let mut config: serde_json::Value =
            serde_json::from_str(&two_limits("http", "ratelimit:8080", "kong", "")).unwrap();
        config["metrics"] = serde_json::json!(false);
        let (host, vms) = load(Profile::Kong(version), &config.to_string())?;
        host.script_http_call("ratelimit:8080", ok());
        host.script_http_call("ratelimit:8080", over());
        let mut stream = vms.worker(0).http_request(tenant("acme"))?;
        assert_eq!(stream.send_request_headers(true)?, Outcome::Pause);
        assert_eq!(host.http_calls().len(), at_once, "{version:?}");
        host.advance_clock(Duration::from_millis(2))?;
        assert_eq!(host.http_calls().len(), 2, "{version:?}");
        host.advance_clock(Duration::from_millis(2))?;
        let Outcome::LocalReply(reply) = stream.outcome() else {
            panic!("{version:?}: {:?}", stream.outcome())
        };
        assert_eq!(reply.status, 429, "{version:?}");
        assert!(!stream.reached_upstream(), "{version:?}");
    }
    Ok(())
}
