//! The proxy-wasm adapter: glue only. Request values are read from the host when the limiter
//! asks for them, the limiter decides against shared data, and its reply or response headers
//! are applied here.

use std::cell::Cell;
use std::rc::Rc;

use palisade_kit::clock::Clock;
use palisade_kit::config::ConfigError;
use palisade_kit::host::metrics::Counter;
use palisade_kit::host::{self, HostClock, HostStore, Map, Plugin};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::RateLimitConfig;
use crate::key::RequestView;
use crate::limiter::{Decision, RateLimiter, Tallies};

const NAME: &str = "palisade-rate-limit";

struct RateLimitPlugin;

/// One limit's counters.
struct LimitMetrics {
    allowed: Counter,
    limited: Counter,
    store_conflicts: Counter,
    store_failures: Counter,
}

/// The limiter, its metrics, and which host property names the route.
struct Worker {
    limiter: RateLimiter,
    metrics: Vec<LimitMetrics>,
    route_property: Cell<RouteProperty>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RouteProperty {
    Unknown,
    Envoy,
    Kong,
}

impl Plugin for RateLimitPlugin {
    const NAME: &'static str = NAME;
    type Config = RateLimitConfig;
    type Engine = Worker;

    fn compile(config: RateLimitConfig) -> Result<Worker, ConfigError> {
        let limiter = RateLimiter::new(&config);
        // Slots are created before traffic (see `slots`); a store that refuses now will be
        // asked again per request, where the failure mode applies.
        match limiter.prepare(&HostStore) {
            Ok(created) => log::info!("[{NAME}] {created} shared-data slots created"),
            Err(err) => log::warn!("[{NAME}] could not create shared-data slots: {err}"),
        }
        let metrics = if config.metrics {
            limiter
                .limits()
                .iter()
                .map(|limit| {
                    let name = |what: &str| format!("palisade_rate_limit.{}.{what}", limit.name);
                    LimitMetrics {
                        allowed: Counter::define(&name("allowed")),
                        limited: Counter::define(&name("limited")),
                        store_conflicts: Counter::define(&name("store_conflicts")),
                        store_failures: Counter::define(&name("store_failures")),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Worker {
            limiter,
            metrics,
            route_property: Cell::new(RouteProperty::Unknown),
        })
    }

    fn http_context(worker: Rc<Worker>, _context_id: u32) -> Box<dyn HttpContext> {
        Box::new(Stream {
            worker,
            response_headers: Vec::new(),
        })
    }
}

struct Stream {
    worker: Rc<Worker>,
    /// `RateLimit-Policy` and `RateLimit` for the response of an admitted request.
    response_headers: Vec<(String, String)>,
}

/// Request values straight from the host, each asked only when the limiter needs it.
struct HostRequest<'a> {
    route_property: &'a Cell<RouteProperty>,
}

fn property(path: &[&str]) -> Option<Vec<u8>> {
    host::property(path).ok().flatten()
}

impl RequestView for HostRequest<'_> {
    fn header(&mut self, name: &str) -> Option<Vec<u8>> {
        host::header(Map::RequestHeaders, name).ok().flatten()
    }

    fn source_address(&mut self) -> Option<Vec<u8>> {
        property(&["source", "address"])
    }

    fn route_name(&mut self) -> Option<Vec<u8>> {
        // Kong logs an error for each property it lacks: once one answers, only it is asked.
        match self.route_property.get() {
            RouteProperty::Envoy => property(&["xds", "route_name"]),
            RouteProperty::Kong => property(&["kong", "route_name"]),
            RouteProperty::Unknown => {
                if let Some(route) = property(&["xds", "route_name"]) {
                    self.route_property.set(RouteProperty::Envoy);
                    Some(route)
                } else if let Some(route) = property(&["kong", "route_name"]) {
                    self.route_property.set(RouteProperty::Kong);
                    Some(route)
                } else {
                    None
                }
            }
        }
    }
}

fn record(metrics: &[LimitMetrics], tallies: &Tallies) {
    for (index, tally) in tallies {
        let Some(m) = metrics.get(*index) else {
            continue;
        };
        if tally.allowed {
            m.allowed.inc();
        }
        if tally.limited {
            m.limited.inc();
        }
        if tally.conflicts > 0 {
            m.store_conflicts.add(u64::from(tally.conflicts));
        }
        if tally.store_failure {
            m.store_failures.inc();
        }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let worker = Rc::clone(&self.worker);
        let mut request = HostRequest {
            route_property: &worker.route_property,
        };
        let (decision, tallies) = worker
            .limiter
            .decide(&mut request, &HostStore, HostClock.now());
        record(&worker.metrics, &tallies);
        match decision {
            Decision::Allow { response_headers } => {
                self.response_headers = response_headers;
                Action::Continue
            }
            Decision::Deny(reply) => {
                let request_id = host::header(Map::RequestHeaders, "x-request-id")
                    .ok()
                    .flatten()
                    .and_then(|id| String::from_utf8(id).ok());
                match host::send_error(&reply, request_id.as_deref()) {
                    Ok(()) => Action::Pause,
                    Err(err) => {
                        log::error!("[{NAME}] could not send a {} reply: {err}", reply.status);
                        Action::Continue
                    }
                }
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            if let Err(err) = host::set_header(Map::ResponseHeaders, &name, value.as_bytes()) {
                log::warn!("[{NAME}] could not add {name}: {err}");
            }
        }
        Action::Continue
    }
}

proxy_wasm::main! {{
    host::start::<RateLimitPlugin>();
}}
