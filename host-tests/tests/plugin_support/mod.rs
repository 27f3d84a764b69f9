//! What every plugin test does: refuse a bad configuration with one exact log line, and let a
//! request and its response through untouched, under both profiles.

#![allow(dead_code)] // each test file uses its share

use palisade_host_tests::wasm_host::{
    Configured, Failure, Headers, Host, HttpStream, LocalReply, LogEntry, LogLevel, LogOrigin,
    Outcome, Plugin, PluginVms, Profile, Request, Response,
};

/// The plugin's own lines at `warn` or above, from a host's or a plugin's log.
pub fn plugin_warnings(logs: Vec<LogEntry>) -> Vec<String> {
    logs.into_iter()
        .filter(|e| e.origin == LogOrigin::Plugin && e.level >= LogLevel::Warn)
        .map(|e| e.message)
        .collect()
}

/// Envoy, and the newest Kong.
pub const PROFILES: [Profile; 2] = [
    Profile::Envoy,
    Profile::Kong(palisade_host_tests::wasm_host::KongVersion::V3_10),
];

/// Loads `plugin` with `config`; asserts on_configure returned false after logging exactly
/// `line` at error level.
pub fn assert_rejected(plugin: Plugin, config: &str, line: &str) -> Result<(), Failure> {
    for profile in PROFILES {
        let host = Host::new(profile);
        let vms = host.load(plugin.clone(), config)?;
        assert_eq!(
            vms.configured(),
            &Configured::Rejected {
                log: Some(line.to_owned())
            },
            "{profile:?}"
        );
        let errors: Vec<String> = vms
            .logs()
            .into_iter()
            .filter(|e| e.origin == LogOrigin::Plugin && e.level >= LogLevel::Warn)
            .map(|e| e.message)
            .collect();
        assert_eq!(errors, [line], "{profile:?}: one line, nothing else");
        assert!(
            vms.http_request(Request::get("/")).is_err(),
            "no request reaches it"
        );
        assert_unconfigured_behaviour(&plugin, profile, &vms)?;
    }
    Ok(())
}

/// The plugin's `NAME`, as its log lines and refusals say it.
pub fn plugin_name(plugin: &Plugin) -> &'static str {
    match plugin {
        Plugin::Auth => "palisade-auth",
        Plugin::RateLimit => "palisade-rate-limit",
        Plugin::Resilience => "palisade-resilience",
        Plugin::HeaderSecurity => "palisade-header-security",
        Plugin::Audit => "palisade-audit",
        other => panic!("not a Palisade plugin: {other:?}"),
    }
}

/// Were a host to send a request to a plugin whose configuration it refused anyway, the
/// enforcing plugins fail closed (kit `Unconfigured`: 503 "<plugin> is not configured", the
/// request held) and palisade-audit, which never fails a request, lets it through.
pub fn assert_unconfigured_behaviour(
    plugin: &Plugin,
    profile: Profile,
    vms: &PluginVms,
) -> Result<(), Failure> {
    let name = plugin_name(plugin);
    let mut stream = vms.forced_request(
        Request::get("/orders?page=2")
            .header("x-palisade-subject", "mallory")
            .header("x-request-id", "req-9"),
    )?;
    let outcome = stream.send_request_headers(true)?;
    if *plugin == Plugin::Audit {
        assert_eq!(
            outcome,
            Outcome::Continue,
            "{profile:?}: audit never fails a request"
        );
        assert!(stream.reached_upstream(), "{profile:?}");
        return Ok(());
    }
    let Outcome::LocalReply(reply) = outcome else {
        panic!("{profile:?}: {name} unconfigured let the request on: {outcome:?}");
    };
    let error = format!("{name} is not configured");
    assert_eq!(reply.status, 503, "{profile:?}");
    assert_eq!(
        String::from_utf8_lossy(&reply.body),
        // Kong appends a newline to local response bodies (ngx_http_wasm_local_response.c).
        format!(
            r#"{{"error":"{error}","status":503,"request_id":"req-9"}}{}"#,
            if profile.is_kong() { "\n" } else { "" }
        ),
        "{profile:?}"
    );
    assert_eq!(reply.headers.get("content-type"), Some("application/json"));
    let denied_by = palisade_kit::reply::denied_by(name, &error);
    let expected_headers = if profile.is_kong() {
        vec![
            ("content-type", "application/json"),
            ("x-palisade-denied-by", denied_by.as_str()),
        ]
    } else {
        vec![("content-type", "application/json")]
    };
    assert_eq!(reply.headers, headers(&expected_headers), "{profile:?}");
    if !profile.is_kong() {
        assert_eq!(
            reply.details,
            palisade_kit::reply::denial_details(name, &error),
            "{profile:?}"
        );
    }
    assert!(
        !stream.reached_upstream(),
        "{profile:?}: nothing went upstream"
    );
    assert!(stream.upstream_request_body().is_empty(), "{profile:?}");
    Ok(())
}

pub fn request() -> Request {
    Request::post("/api/orders?page=2")
        .header("content-type", "application/json")
        .header("user-agent", "curl/8.5.0")
        .header("x-tenant", "acme")
        .header("x-tenant", "acme-eu")
}

pub const REQUEST_BODY: &[u8] = br#"{"sku":"A-1","quantity":2}"#;

pub fn response() -> Response {
    Response::status(201)
        .header("content-type", "application/json")
        .header("server", "upstream/1.0")
        .header("x-upstream", "orders-7")
}

pub const RESPONSE_BODY: &[u8] = br#"{"id":"o-1"}"#;

/// Loads the plugin under `profile` and asserts it accepted `config`.
pub fn load(profile: Profile, plugin: Plugin, config: &str) -> Result<(Host, PluginVms), Failure> {
    let host = Host::new(profile);
    let vms = host.load(plugin, config)?;
    assert_eq!(
        vms.configured(),
        &Configured::Accepted,
        "{profile:?}: {:?}",
        vms.logs()
    );
    Ok((host, vms))
}

/// A POST with a body and its 201 answer through the plugin; returns the finished stream.
pub fn exchange(vms: &PluginVms) -> Result<HttpStream, Failure> {
    let mut stream = vms.http_request(request())?;
    assert_eq!(stream.send_request_headers(false)?, Outcome::Continue);
    assert_eq!(
        stream.send_request_body(REQUEST_BODY, true)?,
        Outcome::Continue
    );
    assert_eq!(
        stream.send_response_headers(response(), false)?,
        Outcome::Continue
    );
    assert_eq!(
        stream.send_response_body(RESPONSE_BODY, true)?,
        Outcome::Continue
    );
    stream.finish()?;
    Ok(stream)
}

/// Asserts `config` lets a request and its response through untouched under both profiles.
pub fn assert_pass_through(plugin: Plugin, config: &str) -> Result<(), Failure> {
    for profile in PROFILES {
        let (_host, vms) = load(profile, plugin.clone(), config)?;
        let stream = exchange(&vms)?;
        assert_eq!(
            stream.upstream_request_headers(),
            profile.request_map(request().headers()),
            "{profile:?}"
        );
        assert_eq!(stream.upstream_request_body(), REQUEST_BODY, "{profile:?}");
        assert_eq!(
            stream.response_headers(),
            response().headers().clone(),
            "{profile:?}"
        );
        assert_eq!(stream.response_body(), RESPONSE_BODY, "{profile:?}");
        assert!(stream.fuel() > 0);
    }
    Ok(())
}

/// A header map for comparisons.
pub fn headers(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().fold(Headers::new(), |h, (n, v)| h.with(n, v))
}

/// One request on `worker`, answered 200 if it goes upstream: `None`, or the plugin's local
/// reply.
pub fn send(
    vms: &PluginVms,
    worker: usize,
    request: Request,
) -> Result<Option<LocalReply>, Failure> {
    let mut stream = vms.worker(worker).http_request(request)?;
    stream.send_request_headers(true)?;
    finish_at_upstream(stream)
}

/// Ends a stream whose request phase is decided: one that went on gets a 200 from the
/// upstream (`None`), else its local reply.
pub fn finish_at_upstream(mut stream: HttpStream) -> Result<Option<LocalReply>, Failure> {
    let reply = match stream.outcome() {
        Outcome::Continue => {
            stream.send_response_headers(Response::status(200), true)?;
            None
        }
        Outcome::LocalReply(reply) => Some(reply),
        other => panic!("unexpected {other:?}"),
    };
    stream.finish()?;
    Ok(reply)
}
