//! The proxy-wasm adapter: glue only. Header maps are read once per phase as bytes, the engine
//! decides, and its edits or local reply are applied here.

use std::cell::RefCell;
use std::rc::Rc;

use palisade_kit::config::{ConfigError, Problems};
use palisade_kit::header_pairs::{decode_borrowed, Fields};
use palisade_kit::host::{self, Map, Plugin};
use palisade_kit::identity;
use palisade_kit::random::Xoshiro256;
use palisade_kit::route_name::RouteName;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::HeaderSecurityConfig;
use crate::engine::{
    HeaderSecurity, HostValues, LocalReply, RequestVerdict, ResponseReads, StreamState, Tunnel,
};

use crate::NAME;

struct HeaderSecurityPlugin;

/// The engine and this VM's random generator (one seed per VM, not per request).
struct Worker {
    engine: HeaderSecurity,
    rng: RefCell<Xoshiro256>,
    route_name: RouteName,
}

impl Plugin for HeaderSecurityPlugin {
    const NAME: &'static str = NAME;
    type Config = HeaderSecurityConfig;
    type Engine = Worker;

    fn compile(config: HeaderSecurityConfig) -> Result<Worker, ConfigError> {
        let mut problems = Problems::default();
        let engine = HeaderSecurity::build_for(&config, host::client_host, &mut problems);
        problems.into_result()?;
        Ok(Worker {
            engine,
            rng: RefCell::new(Xoshiro256::from_seed(host::random_seed())),
            route_name: RouteName::default(),
        })
    }

    fn http_context(worker: Rc<Worker>, _context_id: u32) -> Box<dyn HttpContext> {
        Box::new(Stream {
            worker,
            state: StreamState::default(),
        })
    }
}

struct Stream {
    worker: Rc<Worker>,
    state: StreamState,
}

/// Host values, read only when a transform uses them.
struct Host<'a> {
    route_name: &'a RouteName,
}

impl HostValues for Host<'_> {
    fn client_address(&mut self) -> Option<String> {
        let address = host::property(&["source", "address"]).ok().flatten()?;
        let address = String::from_utf8(address).ok()?;
        Some(strip_port(&address).to_owned())
    }

    fn route(&mut self) -> Option<String> {
        let route = self
            .route_name
            .read(host::is_kong, |path| host::property(path).ok().flatten())?;
        String::from_utf8(route)
            .ok()
            .filter(|route| !route.is_empty())
    }
}

/// `10.0.0.1:5000` -> `10.0.0.1`, `[::1]:5000` -> `::1`; Kong gives the address alone.
fn strip_port(address: &str) -> &str {
    if let Some(v6) = address.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => address,
    }
}

/// One header's value; a header the host cannot read counts as absent (logged).
fn lookup(map: Map, name: &str) -> Option<Vec<u8>> {
    host::header(map, name).unwrap_or_else(|err| {
        log::warn!("[{NAME}] could not read header {name}: {err}");
        None
    })
}

/// The tunnel a request with more to come asks for: an `upgrade` header (Envoy gives HTTP/2
/// and 3 WebSockets the same form). Envoy gives no request header in the body phase, so it is
/// read with the headers, and only for a request not complete there: on Envoy a GET without a
/// body pays nothing, a POST one lookup that misses (Kong 3.7+ says no request is complete
/// there: one lookup each). Kong's filters never see a tunnel's traffic.
fn tunnel_asked(end_of_stream: bool) -> Option<Tunnel> {
    if end_of_stream {
        return None;
    }
    lookup(Map::RequestHeaders, "upgrade")?;
    (!host::is_kong()).then_some(Tunnel::Upgrade)
}

/// A header map as the host's raw answer (decode with [`fields`]); `None` when Kong cannot hand
/// it over whole (`host::whole_map_readable`).
fn read_capped(map: Map, num_headers: usize) -> Option<Vec<u8>> {
    host::headers_raw_capped(map, num_headers).unwrap_or_else(|err| {
        log::warn!("[{NAME}] could not read headers: {err}");
        Some(Vec::new())
    })
}

fn fields(raw: &[u8]) -> Fields<'_> {
    decode_borrowed(raw).unwrap_or_else(|| {
        log::warn!("[{NAME}] the host returned a malformed header map");
        Fields::new()
    })
}

/// A request answered at its headers never reaches palisade-auth, which removes the identity
/// headers (`x-palisade-*`) a client sends; palisade-audit reads the request's headers when the
/// stream ends. Removed here, so the audit trail never names whoever the client claimed to be.
/// Only on a local reply: the whole map is read for it.
fn strip_client_identity(num_headers: usize) {
    let raw = read_capped(Map::RequestHeaders, num_headers);
    let headers = raw.as_deref().map(fields).unwrap_or_default();
    let owned = identity::client_copies(&headers, |_| false);
    host::warn_if_refused(
        NAME,
        host::apply_edits_one_by_one(Map::RequestHeaders, &owned),
    );
    // Past Kong's 100-pair cap the map hides the rest, and palisade-audit reads these by name.
    if raw.is_none() || host::header_map_may_be_truncated(headers.len()) {
        for name in identity::NAMES {
            // Best effort: the request is refused either way.
            let _ = host::remove_header(Map::RequestHeaders, name);
        }
    }
}

/// Where a local reply is sent from.
#[derive(PartialEq)]
enum Phase {
    /// With the header count the callback was given.
    RequestHeaders(usize),
    /// palisade-auth has run by now: the identity headers are its own, for the audit trail.
    RequestBody,
}

fn reply(local: &LocalReply, phase: Phase) -> Action {
    if let Phase::RequestHeaders(num_headers) = phase {
        strip_client_identity(num_headers);
    }
    let headers: Vec<(&str, &str)> = local
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let sent = match &local.refused {
        Some(reason) => host::send_refusal(NAME, reason, local.status, &headers, &local.body),
        None => host::send_reply(local.status, &headers, &local.body),
    };
    match sent {
        Ok(()) => Action::Pause,
        // A refusal the host would not send must not let the request past the check it
        // failed: it stays paused (fail closed, as palisade-auth). A preflight goes on.
        Err(err) if local.refused.is_some() => {
            log::error!("[{NAME}] could not send a {} reply: {err}", local.status);
            Action::Pause
        }
        Err(err) => {
            log::error!("[{NAME}] could not send a {} reply: {err}", local.status);
            Action::Continue
        }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        if let Some(tunnel) = tunnel_asked(end_of_stream) {
            self.state.ask_tunnel(tunnel);
        }
        let worker = Rc::clone(&self.worker);
        let engine = &worker.engine;
        let state = &mut self.state;
        let mut rng = worker.rng.borrow_mut();
        let mut host_values = Host {
            route_name: &worker.route_name,
        };
        // The few headers the configured checks need, one host call each (a missing header
        // costs no copy into the VM); the whole map only when a check needs every header.
        if let Some(found) = engine.lookup_request_headers(|name| lookup(Map::RequestHeaders, name))
        {
            return found.with_fields(|headers| {
                match engine.on_request_headers(headers, true, &mut rng, &mut host_values, state) {
                    // A partial snapshot cannot be written back whole: its edits go one by one.
                    RequestVerdict::Continue(edits) => {
                        host::warn_if_refused(
                            NAME,
                            host::apply_edits_one_by_one(Map::RequestHeaders, &edits),
                        );
                        Action::Continue
                    }
                    RequestVerdict::Reply(local) => {
                        reply(&local, Phase::RequestHeaders(num_headers))
                    }
                }
            });
        }
        // Kong cannot hand this map over whole (`host::whole_map_readable`), and the checks
        // configured need more than a few headers by name: 431, as Envoy answers a request
        // over its default 100 headers.
        let Some(raw) = read_capped(Map::RequestHeaders, num_headers) else {
            let local = engine.too_many_headers(state);
            return reply(&local, Phase::RequestHeaders(num_headers));
        };
        let headers = fields(&raw);
        let complete = !host::header_map_may_be_truncated(headers.len());
        match engine.on_request_headers(&headers, complete, &mut rng, &mut host_values, state) {
            RequestVerdict::Continue(edits) => {
                host::warn_if_refused(
                    NAME,
                    host::apply_edits(Map::RequestHeaders, &headers, &edits.to_vec()),
                );
                Action::Continue
            }
            RequestVerdict::Reply(local) => reply(&local, Phase::RequestHeaders(num_headers)),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        // Returning Continue passes each chunk on, so the host reports only the new bytes.
        match self
            .worker
            .engine
            .on_request_body(&mut self.state, body_size)
        {
            Some(local) => reply(&local, Phase::RequestBody),
            None => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, num_headers: usize, _end_of_stream: bool) -> Action {
        if self.state.tunnel_asked().is_some() {
            let status = lookup(Map::ResponseHeaders, ":status").unwrap_or_default();
            self.state.answered(&status);
        }
        let worker = Rc::clone(&self.worker);
        // Reading the whole map makes the host serialise it and call back into the VM to
        // allocate (the dearest crossing in Envoy's V8): only for a rename. CORS needs `Vary`
        // alone. The edits then go one call each, which are guest-to-host calls only, and
        // cheaper for the host than replacing the map (docs/header-security.md, Performance).
        let reads = worker.engine.response_reads(&self.state);
        let vary = if reads == ResponseReads::Vary {
            lookup(Map::ResponseHeaders, "vary")
        } else {
            None
        };
        // A map Kong cannot hand over whole is left unread: renames see no header then.
        let raw = if reads == ResponseReads::All {
            read_capped(Map::ResponseHeaders, num_headers).unwrap_or_default()
        } else {
            Vec::new()
        };
        let one;
        let all;
        let headers: &[(&[u8], &[u8])] = match &vary {
            Some(value) => {
                one = [(&b"vary"[..], value.as_slice())];
                &one
            }
            None => {
                all = fields(&raw);
                &all
            }
        };
        let mut host_values = Host {
            route_name: &worker.route_name,
        };
        if reads == ResponseReads::All {
            let edits = worker
                .engine
                .on_response_headers(&self.state, headers, &mut host_values);
            host::warn_if_refused(
                NAME,
                host::apply_edits(Map::ResponseHeaders, headers, &edits),
            );
        } else {
            // Each edit goes to the host as it is made: nothing collected.
            let mut result = Ok(());
            worker
                .engine
                .for_each_response_edit(&self.state, headers, &mut host_values, |edit| {
                    let applied = host::apply_edit(Map::ResponseHeaders, edit);
                    if result.is_ok() {
                        result = applied;
                    }
                });
            host::warn_if_refused(NAME, result);
        }
        Action::Continue
    }
}

proxy_wasm::main! {{
    host::start::<HeaderSecurityPlugin>();
}}
