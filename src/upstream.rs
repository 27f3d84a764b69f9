//! A small upstream for the demo and the end-to-end tests: it answers every request with what it
//! received (method, path, headers) as JSON, and sends the implementation-revealing headers a
//! typical app server sends, so header-security has something to remove.
//!
//! It also fails on command, for resilience tests: a request carrying `x-upstream-status: 503`
//! gets that status, and one carrying `x-upstream-delay-ms: 500` is answered that much later
//! (on its own thread, so other requests are not held up).

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::json;

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
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    thread: Option<JoinHandle<()>>,
}

impl EchoUpstream {
    /// Serves on `127.0.0.1:port` (0: any free port).
    pub fn start(port: u16) -> std::io::Result<Self> {
        let server = tiny_http::Server::http(("127.0.0.1", port))
            .map(Arc::new)
            .map_err(std::io::Error::other)?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("upstream is not on an IP address"))?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let server = Arc::clone(&server);
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || serve(&server, &seen))
        };
        Ok(Self {
            server,
            addr,
            seen,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request that reached the upstream, oldest first.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen
            .lock()
            .map(|seen| seen.clone())
            .unwrap_or_default()
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Asks the upstream to answer with this status instead of 200.
pub const STATUS_HEADER: &str = "x-upstream-status";
/// Asks the upstream to wait this many milliseconds before answering.
pub const DELAY_HEADER: &str = "x-upstream-delay-ms";

fn serve(server: &tiny_http::Server, seen: &Mutex<Vec<SeenRequest>>) {
    for request in server.incoming_requests() {
        let delay = request
            .headers()
            .iter()
            .find(|h| h.field.equiv(DELAY_HEADER))
            .and_then(|h| h.value.as_str().parse::<u64>().ok());
        match delay {
            Some(ms) => answer_later(request, seen, std::time::Duration::from_millis(ms)),
            None => answer(request, seen),
        }
    }
}

/// Records the request now, answers it after `delay` on a thread of its own.
fn answer_later(
    request: tiny_http::Request,
    seen: &Mutex<Vec<SeenRequest>>,
    delay: std::time::Duration,
) {
    // The record is taken when the request arrives: a test checks what reached the upstream
    // even if the client left during the delay.
    let (request, entry, body) = read(request);
    if let Ok(mut seen) = seen.lock() {
        seen.push(entry.clone());
    }
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        respond(request, &entry, body);
    });
}

fn answer(request: tiny_http::Request, seen: &Mutex<Vec<SeenRequest>>) {
    let (request, entry, body) = read(request);
    if let Ok(mut seen) = seen.lock() {
        seen.push(entry.clone());
    }
    respond(request, &entry, body);
}

fn read(mut request: tiny_http::Request) -> (tiny_http::Request, SeenRequest, String) {
    // Drain the body so keep-alive connections stay usable.
    let drained = std::io::copy(request.as_reader(), &mut std::io::sink());
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.as_str().as_str().to_ascii_lowercase(),
                h.value.as_str().to_owned(),
            )
        })
        .collect();
    let entry = SeenRequest {
        method: request.method().as_str().to_owned(),
        path: request.url().to_owned(),
        headers,
        body_len: *drained.as_ref().unwrap_or(&0),
        body_complete: drained.is_ok(),
    };
    let body = json!({
        "method": entry.method,
        "path": entry.path,
        "headers": entry.headers,
    })
    .to_string();
    (request, entry, body)
}

fn respond(request: tiny_http::Request, entry: &SeenRequest, body: String) {
    let status = entry
        .header(STATUS_HEADER)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (200..=599).contains(s))
        .unwrap_or(200);
    let mut response = tiny_http::Response::new(
        tiny_http::StatusCode(status),
        Vec::new(),
        Cursor::new(body.clone().into_bytes()),
        Some(body.len()),
        None,
    );
    for (name, value) in [
        ("content-type", "application/json"),
        ("server", "demo-upstream/1.0"),
        ("x-powered-by", "palisade-demo"),
    ] {
        if let Ok(header) = tiny_http::Header::from_bytes(name, value) {
            response.add_header(header);
        }
    }
    let _ = request.respond(response);
}
