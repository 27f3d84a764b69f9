//! A loopback rate-limit service for palisade-rate-limit's global-mode tests, counting in a real
//! `redis-server` the way lyft/ratelimit does: a fixed window per descriptor, `INCR` on a key
//! named by the domain, the descriptor's entries and the window, with `EXPIRE` to clean up.
//!
//! It serves the two forms of `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`:
//! - `POST /json`, lyft's JSON form: protojson request and answer, 200 for OK, 429 for
//!   OVER_LIMIT;
//! - `POST /envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` with the raw protobuf
//!   request, as Envoy's `grpc_http1_reverse_bridge` (with `withhold_grpc_frames`) hands a gRPC
//!   call to an HTTP/1.1 server; answered with the raw protobuf response and
//!   `content-type: application/grpc+proto`, which the bridge frames back into gRPC.
//!
//! Limits are per descriptor `limit` entry (the plugin sends the limit's name there); a
//! descriptor whose limit the service does not know is OK with no `current_limit`, as lyft does.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade::http_server::{Request, Response, Server};
use serde_json::{json, Value};

/// The gRPC method's path.
pub const GRPC_PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
/// The content type the bridge is configured with.
pub const GRPC_CONTENT_TYPE: &str = "application/grpc+proto";

/// A `redis-server` of our own on a free loopback port, killed when dropped.
pub struct Redis {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Where `redis-server` is: `PALISADE_REDIS_SERVER`, else on the PATH (`just setup` installs
/// Debian's package).
fn redis_binary() -> PathBuf {
    std::env::var_os("PALISADE_REDIS_SERVER").map_or_else(|| "redis-server".into(), PathBuf::from)
}

/// A port nothing listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    // Below the kernel's ephemeral range, so no outgoing connection (Envoy's, in a test running
    // beside this one) can take the port before the service binds it; a port from `bind(0)`
    // came from that range and once was, failing an Envoy start with "Address already in use".
    // A sequence per process, seeded by its id, keeps this process's threads and other test
    // binaries apart.
    const LOW: u32 = 20_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(LOW);
    if span >= 1_000 {
        let seed = std::process::id().wrapping_mul(2_654_435_761) % span;
        for _ in 0..span {
            let step = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Ok(port) = u16::try_from(LOW + seed.wrapping_add(step) % span) else {
                continue;
            };
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Redis {
    pub fn start() -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let child = Command::new(redis_binary())
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| {
                std::io::Error::new(
                    err.kind(),
                    format!("cannot start redis-server (run `just setup`): {err}"),
                )
            })?;
        let redis = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            if let Ok(mut conn) = RespConn::connect(redis.addr) {
                if conn.command(&[b"PING"]).is_ok() {
                    return Ok(redis);
                }
            }
            if started.elapsed() > Duration::from_secs(10) {
                return Err(std::io::Error::other("redis-server did not answer PING"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A RESP reply, as far as these commands need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Error(String),
}

/// One connection to redis speaking RESP2.
pub struct RespConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RespConn {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends several commands in one write and reads their replies (a pipeline).
    pub fn pipeline(&mut self, commands: &[&[&[u8]]]) -> std::io::Result<Vec<Resp>> {
        let mut out = Vec::new();
        for args in commands {
            out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for arg in *args {
                out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                out.extend_from_slice(arg);
                out.extend_from_slice(b"\r\n");
            }
        }
        self.writer.write_all(&out)?;
        commands.iter().map(|_| self.reply()).collect()
    }

    pub fn command(&mut self, args: &[&[u8]]) -> std::io::Result<Resp> {
        self.pipeline(&[args])?
            .pop()
            .ok_or_else(|| std::io::Error::other("no reply"))
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end_matches("\r\n").to_owned())
    }

    fn reply(&mut self) -> std::io::Result<Resp> {
        let line = self.line()?;
        let bad = || std::io::Error::other(format!("bad RESP line {line:?}"));
        let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
        match kind {
            "+" => Ok(Resp::Simple(rest.to_owned())),
            "-" => Ok(Resp::Error(rest.to_owned())),
            ":" => rest.parse().map(Resp::Integer).map_err(|_| bad()),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| bad())?;
                if len < 0 {
                    return Ok(Resp::Bulk(None));
                }
                let mut data = vec![0; usize::try_from(len).map_err(|_| bad())? + 2];
                self.reader.read_exact(&mut data)?;
                data.truncate(data.len() - 2);
                Ok(Resp::Bulk(Some(data)))
            }
            _ => Err(bad()),
        }
    }
}

/// `RateLimitResponse.RateLimit.Unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Second = 1,
    Minute = 2,
    Hour = 3,
    Day = 4,
}

impl Unit {
    fn secs(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3600,
            Unit::Day => 86_400,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Second => "SECOND",
            Unit::Minute => "MINUTE",
            Unit::Hour => "HOUR",
            Unit::Day => "DAY",
        }
    }
}

/// A request as the service read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub transport: &'static str,
    pub domain: String,
    pub descriptors: Vec<Vec<(String, String)>>,
    pub hits_addend: u32,
}

#[derive(Default)]
struct State {
    asked: Vec<Asked>,
    failing: bool,
}

struct Service {
    redis: SocketAddr,
    limits: BTreeMap<String, (u32, Unit)>,
    state: Mutex<State>,
    conn: Mutex<Option<RespConn>>,
}

/// One descriptor's verdict.
struct Status {
    over: bool,
    limit: Option<(u32, Unit)>,
    remaining: u32,
    reset: Duration,
}

/// The running service; stopped when dropped.
pub struct RateLimitServer {
    addr: SocketAddr,
    service: Arc<Service>,
    server: Option<Server>,
}

impl RateLimitServer {
    /// Serves on a loopback port; `limits` maps a limit name to its requests per unit.
    pub fn start(redis: &Redis, limits: &[(&str, u32, Unit)]) -> std::io::Result<Self> {
        let service = Arc::new(Service {
            redis: redis.addr(),
            limits: limits
                .iter()
                .map(|(name, n, unit)| ((*name).to_owned(), (*n, *unit)))
                .collect(),
            state: Mutex::default(),
            conn: Mutex::new(None),
        });
        let server = {
            let service = Arc::clone(&service);
            Server::start(SocketAddr::from(([127, 0, 0, 1], 0)), move |request| {
                service.answer(&request)
            })?
        };
        Ok(Self {
            addr: server.addr(),
            service,
            server: Some(server),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers 500 (HTTP) or 503 (gRPC through the bridge: UNAVAILABLE) while `true`.
    pub fn set_failing(&self, failing: bool) {
        lock(&self.service.state).failing = failing;
    }

    pub fn asked(&self) -> Vec<Asked> {
        lock(&self.service.state).asked.clone()
    }

    /// Stops listening and closes the open connections.
    pub fn stop(&mut self) {
        self.server = None;
    }
}

impl Drop for RateLimitServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Service {
    fn answer(&self, request: &Request) -> Response {
        let failing = lock(&self.state).failing;
        let (status, content_type, reply) = match request.path.as_str() {
            "/json" => self.json(&request.body, failing),
            GRPC_PATH => self.grpc(&request.body, failing),
            _ => (404, "text/plain", b"not found".to_vec()),
        };
        Response {
            status,
            headers: vec![("content-type".to_owned(), content_type.to_owned())],
            body: reply,
        }
    }

    fn json(&self, body: &[u8], failing: bool) -> (u16, &'static str, Vec<u8>) {
        if failing {
            return (500, "text/plain", b"Internal Server Error\n".to_vec());
        }
        let Some(asked) = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| parse_json_request(&v))
        else {
            return (400, "text/plain", b"Bad Request\n".to_vec());
        };
        let Ok(statuses) = self.decide(&asked) else {
            return (500, "text/plain", b"Internal Server Error\n".to_vec());
        };
        let over = statuses.iter().any(|s| s.over);
        let decided = statuses;
        let statuses: Vec<Value> = decided
            .iter()
            .map(|s| {
                let mut v = json!({"code": if s.over { "OVER_LIMIT" } else { "OK" }});
                if let Some((n, unit)) = s.limit {
                    v["currentLimit"] = json!({"requestsPerUnit": n, "unit": unit.name()});
                    v["durationUntilReset"] = json!(format!("{}s", s.reset.as_secs()));
                }
                if s.remaining > 0 {
                    v["limitRemaining"] = json!(s.remaining);
                }
                v
            })
            .collect();
        lock(&self.state).asked.push(Asked {
            transport: "http",
            ..asked
        });
        let mut reply = json!({
            "overallCode": if over { "OVER_LIMIT" } else { "OK" },
            "statuses": statuses,
        });
        if let Some((key, value)) = remaining_header(&decided) {
            reply["responseHeadersToAdd"] = json!([{"key": key, "value": value}]);
        }
        (
            if over { 429 } else { 200 },
            "application/json",
            reply.to_string().into_bytes(),
        )
    }

    fn grpc(&self, body: &[u8], failing: bool) -> (u16, &'static str, Vec<u8>) {
        if failing {
            return (503, GRPC_CONTENT_TYPE, Vec::new());
        }
        let Some(asked) = parse_proto_request(body) else {
            return (400, GRPC_CONTENT_TYPE, Vec::new());
        };
        let Ok(statuses) = self.decide(&asked) else {
            return (503, GRPC_CONTENT_TYPE, Vec::new());
        };
        let over = statuses.iter().any(|s| s.over);
        let mut out = Vec::new();
        varint_field(&mut out, 1, if over { 2 } else { 1 });
        for s in &statuses {
            let mut status = Vec::new();
            varint_field(&mut status, 1, if s.over { 2 } else { 1 });
            if let Some((n, unit)) = s.limit {
                let mut limit = Vec::new();
                varint_field(&mut limit, 1, u64::from(n));
                varint_field(&mut limit, 2, unit as u64);
                bytes_field(&mut status, 2, &limit);
                let mut reset = Vec::new();
                varint_field(&mut reset, 1, s.reset.as_secs());
                varint_field(&mut status, 3, u64::from(s.remaining));
                bytes_field(&mut status, 4, &reset);
            }
            bytes_field(&mut out, 2, &status);
        }
        if let Some((key, value)) = remaining_header(&statuses) {
            let mut header = Vec::new();
            bytes_field(&mut header, 1, key.as_bytes());
            bytes_field(&mut header, 2, value.as_bytes());
            bytes_field(&mut out, 3, &header);
        }
        lock(&self.state).asked.push(Asked {
            transport: "grpc",
            ..asked
        });
        (200, GRPC_CONTENT_TYPE, out)
    }

    /// Counts the request against each descriptor's fixed window in redis.
    fn decide(&self, asked: &Asked) -> std::io::Result<Vec<Status>> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut conn = lock(&self.conn);
        if conn.is_none() {
            *conn = Some(RespConn::connect(self.redis)?);
        }
        let mut failed = false;
        let result = Self::count(conn.as_mut(), &self.limits, asked, now, &mut failed);
        if failed {
            // Reconnect on the next request.
            *conn = None;
        }
        result
    }

    fn count(
        redis: Option<&mut RespConn>,
        limits: &BTreeMap<String, (u32, Unit)>,
        asked: &Asked,
        now: u64,
        failed: &mut bool,
    ) -> std::io::Result<Vec<Status>> {
        let Some(redis) = redis else {
            return Err(std::io::Error::other("no redis connection"));
        };
        let mut statuses = Vec::new();
        for descriptor in &asked.descriptors {
            let limit = descriptor
                .iter()
                .find(|(k, _)| k == "limit")
                .and_then(|(_, name)| limits.get(name))
                .copied();
            let Some((per_unit, unit)) = limit else {
                statuses.push(Status {
                    over: false,
                    limit: None,
                    remaining: 0,
                    reset: Duration::ZERO,
                });
                continue;
            };
            let window = now / unit.secs();
            let mut key = format!("{}_", asked.domain);
            for (k, v) in descriptor {
                key.push_str(&format!("{k}_{v}_"));
            }
            key.push_str(&(window * unit.secs()).to_string());
            let hits = asked.hits_addend.max(1).to_string();
            let ttl = unit.secs().to_string();
            let replies = redis
                .pipeline(&[
                    &[b"INCRBY", key.as_bytes(), hits.as_bytes()],
                    &[b"EXPIRE", key.as_bytes(), ttl.as_bytes()],
                ])
                .inspect_err(|_| *failed = true)?;
            let Some(Resp::Integer(count)) = replies.first().cloned() else {
                return Err(std::io::Error::other(format!("redis said {replies:?}")));
            };
            let count = u64::try_from(count).unwrap_or(0);
            statuses.push(Status {
                over: count > u64::from(per_unit),
                limit: Some((per_unit, unit)),
                remaining: u32::try_from(u64::from(per_unit).saturating_sub(count)).unwrap_or(0),
                reset: Duration::from_secs((window + 1) * unit.secs() - now),
            });
        }
        Ok(statuses)
    }
}

fn parse_json_request(v: &Value) -> Option<Asked> {
    let descriptors = v
        .get("descriptors")?
        .as_array()?
        .iter()
        .map(|d| {
            d.get("entries")?
                .as_array()?
                .iter()
                .map(|e| {
                    Some((
                        e.get("key")?.as_str()?.to_owned(),
                        e.get("value")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    ))
                })
                .collect::<Option<Vec<_>>>()
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Asked {
        transport: "http",
        domain: v.get("domain")?.as_str()?.to_owned(),
        descriptors,
        hits_addend: v
            .get("hitsAddend")
            .or_else(|| v.get("hits_addend"))
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
    })
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// lyft/ratelimit with `LIMIT_RESPONSE_HEADERS_ENABLED`: `RateLimit-Remaining` (its default
/// name) for the descriptor with the least left, in `response_headers_to_add`.
fn remaining_header(statuses: &[Status]) -> Option<(&'static str, String)> {
    statuses
        .iter()
        .filter(|s| s.limit.is_some())
        .map(|s| s.remaining)
        .min()
        .map(|remaining| ("RateLimit-Remaining", remaining.to_string()))
}

fn varint_field(out: &mut Vec<u8>, field: u64, n: u64) {
    put_varint(out, field << 3);
    put_varint(out, n);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// One protobuf field: its number, and its varint value (Ok) or its bytes (Err).
type ProtoField<'a> = (u64, Result<u64, &'a [u8]>);

/// Protobuf fields of one message.
fn proto_fields(mut bytes: &[u8]) -> Option<Vec<ProtoField<'_>>> {
    fn varint(bytes: &mut &[u8]) -> Option<u64> {
        let mut n = 0u64;
        for i in 0..10 {
            let (&b, rest) = bytes.split_first()?;
            *bytes = rest;
            n |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let tag = varint(&mut bytes)?;
        match tag & 7 {
            0 => fields.push((tag >> 3, Ok(varint(&mut bytes)?))),
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).ok()?;
                let (value, rest) = bytes.split_at_checked(len)?;
                bytes = rest;
                fields.push((tag >> 3, Err(value)));
            }
            _ => return None,
        }
    }
    Some(fields)
}

fn parse_proto_request(body: &[u8]) -> Option<Asked> {
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
    let mut asked = Asked {
        transport: "grpc",
        domain: String::new(),
        descriptors: Vec::new(),
        hits_addend: 0,
    };
    for (field, value) in proto_fields(body)? {
        match (field, value) {
            (1, Err(b)) => asked.domain = text(b)?,
            (2, Err(b)) => {
                let mut entries = Vec::new();
                for (f, v) in proto_fields(b)? {
                    if let (1, Err(entry)) = (f, v) {
                        let (mut key, mut value) = (String::new(), String::new());
                        for (f, v) in proto_fields(entry)? {
                            match (f, v) {
                                (1, Err(b)) => key = text(b)?,
                                (2, Err(b)) => value = text(b)?,
                                _ => {}
                            }
                        }
                        entries.push((key, value));
                    }
                }
                asked.descriptors.push(entries);
            }
            (3, Ok(n)) => asked.hits_addend = u32::try_from(n).ok()?,
            _ => {}
        }
    }
    Some(asked)
}
