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
    seen: Arc<Mutex<Vec<SeenRequest>>>,
}

impl EchoUpstream {
    /// Serves on `127.0.0.1:port` (0: any free port).
    pub fn start(port: u16) -> std::io::Result<Self> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let server = {
            let seen = Arc::clone(&seen);
            Server::start(SocketAddr::from(([127, 0, 0, 1], port)), move |request| {
                answer(request, &seen)
            })?
        };
        Ok(Self { server, seen })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Every request that reached the upstream, oldest first.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen
            .lock()
            .map(|seen| seen.clone())
            .unwrap_or_default()
    }
}

/// Asks the upstream to answer with this status instead of 200.
pub const STATUS_HEADER: &str = "x-upstream-status";
/// Asks the upstream to wait this many milliseconds before answering.
pub const DELAY_HEADER: &str = "x-upstream-delay-ms";

fn answer(request: Request, seen: &Mutex<Vec<SeenRequest>>) -> Response {
    let entry = SeenRequest {
        method: request.method,
        path: request.path,
        headers: request.headers,
        body_len: request.body.len() as u64,
        body_complete: request.body_complete,
    };
    // The record is taken when the request arrives: a test checks what reached the upstream
    // even if the client left during a delay.
    if let Ok(mut seen) = seen.lock() {
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
