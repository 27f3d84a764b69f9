//! A small upstream for the demo and the end-to-end tests: it answers every request with what it
//! received (method, path, headers) as JSON, and sends the implementation-revealing headers a
//! typical app server sends, so header-security has something to remove.
//!
//! It also fails on command, for resilience tests: a request carrying `x-upstream-status: 503`
//! gets that status, and one carrying `x-upstream-delay-ms: 500` is answered that much later
//! (each connection has its own thread, so other connections are not held up).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::http_server::{Request, Response, Server};

/// A request as the upstream saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    /// Names in lower case, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Body bytes received.
    pub body_len: u64,
    /// Whether the body arrived whole (false when the proxy reset the stream mid-body).
    pub body_complete: bool,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The echo upstream, serving on 127.0.0.1 until dropped.
pub struct EchoUpstream {
    server: Server,
    /// `None`: nothing is recorded (a long demo must not grow without end).
    seen: Option<Arc<Mutex<Vec<SeenRequest>>>>,
}

impl EchoUpstream {
    /// Serves on `127.0.0.1:port` (0: any free port), recording every request for
    /// [`Self::seen`], as the tests need.
    pub fn start(port: u16) -> std::io::Result<Self> {
        Self::serve(port, Some(Arc::default()))
    }

    /// Serves without recording: for `palisade run`, which may serve for days.
    pub fn start_unrecorded(port: u16) -> std::io::Result<Self> {
        Self::serve(port, None)
    }

    fn serve(port: u16, seen: Option<Arc<Mutex<Vec<SeenRequest>>>>) -> std::io::Result<Self> {
        let server = {
            let seen = seen.clone();
            Server::start(SocketAddr::from(([127, 0, 0, 1], port)), move |request| {
                answer(request, seen.as_deref())
            })?
        };
        Ok(Self { server, seen })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Every request that reached the upstream, oldest first (none when unrecorded).
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen
            .as_ref()
            .and_then(|seen| seen.lock().ok().map(|seen| seen.clone()))
            .unwrap_or_default()
    }
}

/// Asks the upstream to answer with this status instead of 200.
pub const STATUS_HEADER: &str = "x-upstream-status";
/// Asks the upstream to wait this many milliseconds before answering.
pub const DELAY_HEADER: &str = "x-upstream-delay-ms";

fn answer(request: Request, seen: Option<&Mutex<Vec<SeenRequest>>>) -> Response {
    let entry = SeenRequest {
        method: request.method,
        path: request.path,
        headers: request.headers,
        body_len: request.body.len() as u64,
        body_complete: request.body_complete,
    };
    // The record is taken when the request arrives: a test checks what reached the upstream
    // even if the client left during a delay.
    if let Some(Ok(mut seen)) = seen.map(Mutex::lock) {
        seen.push(entry.clone());
    }
    if let Some(ms) = entry
        .header(DELAY_HEADER)
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let status = entry
        .header(STATUS_HEADER)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (200..=599).contains(s))
        .unwrap_or(200);
    let body = json!({
        "method": entry.method,
        "path": entry.path,
        "headers": entry.headers,
    })
    .to_string();
    let headers = [
        ("content-type", "application/json"),
        ("server", "demo-upstream/1.0"),
        ("x-powered-by", "palisade-demo"),
    ]
    .iter()
    .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
    .collect();
    Response {
        status,
        headers,
        body: body.into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(upstream: &EchoUpstream) -> u16 {
        let url = format!("http://{}/orders", upstream.addr());
        ureq::get(&url)
            .call()
            .map_or(0, |reply| reply.status().as_u16())
    }

    #[test]
    fn the_tests_upstream_records_and_the_demos_does_not() {
        let recorded = EchoUpstream::start(0).unwrap();
        assert_eq!(get(&recorded), 200);
        assert_eq!(recorded.seen().len(), 1);
        assert_eq!(recorded.seen()[0].path, "/orders");
        let unrecorded = EchoUpstream::start_unrecorded(0).unwrap();
        assert_eq!(get(&unrecorded), 200);
        assert_eq!(unrecorded.seen(), Vec::new());
    }
}
