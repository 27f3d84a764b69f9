//! Call-outs to other services, timers, and resuming a paused stream.
//!
//! Dispatch goes through the SDK's `hostcalls` on purpose: the SDK routes each answer
//! (`on_http_call_response`, `on_grpc_call_response`) to the context that made the call only
//! for tokens it registered itself, and an answer to an unregistered token panics its
//! dispatcher. Its dispatch wrappers return `Err` for the statuses Envoy and Kong document
//! (BadArgument, InternalFailure, ParseFailure) and panic only on a status neither returns.
//! Everything else here uses the kit's own imports and hands every status back.
//!
//! Both hosts, one upstream string: Envoy names a cluster (in Istio one that originates TLS,
//! `outbound|80||idp.example.com` with a ServiceEntry and DestinationRule; or a static
//! cluster), Kong names `host:port` (and resolves it with its own resolver).
//! Configs therefore carry the upstream as an opaque string the operator writes for their host.

use std::time::Duration;

use super::{abi, check, HostError, Map};
use crate::header_pairs::{decode_borrowed, get, Fields};

/// An HTTP call-out: where it goes and what it sends.
#[derive(Debug, Clone)]
pub struct HttpCallout<'a> {
    /// Envoy cluster name, or `host:port` on Kong.
    pub upstream: &'a str,
    pub method: &'a str,
    /// Path with query.
    pub path: &'a str,
    /// The `:authority` (Host) the upstream expects.
    pub authority: &'a str,
    /// Extra request headers, lower-case names.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<&'a [u8]>,
    pub timeout: Duration,
}

/// Sends an HTTP call-out; the answer arrives in `on_http_call_response` of the calling context
/// with the returned token.
pub fn dispatch_http(call: &HttpCallout<'_>) -> Result<u32, HostError> {
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(call.headers.len() + 3);
    headers.push((":method", call.method));
    headers.push((":path", call.path));
    headers.push((":authority", call.authority));
    headers.extend_from_slice(call.headers);
    // The ABI takes the timeout as u32 milliseconds and the SDK casts: cap it (~49 days)
    // rather than let a long one wrap to a short one.
    let timeout = call
        .timeout
        .min(std::time::Duration::from_millis(u64::from(u32::MAX)));
    proxy_wasm::hostcalls::dispatch_http_call(
        call.upstream,
        headers,
        call.body,
        Vec::new(),
        timeout,
    )
    .map_err(|status| HostError {
        call: "proxy_http_call",
        status: status as u32,
    })
}

/// Sends a unary gRPC call-out; the answer arrives in `on_grpc_call_response`.
///
/// Envoy only: Kong's ngx_wasm_module traps on `proxy_grpc_call` (the trap kills the VM), so a
/// plugin must decide from its configuration never to call this on Kong.
pub fn dispatch_grpc(
    upstream: &str,
    service: &str,
    method: &str,
    metadata: &[(&str, &[u8])],
    message: &[u8],
    timeout: Duration,
) -> Result<u32, HostError> {
    proxy_wasm::hostcalls::dispatch_grpc_call(
        upstream,
        service,
        method,
        metadata.to_vec(),
        Some(message),
        timeout,
    )
    .map_err(|status| HostError {
        call: "proxy_grpc_call",
        status: status as u32,
    })
}

/// The answer to an HTTP call-out, read inside `on_http_call_response`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CalloutResponse {
    /// `:status`; `None` when the call failed before any response (reset, timeout, no
    /// upstream: Envoy then delivers no headers at all).
    pub status: Option<u16>,
    headers: Vec<u8>,
    pub body: Vec<u8>,
}

impl CalloutResponse {
    /// The response headers as raw bytes.
    pub fn headers(&self) -> Fields<'_> {
        decode_borrowed(&self.headers).unwrap_or_default()
    }

    /// One response header's first value (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        get(&decode_borrowed(&self.headers)?, name)
    }
}

/// Reads the current call-out's answer. `num_headers` and `body_size` are what the host passed
/// to `on_http_call_response`; bodies larger than `max_body` are cut to it (check the length
/// against `body_size` to see it happened).
pub fn http_call_response(
    num_headers: usize,
    body_size: usize,
    max_body: usize,
) -> CalloutResponse {
    // A map Kong would cut is not read whole (it writes past its buffer, `whole_map_readable`):
    // then only `:status`, by name.
    let headers = match super::headers_raw_capped(Map::HttpCallResponseHeaders, num_headers) {
        Ok(Some(headers)) => headers,
        Ok(None) => super::header(Map::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .map(|status| {
                crate::header_pairs::encode(&[(b":status".as_slice(), status.as_slice())])
            })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let status = decode_borrowed(&headers)
        .and_then(|fields| {
            std::str::from_utf8(get(&fields, ":status")?)
                .ok()?
                .parse()
                .ok()
        })
        .filter(|status| (100..=599).contains(status));
    // Kong copies a body held in several buffers past a length cut shorter than the body
    // (`ngx_proxy_wasm_hfuncs_get_buffer` clears its counter instead of stopping), writing
    // beyond the buffer it allocated in this VM's memory: there a body over the cap is not
    // read at all. Callers judge it too large by `body_size`, as when it is cut.
    let body = if body_size == 0 || (body_size > max_body && super::is_kong()) {
        Vec::new()
    } else {
        buffer(BufferType::HttpCallResponseBody, body_size.min(max_body)).unwrap_or_default()
    };
    CalloutResponse {
        status,
        headers,
        body,
    }
}

/// The message of a gRPC call-out's answer, read inside `on_grpc_call_response` (with the
/// size the host passed).
pub fn grpc_call_response(message_size: usize, max_size: usize) -> Result<Vec<u8>, HostError> {
    if message_size == 0 {
        return Ok(Vec::new());
    }
    buffer(BufferType::GrpcReceiveBuffer, message_size.min(max_size))
}

/// The ABI's buffer types that call-outs deliver into.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
enum BufferType {
    HttpCallResponseBody = 4,
    GrpcReceiveBuffer = 5,
}

fn buffer(kind: BufferType, size: usize) -> Result<Vec<u8>, HostError> {
    let mut data = std::ptr::null_mut();
    let mut len = 0;
    // SAFETY: pointers to locals; the host writes a buffer it allocated through our allocator.
    let status = unsafe { abi::proxy_get_buffer_bytes(kind as u32, 0, size, &mut data, &mut len) };
    match status {
        abi::OK => Ok(unsafe { abi::take(data, len) }),
        abi::NOT_FOUND | abi::EMPTY => Ok(Vec::new()),
        status => Err(HostError {
            call: "proxy_get_buffer_bytes",
            status,
        }),
    }
}

/// Asks for `on_tick` on the root context every `period` (zero stops it). Both hosts round to
/// milliseconds; Envoy's timer runs per worker, Kong's per worker process.
pub fn set_tick_period(period: Duration) -> Result<(), HostError> {
    let millis = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: plain value.
    check("proxy_set_tick_period_milliseconds", unsafe {
        abi::proxy_set_tick_period_milliseconds(millis)
    })
}

/// A root context's tick, set once: Kong traps on a second tick period ("tick_period already
/// set"; any second call up to 3.8, a second non-zero one after). Neither host configures one
/// root context twice today (Envoy keys a root by its configuration, Kong makes a new one per
/// filter plan), so this only guards against one that would: the root keeps its first period
/// rather than kill the worker's VM.
#[derive(Debug, Default)]
pub struct RootTick {
    set: bool,
}

impl RootTick {
    pub fn set(&mut self, plugin: &str, period: Duration) -> Result<(), HostError> {
        if self.set {
            log::info!("[{plugin}] the timer keeps its first period");
            return Ok(());
        }
        set_tick_period(period)?;
        self.set = true;
        Ok(())
    }
}

/// Makes later host calls act on another context of this VM: how a root context's timer
/// resumes an HTTP stream it holds paused. Fails when that stream is gone (the client left).
pub fn set_effective_context(context_id: u32) -> Result<(), HostError> {
    // SAFETY: plain value.
    check("proxy_set_effective_context", unsafe {
        abi::proxy_set_effective_context(context_id)
    })
}

/// Resumes the request a callback paused (returned `Action::Pause` for).
pub fn resume_request() -> Result<(), HostError> {
    // SAFETY: plain value.
    check("proxy_continue_stream", unsafe {
        abi::proxy_continue_stream(0)
    })
}

/// Resumes the response a callback paused. Kong 3.4–3.6 cannot pause in response phases at
/// all (see docs/kong-proxy-wasm.md): plugins don't pause there.
pub fn resume_response() -> Result<(), HostError> {
    // SAFETY: plain value.
    check("proxy_continue_stream", unsafe {
        abi::proxy_continue_stream(1)
    })
}
