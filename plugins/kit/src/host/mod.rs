//! The kit's side of the proxy-wasm host (only in the `wasm32-wasip1` build). Every call returns
//! a `Result` or degrades; none panics, whatever status or bytes the host returns.

mod abi;
pub mod callout;
pub mod logger;
pub mod metrics;
pub mod plugin;
pub mod store;

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::reply::{ErrorReply, CONTENT_TYPE};

pub use logger::init_logging;
pub use plugin::{start, PassThrough, Plugin};
pub use store::HostStore;

/// A host call that did not succeed: which call, and the status the host returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("host call {call} failed with status {status}")]
pub struct HostError {
    pub call: &'static str,
    pub status: u32,
}

fn check(call: &'static str, status: u32) -> Result<(), HostError> {
    if status == abi::OK {
        Ok(())
    } else {
        Err(HostError { call, status })
    }
}

/// The header and trailer maps of the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Map {
    RequestHeaders = 0,
    RequestTrailers = 1,
    ResponseHeaders = 2,
    ResponseTrailers = 3,
    HttpCallResponseHeaders = 6,
}

/// The request's `x-request-id`, for a refusal's body to quote; `None` when absent, unreadable
/// or not UTF-8.
pub fn request_id() -> Option<String> {
    header(Map::RequestHeaders, "x-request-id")
        .ok()
        .flatten()
        .and_then(|id| String::from_utf8(id).ok())
}

/// One header value, as raw bytes (never assumed UTF-8), or `None` when absent.
pub fn header(map: Map, name: &str) -> Result<Option<Vec<u8>>, HostError> {
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: pointers to locals; the host writes a buffer it allocated through our allocator.
    let status = unsafe {
        abi::proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    match status {
        abi::OK => Ok(Some(unsafe { abi::take(data, size) })),
        abi::NOT_FOUND => Ok(None),
        status => Err(HostError {
            call: "proxy_get_header_map_value",
            status,
        }),
    }
}

/// ngx_wasm_module hands a plugin at most this many pairs of a header map, pseudo-headers
/// first, and drops the rest with a warning (`NGX_HTTP_WASM_MAX_REQ_HEADERS`, "marshalled map
/// truncated to 100 elements"). Envoy hands every pair.
pub const KONG_MAX_HEADER_PAIRS: usize = 100;

/// Whether a map read with [`headers_raw`] that decoded to `pairs` pairs may be missing some:
/// on Kong, one at the cap. A decision that needs every header (removing a client's identity
/// headers) must refuse such a request, and the map must not be rewritten whole.
pub fn header_map_may_be_truncated(pairs: usize) -> bool {
    pairs >= KONG_MAX_HEADER_PAIRS && is_kong()
}

/// Pseudo-headers Kong puts ahead of a map's ordinary headers: `:path`, `:method`, `:scheme`,
/// `:authority` (a response's `:status` and shim headers are fewer than that beyond the count
/// its callback is given).
const KONG_MAP_EXTRAS: usize = 4;

/// Whether a whole header map may be read with [`headers_raw_capped`], given the header count
/// the map's callback was given. On Kong a map Kong would cut at [`KONG_MAX_HEADER_PAIRS`]
/// may not: the host sizes its buffer from the first 100 ordinary headers and one
/// pseudo-header, but writes every pseudo-header first, then cuts the ordinary ones
/// (`ngx_proxy_wasm_pairs_size` vs `ngx_proxy_wasm_pairs_marshal`, every pin). When the last
/// headers are short, it writes the client's bytes past the buffer, into this VM's memory.
pub fn whole_map_readable(num_headers: usize) -> bool {
    num_headers.saturating_add(KONG_MAP_EXTRAS) <= KONG_MAX_HEADER_PAIRS || !is_kong()
}

/// [`headers_raw`] for a map whose callback was given `num_headers`: `None`, unread, when it
/// is not [`whole_map_readable`] (then read the headers needed by name, [`unseen_headers`]).
pub fn headers_raw_capped(map: Map, num_headers: usize) -> Result<Option<Vec<u8>>, HostError> {
    if !whole_map_readable(num_headers) {
        return Ok(None);
    }
    headers_raw(map).map(Some)
}

/// Past Kong's header cap (a map left unread, [`headers_raw_capped`], or one cut short,
/// [`header_map_may_be_truncated`]): those of `names` a plugin reads that the `seen` map lacks,
/// each asked for by name (the host finds a header wherever it sits). Empty when the map is
/// whole. Add them to the map with [`as_fields`].
pub fn unseen_headers<'n>(
    map: Map,
    seen: &[(&[u8], &[u8])],
    unread: bool,
    names: impl Iterator<Item = &'n str>,
) -> Vec<(&'n str, Vec<u8>)> {
    if !unread && !header_map_may_be_truncated(seen.len()) {
        return Vec::new();
    }
    names
        .filter(|name| crate::header_pairs::get(seen, name).is_none())
        .filter_map(|name| Some((name, header(map, name).ok()??)))
        .collect()
}

/// [`unseen_headers`]' answer as header pairs.
pub fn as_fields<'a>(
    headers: &'a [(&'a str, Vec<u8>)],
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
    headers
        .iter()
        .map(|(name, value)| (name.as_bytes(), value.as_slice()))
}

/// Every header of a map, in order, as raw bytes: the host's encoded answer, to decode with
/// [`crate::header_pairs::decode_borrowed`] (one buffer, no allocation per header). On Kong at
/// most [`KONG_MAX_HEADER_PAIRS`] (see [`header_map_may_be_truncated`]).
pub fn headers_raw(map: Map) -> Result<Vec<u8>, HostError> {
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: as in `header`.
    let status = unsafe { abi::proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    match status {
        abi::OK => Ok(unsafe { abi::take(data, size) }),
        abi::NOT_FOUND | abi::EMPTY => Ok(Vec::new()),
        status => Err(HostError {
            call: "proxy_get_header_map_pairs",
            status,
        }),
    }
}

/// Replaces a whole map in one host call: cheaper than one call per edit once there are more
/// than a couple (each call crosses the Wasm boundary). Envoy only for a read map written
/// back (see [`apply_edits`]): on Kong the write stops at the first pseudo-header it cannot set.
pub fn set_headers(map: Map, fields: &[(&[u8], &[u8])]) -> Result<(), HostError> {
    set_encoded_headers(map, &crate::header_pairs::encode(fields))
}

/// [`set_headers`] for pairs already in the ABI's encoding.
fn set_encoded_headers(map: Map, encoded: &[u8]) -> Result<(), HostError> {
    // SAFETY: pointer to a live buffer.
    let status =
        unsafe { abi::proxy_set_header_map_pairs(map as u32, encoded.as_ptr(), encoded.len()) };
    check("proxy_set_header_map_pairs", status)
}

/// Applies edits to a map whose current pairs are `snapshot`: one call per edit when there are
/// few, else the edited snapshot written back at once. `Err` carries the first refused edit
/// (the others are still tried); each caller decides whether that is fatal.
pub fn apply_edits<'a>(
    map: Map,
    snapshot: &[(&'a [u8], &'a [u8])],
    edits: &'a [crate::header_pairs::Edit<'a>],
) -> Result<(), HostError> {
    // Envoy's set_header_map_pairs removes every header and adds each back: for a ~10-header
    // request, three edits one by one cost Envoy 8,600 fewer instructions than the whole map
    // (auth's warm path, `just bench --instructions`); each edit costs ~3,000.
    const ONE_BY_ONE: usize = 6;
    // Never on Kong. ngx_wasm_module clears the map, then sets the pairs in order and stops at
    // the first read-only pseudo-header (`:scheme` and `:authority` have no setter, nor
    // `:status` before Kong 3.7): every header after it is lost, and the call still answers Ok
    // (`ngx_proxy_wasm_maps_set_all`). A snapshot Kong cut at 100 pairs would lose the rest.
    if edits.len() > ONE_BY_ONE && !is_kong() {
        let mut fields = snapshot.to_vec();
        for edit in edits {
            edit.apply_to(&mut fields);
        }
        return set_headers(map, &fields);
    }
    apply_edits_one_by_one(map, edits)
}

/// Applies edits with one host call each (no snapshot of the map needed); `Err` carries the
/// first refused edit, the others are still tried.
pub fn apply_edits_one_by_one<'r, 'e: 'r>(
    map: Map,
    edits: impl IntoIterator<Item = &'r crate::header_pairs::Edit<'e>>,
) -> Result<(), HostError> {
    let mut first_error = Ok(());
    for edit in edits {
        let result = apply_edit(map, edit);
        if first_error.is_ok() {
            first_error = result;
        }
    }
    first_error
}

/// Applies one edit with one host call.
pub fn apply_edit(map: Map, edit: &crate::header_pairs::Edit<'_>) -> Result<(), HostError> {
    use crate::header_pairs::Edit;
    match edit {
        Edit::Set(name, value) => set_header(map, name, value),
        Edit::Add(name, value) => add_header(map, name, value),
        Edit::Remove(name) => remove_header(map, name),
    }
}

/// For plugins whose header edits are best effort: logs a refused edit and goes on.
pub fn warn_if_refused(plugin: &str, result: Result<(), HostError>) {
    if let Err(err) = result {
        log::warn!("[{plugin}] header edits refused by the host: {err}");
    }
}

/// Sets a header, replacing any value it had.
pub fn set_header(map: Map, name: &str, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: pointers to live slices.
    let status = unsafe {
        abi::proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    check("proxy_replace_header_map_value", status)
}

/// Adds a header value, keeping those it had. On Kong a request header nginx keeps as a single
/// field (`authorization`, `content-type`, `user-agent`...) cannot get a second value: adding
/// one that is there, or was there and was removed, does nothing and still answers Ok
/// (`ngx_http_wasm_set_builtin_header_handler`), so it is set instead (docs/kong-proxy-wasm.md,
/// fact 19).
pub fn add_header(map: Map, name: &str, value: &[u8]) -> Result<(), HostError> {
    if kong_single_field(map, name) && is_kong() {
        return set_header(map, name, value);
    }
    // SAFETY: pointers to live slices.
    let status = unsafe {
        abi::proxy_add_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    check("proxy_add_header_map_value", status)
}

/// Is `name` a request header nginx keeps as a single field on Kong (see [`add_header`])?
/// The request headers ngx_wasm_module sets through nginx's own field for each
/// (`ngx_http_wasm_headers_request.c`, handler `ngx_http_wasm_set_builtin_header_handler` and
/// its wrappers, every pin; the WebDAV ones are not in Kong's build). Response fields are left
/// alone: whether nginx holds one depends on how its upstream module copied the response
/// (`WWW-Authenticate`, say, is copied without its field), so an add is sent as an add there.
/// Asked on every add, on both hosts: a match on the lower-case name, no allocation unless it
/// has capitals.
pub fn kong_single_field(map: Map, name: &str) -> bool {
    if map != Map::RequestHeaders {
        return false;
    }
    let lower;
    let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        lower = name.to_ascii_lowercase();
        lower.as_str()
    } else {
        name
    };
    matches!(
        name,
        "accept-encoding"
            | "authorization"
            | "connection"
            | "content-length"
            | "content-type"
            | "expect"
            | "host"
            | "if-match"
            | "if-modified-since"
            | "if-none-match"
            | "if-range"
            | "if-unmodified-since"
            | "keep-alive"
            | "range"
            | "referer"
            | "transfer-encoding"
            | "upgrade"
            | "user-agent"
            | "via"
            | "x-real-ip"
    )
}

/// Removes every value of a header; removing an absent header succeeds.
pub fn remove_header(map: Map, name: &str) -> Result<(), HostError> {
    // SAFETY: pointer to a live slice.
    let status =
        unsafe { abi::proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) };
    match status {
        abi::OK | abi::NOT_FOUND => Ok(()),
        status => Err(HostError {
            call: "proxy_remove_header_map_value",
            status,
        }),
    }
}

/// A host property (`["request", "path"]`, `["source", "address"]`, ...) as raw bytes, or
/// `None` when the host has no value for it.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
    let mut encoded = Vec::new();
    for segment in path {
        encoded.extend_from_slice(segment.as_bytes());
        encoded.push(0);
    }
    encoded.pop();
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: as in `header`.
    let status =
        unsafe { abi::proxy_get_property(encoded.as_ptr(), encoded.len(), &mut data, &mut size) };
    match status {
        abi::OK => Ok(Some(unsafe { abi::take(data, size) })),
        abi::NOT_FOUND | abi::EMPTY => Ok(None),
        status => Err(HostError {
            call: "proxy_get_property",
            status,
        }),
    }
}

/// The plugin's configuration bytes; empty when none was given.
pub fn plugin_configuration() -> Result<Vec<u8>, HostError> {
    const PLUGIN_CONFIGURATION: u32 = 7;
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: as in `header`.
    let status = unsafe {
        abi::proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, usize::MAX, &mut data, &mut size)
    };
    match status {
        abi::OK => Ok(unsafe { abi::take(data, size) }),
        abi::NOT_FOUND | abi::EMPTY => Ok(Vec::new()),
        status => Err(HostError {
            call: "proxy_get_buffer_bytes",
            status,
        }),
    }
}

/// The host's wall clock in nanoseconds since the Unix epoch, the same for every worker.
fn now_nanos() -> Result<u64, HostError> {
    let mut nanos = 0u64;
    // SAFETY: pointer to a local.
    check("proxy_get_current_time_nanoseconds", unsafe {
        abi::proxy_get_current_time_nanoseconds(&mut nanos)
    })?;
    Ok(nanos)
}

/// The host's wall clock, the same for every worker.
pub fn now() -> Result<SystemTime, HostError> {
    now_nanos().map(|nanos| UNIX_EPOCH + Duration::from_nanos(nanos))
}

/// The host's wall clock in nanoseconds since the Unix epoch, as the host gives it: for
/// request paths that count in nanoseconds anyway (no `SystemTime` round trip, whose 128-bit
/// arithmetic costs more than the call). A failing host clock reads as 0, the epoch, as in
/// [`HostClock`].
pub fn unix_nanos() -> u64 {
    now_nanos().unwrap_or(0)
}

/// The host's clock as a [`crate::clock::Clock`]. A failing host clock reads as the epoch, which
/// every time-based check treats as "long ago" (tokens expired, windows elapsed).
#[derive(Debug, Default, Clone, Copy)]
pub struct HostClock;

impl crate::clock::Clock for HostClock {
    fn now(&self) -> SystemTime {
        now().unwrap_or(UNIX_EPOCH)
    }
}

/// Answers the request locally with the kit's JSON error body, as `plugin`'s refusal (see
/// [`send_refusal`]). The caller then returns `Action::Pause` from its callback.
pub fn send_error(
    plugin: &str,
    reply: &ErrorReply,
    request_id: Option<&str>,
) -> Result<(), HostError> {
    send_error_as(plugin, reply, request_id, Sent::Reply)
}

/// How a local reply goes out.
#[derive(Clone, Copy, PartialEq)]
enum Sent {
    Reply,
    /// From a response callback, in place of the upstream's response: on Kong its headers are
    /// replaced by the reply's first (see [`send_error_over_response`]).
    OverResponse,
}

fn send_error_as(
    plugin: &str,
    reply: &ErrorReply,
    request_id: Option<&str>,
    sent: Sent,
) -> Result<(), HostError> {
    let mut headers: Vec<(&str, &str)> = vec![("content-type", CONTENT_TYPE)];
    headers.extend(reply.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    send_refusal_as(
        plugin,
        &reply.error,
        reply.status,
        &headers,
        &reply.body(request_id),
        sent,
    )
}

/// [`send_error`] from a response callback, in place of the upstream's response. There
/// ngx_wasm_module (Kong 3.7+) takes only the reply's status and body and keeps the upstream's
/// headers (its `set-cookie`, its `content-type`), so on Kong the response's headers are first
/// replaced by the reply's (docs/kong-proxy-wasm.md, fact 20).
pub fn send_error_over_response(
    plugin: &str,
    reply: &ErrorReply,
    request_id: Option<&str>,
) -> Result<(), HostError> {
    send_error_as(plugin, reply, request_id, Sent::OverResponse)
}

/// Answers the request locally as `plugin`'s refusal for `reason`, recorded for palisade-audit
/// and the proxy's logs. Envoy keeps it as the response code details
/// (`palisade-auth{missing_token}`, [`crate::reply::denial_details`]). Kong has no details, so
/// there it goes in the [`crate::reply::DENIED_BY`] header, which palisade-audit strips: Kong
/// runs every filter's response phase on a local reply. Envoy runs only the filters between
/// the one replying and the client, so a header would reach the client there.
pub fn send_refusal(
    plugin: &str,
    reason: &str,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), HostError> {
    send_refusal_as(plugin, reason, status, headers, body, Sent::Reply)
}

fn send_refusal_as(
    plugin: &str,
    reason: &str,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    sent: Sent,
) -> Result<(), HostError> {
    if is_kong() {
        let denied_by = crate::reply::denied_by(plugin, reason);
        let mut headers = headers.to_vec();
        headers.push((crate::reply::DENIED_BY, &denied_by));
        return send_local_as(status, &headers, body, KONG_DETAILS, sent);
    }
    let details = crate::reply::denial_details(plugin, reason);
    send_local(status, headers, body, &details)
}

/// The details a local reply gets on Kong: none. ngx_wasm_module makes them the status line's
/// reason phrase (`HTTP/1.1 401 palisade-auth{missing_token}`,
/// `ngx_http_wasm_local_response.c`), which would show the client why it was refused; empty,
/// nginx writes the standard one.
const KONG_DETAILS: &str = "";

thread_local! {
    static ON_KONG: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Is the host Kong's ngx_wasm_module? Asked once per VM: only Kong answers `ngx.*`
/// properties (any nginx variable; `$hostname` always exists), Envoy answers NotFound. Outside
/// a request (root context) Kong refuses every dotted property with InternalFailure ("cannot
/// get scoped properties outside of a request", logged once), where Envoy still answers
/// NotFound: that is Kong too.
pub fn is_kong() -> bool {
    ON_KONG.with(|known| {
        known.get().unwrap_or_else(|| {
            let kong = match property(&["ngx", "hostname"]) {
                Ok(found) => found.is_some(),
                Err(err) => err.status == abi::INTERNAL_FAILURE,
            };
            known.set(Some(kong));
            kong
        })
    })
}

/// Whether this is Kong at `major.minor` or later (asked in a request: `kong.version`, from
/// Kong 3.6; an older Kong, or Envoy, is not).
pub fn kong_version_at_least(major: u32, minor: u32) -> bool {
    property(&["kong", "version"])
        .ok()
        .flatten()
        .is_some_and(|v| crate::route_name::kong_version_at_least(&v, major, minor))
}

/// Where this host's request maps hold the client's Host (see [`ClientHost`]). Ask it in a
/// request: in the root context Kong answers the probe with an `[error]` log line per VM (it
/// still reads as Kong); after the first request it is a remembered answer.
///
/// [`ClientHost`]: crate::header_pairs::ClientHost
pub fn client_host() -> crate::header_pairs::ClientHost {
    if is_kong() {
        crate::header_pairs::ClientHost::HostHeader
    } else {
        crate::header_pairs::ClientHost::Authority
    }
}

/// Answers the request locally with this status, headers and body (not a refusal: a redirect,
/// a preflight). The caller then returns `Action::Pause` from its callback.
pub fn send_reply(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostError> {
    // Shows as the response code details in Envoy's access log; a reason phrase on Kong.
    let details = if is_kong() {
        KONG_DETAILS
    } else {
        "palisade_local_reply"
    };
    send_local(status, headers, body, details)
}

fn send_local(
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    details: &str,
) -> Result<(), HostError> {
    send_local_as(status, headers, body, details, Sent::Reply)
}

fn send_local_as(
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    details: &str,
    sent: Sent,
) -> Result<(), HostError> {
    let pairs: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(name, value)| (name.as_bytes(), value.as_bytes()))
        .collect();
    let headers = crate::header_pairs::encode(&pairs);
    if sent == Sent::OverResponse {
        set_encoded_headers(Map::ResponseHeaders, &headers)?;
    }
    // SAFETY: pointers to live buffers.
    let status = unsafe {
        abi::proxy_send_local_response(
            u32::from(status),
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    };
    check("proxy_send_local_response", status)
}

/// 32 bytes from the host's entropy (WASI `random_get`, which Envoy and Kong both provide), to
/// seed a [`crate::random::Xoshiro256`] once per VM. Should the host refuse, the clock seeds
/// it instead: ids stay unique per VM in practice, just guessable.
pub fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    if getrandom::fill(&mut seed).is_err() {
        log::warn!("host entropy unavailable; seeding from the clock");
        let nanos = now()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        for (byte, nano) in seed.iter_mut().zip(nanos.to_le_bytes().iter().cycle()) {
            *byte = *nano;
        }
    }
    seed
}
