//! The two hosts the plugins run in, and every place their behaviour differs.
//!
//! `Envoy` follows proxy-wasm-cpp-host (the library Envoy links) and Envoy's `Context`.
//! `Kong` follows Kong Gateway's ngx_wasm_module at the pin of each Kong release 3.4–3.10; every
//! fact below comes from /tmp/research/kong-proxy-wasm.md (the research note behind this host),
//! which cites ngx_wasm_module's `docs/PROXY_WASM.md` and sources at each pin. Policy:
//!
//! - a host function ngx_wasm_module does not implement (its table entry is a stub that traps,
//!   `ngx_proxy_wasm_host.c:1903`) fails the test with a [`super::FailureKind::Refused`] naming
//!   the function and the doc;
//! - a property Kong does not support returns NotFound, as Kong does, and is recorded
//!   ([`super::Host::refused_properties`]) so tests can assert on it.

use super::headers::Headers;

/// Which proxy the host behaves like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Envoy,
    Kong(KongVersion),
}

/// A Kong Gateway release, `3.<minor>`, between 3.4 and 3.10.
///
/// 3.4 stands for 3.4.2 (ngx_wasm_module 0.1.1): the `:authority` a dispatch needed on 3.4.0 and
/// 3.4.1 (NWM 0.1.0) is not modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KongVersion {
    minor: u8,
}

impl KongVersion {
    pub const V3_4: Self = Self { minor: 4 };
    pub const V3_5: Self = Self { minor: 5 };
    pub const V3_6: Self = Self { minor: 6 };
    pub const V3_7: Self = Self { minor: 7 };
    pub const V3_8: Self = Self { minor: 8 };
    pub const V3_9: Self = Self { minor: 9 };
    pub const V3_10: Self = Self { minor: 10 };
    pub const ALL: [Self; 7] = [
        Self::V3_4,
        Self::V3_5,
        Self::V3_6,
        Self::V3_7,
        Self::V3_8,
        Self::V3_9,
        Self::V3_10,
    ];

    /// `None` outside 3.4..=3.10, the releases that ship ngx_wasm_module.
    pub fn new(minor: u8) -> Option<Self> {
        (4..=10).contains(&minor).then_some(Self { minor })
    }

    pub fn minor(self) -> u8 {
        self.minor
    }

    fn at_least(self, minor: u8) -> bool {
        self.minor >= minor
    }
}

impl std::fmt::Display for KongVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "3.{}", self.minor)
    }
}

/// How `proxy_set_shared_data` treats its `cas` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasRule {
    /// cpp-host `src/shared_data.cc`: cas 0 overwrites unconditionally, a cas on a missing key
    /// is ignored, one global version counter.
    Envoy,
    /// ngx_wasm_module `ngx_wa_shm_kv.c:279`: cas must equal the stored cas (0 = "must not
    /// exist"), per-key versions from 1, a NULL value pointer deletes.
    Kong,
}

/// What the host does when `on_http_response_headers` returns Pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseHeadersPause {
    /// Envoy: the response waits for `proxy_continue_stream(HttpResponse)`.
    Wait,
    /// Kong 3.4–3.6: `bad "on_response_headers" return action: "PAUSE"`, the client gets 500.
    ServerError,
    /// Kong ≥ 3.7: "local response expected"; without one, a warning and the response goes on.
    LocalResponseExpected,
}

/// What the host does when `on_http_response_body` returns Pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBodyPause {
    /// Envoy, and Kong ≥ 3.6 (commit f813a300): the body is buffered until the plugin continues
    /// (Kong: until the end of the body, a second Pause is ignored).
    Buffer,
    /// Kong 3.4/3.5: `bad "on_response_body" return action: "PAUSE"`; the body goes on.
    Error,
}

/// What a Kong property lookup does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PropertyAccess {
    /// Read it (it may still be absent).
    Allowed,
    /// Kong returns NotFound and logs this line at error level (properties.c).
    Unsupported(String),
    /// Kong: a dotted property outside a request is InternalFailure
    /// ("cannot get scoped properties outside of a request", properties.c:1106-1113).
    OutsideRequest,
}

/// Host functions whose ngx_wasm_module entry is the NYI stub in every Kong release
/// (`ngx_proxy_wasm_hfuncs[]`, ngx_proxy_wasm_host.c:1911-2290; docs/PROXY_WASM.md).
const KONG_NYI: &[&str] = &[
    "proxy_get_log_level",
    "proxy_done",
    "proxy_close_stream",
    "proxy_continue_response",
    "proxy_resume_downstream",
    "proxy_resume_upstream",
    "proxy_resolve_shared_queue",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_get_status",
];

const KONG_METRICS: &[&str] = &[
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
];

const KONG_QUEUES: &[&str] = &[
    "proxy_register_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_dequeue_shared_queue",
];

/// Spec 0.2.1 functions absent from ngx_wasm_module's table: a module importing them does not
/// load ("missing host function", src/wasm/vm/ngx_wavm.c:738).
const KONG_ABSENT: &[&str] = &["proxy_get_buffer_status", "proxy_get_header_map_size"];

/// Properties ngx_wasm_module reads (docs/PROXY_WASM.md "Supported Properties",
/// ngx_proxy_wasm_properties.c:455-666). Prefix entries end with '.'.
const KONG_PROPERTIES: &[&str] = &[
    "request.path",
    "request.url_path",
    "request.host",
    "request.scheme",
    "request.method",
    "request.useragent",
    "request.protocol",
    "request.query",
    "request.id",
    "request.referer",
    "request.time",
    "request.duration",
    "request.size",
    "request.total_size",
    "request.headers.",
    "response.code",
    "response.size",
    "response.total_size",
    "response.headers.",
    "upstream.address",
    "upstream.port",
    "destination.address",
    "destination.port",
    "connection.requested_server_name",
    "connection.tls_version",
    "connection.subject_local_certificate",
    "connection.id",
    "connection.mtls",
    "source.address",
    "source.port",
    "plugin_name",
    "plugin_root_id",
    "ngx.",
];

/// What Kong's filters read as `:authority`: the proxy server's `server_name` (`kong` in Kong's
/// nginx template) and the local port.
pub const KONG_AUTHORITY: &str = "kong:8000";

/// The shm_kv zones the rendered kong.conf defines (manifests/kong/kong.conf): only `palisade`,
/// on every release (`nginx_wasm_shm_kv_palisade`, `nginx_wasm_shm_palisade` on 3.4 and 3.5),
/// and no default zone `*`, which Kong 3.4–3.6 cannot define.
pub const KONG_SHM_KV_ZONES: &[&str] = &["palisade"];

/// Properties ngx_wasm_module lists as NYI (logged `NYI - "<path>" property`).
const KONG_NYI_PROPERTIES: &[&str] = &[
    "response.grpc_status",
    "response.trailers",
    "upstream.tls_version",
    "upstream.local_address",
    "upstream.transport_failure_reason",
    "connection.subject_peer_certificate",
    "connection.sha256_peer_certificate_digest",
    "plugin_vm_id",
];

/// Kong's own `kong.*` getters and setters (kong/runloop/wasm.lua, from Kong 3.6).
const KONG_NAMESPACE: &[&str] = &[
    "kong.client.protocol",
    "kong.nginx.subsystem",
    "kong.node.id",
    "kong.node.memory_stats",
    "kong.request.forwarded_host",
    "kong.request.forwarded_port",
    "kong.request.forwarded_scheme",
    "kong.request.port",
    "kong.response.source",
    "kong.router.route",
    "kong.router.service",
    "kong.route_id",
    "kong.service_id",
    "kong.service.response.status",
    "kong.version",
    "kong.response.status",
    "kong.service.target",
    "kong.service.upstream",
    "kong.service.request.scheme",
    "kong.ctx.shared.",
    "kong.configuration.",
];

fn matches(table: &[&str], path: &str) -> bool {
    table.iter().any(|entry| {
        if entry.ends_with('.') {
            path.starts_with(entry) && path.len() > entry.len()
        } else {
            path == *entry
        }
    })
}

impl Profile {
    /// Kong 3.10, the last release that ships ngx_wasm_module by default.
    pub fn kong() -> Self {
        Self::Kong(KongVersion::V3_10)
    }

    pub fn is_kong(self) -> bool {
        matches!(self, Self::Kong(_))
    }

    fn kong_version(self) -> Option<KongVersion> {
        match self {
            Self::Kong(version) => Some(version),
            Self::Envoy => None,
        }
    }

    /// `Some(message)` when this host does not implement `hostcall`: the call fails the test.
    pub(crate) fn refusal(self, hostcall: &str) -> Option<String> {
        let version = self.kong_version()?;
        let why = if KONG_NYI.contains(&hostcall) {
            "its table entry is the NYI stub, which traps \"host trap (function not yet implemented)\"".to_owned()
        } else if KONG_METRICS.contains(&hostcall) && !version.at_least(8) {
            "metrics arrived in ngx_wasm_module 0.4.0 (commit 75107636), first pinned by Kong 3.8; before, the entry is the NYI stub, which traps".to_owned()
        } else if hostcall == "proxy_call_foreign_function" && !version.at_least(10) {
            "foreign functions arrived in Kong 3.10 (ngx_wasm_module commit 78750ced); before, the entry is the NYI stub, which traps".to_owned()
        } else if KONG_QUEUES.contains(&hostcall) {
            "shared queues need an shm_queue zone, which Kong does not configure and says \"should not be used\" (kong.conf.default:2217-2227); register traps \"could not find queue\"".to_owned()
        } else {
            return None;
        };
        Some(format!(
            "kong profile (Kong {version}): {hostcall} is not implemented by ngx_wasm_module (docs/PROXY_WASM.md, \"Supported Host ABI\"): {why}"
        ))
    }

    /// `Some(message)` when a shared-data call on `key` traps: on Kong, a key `<zone>/<rest>`
    /// lives in the shm_kv zone `<zone>` if one is defined, else in the default zone `*`, and
    /// with neither the call traps "could not resolve namespace" (ngx_wa_shm_kv_resolve_key).
    pub(crate) fn shared_data_refusal(self, hostcall: &str, key: &[u8]) -> Option<String> {
        let version = self.kong_version()?;
        let zone = key.split(|&b| b == b'/').next().unwrap_or_default();
        if key.contains(&b'/') && KONG_SHM_KV_ZONES.iter().any(|z| z.as_bytes() == zone) {
            return None;
        }
        Some(format!(
            "kong profile (Kong {version}): {hostcall} on {:?} traps \"could not resolve namespace\": the rendered kong.conf defines only the shm_kv zone(s) {KONG_SHM_KV_ZONES:?}, and no default zone `*` (which Kong 3.4-3.6 cannot define); a key must start with `<zone>/` (docs/kong-proxy-wasm.md §3)",
            String::from_utf8_lossy(key)
        ))
    }

    /// `Some(message)` when a `proxy_set_shared_data` that would be written corrupts shared
    /// memory: ngx_wasm_module before 0.4.0 (Kong 3.4-3.7) reallocates a node for a longer value
    /// only when the *key* is longer than the old value (`if (n && key->len > n->value.len)` in
    /// `ngx_wasm_shm_kv_set_locked`, prerelease-0.1.0 to 0.3.0; fixed by c0e09edd in 0.4.0),
    /// else it copies the longer value into the old node, past its allocation. Nothing reports
    /// it on Kong: here the call traps.
    pub(crate) fn shared_data_overrun(
        self,
        key: &[u8],
        old_len: usize,
        new_len: usize,
    ) -> Option<String> {
        let version = self.kong_version()?;
        (!version.at_least(8) && new_len > old_len && key.len() <= old_len).then(|| {
            format!(
                "kong profile (Kong {version}): proxy_set_shared_data on {:?} replaces a {old_len}-byte value with {new_len} bytes, and the key is no longer than the old value: ngx_wasm_module before 0.4.0 copies it in place, past the node's allocation (shared-memory corruption; write an empty value first, then the value, docs/kong-proxy-wasm.md fact 12)",
                String::from_utf8_lossy(key)
            )
        })
    }

    /// Whether the host links an import of this name (Kong lacks two spec functions outright).
    pub(crate) fn provides(self, hostcall: &str) -> bool {
        !(self.is_kong() && KONG_ABSENT.contains(&hostcall))
    }

    /// Kong ≥ 3.7 always passes `end_of_stream = false` to the header callbacks
    /// (PROXY_WASM.md "Current Limitations" #1, commit 5f7e19e5).
    pub(crate) fn header_eos(self, eos: bool) -> bool {
        match self.kong_version() {
            Some(version) if version.at_least(7) => false,
            _ => eos,
        }
    }

    /// How many pairs `proxy_get_header_map_pairs` hands over: ngx_wasm_module stops at 100
    /// (`NGX_HTTP_WASM_MAX_REQ_HEADERS`, pseudo-headers first) and logs "marshalled map
    /// truncated to 100 elements"; Envoy hands every one.
    pub(crate) fn header_map_pairs_cap(self) -> usize {
        if self.is_kong() {
            100
        } else {
            usize::MAX
        }
    }

    /// The request map a filter sees for the client's `request`. ngx_wasm_module answers
    /// `:authority` with the nginx server's `server_name` and local port, never the client's
    /// Host (`ngx_proxy_wasm_maps_get_authority`, every pin; Kong's proxy server is
    /// `server_name kong`); the client's Host is the `host` header, which comes first of the
    /// ordinary headers. Pseudo-headers come first in ngx_wasm_module's order
    /// (`ngx_proxy_wasm_maps_special_keys`: `:path`, `:method`, `:scheme`, `:authority`).
    /// Envoy's `:authority` is the client's Host and it has no `host` header.
    pub fn request_map(self, request: &Headers) -> Headers {
        if !self.is_kong() {
            return request.clone();
        }
        let mut pseudo: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut host = Vec::new();
        let mut ordinary = Vec::new();
        for (name, value) in request.pairs() {
            match name.as_slice() {
                b":authority" => {
                    pseudo.push((name.clone(), KONG_AUTHORITY.as_bytes().to_vec()));
                    host.push((b"host".to_vec(), value.clone()));
                }
                b":path" => pseudo.push((name.clone(), kong_path(value))),
                n if n.starts_with(b":") => pseudo.push((name.clone(), value.clone())),
                _ => ordinary.push((name.clone(), value.clone())),
            }
        }
        const ORDER: [&[u8]; 4] = [b":path", b":method", b":scheme", b":authority"];
        pseudo.sort_by_key(|(name, _)| {
            ORDER
                .iter()
                .position(|known| *known == name.as_slice())
                .unwrap_or(ORDER.len())
        });
        pseudo.extend(host);
        pseudo.extend(ordinary);
        Headers::from_pairs(pseudo)
    }

    /// The pseudo-headers of a map that ngx_wasm_module cannot set: `:scheme` and `:authority`
    /// have no setter, nor `:status` before 0.4.0 (Kong 3.8,
    /// `ngx_proxy_wasm_maps_set_response_status`). A whole-map write stops at the first of them
    /// (`ngx_proxy_wasm_maps_set_all`). `None` on Envoy, which sets them all.
    pub(crate) fn read_only_pseudo_headers(
        self,
        map_type: u32,
    ) -> Option<&'static [&'static [u8]]> {
        let version = self.kong_version()?;
        Some(match map_type {
            super::abi::map::REQUEST_HEADERS => &[b":scheme", b":authority"],
            super::abi::map::RESPONSE_HEADERS if !version.at_least(7) => &[b":status"],
            _ => &[],
        })
    }

    /// Whether setting a tick period, with one already set, traps: ngx_wasm_module
    /// (`ngx_proxy_wasm_hfuncs_set_tick_period`) traps "tick_period already set" on any second
    /// call up to 0.4.0 (Kong 3.8), on a second non-zero period from 0.5.0. Envoy resets it.
    pub(crate) fn second_tick_traps(self, period: u32) -> bool {
        self.kong_version()
            .is_some_and(|version| period != 0 || !version.at_least(9))
    }

    /// ngx_wasm_module calls `on_request_body` once, after nginx has read the whole body, with
    /// its full size and end of stream (`ngx_http_proxy_wasm_on_request_body`); Envoy per chunk.
    pub(crate) fn delivers_request_body_whole(self) -> bool {
        self.is_kong()
    }

    /// Kong never calls the trailer callbacks nor `on_queue_ready` (PROXY_WASM.md "Supported
    /// Entrypoints").
    pub(crate) fn calls_trailer_callbacks(self) -> bool {
        !self.is_kong()
    }

    pub fn cas_rule(self) -> CasRule {
        if self.is_kong() {
            CasRule::Kong
        } else {
            CasRule::Envoy
        }
    }

    pub(crate) fn response_headers_pause(self) -> ResponseHeadersPause {
        match self.kong_version() {
            None => ResponseHeadersPause::Wait,
            Some(version) if version.at_least(7) => ResponseHeadersPause::LocalResponseExpected,
            Some(_) => ResponseHeadersPause::ServerError,
        }
    }

    pub(crate) fn response_body_pause(self) -> ResponseBodyPause {
        match self.kong_version() {
            Some(version) if !version.at_least(6) => ResponseBodyPause::Error,
            _ => ResponseBodyPause::Buffer,
        }
    }

    /// Kong ≥ 3.6 traps header edits out of their phase (commit 5553ae05).
    pub(crate) fn enforces_header_phases(self) -> bool {
        self.kong_version().is_some_and(|v| v.at_least(6))
    }

    /// Kong ≥ 3.6 only dispatches from request headers/body, on_tick and on_http_call_response
    /// (commit 5553ae05).
    pub(crate) fn enforces_dispatch_steps(self) -> bool {
        self.kong_version().is_some_and(|v| v.at_least(6))
    }

    /// Kong ≥ 3.9 calls `on_http_call_response(token, 0, 0, 0)` on a failed dispatch (commit
    /// 4c610b49); before, the failure is only logged and the request resumes.
    /// Whether setting `:path` to a value with a `?` sets the query: from ngx_wasm_module
    /// d6ac8f84 (first pinned by Kong 3.9) such a value replaces `r->args` (and only such a
    /// value); before, it traps "NYI - cannot set request path with querystring"
    /// (`ngx_proxy_wasm_maps_set_path`).
    pub(crate) fn sets_path_query(self) -> bool {
        self.kong_version().is_none_or(|v| v.at_least(9))
    }

    pub(crate) fn calls_back_failed_dispatch(self) -> bool {
        self.kong_version().is_none_or(|v| v.at_least(9))
    }

    /// Kong 3.4–3.6 track one call per filter: any answer whose callback dispatched nothing
    /// resumes the request (ngx_wasm_module before 261bd71e, first in Kong 3.7).
    pub(crate) fn tracks_one_call_per_filter(self) -> bool {
        self.kong_version().is_some_and(|v| !v.at_least(7))
    }

    /// Kong 3.4–3.7 answer a request whose dispatch failed with 500 (ngx_wasm_module before
    /// b26106c4, "dispatch errors do not interrupt filter chains", first in Kong 3.8).
    pub(crate) fn fails_request_on_failed_dispatch(self) -> bool {
        self.kong_version().is_some_and(|v| !v.at_least(8))
    }

    /// Kong resumes a request by itself once all its dispatches are done; Envoy waits for
    /// `proxy_continue_stream`.
    pub(crate) fn resumes_after_dispatches(self) -> bool {
        self.is_kong()
    }

    /// `send_local_response` from `on_http_response_headers`: Envoy, and Kong ≥ 3.7 (commit
    /// c81997ee).
    pub(crate) fn local_response_in_response_headers(self) -> bool {
        self.kong_version().is_none_or(|v| v.at_least(7))
    }

    /// Kong validates the local response status (100–999, else BadArgument) and appends `\n`
    /// to its body (ngx_http_wasm_local_response.c).
    pub(crate) fn local_response_rules(self) -> bool {
        self.is_kong()
    }

    /// Whether reading `path` is allowed, in a request (`in_request`) or in the root context.
    pub(crate) fn property_access(self, path: &str, in_request: bool) -> PropertyAccess {
        let Some(version) = self.kong_version() else {
            return PropertyAccess::Allowed;
        };
        if !in_request && path.contains('.') {
            return PropertyAccess::OutsideRequest;
        }
        let kong_getter = path.starts_with("kong.")
            && version.at_least(6)
            && (matches(KONG_NAMESPACE, path)
                || (version.at_least(9)
                    && (path == "kong.route_name" || path == "kong.service_name")));
        let supported = matches(KONG_PROPERTIES, path)
            || kong_getter
            || (path == "request.is_subrequest" && version.at_least(10));
        if supported {
            PropertyAccess::Allowed
        } else if matches(KONG_NYI_PROPERTIES, path)
            || path.starts_with("upstream.") && path.contains("certificate")
            || path.starts_with("connection.dns_san_")
            || path.starts_with("connection.uri_san_")
        {
            PropertyAccess::Unsupported(format!("NYI - \"{path}\" property"))
        } else {
            PropertyAccess::Unsupported(format!("\"{path}\" property not supported"))
        }
    }

    /// Whether `proxy_set_property` may write `path` (Kong: `ngx.*`, `request.query` and its
    /// `kong.*` setters; Envoy stores any path as filter state).
    pub(crate) fn property_writable(self, path: &str) -> bool {
        match self.kong_version() {
            None => true,
            Some(version) => {
                path.starts_with("ngx.")
                    || path == "request.query"
                    || (version.at_least(6)
                        && (matches(
                            &[
                                "kong.response.status",
                                "kong.service.target",
                                "kong.service.upstream",
                                "kong.service.request.scheme",
                                "kong.ctx.shared.",
                            ],
                            path,
                        )))
            }
        }
    }

    /// How an integer property is encoded: Envoy's CEL values are 8-byte little-endian, every
    /// Kong property is a string.
    pub(crate) fn encode_int(self, value: i64) -> Vec<u8> {
        if self.is_kong() {
            value.to_string().into_bytes()
        } else {
            value.to_le_bytes().to_vec()
        }
    }

    /// Booleans: Envoy one byte, Kong `"true"`/`"false"`.
    pub(crate) fn encode_bool(self, value: bool) -> Vec<u8> {
        if self.is_kong() {
            value.to_string().into_bytes()
        } else {
            vec![u8::from(value)]
        }
    }

    pub(crate) fn describe(self) -> String {
        match self {
            Self::Envoy => "envoy".to_owned(),
            Self::Kong(version) => format!("kong {version}"),
        }
    }
}

/// What ngx_wasm_module hands over as `:path`: nginx's `r->uri` (the request target's path,
/// percent-decoded, slashes merged, dot segments resolved: `ngx_http_parse_complex_uri`), then
/// `?` and `r->args` (the raw query) when there is one (`ngx_proxy_wasm_maps_get_path`). A
/// decoded `%3F` is a `?` in the path: nothing tells it from the query's.
pub(crate) fn kong_path(target: &[u8]) -> Vec<u8> {
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(at) => (target.get(..at).unwrap_or_default(), target.get(at + 1..)),
        None => (target, None),
    };
    let mut out = nginx_uri(path);
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        out.push(b'?');
        out.extend_from_slice(query);
    }
    out
}

/// `r->uri` of a request path: every valid `%XX` decoded (`%2F` too), `//` merged, `.` and
/// `..` segments resolved (never above the root).
fn nginx_uri(path: &[u8]) -> Vec<u8> {
    resolve_segments(&percent_decode(path, |_| true))
}

/// The path Kong's router passes upstream (`$upstream_uri`, no `strip_path`): the request
/// target's path normalised as kong/tools/uri.lua `normalize(uri, true)` does: escapes of
/// unreserved characters decoded, other escapes upper-cased, `//` merged, dot segments
/// resolved. A filter's `:path` never changes it.
pub(crate) fn kong_upstream_path(path: &[u8]) -> Vec<u8> {
    resolve_segments(&percent_decode(path, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
    }))
}

/// Valid `%XX` escapes decoded where `decode(byte)`, else kept with upper-case hex.
fn percent_decode(path: &[u8], decode: impl Fn(u8) -> bool) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while let Some(&byte) = path.get(i) {
        match (
            byte,
            path.get(i + 1).copied().and_then(hex),
            path.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                let byte = (hi * 16 + lo) as u8;
                if decode(byte) {
                    decoded.push(byte);
                } else {
                    decoded.extend_from_slice(format!("%{byte:02X}").as_bytes());
                }
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    decoded
}

/// `//` merged and `.`/`..` segments resolved, never above the root.
fn resolve_segments(decoded: &[u8]) -> Vec<u8> {
    let mut segments: Vec<&[u8]> = Vec::new();
    let trailing = decoded.ends_with(b"/") || decoded.ends_with(b"/.") || decoded.ends_with(b"/..");
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for segment in &segments {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if out.is_empty() || (trailing && !segments.is_empty()) {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod kong_path_tests {
    use super::kong_path;

    #[test]
    fn kong_hands_over_the_decoded_normalised_path_and_the_raw_query() {
        for (target, path) in [
            (&b"/orders?page=2"[..], &b"/orders?page=2"[..]),
            (b"/files/a%20b.pdf", b"/files/a b.pdf"),
            (b"//a/./b/../c/", b"/a/c/"),
            (b"/a%2Fb?x=%2F", b"/a/b?x=%2F"),
            (b"/admin/x/%252e%252e/p", b"/admin/x/%2e%2e/p"),
            (b"/x%3Fq=1?api_key=k", b"/x?q=1?api_key=k"),
            (b"/..", b"/"),
            (b"/a?", b"/a"),
        ] {
            assert_eq!(
                kong_path(target),
                path,
                "{}",
                String::from_utf8_lossy(target)
            );
        }
    }

    #[test]
    fn kong_sends_upstream_the_normalised_target() {
        for (target, path) in [
            (&b"/%68ealthz"[..], &b"/healthz"[..]),
            (b"//a/./b/../c", b"/a/c"),
            (b"/a%2fb", b"/a%2Fb"),
            (b"/admin/x/%252e%252e/p", b"/admin/x/%252e%252e/p"),
            (b"/public/%2e%2e/admin", b"/admin"),
        ] {
            assert_eq!(
                super::kong_upstream_path(target),
                path,
                "{}",
                String::from_utf8_lossy(target)
            );
        }
    }
}
