//! The proxy-wasm adapter: glue only. The request's headers are read once, the
//! [`Authenticator`] decides, and its edits or refusal are applied here; metrics are counted
//! here too. Nothing of the token or the headers is ever logged.

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use palisade_kit::config::{ConfigError, Problems};
use palisade_kit::header_pairs::{decode_borrowed, get, Fields};
use palisade_kit::host::metrics::Counter;
use palisade_kit::host::{self, Map, Plugin};
use palisade_kit::reply::ErrorReply;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::AuthConfig;
use crate::engine::{Authenticator, InlineKeys, Verdict};
use crate::rejection::Rejection;

const NAME: &str = "palisade-auth";

struct AuthPlugin;

/// Counters by provider (and by reason for denials), defined once per VM. Index
/// `providers.len()` stands for "no provider" (a token that never named a known one).
struct Metrics {
    allowed: Vec<Counter>,
    anonymous: Counter,
    /// `denied[provider][reason]`, reasons in [`Rejection::LABELS`] order.
    denied: Vec<Vec<Counter>>,
}

impl Metrics {
    fn define(engine: &Authenticator) -> Self {
        let mut names: Vec<&str> = engine.providers().iter().map(|p| p.name.as_str()).collect();
        names.push("none");
        Self {
            allowed: names
                .iter()
                .map(|p| Counter::define(&format!("palisade_auth.allowed.{p}")))
                .collect(),
            anonymous: Counter::define("palisade_auth.anonymous"),
            denied: names
                .iter()
                .map(|p| {
                    Rejection::LABELS
                        .iter()
                        .map(|reason| {
                            Counter::define(&format!("palisade_auth.denied.{p}.{reason}"))
                        })
                        .collect()
                })
                .collect(),
        }
    }

    fn denied(&self, provider: Option<usize>, rejection: &Rejection) {
        let row = provider
            .and_then(|p| self.denied.get(p))
            .or_else(|| self.denied.last());
        let column = Rejection::LABELS
            .iter()
            .position(|label| *label == rejection.label());
        if let Some(counter) = row.zip(column).and_then(|(row, c)| row.get(c)) {
            counter.inc();
        }
    }
}

struct Worker {
    engine: Authenticator,
    metrics: Option<Metrics>,
}

impl Plugin for AuthPlugin {
    const NAME: &'static str = NAME;
    type Config = AuthConfig;
    type Engine = Worker;

    fn compile(config: AuthConfig) -> Result<Worker, ConfigError> {
        let mut problems = Problems::default();
        let engine = Authenticator::build(&config, &mut problems);
        problems.into_result()?;
        let metrics = config.metrics.then(|| Metrics::define(&engine));
        Ok(Worker { engine, metrics })
    }

    fn http_context(worker: Rc<Worker>, _context_id: u32) -> Box<dyn HttpContext> {
        Box::new(Stream { worker })
    }
}

struct Stream {
    worker: Rc<Worker>,
}

fn fields(raw: &[u8]) -> Fields<'_> {
    decode_borrowed(raw).unwrap_or_else(|| {
        log::warn!("[{NAME}] the host returned a malformed header map");
        Fields::new()
    })
}

fn refuse(reply: &ErrorReply, headers: &Fields<'_>) -> Action {
    let request_id = get(headers, "x-request-id").and_then(|id| std::str::from_utf8(id).ok());
    match host::send_error(reply, request_id) {
        Ok(()) => Action::Pause,
        Err(err) => {
            // Failing closed when the host will not even send the refusal: the request must
            // not reach the upstream unauthenticated, so it stays paused.
            log::error!("[{NAME}] could not send a {} reply: {err}", reply.status);
            Action::Pause
        }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let raw = match host::headers_raw(Map::RequestHeaders) {
            Ok(raw) => raw,
            Err(err) => {
                log::error!("[{NAME}] could not read the request headers: {err}");
                return refuse(
                    &ErrorReply::new(503, "request headers unavailable"),
                    &Fields::new(),
                );
            }
        };
        let headers = fields(&raw);
        // A clock the host cannot read would make every token look current: refuse instead.
        let now = match host::now().map(|t| t.duration_since(UNIX_EPOCH)) {
            Ok(Ok(since)) => since.as_secs(),
            _ => {
                log::error!("[{NAME}] the host clock is unavailable; refusing");
                return refuse(&ErrorReply::new(503, "clock unavailable"), &headers);
            }
        };
        let worker = Rc::clone(&self.worker);
        let metrics = worker.metrics.as_ref();
        match worker.engine.authenticate(&headers, now, &InlineKeys) {
            Verdict::Allow(allowed) => {
                if let Some(counter) = metrics.and_then(|m| m.allowed.get(allowed.provider)) {
                    counter.inc();
                }
                host::apply_edits(Map::RequestHeaders, &headers, &allowed.edits);
                Action::Continue
            }
            Verdict::Anonymous(edits) => {
                if let Some(metrics) = metrics {
                    metrics.anonymous.inc();
                }
                host::apply_edits(Map::RequestHeaders, &headers, &edits);
                Action::Continue
            }
            Verdict::Deny {
                provider,
                rejection,
            } => {
                if let Some(metrics) = metrics {
                    metrics.denied(provider, &rejection);
                }
                refuse(&rejection.reply(), &headers)
            }
        }
    }
}

proxy_wasm::main! {{
    host::start::<AuthPlugin>();
}}
