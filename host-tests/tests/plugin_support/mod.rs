//! What every plugin test does: refuse a bad configuration with one exact log line, and let a
//! request and its response through untouched, under both profiles.

#![allow(dead_code)] // each test file uses its share

use palisade_host_tests::wasm_host::{
    Configured, Failure, Headers, Host, HttpStream, LocalReply, LogLevel, LogOrigin, Outcome,
    Plugin, PluginVms, Profile, Request, Response,
};

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
    }
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
