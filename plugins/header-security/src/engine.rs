//! Everything palisade-header-security decides, host-free: the adapter hands it header
//! snapshots and applies the edits or the local reply it returns.

use palisade_kit::config::Problems;
use std::borrow::Cow;
use std::rc::Rc;

use palisade_kit::header_pairs::{get as header, ClientHost, Edit};
use palisade_kit::random::Xoshiro256;
use palisade_kit::reply::{ErrorReply, CONTENT_TYPE};

use crate::config::{HeaderSecurityConfig, RequestIdConfig, TraceContextConfig};
use crate::cors::{CorsDecision, CorsPolicy};
use crate::limits::{LimitExceeded, RequestLimits};
use crate::request_id::{self, RequestId};
use crate::security_headers::SecurityHeaders;
use crate::transform::{Direction, Transforms, Variables};

/// Values only the host knows, read when a transform needs them.
pub trait HostValues {
    fn client_address(&mut self) -> Option<String>;
    fn route(&mut self) -> Option<String>;
}

struct Vars<'a> {
    request_id: Option<&'a str>,
    host: &'a mut dyn HostValues,
}

impl Variables for Vars<'_> {
    fn request_id(&mut self) -> Option<String> {
        self.request_id.map(str::to_owned)
    }
    fn client_address(&mut self) -> Option<String> {
        self.host.client_address()
    }
    fn route(&mut self) -> Option<String> {
        self.host.route()
    }
}

/// What one stream carries from the request to the response.
#[derive(Debug, Default)]
pub struct StreamState {
    request_id: RequestId,
    /// The allowed origin of a CORS request, echoed on the response.
    cors_origin: Option<Rc<str>>,
    /// A CORS request from an origin that is not allowed: the upstream's own CORS headers are
    /// taken off its response.
    cors_refused: bool,
    body_bytes: u64,
    /// The request asked for a tunnel (an `upgrade` header, or CONNECT); see [`Tunnel`].
    tunnel_asked: Option<Tunnel>,
    /// The upstream opened it (a WebSocket's 101, a CONNECT's 2xx): what the client sends now
    /// is the tunnel's traffic, not a body, and is not counted.
    tunnel: bool,
    /// This plugin answered the request itself, with every header already on the reply.
    replied: bool,
}

/// A tunnel a request asks for. Envoy hands its traffic to the filter as request body once
/// the upstream opens it: past `max_body_bytes` in all, a healthy long-lived WebSocket would be
/// cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnel {
    /// An `upgrade` header (HTTP/1.1; Envoy gives HTTP/2 and 3 WebSockets the same form):
    /// open on 101.
    Upgrade,
    /// CONNECT: open on 2xx. (The adapter does not ask: CONNECT tunnels count as bodies.)
    Connect,
}

impl StreamState {
    /// The request id kept or generated for this stream.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_str()
    }

    /// The request asks for a tunnel (its headers said so).
    pub fn ask_tunnel(&mut self, tunnel: Tunnel) {
        self.tunnel_asked = Some(tunnel);
    }

    /// The tunnel asked for, if any: the response's status then decides ([`Self::answered`]).
    pub fn tunnel_asked(&self) -> Option<Tunnel> {
        self.tunnel_asked
    }

    /// The response's status, for a stream that asked for a tunnel.
    pub fn answered(&mut self, status: &[u8]) {
        self.tunnel = match self.tunnel_asked {
            Some(Tunnel::Upgrade) => status == b"101",
            Some(Tunnel::Connect) => status.first() == Some(&b'2'),
            None => false,
        };
    }
}

/// A response made here instead of by the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Why the request was refused (the body's `error`), `None` for a preflight's answer: the
    /// host records it as this plugin's refusal (`palisade_kit::host::send_refusal`).
    pub refused: Option<String>,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestVerdict<'a> {
    Continue(RequestEdits<'a>),
    Reply(LocalReply),
}

/// The edits to a request that goes on, in order. They borrow from the configuration and the
/// stream where they can: the commonest, a generated request id, costs no allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestEdits<'a> {
    request_id: Option<Edit<'a>>,
    others: Vec<Edit<'a>>,
}

impl<'a> RequestEdits<'a> {
    pub fn iter(&self) -> impl Iterator<Item = &Edit<'a>> {
        self.request_id.iter().chain(&self.others)
    }

    pub fn is_empty(&self) -> bool {
        self.request_id.is_none() && self.others.is_empty()
    }

    pub fn to_vec(&self) -> Vec<Edit<'a>> {
        self.iter().cloned().collect()
    }
}

impl<'r, 'a> IntoIterator for &'r RequestEdits<'a> {
    type Item = &'r Edit<'a>;
    type IntoIter =
        std::iter::Chain<std::option::Iter<'r, Edit<'a>>, std::slice::Iter<'r, Edit<'a>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.request_id.iter().chain(self.others.iter())
    }
}

/// At most this many request headers are looked up one by one; a configuration that needs
/// more reads the whole map.
const MAX_LOOKUPS: usize = 10;

/// The request headers [`HeaderSecurity::lookup_request_headers`] found. Most requests have
/// at most two of them (a request id, a CORS request's `Origin`): those are kept inline, and
/// nothing is allocated for the list unless more are found.
#[derive(Debug, Default)]
pub struct Lookups<'e> {
    first: Option<(&'e str, Vec<u8>)>,
    second: Option<(&'e str, Vec<u8>)>,
    more: Vec<(&'e str, Vec<u8>)>,
}

impl<'e> Lookups<'e> {
    fn push(&mut self, name: &'e str, value: Vec<u8>) {
        if self.first.is_none() {
            self.first = Some((name, value));
        } else if self.second.is_none() {
            self.second = Some((name, value));
        } else {
            self.more.push((name, value));
        }
    }

    /// Each header found, with its value, in the order asked.
    pub fn found(&self) -> impl Iterator<Item = &(&'e str, Vec<u8>)> {
        self.first.iter().chain(&self.second).chain(&self.more)
    }

    fn value(&self, name: &str) -> Option<&[u8]> {
        let is = |entry: &&(&str, Vec<u8>)| entry.0 == name;
        let found = self.first.as_ref().filter(is);
        let found = found.or_else(|| self.second.as_ref().filter(is));
        found
            .or_else(|| self.more.iter().find(is))
            .map(|(_, value)| value.as_slice())
    }

    /// Hands what was found to `decide` as header fields (for
    /// [`HeaderSecurity::on_request_headers`]).
    pub fn with_fields<R>(&self, decide: impl FnOnce(&[(&[u8], &[u8])]) -> R) -> R {
        match (&self.first, &self.second, self.more.is_empty()) {
            (None, _, _) => return decide(&[]),
            (Some((name, value)), None, _) => return decide(&[(name.as_bytes(), value)]),
            (Some((name, value)), Some((second, second_value)), true) => {
                return decide(&[(name.as_bytes(), value), (second.as_bytes(), second_value)])
            }
            _ => {}
        }
        let mut fields: [(&[u8], &[u8]); MAX_LOOKUPS] = [(&[], &[]); MAX_LOOKUPS];
        let mut len = 0;
        for (name, value) in self.found() {
            if let Some(field) = fields.get_mut(len) {
                *field = (name.as_bytes(), value);
                len += 1;
            }
        }
        decide(fields.get(..len).unwrap_or_default())
    }
}

/// The request headers a CORS request is decided on, read only once it has an `Origin`.
const CORS_REQUEST_HEADERS: [&str; 3] = [
    ":method",
    "access-control-request-method",
    "access-control-request-headers",
];

/// CORS adds `Origin` to `Vary` wherever the answer depends on the origin.
const VARY_ORIGIN: Edit<'static> = Edit::Add(Cow::Borrowed("vary"), Cow::Borrowed(b"Origin"));
/// The CORS headers a browser grants access by. The plugin owns them when CORS is configured:
/// an upstream's own (Express `cors({credentials: true})`, a framework's `*`) would otherwise
/// grant what the policy does not, such as credentials to an origin allowed without them.
const REMOVE_ALLOW_ORIGIN: Edit<'static> =
    Edit::Remove(Cow::Borrowed("access-control-allow-origin"));
const REMOVE_ALLOW_CREDENTIALS: Edit<'static> =
    Edit::Remove(Cow::Borrowed("access-control-allow-credentials"));

/// Which response headers [`HeaderSecurity::on_response_headers`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseReads {
    /// None: its edits are blind.
    Nothing,
    /// `Vary` alone (CORS adds `Origin` to it unless already there).
    Vary,
    /// Every header (a response transform renames one).
    All,
}

/// palisade-header-security's compiled configuration and its decisions.
#[derive(Debug, Clone)]
pub struct HeaderSecurity {
    /// The request headers the decisions read, when not all of them: each is one host call,
    /// cheaper than the whole map (which the host serialises and copies into the VM).
    request_header_names: Option<Vec<String>>,
    security: SecurityHeaders,
    /// The security headers' edits to every response, made once here: a response hands them
    /// to the host as they are.
    security_edits: Vec<Edit<'static>>,
    cors: Option<CorsPolicy>,
    /// The CORS headers after `Access-Control-Allow-Origin` on a response to an allowed origin.
    cors_edits: Vec<Edit<'static>>,
    limits: RequestLimits,
    request_transforms: Transforms,
    response_transforms: Transforms,
    request_id: RequestIdConfig,
    trace: TraceContextConfig,
}

impl HeaderSecurity {
    /// Compiles the configuration, recording every problem (for Envoy's request maps).
    pub fn build(config: &HeaderSecurityConfig, problems: &mut Problems) -> Self {
        Self::build_for(config, ClientHost::default, problems)
    }

    /// [`Self::build`] for a host whose request maps hold the client's Host where
    /// `client_host` says, asked per request (`host::client_host`).
    pub fn build_for(
        config: &HeaderSecurityConfig,
        client_host: fn() -> ClientHost,
        problems: &mut Problems,
    ) -> Self {
        let cors = config
            .cors
            .as_ref()
            .map(|cors| problems.field("cors", |p| CorsPolicy::build(cors, p)));
        let limits = problems.field("limits", |p| {
            RequestLimits::build(&config.limits, p).reading_host_from(client_host)
        });
        let (request_transforms, response_transforms) = problems.field("transforms", |p| {
            (
                p.field("request", |p| {
                    Transforms::build(&config.transforms.request, Direction::Request, p)
                }),
                p.field("response", |p| {
                    Transforms::build(&config.transforms.response, Direction::Response, p)
                }),
            )
        });
        problems.field("request_id", |p| {
            if !palisade_kit::config::is_header_name(&config.request_id.header) {
                p.push_at(
                    "header",
                    format!(
                        "{:?} is not a lower-case HTTP header name",
                        config.request_id.header
                    ),
                );
            }
        });
        problems.field("trace_context", |p| {
            if !(0.0..=1.0).contains(&config.trace_context.sampling_rate) {
                p.push_at("sampling_rate", "must be between 0 and 1");
            }
        });
        let request_header_names = (!limits.needs_all_headers()
            && !request_transforms.reads_headers())
        .then(|| {
            let mut names = vec![config.request_id.header.clone()];
            if config.trace_context.create {
                names.push("traceparent".to_owned());
            }
            names.extend(limits.header_names().map(str::to_owned));
            if cors.is_some() {
                names.push("origin".to_owned());
            }
            let mut unique: Vec<String> = Vec::with_capacity(names.len());
            for name in names {
                if !unique.contains(&name) {
                    unique.push(name);
                }
            }
            unique
        })
        // The CORS request headers may come on top.
        .filter(|names| {
            let host = usize::from(!config.limits.allowed_hosts.is_empty());
            names.len() + host + CORS_REQUEST_HEADERS.len() <= MAX_LOOKUPS
        });
        let security = SecurityHeaders::new(&config.security_headers);
        let security_edits = security
            .remove
            .iter()
            .map(|name| Edit::Remove(Cow::Owned(name.clone())))
            .chain(security.set.iter().map(|(name, value)| {
                Edit::Set(
                    Cow::Owned(name.clone()),
                    Cow::Owned(value.clone().into_bytes()),
                )
            }))
            .collect();
        let cors_edits = cors
            .iter()
            .flat_map(CorsPolicy::response_headers_after_origin)
            .map(|(name, value)| {
                Edit::Set(Cow::Borrowed(name), Cow::Owned(value.as_bytes().to_vec()))
            })
            .chain(
                cors.as_ref()
                    .filter(|cors| !cors.allows_credentials())
                    .map(|_| REMOVE_ALLOW_CREDENTIALS),
            )
            .collect();
        Self {
            request_header_names,
            security,
            security_edits,
            cors,
            cors_edits,
            limits,
            request_transforms,
            response_transforms,
            request_id: config.request_id.clone(),
            trace: config.trace_context.clone(),
        }
    }

    /// Reads the request headers [`Self::on_request_headers`] needs through `get` (one host
    /// call per name; both hosts answer a repeated header's first value), or `None` when it needs
    /// the whole map. The CORS headers are asked for only when the request has an `Origin`.
    pub fn lookup_request_headers(
        &self,
        mut get: impl FnMut(&str) -> Option<Vec<u8>>,
    ) -> Option<Lookups<'_>> {
        let names = self.request_header_names.as_ref()?;
        let mut found = Lookups::default();
        for name in names {
            if let Some(value) = get(name) {
                found.push(name.as_str(), value);
            }
        }
        if let Some(name) = self.limits.host_name() {
            if let Some(value) = get(name) {
                found.push(name, value);
            }
        }
        if self.cors.is_none() || found.value("origin").is_none() {
            return Some(found);
        }
        // A CORS request is a preflight only with an `Access-Control-Request-Method` and the
        // method `OPTIONS`, and only a preflight's answer uses the requested headers: each is
        // asked for only when the one before says it can matter (an absent header is the
        // cheapest call).
        let [method, request_method, request_headers] = CORS_REQUEST_HEADERS;
        let mut ask = |name: &'static str, found: &mut Lookups<'_>| {
            // Unless asked already.
            if found.value(name).is_none() && names.iter().all(|known| known != name) {
                if let Some(value) = get(name) {
                    found.push(name, value);
                }
            }
        };
        ask(request_method, &mut found);
        if found.value(request_method).is_some_and(|m| !m.is_empty()) {
            ask(method, &mut found);
            if found.value(method) == Some(b"OPTIONS") {
                ask(request_headers, &mut found);
            }
        }
        Some(found)
    }

    /// Decides on the request headers: the whole map, or what
    /// [`Self::lookup_request_headers`] found. The edits borrow from the configuration and
    /// from the stream's state (a generated request id). `complete` is false for a whole map the
    /// host may have cut short (Kong hands over at most 100 pairs): a check that needs every
    /// header then refuses the request (431), since what it cannot see it cannot pass.
    pub fn on_request_headers<'a>(
        &'a self,
        headers: &[(&[u8], &[u8])],
        complete: bool,
        rng: &mut Xoshiro256,
        host: &mut dyn HostValues,
        state: &'a mut StreamState,
    ) -> RequestVerdict<'a> {
        // The id comes first: every reply, including refusals, carries it.
        // An id refused with `generate` off stays on the request: on Envoy the connection
        // manager chose to keep it (an internal caller, `preserve_external_request_id`), and
        // its access log and tracing read it there. This stream just does not echo it.
        let incoming =
            header(headers, &self.request_id.header).filter(|id| request_id::is_acceptable_id(id));
        let generated = incoming.is_none() && self.request_id.generate;
        match incoming {
            Some(id) => state.request_id.set(id),
            None if generated => state.request_id.generate(rng),
            None => state.request_id.clear(),
        }

        // The request's own limits (host allowlist, header count and size, control
        // characters) come before CORS: a preflight to a host that is not served is refused,
        // not answered. Only the method allowlist waits, since a preflight's `OPTIONS` need not
        // be an allowed method. An actual request's allowed origin is known first, so that a
        // refusal carries the CORS headers a browser needs to show the page its error.
        let cors = self.cors.as_ref().map(|cors| {
            cors.on_request(
                header(headers, ":method").unwrap_or_default(),
                header(headers, "origin"),
                header(headers, "access-control-request-method"),
                header(headers, "access-control-request-headers"),
            )
        });
        if let Some(CorsDecision::Forward { allowed_origin }) = &cors {
            state.cors_origin.clone_from(allowed_origin);
            state.cors_refused = allowed_origin.is_none();
        }
        let answering_preflight = matches!(
            cors,
            Some(CorsDecision::AnswerPreflight(_) | CorsDecision::RejectPreflight)
        );
        if !complete && self.limits.needs_all_headers() {
            return RequestVerdict::Reply(self.refusal(state, &LimitExceeded::TooManyHeaders));
        }
        if let Err(exceeded) = self.limits.check_headers(headers, answering_preflight) {
            return RequestVerdict::Reply(self.refusal(state, &exceeded));
        }
        match cors {
            Some(CorsDecision::AnswerPreflight(cors_headers)) => {
                let mut reply = self.reply_headers(state);
                reply.extend(cors_headers.into_iter().map(|(n, v)| (n.to_owned(), v)));
                state.replied = true;
                return RequestVerdict::Reply(LocalReply {
                    status: 204,
                    headers: reply,
                    body: Vec::new(),
                    refused: None,
                });
            }
            Some(CorsDecision::RejectPreflight) => {
                return RequestVerdict::Reply(
                    self.error(state, &ErrorReply::new(403, "origin not allowed")),
                );
            }
            Some(CorsDecision::Forward { .. } | CorsDecision::NotCors) | None => {}
        }

        let state: &'a StreamState = state;
        let mut edits = RequestEdits::default();
        if let (true, Some(id)) = (generated, state.request_id.get()) {
            edits.request_id = Some(Edit::Set(
                Cow::Borrowed(self.request_id.header.as_str()),
                Cow::Borrowed(id),
            ));
        }
        if self.trace.create {
            match header(headers, "traceparent") {
                Some(value) if request_id::is_valid_traceparent(value) => {}
                _ => {
                    let mut random = [0u8; 24];
                    rng.fill(&mut random);
                    let sampled = request_id::is_sampled(rng.next_u32(), self.trace.sampling_rate);
                    let traceparent = request_id::new_traceparent(random, sampled);
                    edits.others.push(Edit::Set(
                        Cow::Borrowed("traceparent"),
                        Cow::Owned(traceparent.to_vec()),
                    ));
                    // A tracestate without a valid traceparent MUST be discarded (W3C Trace
                    // Context, 4.2): it belongs to no trace, or to the one being replaced.
                    // Removed blind unless the whole map was read.
                    let whole_map = self.request_header_names.is_none() && complete;
                    if !whole_map || header(headers, "tracestate").is_some() {
                        edits.others.push(Edit::Remove(Cow::Borrowed("tracestate")));
                    }
                }
            }
        }

        if !self.request_transforms.is_empty() {
            let mut vars = Vars {
                request_id: state.request_id(),
                host,
            };
            edits
                .others
                .extend(self.request_transforms.apply(headers, &mut vars));
        }
        RequestVerdict::Continue(edits)
    }

    /// Counts a chunk of a streamed request body; an open tunnel's traffic is no body.
    pub fn on_request_body(&self, state: &mut StreamState, chunk_len: usize) -> Option<LocalReply> {
        if state.replied || state.tunnel {
            return None;
        }
        let mut total = state.body_bytes;
        let result = self.limits.check_body(&mut total, chunk_len);
        state.body_bytes = total;
        result.err().map(|exceeded| self.refusal(state, &exceeded))
    }

    /// The edits to the response headers, collected; [`Self::for_each_response_edit`] hands
    /// them over one at a time instead.
    pub fn on_response_headers<'a>(
        &'a self,
        state: &'a StreamState,
        headers: &[(&[u8], &[u8])],
        host: &mut dyn HostValues,
    ) -> Vec<Edit<'a>> {
        let mut edits = Vec::new();
        self.for_each_response_edit(state, headers, host, |edit| edits.push(edit.clone()));
        edits
    }

    /// Hands each edit to the response headers to `apply`, in order, without collecting them:
    /// the same on every response are made at configure time, the others borrow from the
    /// stream, so a response costs no allocation unless a transform builds a value.
    pub fn for_each_response_edit<'a>(
        &'a self,
        state: &'a StreamState,
        headers: &[(&[u8], &[u8])],
        host: &mut dyn HostValues,
        mut apply: impl FnMut(&Edit<'a>),
    ) {
        if state.replied {
            // Our own reply already carries every header.
            return;
        }
        let set =
            |name: &'a str, value: &'a [u8]| Edit::Set(Cow::Borrowed(name), Cow::Borrowed(value));
        self.security_edits.iter().for_each(&mut apply);
        if let (true, Some(id)) = (self.request_id.echo, state.request_id.get()) {
            apply(&set(&self.request_id.header, id));
        }
        if self.cors.is_some() {
            if let Some(origin) = &state.cors_origin {
                apply(&set("access-control-allow-origin", origin.as_bytes()));
                self.cors_edits.iter().for_each(&mut apply);
            } else if state.cors_refused {
                apply(&REMOVE_ALLOW_ORIGIN);
                apply(&REMOVE_ALLOW_CREDENTIALS);
            }
            if !varies_by_origin(headers) {
                apply(&VARY_ORIGIN);
            }
        }
        if !self.response_transforms.is_empty() {
            let mut vars = Vars {
                request_id: state.request_id(),
                host,
            };
            self.response_transforms
                .apply(headers, &mut vars)
                .iter()
                .for_each(apply);
        }
    }

    /// Which response headers [`Self::on_response_headers`] looks at for this stream; the
    /// adapter reads no more than that from the host.
    pub fn response_reads(&self, state: &StreamState) -> ResponseReads {
        if state.replied {
            ResponseReads::Nothing
        } else if self.response_transforms.reads_headers() {
            ResponseReads::All
        } else if self.cors.is_some() {
            ResponseReads::Vary
        } else {
            ResponseReads::Nothing
        }
    }

    /// Headers every response gets: security headers, the request id, CORS for an allowed
    /// origin.
    fn response_headers(&self, state: &StreamState) -> Vec<(String, String)> {
        let mut headers = self.reply_headers(state);
        if let (Some(cors), Some(origin)) = (&self.cors, &state.cors_origin) {
            headers.extend(
                cors.response_headers(origin)
                    .into_iter()
                    .map(|(n, v)| (n.to_owned(), v)),
            );
        }
        headers
    }

    fn reply_headers(&self, state: &StreamState) -> Vec<(String, String)> {
        let mut headers = self.security.set.clone();
        if let (true, Some(id)) = (self.request_id.echo, state.request_id()) {
            headers.push((self.request_id.header.clone(), id.to_owned()));
        }
        headers
    }

    /// 431 for a request whose headers the host cannot hand over whole (Kong past its cap,
    /// `host::whole_map_readable`), when a check needs more than a few of them by name.
    pub fn too_many_headers(&self, state: &mut StreamState) -> LocalReply {
        self.refusal(state, &LimitExceeded::TooManyHeaders)
    }

    fn refusal(&self, state: &mut StreamState, exceeded: &LimitExceeded) -> LocalReply {
        let mut reply = ErrorReply::new(exceeded.status(), exceeded.reason());
        if let LimitExceeded::MethodNotAllowed(allow) = exceeded {
            reply = reply.with_header("allow", allow.clone());
        }
        self.error(state, &reply)
    }

    /// A refusal with the kit's JSON body; CORS headers included so a browser can read it.
    fn error(&self, state: &mut StreamState, reply: &ErrorReply) -> LocalReply {
        state.replied = true;
        let mut headers = vec![("content-type".to_owned(), CONTENT_TYPE.to_owned())];
        headers.extend(self.response_headers(state));
        headers.extend(reply.headers.iter().cloned());
        if self.cors.is_some() {
            headers.push(("vary".to_owned(), "Origin".to_owned()));
        }
        LocalReply {
            status: reply.status,
            headers,
            body: reply.body(state.request_id()),
            refused: Some(reply.error.clone()),
        }
    }
}

/// Does the response already vary by origin (or by everything)?
fn varies_by_origin(headers: &[(&[u8], &[u8])]) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"vary"))
        .any(|(_, v)| {
            v.split(|&b| b == b',')
                .map(|t| t.trim_ascii())
                .any(|t| t == b"*" || t.eq_ignore_ascii_case(b"origin"))
        })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use palisade_kit::config::load;
    use palisade_kit::header_pairs::{borrow, Pairs};

    struct NoHost;
    impl HostValues for NoHost {
        fn client_address(&mut self) -> Option<String> {
            Some("192.0.2.7".into())
        }
        fn route(&mut self) -> Option<String> {
            Some("orders".into())
        }
    }

    fn engine(json: &str) -> HeaderSecurity {
        let config: HeaderSecurityConfig = load(json.as_bytes()).unwrap();
        let mut problems = Problems::default();
        let engine = HeaderSecurity::build(&config, &mut problems);
        problems.into_result().unwrap();
        engine
    }

    fn request(extra: &[(&str, &str)]) -> Pairs {
        let mut headers: Pairs = vec![
            (b":method".to_vec(), b"GET".to_vec()),
            (b":path".to_vec(), b"/orders".to_vec()),
            (b":authority".to_vec(), b"api.example.com".to_vec()),
        ];
        for (n, v) in extra {
            if let Some(existing) = headers.iter_mut().find(|(name, _)| name == n.as_bytes()) {
                existing.1 = v.as_bytes().to_vec();
            } else {
                headers.push((n.as_bytes().to_vec(), v.as_bytes().to_vec()));
            }
        }
        headers
    }

    /// The verdict with its edits copied out, so that the state they borrow from is free.
    fn owned(verdict: RequestVerdict<'_>) -> RequestVerdict<'static> {
        fn own(edit: Edit<'_>) -> Edit<'static> {
            let name = |name: Cow<'_, str>| Cow::Owned(name.into_owned());
            match edit {
                Edit::Set(n, v) => Edit::Set(name(n), Cow::Owned(v.into_owned())),
                Edit::Add(n, v) => Edit::Add(name(n), Cow::Owned(v.into_owned())),
                Edit::Remove(n) => Edit::Remove(name(n)),
            }
        }
        match verdict {
            RequestVerdict::Reply(reply) => RequestVerdict::Reply(reply),
            RequestVerdict::Continue(edits) => RequestVerdict::Continue(RequestEdits {
                request_id: edits.request_id.map(own),
                others: edits.others.into_iter().map(own).collect(),
            }),
        }
    }

    fn run(engine: &HeaderSecurity, headers: &Pairs) -> (RequestVerdict<'static>, StreamState) {
        let mut state = StreamState::default();
        let mut rng = Xoshiro256::from_seed([3; 32]);
        let verdict = owned(engine.on_request_headers(
            &borrow(headers),
            true,
            &mut rng,
            &mut NoHost,
            &mut state,
        ));
        (verdict, state)
    }

    fn set_value<'a>(
        edits: impl IntoIterator<Item = &'a Edit<'a>>,
        name: &str,
    ) -> Option<&'a [u8]> {
        edits.into_iter().find_map(|e| match e {
            Edit::Set(n, v) if n == name => Some(v.as_ref()),
            _ => None,
        })
    }

    #[test]
    fn generates_request_id_and_trace_and_echoes_the_id() {
        let e = engine("{}");
        let (verdict, state) = run(&e, &request(&[]));
        let RequestVerdict::Continue(edits) = verdict else {
            panic!("{verdict:?}")
        };
        let id = String::from_utf8(set_value(&edits, "x-request-id").unwrap().to_vec()).unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        let traceparent = set_value(&edits, "traceparent").unwrap();
        assert!(request_id::is_valid_traceparent(traceparent));
        let response = e.on_response_headers(&state, &[], &mut NoHost);
        assert!(response.contains(&Edit::Set("x-request-id".into(), id.into_bytes().into())));
        assert!(response.contains(&Edit::Remove("server".into())));
        assert!(response.contains(&Edit::Set(
            "x-content-type-options".into(),
            b"nosniff".to_vec().into()
        )));
    }

    #[test]
    fn keeps_a_plain_request_id_and_a_valid_traceparent() {
        let e = engine("{}");
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (verdict, _) = run(
            &e,
            &request(&[("x-request-id", "abc-123"), ("traceparent", tp)]),
        );
        assert_eq!(verdict, RequestVerdict::Continue(RequestEdits::default()));
    }

    #[test]
    fn replaces_a_hostile_request_id_and_an_invalid_traceparent() {
        let e = engine("{}");
        let (verdict, state) = run(
            &e,
            &request(&[
                ("x-request-id", "a b\tc"),
                ("traceparent", "garbage"),
                ("tracestate", "k=v"),
            ]),
        );
        let RequestVerdict::Continue(edits) = verdict else {
            panic!()
        };
        assert_ne!(set_value(&edits, "x-request-id"), Some(&b"a b\tc"[..]));
        assert!(set_value(&edits, "traceparent").is_some());
        assert!(edits.to_vec().contains(&Edit::Remove("tracestate".into())));
        assert_eq!(state.request_id().map(str::len), Some(36));
    }

    #[test]
    fn a_tracestate_without_a_traceparent_is_discarded() {
        let remove = Edit::Remove("tracestate".into());
        // Headers looked up by name: removed blind, since its absence was not seen.
        let looked_up = engine("{}");
        let (verdict, _) = run(&looked_up, &request(&[("tracestate", "k=v")]));
        let RequestVerdict::Continue(edits) = verdict else {
            panic!()
        };
        assert!(edits.to_vec().contains(&remove));
        // The whole map read: removed only when it is there.
        let whole = engine(r#"{"limits":{"max_header_count":50}}"#);
        for (headers, removed) in [(&[("tracestate", "k=v")][..], true), (&[][..], false)] {
            let (verdict, _) = run(&whole, &request(headers));
            let RequestVerdict::Continue(edits) = verdict else {
                panic!()
            };
            assert_eq!(edits.to_vec().contains(&remove), removed, "{headers:?}");
            assert!(set_value(&edits, "traceparent").is_some());
        }
        // A valid traceparent keeps its tracestate.
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (verdict, _) = run(
            &looked_up,
            &request(&[("traceparent", tp), ("tracestate", "k=v")]),
        );
        let RequestVerdict::Continue(edits) = verdict else {
            panic!()
        };
        assert!(!edits.to_vec().contains(&remove));
    }

    #[test]
    fn sampling_rate_is_honoured() {
        let e = engine(r#"{"trace_context":{"sampling_rate":0.1}}"#);
        let mut rng = Xoshiro256::from_seed([9; 32]);
        let sampled = (0..2000)
            .filter(|_| {
                let mut state = StreamState::default();
                let RequestVerdict::Continue(edits) = e.on_request_headers(
                    &borrow(&request(&[])),
                    true,
                    &mut rng,
                    &mut NoHost,
                    &mut state,
                ) else {
                    panic!()
                };
                set_value(&edits, "traceparent").unwrap().ends_with(b"-01")
            })
            .count();
        assert!(
            (140..=260).contains(&sampled),
            "{sampled} of 2000 sampled at 10%"
        );
    }

    /// What `lookup_request_headers` asks the host for, and what it found.
    fn lookups(e: &HeaderSecurity, headers: &Pairs) -> (Vec<String>, Option<Pairs>) {
        let mut asked = Vec::new();
        let found = e.lookup_request_headers(|name| {
            asked.push(name.to_owned());
            header(&borrow(headers), name).map(<[u8]>::to_vec)
        });
        let found = found.map(|f| {
            f.found()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.clone()))
                .collect()
        });
        (asked, found)
    }

    #[test]
    fn reads_only_the_request_headers_its_checks_need() {
        let (asked, found) = lookups(&engine("{}"), &request(&[("x-request-id", "r-1")]));
        assert_eq!(asked, ["x-request-id", "traceparent", "content-length"]);
        assert_eq!(
            found,
            Some(vec![(b"x-request-id".to_vec(), b"r-1".to_vec())])
        );

        // CORS reads the origin, and the rest of a CORS request only when it has one.
        let cors = engine(CORS);
        let (asked, _) = lookups(&cors, &request(&[]));
        assert_eq!(
            asked,
            [
                "x-request-id",
                "traceparent",
                "content-length",
                ":method",
                "origin"
            ]
        );
        let preflight = request(&[
            (":method", "OPTIONS"),
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
        ]);
        let (asked, found) = lookups(&cors, &preflight);
        assert_eq!(
            asked,
            [
                "x-request-id",
                "traceparent",
                "content-length",
                ":method",
                "origin",
                "access-control-request-method",
                "access-control-request-headers"
            ]
        );
        // Deciding on what was found is deciding on the whole map.
        let (whole, _) = run(&cors, &preflight);
        let (partial, _) = run(&cors, &found.unwrap());
        assert_eq!(whole, partial);

        // A stricter limit or a rename needs every header.
        for json in [
            r#"{"limits":{"max_header_count":20}}"#,
            r#"{"transforms":{"request":[{"rename":{"from":"x-a","to":"x-b"}}]}}"#,
        ] {
            let (asked, found) = lookups(&engine(json), &request(&[]));
            assert!(asked.is_empty() && found.is_none(), "{json}");
        }
    }

    #[test]
    fn response_reads_follow_the_configuration() {
        let state = StreamState::default();
        assert_eq!(engine("{}").response_reads(&state), ResponseReads::Nothing);
        assert_eq!(engine(CORS).response_reads(&state), ResponseReads::Vary);
        assert_eq!(
            engine(r#"{"transforms":{"response":[{"set":{"name":"x-a","value":"1"}}]}}"#)
                .response_reads(&state),
            ResponseReads::Nothing
        );
        assert_eq!(
            engine(r#"{"transforms":{"response":[{"rename":{"from":"x-a","to":"x-b"}}]}}"#)
                .response_reads(&state),
            ResponseReads::All
        );
        // A reply of our own already carries every header: nothing to read.
        let e = engine(r#"{"limits":{"allowed_methods":["GET"]}}"#);
        let (_, replied) = run(&e, &request(&[(":method", "PUT")]));
        assert_eq!(
            engine(CORS).response_reads(&replied),
            ResponseReads::Nothing
        );
    }

    #[test]
    fn refusals_carry_the_json_body_request_id_and_security_headers() {
        let e = engine(r#"{"limits":{"allowed_methods":["GET"]}}"#);
        let (verdict, state) = run(
            &e,
            &request(&[(":method", "DELETE"), ("x-request-id", "r-1")]),
        );
        let RequestVerdict::Reply(reply) = verdict else {
            panic!()
        };
        assert_eq!(reply.status, 405);
        assert_eq!(
            String::from_utf8(reply.body).unwrap(),
            r#"{"error":"method not allowed","status":405,"request_id":"r-1"}"#
        );
        assert!(reply.headers.contains(&("allow".into(), "GET".into())));
        assert!(reply
            .headers
            .contains(&("content-type".into(), "application/json".into())));
        assert!(reply
            .headers
            .contains(&("x-request-id".into(), "r-1".into())));
        assert!(reply
            .headers
            .contains(&("x-frame-options".into(), "DENY".into())));
        // What the host records as this plugin's refusal, for palisade-audit.
        assert_eq!(reply.refused.as_deref(), Some("method not allowed"));
        // The host may run the response phase on our own reply: nothing is added twice.
        assert!(e.on_response_headers(&state, &[], &mut NoHost).is_empty());
    }

    #[test]
    fn streamed_body_over_the_limit_is_refused_once() {
        let e = engine(r#"{"limits":{"max_body_bytes":10}}"#);
        let (_, mut state) = run(&e, &request(&[]));
        assert_eq!(e.on_request_body(&mut state, 10), None);
        let reply = e.on_request_body(&mut state, 1).unwrap();
        assert_eq!(reply.status, 413);
        assert_eq!(e.on_request_body(&mut state, 1), None);
    }

    #[test]
    fn an_open_tunnels_traffic_is_not_a_body() {
        let e = engine(r#"{"limits":{"max_body_bytes":10}}"#);
        for (tunnel, status, open) in [
            (Tunnel::Upgrade, &b"101"[..], true),
            (Tunnel::Upgrade, b"200", false),
            (Tunnel::Upgrade, b"", false),
            (Tunnel::Connect, b"200", true),
            (Tunnel::Connect, b"403", false),
        ] {
            let (_, mut state) = run(&e, &request(&[]));
            state.ask_tunnel(tunnel);
            assert_eq!(e.on_request_body(&mut state, 10), None);
            state.answered(status);
            let counted = e.on_request_body(&mut state, usize::MAX).is_some();
            assert_eq!(counted, !open, "{tunnel:?} {status:?}");
        }
        // Without asking for one, a 101 opens nothing.
        let (_, mut state) = run(&e, &request(&[]));
        state.answered(b"101");
        assert!(e.on_request_body(&mut state, 11).is_some());
    }

    const CORS: &str = r#"{"cors":{"allow_origins":[{"exact":"https://app.example.com"}],"allow_methods":["GET","POST"],
        "allow_headers":["authorization"],"expose_headers":["x-request-id"],"max_age":"1h","allow_credentials":true},
        "limits":{"allowed_methods":["GET","POST"]}}"#;

    #[test]
    fn preflight_is_answered_before_method_limits() {
        let e = engine(CORS);
        let (verdict, _) = run(
            &e,
            &request(&[
                (":method", "OPTIONS"),
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
            ]),
        );
        let RequestVerdict::Reply(reply) = verdict else {
            panic!("{verdict:?}")
        };
        assert_eq!(reply.status, 204);
        assert!(reply.body.is_empty());
        for expected in [
            ("access-control-allow-origin", "https://app.example.com"),
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-methods", "GET, POST"),
            ("access-control-allow-headers", "authorization"),
            ("access-control-max-age", "3600"),
            ("vary", "Origin"),
            ("x-content-type-options", "nosniff"),
        ] {
            assert!(
                reply
                    .headers
                    .contains(&(expected.0.into(), expected.1.into())),
                "{expected:?} in {:?}",
                reply.headers
            );
        }
    }

    /// A refusal of an allowed origin's request carries the CORS headers: without them the
    /// browser hides the JSON error from the page behind an opaque network error.
    #[test]
    fn refusals_of_an_allowed_origin_carry_its_cors_headers() {
        let e = engine(CORS);
        for (method, extra, status) in [
            ("DELETE", None, 405),
            ("POST", Some(("content-length", "x")), 400),
        ] {
            let mut headers = vec![(":method", method), ("origin", "https://app.example.com")];
            headers.extend(extra);
            let (verdict, _) = run(&e, &request(&headers));
            let RequestVerdict::Reply(reply) = verdict else {
                panic!("{verdict:?}")
            };
            assert_eq!(reply.status, status);
            assert!(
                reply.headers.contains(&(
                    "access-control-allow-origin".into(),
                    "https://app.example.com".into()
                )),
                "{method}: {:?}",
                reply.headers
            );
        }
    }

    #[test]
    fn preflight_to_a_host_not_served_is_refused_not_answered() {
        let e = engine(
            r#"{"cors":{"allow_origins":[{"exact":"https://app.example.com"}],"allow_methods":["GET"]},
            "limits":{"allowed_hosts":["api.example.com"],"allowed_methods":["GET"],"max_header_count":2}}"#,
        );
        let preflight = |extra: &[(&str, &str)]| {
            let mut headers = vec![
                (":method", "OPTIONS"),
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
            ];
            headers.extend_from_slice(extra);
            run(&e, &request(&headers)).0
        };
        let status = |verdict: RequestVerdict<'_>| match verdict {
            RequestVerdict::Reply(reply) => (reply.status, reply.refused),
            other => panic!("{other:?}"),
        };
        // Served host: answered, though OPTIONS is not an allowed method.
        assert_eq!(status(preflight(&[])), (204, None));
        assert_eq!(
            status(preflight(&[(":authority", "internal.example.com")])),
            (403, Some("host not allowed".to_owned()))
        );
        assert_eq!(
            status(preflight(&[("x-a", "1")])),
            (431, Some("too many request headers".to_owned()))
        );
        // Not a preflight (no Access-Control-Request-Method): the method allowlist applies.
        let plain_options = run(
            &e,
            &request(&[
                (":method", "OPTIONS"),
                ("origin", "https://app.example.com"),
            ]),
        );
        assert_eq!(
            status(plain_options.0),
            (405, Some("method not allowed".to_owned()))
        );
    }

    #[test]
    fn cors_response_headers_for_allowed_origins_only() {
        let e = engine(CORS);
        let (_, state) = run(&e, &request(&[("origin", "https://app.example.com")]));
        let edits = e.on_response_headers(&state, &[], &mut NoHost);
        assert!(edits.contains(&Edit::Set(
            "access-control-allow-origin".into(),
            b"https://app.example.com".to_vec().into()
        )));
        assert!(edits.contains(&Edit::Set(
            "access-control-expose-headers".into(),
            b"x-request-id".to_vec().into()
        )));
        assert!(edits.contains(&Edit::Add("vary".into(), b"Origin".to_vec().into())));

        let (_, state) = run(&e, &request(&[("origin", "https://evil.com")]));
        let edits = e.on_response_headers(&state, &[], &mut NoHost);
        assert!(!edits
            .iter()
            .any(|e| matches!(e, Edit::Set(n, _) if n.starts_with("access-control"))));
        assert!(edits.contains(&Edit::Add("vary".into(), b"Origin".to_vec().into())));

        // An upstream that already varies by origin is left alone.
        let varying: Vec<(&[u8], &[u8])> = vec![(b"Vary", b"Accept-Encoding, origin")];
        assert!(!e
            .on_response_headers(&state, &varying, &mut NoHost)
            .iter()
            .any(|e| matches!(e, Edit::Add(n, _) if n == "vary")));
    }

    fn is_cors_removal(edit: &Edit<'_>) -> bool {
        matches!(edit, Edit::Remove(name) if name.starts_with("access-control"))
    }

    /// The plugin owns the CORS headers: an upstream's own cannot grant credentials the policy
    /// does not, nor any access to an origin it refuses.
    #[test]
    fn the_upstreams_cors_headers_never_grant_more_than_the_policy() {
        let remove = |name: &'static str| Edit::Remove(name.into());
        let e = engine(r#"{"cors":{"allow_origins":[{"exact":"*"}]}}"#);
        let (_, state) = run(&e, &request(&[("origin", "https://evil.com")]));
        let edits = e.on_response_headers(&state, &[], &mut NoHost);
        assert!(edits.contains(&remove("access-control-allow-credentials")));

        let e = engine(CORS);
        let (_, state) = run(&e, &request(&[("origin", "https://evil.com")]));
        let edits = e.on_response_headers(&state, &[], &mut NoHost);
        assert!(edits.contains(&remove("access-control-allow-origin")));
        assert!(edits.contains(&remove("access-control-allow-credentials")));
        // Allowed with credentials: the plugin's own `true` is set, nothing removed.
        let (_, state) = run(&e, &request(&[("origin", "https://app.example.com")]));
        let edits = e.on_response_headers(&state, &[], &mut NoHost);
        assert!(!edits.iter().any(is_cors_removal), "{edits:?}");
        // Not a CORS request: the upstream's headers are its business.
        let (_, state) = run(&e, &request(&[]));
        let edits = e.on_response_headers(&state, &[], &mut NoHost);
        assert!(!edits.iter().any(is_cors_removal), "{edits:?}");
    }

    #[test]
    fn transforms_use_variables() {
        let e = engine(
            r#"{"transforms":{"request":[{"set":{"name":"x-client","value":"${client_address}"}}],
                "response":[{"set":{"name":"x-route","value":"${route}/${request_id}"}}]}}"#,
        );
        let (verdict, state) = run(&e, &request(&[("x-request-id", "r-9")]));
        let RequestVerdict::Continue(edits) = verdict else {
            panic!()
        };
        assert_eq!(set_value(&edits, "x-client"), Some(&b"192.0.2.7"[..]));
        let response = e.on_response_headers(&state, &[], &mut NoHost);
        assert_eq!(set_value(&response, "x-route"), Some(&b"orders/r-9"[..]));
    }

    #[test]
    fn config_problems_from_every_part_are_reported() {
        let err = load::<HeaderSecurityConfig>(
            br#"{"cors":{"allow_origins":[{"regex":"("}]},"limits":{"max_header_count":0},
                "transforms":{"response":[{"remove":"Bad"}]},"request_id":{"header":"X-Id"},
                "trace_context":{"sampling_rate":1.5}}"#,
        )
        .unwrap_err();
        let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "cors.allow_origins[0].regex",
                "limits.max_header_count",
                "transforms.response[0].remove",
                "request_id.header",
                "trace_context.sampling_rate"
            ]
        );
    }
}
