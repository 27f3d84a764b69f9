//! A minimal HTTP/1.1 server for loopback use: the demo and test upstream ([`crate::upstream`])
//! and the end-to-end tests' collectors. Each connection is served on a thread of its own, for
//! as long as the peer keeps it open, so any number of keep-alive connections are answered at
//! once.
//!
//! It replaces tiny_http 0.12, whose connection thread pool miscounts its idle threads: when
//! several connections arrive together (as when Envoy's workers open their upstream pools), it
//! queues more of them than it has idle threads to take them, and a queued connection waits for
//! a thread that is freed only when another connection closes. Envoy keeps its upstream
//! connections open, so the requests sent on a queued connection were never answered.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Most bytes of a request line and headers.
const MAX_HEAD: u64 = 64 * 1024;
/// Most header lines in a request.
const MAX_HEADERS: usize = 128;

/// A request, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent (path and query).
    pub path: String,
    /// Names in lower case, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the body arrived whole (false when the peer closed or reset mid-body).
    pub body_complete: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response; `content-length` (and `connection: close` when the connection ends) are added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

type Handler = dyn Fn(Request) -> Response + Send + Sync;

#[derive(Default)]
struct Shared {
    stopping: AtomicBool,
    next_id: AtomicU64,
    /// The open connections, to close them when the server stops.
    connections: Mutex<HashMap<u64, TcpStream>>,
}

impl Shared {
    fn connections(&self) -> MutexGuard<'_, HashMap<u64, TcpStream>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The server, listening until dropped. Dropping it also closes the connections it has open,
/// so a stopped server answers nothing more.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on `addr` (port 0: any free port) and answers each request with `handler`,
    /// called on the request's connection thread (so it may block that connection only).
    pub fn start(
        addr: SocketAddr,
        handler: impl Fn(Request) -> Response + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let handler: Arc<Handler> = Arc::new(handler);
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept(&listener, &shared, &handler))
        };
        Ok(Self {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees `stopping` and drops the listener.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        for (_, connection) in self.shared.connections().drain() {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>, handler: &Arc<Handler>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(_) => {
                // Out of descriptors, or the peer left before the accept: try again shortly.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(copy) = stream.try_clone() {
            shared.connections().insert(id, copy);
        }
        let shared = Arc::clone(shared);
        let handler = Arc::clone(handler);
        std::thread::spawn(move || {
            serve(stream, &*handler);
            shared.connections().remove(&id);
        });
    }
}

/// Answers the requests of one connection in order until either side ends it.
fn serve(stream: TcpStream, handler: &Handler) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let Some(head) = read_head(&mut reader) else {
            return;
        };
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        if !matches!(parsed.parse(&head), Ok(httparse::Status::Complete(_))) {
            let bad = Response {
                status: 400,
                headers: Vec::new(),
                body: Vec::new(),
            };
            let _ = write_response(&mut writer, &bad, false, false);
            return;
        }
        let method = parsed.method.unwrap_or_default().to_owned();
        let path = parsed.path.unwrap_or_default().to_owned();
        let http_1_0 = parsed.version == Some(0);
        let headers: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let (body, body_complete) = read_body(&mut reader, &headers);
        let request = Request {
            method,
            path,
            headers,
            body,
            body_complete,
        };
        let keep_alive = body_complete && keeps_alive(&request, http_1_0);
        let head_only = request.method == "HEAD";
        let response = handler(request);
        if write_response(&mut writer, &response, keep_alive, head_only).is_err() || !keep_alive {
            return;
        }
    }
}

/// The request line and headers up to the blank line; `None` when the connection ends first
/// or the head is too large.
fn read_head(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    loop {
        let start = head.len();
        let room = MAX_HEAD.saturating_sub(start as u64);
        let read = reader
            .by_ref()
            .take(room)
            .read_until(b'\n', &mut head)
            .ok()?;
        let line = head.get(start..)?;
        if read == 0 || !line.ends_with(b"\n") {
            return None;
        }
        if line == b"\r\n" || line == b"\n" {
            if start == 0 {
                // Blank lines before a request line are allowed (RFC 9112 section 2.2).
                head.clear();
                continue;
            }
            return Some(head);
        }
    }
}

fn keeps_alive(request: &Request, http_1_0: bool) -> bool {
    let connection = request
        .header("connection")
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if http_1_0 {
        connection.contains("keep-alive")
    } else {
        !connection.contains("close")
    }
}

/// The body as framed by `transfer-encoding: chunked` or `content-length` (none otherwise),
/// and whether it arrived whole.
fn read_body(reader: &mut impl BufRead, headers: &[(String, String)]) -> (Vec<u8>, bool) {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        return read_chunked(reader);
    }
    let Some(length) = header("content-length") else {
        return (Vec::new(), true);
    };
    let Ok(length) = length.trim().parse::<u64>() else {
        return (Vec::new(), false);
    };
    let mut body = Vec::new();
    let read = reader.by_ref().take(length).read_to_end(&mut body);
    let complete = read.is_ok() && body.len() as u64 == length;
    (body, complete)
}

fn read_chunked(reader: &mut impl BufRead) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    let mut line = Vec::new();
    loop {
        if !read_line(reader, &mut line) {
            return (body, false);
        }
        let size = std::str::from_utf8(&line)
            .ok()
            .map(|text| text.split(';').next().unwrap_or_default().trim())
            .and_then(|hex| u64::from_str_radix(hex, 16).ok());
        let Some(size) = size else {
            return (body, false);
        };
        if size == 0 {
            // Trailers, up to the blank line.
            loop {
                if !read_line(reader, &mut line) {
                    return (body, false);
                }
                if line == b"\r\n" || line == b"\n" {
                    return (body, true);
                }
            }
        }
        let before = body.len() as u64;
        let read = reader.by_ref().take(size).read_to_end(&mut body);
        if read.is_err() || body.len() as u64 - before != size {
            return (body, false);
        }
        if !read_line(reader, &mut line) || (line != b"\r\n" && line != b"\n") {
            return (body, false);
        }
    }
}

/// One line into `line`; false when the connection ended first or the line is too long.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> bool {
    line.clear();
    matches!(reader.by_ref().take(4096).read_until(b'\n', line), Ok(n) if n > 0)
        && line.ends_with(b"\n")
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

fn write_response(
    writer: &mut impl Write,
    response: &Response,
    keep_alive: bool,
    head_only: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    for (name, value) in &response.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("content-length: {}\r\n", response.body.len()));
    if !keep_alive {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&response.body);
    }
    writer.write_all(&bytes)?;
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn echo_path() -> Server {
        Server::start(SocketAddr::from(([127, 0, 0, 1], 0)), |request| Response {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: format!(
                "{} {} {} {}",
                request.method,
                request.path,
                request.body.len(),
                request.body_complete
            )
            .into_bytes(),
        })
        .unwrap()
    }

    /// Sends raw bytes, returns what came back until `until` appears or 2 s passed.
    fn exchange(conn: &mut TcpStream, bytes: &[u8], until: &str) -> String {
        conn.write_all(bytes).unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let started = Instant::now();
        let mut got = Vec::new();
        while started.elapsed() < Duration::from_secs(2) {
            let mut buf = [0u8; 4096];
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            if String::from_utf8_lossy(&got).contains(until) {
                break;
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    #[test]
    fn many_keep_alive_connections_opened_together_are_all_answered() {
        // The pattern that left tiny_http 0.12 connections unanswered (its pool took 4 of 8).
        let server = echo_path();
        let addr = server.addr();
        let conns: Vec<_> = (0..32)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut conn = TcpStream::connect(addr).unwrap();
                    let text = format!("GET /c{i} HTTP/1.1\r\nhost: x\r\n\r\n");
                    let got = exchange(&mut conn, text.as_bytes(), &format!("GET /c{i} 0 true"));
                    (got, conn) // the connection stays open, as Envoy's pool keeps it
                })
            })
            .collect();
        for (i, conn) in conns.into_iter().enumerate() {
            let (got, _conn) = conn.join().unwrap();
            assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{i}: {got:?}");
            assert!(got.ends_with(&format!("GET /c{i} 0 true")), "{i}: {got:?}");
        }
    }

    #[test]
    fn keep_alive_serves_requests_in_order_and_close_ends_the_connection() {
        let server = echo_path();
        let mut conn = TcpStream::connect(server.addr()).unwrap();
        let got = exchange(
            &mut conn,
            b"POST /a HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nconnection: close\r\n\r\n",
            "GET /b 0 true",
        );
        assert!(
            got.contains("content-length: 14\r\n\r\nPOST /a 3 true"),
            "{got:?}"
        );
        assert!(got.contains("connection: close\r\n"), "{got:?}");
        assert!(got.ends_with("GET /b 0 true"), "{got:?}");
        let mut rest = Vec::new();
        conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert_eq!(
            conn.read_to_end(&mut rest).unwrap(),
            0,
            "closed after the reply"
        );
    }

    #[test]
    fn chunked_bodies_are_decoded_and_a_cut_one_is_marked_incomplete() {
        let server = echo_path();
        let mut conn = TcpStream::connect(server.addr()).unwrap();
        let got = exchange(
            &mut conn,
            b"POST /up HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n2\r\nef\r\n0\r\ntrailer: t\r\n\r\n",
            "POST /up 6 true",
        );
        assert!(got.ends_with("POST /up 6 true"), "{got:?}");
        // The peer leaves mid-chunk: the request is still handed over, incomplete.
        let (tx, rx) = std::sync::mpsc::channel();
        let server = Server::start(SocketAddr::from(([127, 0, 0, 1], 0)), move |request| {
            let _ = tx.send((request.body.len(), request.body_complete));
            Response {
                status: 200,
                headers: Vec::new(),
                body: Vec::new(),
            }
        })
        .unwrap();
        let mut conn = TcpStream::connect(server.addr()).unwrap();
        conn.write_all(b"POST /up HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n10\r\nabc")
            .unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(2)).unwrap(), (3, false));
    }

    #[test]
    fn a_malformed_request_gets_400_and_the_connection_ends() {
        let server = echo_path();
        let mut conn = TcpStream::connect(server.addr()).unwrap();
        let got = exchange(&mut conn, b"NOT HTTP\r\n\r\n", "\r\n\r\n");
        assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got:?}");
        assert!(got.contains("connection: close\r\n"), "{got:?}");
    }

    #[test]
    fn a_stopped_server_refuses_connections_and_closes_open_ones() {
        let server = echo_path();
        let addr = server.addr();
        let mut open = TcpStream::connect(addr).unwrap();
        assert!(exchange(&mut open, b"GET / HTTP/1.1\r\n\r\n", "GET / 0 true").ends_with("true"));
        drop(server);
        assert!(TcpStream::connect(addr).is_err(), "refused once stopped");
        open.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut rest = Vec::new();
        assert_eq!(
            open.read_to_end(&mut rest).unwrap(),
            0,
            "kept-alive one closed"
        );
    }
}
