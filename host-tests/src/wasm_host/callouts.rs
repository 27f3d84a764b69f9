//! HTTP and gRPC callouts: what the plugin dispatched, and how the scripted upstreams answer.
//! Answers are delivered by the host's event loop at their virtual time (never re-entrantly
//! inside the dispatching callback), so delays, failures and timeouts are deterministic.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::headers::Headers;

/// How a scripted upstream answers one HTTP dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalloutReply {
    pub(crate) answer: HttpAnswer,
    pub(crate) delay: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HttpAnswer {
    Respond {
        headers: Headers,
        body: Vec<u8>,
        trailers: Headers,
    },
    /// The connection failed (reset, refused, TLS...).
    Fail(String),
    /// Never answers: the call times out.
    Never,
}

impl CalloutReply {
    /// A response with this status, no body, right away.
    pub fn status(status: u16) -> Self {
        Self {
            answer: HttpAnswer::Respond {
                headers: Headers::new().with(":status", status.to_string()),
                body: Vec::new(),
                trailers: Headers::new(),
            },
            delay: Duration::ZERO,
        }
    }

    /// The connection fails with this reason (Kong ≥ 3.9 shows it as `:dispatch_status`).
    pub fn failure(reason: &str) -> Self {
        Self {
            answer: HttpAnswer::Fail(reason.to_owned()),
            delay: Duration::ZERO,
        }
    }

    /// No answer at all: the call times out.
    pub fn never() -> Self {
        Self {
            answer: HttpAnswer::Never,
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        if let HttpAnswer::Respond { headers, .. } = &mut self.answer {
            headers.add(name.as_bytes(), value.as_ref());
        }
        self
    }

    pub fn body(mut self, bytes: impl AsRef<[u8]>) -> Self {
        if let HttpAnswer::Respond { body, .. } = &mut self.answer {
            *body = bytes.as_ref().to_vec();
        }
        self
    }

    pub fn trailer(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        if let HttpAnswer::Respond { trailers, .. } = &mut self.answer {
            trailers.add(name.as_bytes(), value.as_ref());
        }
        self
    }

    /// Answers this long after the dispatch (virtual time).
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// How a scripted gRPC service answers one `proxy_grpc_call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcReply {
    pub(crate) answer: GrpcAnswer,
    pub(crate) delay: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GrpcAnswer {
    /// A response message (`on_grpc_receive`).
    Message(Vec<u8>),
    /// A non-OK status (`on_grpc_close` with it; `proxy_get_status` gives the message).
    Status(u32, String),
    Never,
}

impl GrpcReply {
    pub fn message(bytes: impl AsRef<[u8]>) -> Self {
        Self {
            answer: GrpcAnswer::Message(bytes.as_ref().to_vec()),
            delay: Duration::ZERO,
        }
    }

    /// A failed call: gRPC status code and message.
    pub fn status(code: u32, message: &str) -> Self {
        Self {
            answer: GrpcAnswer::Status(code, message.to_owned()),
            delay: Duration::ZERO,
        }
    }

    pub fn never() -> Self {
        Self {
            answer: GrpcAnswer::Never,
            delay: Duration::ZERO,
        }
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// gRPC's DEADLINE_EXCEEDED, what a timed-out call closes with.
pub const GRPC_DEADLINE_EXCEEDED: u32 = 4;

/// Where a dispatched call stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallState {
    Pending,
    /// Answered with this HTTP status (or gRPC message).
    Answered,
    Failed(String),
    TimedOut,
    Cancelled,
}

/// An HTTP dispatch as the upstream received it.
#[derive(Debug, Clone)]
pub struct HttpCall {
    pub token: u32,
    pub worker: usize,
    pub context_id: u32,
    pub upstream: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    pub timeout: Duration,
    /// Virtual time since the host started.
    pub dispatched_at: Duration,
    pub state: CallState,
}

/// A gRPC call as the service received it.
#[derive(Debug, Clone)]
pub struct GrpcCall {
    pub token: u32,
    pub worker: usize,
    pub context_id: u32,
    pub upstream: String,
    pub service: String,
    pub method: String,
    pub initial_metadata: Headers,
    pub message: Vec<u8>,
    pub timeout: Duration,
    pub dispatched_at: Duration,
    pub state: CallState,
}

/// Calls in flight and their scripted answers.
#[derive(Debug, Default)]
pub(crate) struct Callouts {
    http_scripts: BTreeMap<String, VecDeque<CalloutReply>>,
    grpc_scripts: BTreeMap<String, VecDeque<GrpcReply>>,
    pub(crate) http: BTreeMap<u32, (HttpCall, Option<CalloutReply>)>,
    pub(crate) grpc: BTreeMap<u32, (GrpcCall, Option<GrpcReply>)>,
    next_token: u32,
}

/// What is due for a call at a given time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Due<A> {
    Answer(A),
    Timeout,
}

impl Callouts {
    pub(crate) fn script_http(&mut self, upstream: &str, reply: CalloutReply) {
        self.http_scripts
            .entry(upstream.to_owned())
            .or_default()
            .push_back(reply);
    }

    pub(crate) fn script_grpc(&mut self, upstream: &str, reply: GrpcReply) {
        self.grpc_scripts
            .entry(upstream.to_owned())
            .or_default()
            .push_back(reply);
    }

    pub(crate) fn token(&mut self) -> u32 {
        self.next_token += 1;
        self.next_token
    }

    pub(crate) fn start_http(&mut self, call: HttpCall) {
        let reply = self
            .http_scripts
            .get_mut(&call.upstream)
            .and_then(VecDeque::pop_front);
        self.http.insert(call.token, (call, reply));
    }

    pub(crate) fn start_grpc(&mut self, call: GrpcCall) {
        let reply = self
            .grpc_scripts
            .get_mut(&call.upstream)
            .and_then(VecDeque::pop_front);
        self.grpc.insert(call.token, (call, reply));
    }

    /// Answers a pending call now (plus the reply's delay); `false` if it is not pending.
    pub(crate) fn answer_http(&mut self, token: u32, now: Duration, reply: CalloutReply) -> bool {
        match self.http.get_mut(&token) {
            Some((call, slot)) if call.state == CallState::Pending => {
                // The delay counts from now: shift it by the time already spent.
                let mut reply = reply;
                reply.delay += now.saturating_sub(call.dispatched_at);
                *slot = Some(reply);
                true
            }
            _ => false,
        }
    }

    /// The earliest time something is due for a pending call.
    pub(crate) fn next_due(&self) -> Option<Duration> {
        let http = self
            .http
            .values()
            .filter(|(call, _)| call.state == CallState::Pending)
            .filter_map(|(call, reply)| {
                due_at(
                    call.dispatched_at,
                    call.timeout,
                    reply
                        .as_ref()
                        .map(|r| (r.answer == HttpAnswer::Never, r.delay)),
                )
            });
        let grpc = self
            .grpc
            .values()
            .filter(|(call, _)| call.state == CallState::Pending)
            .filter_map(|(call, reply)| {
                due_at(
                    call.dispatched_at,
                    call.timeout,
                    reply
                        .as_ref()
                        .map(|r| (r.answer == GrpcAnswer::Never, r.delay)),
                )
            });
        http.chain(grpc).min()
    }

    /// The first HTTP call due by `now` (lowest token first), marked with its new state.
    pub(crate) fn take_due_http(&mut self, now: Duration) -> Option<(HttpCall, Due<HttpAnswer>)> {
        for (call, reply) in self.http.values_mut() {
            if call.state != CallState::Pending {
                continue;
            }
            let delay = reply
                .as_ref()
                .filter(|r| r.answer != HttpAnswer::Never)
                .map(|r| r.delay);
            let due = match arrival(call.dispatched_at, call.timeout, delay, now) {
                Some(Arrival::Answer) => reply.as_ref().map(|r| Due::Answer(r.answer.clone())),
                Some(Arrival::Timeout) => Some(Due::Timeout),
                None => None,
            };
            if let Some(due) = due {
                call.state = match &due {
                    Due::Answer(HttpAnswer::Fail(reason)) => CallState::Failed(reason.clone()),
                    Due::Answer(_) => CallState::Answered,
                    Due::Timeout => CallState::TimedOut,
                };
                return Some((call.clone(), due));
            }
        }
        None
    }

    pub(crate) fn take_due_grpc(&mut self, now: Duration) -> Option<(GrpcCall, Due<GrpcAnswer>)> {
        for (call, reply) in self.grpc.values_mut() {
            if call.state != CallState::Pending {
                continue;
            }
            let delay = reply
                .as_ref()
                .filter(|r| r.answer != GrpcAnswer::Never)
                .map(|r| r.delay);
            let due = match arrival(call.dispatched_at, call.timeout, delay, now) {
                Some(Arrival::Answer) => reply.as_ref().map(|r| Due::Answer(r.answer.clone())),
                Some(Arrival::Timeout) => Some(Due::Timeout),
                None => None,
            };
            if let Some(due) = due {
                call.state = match &due {
                    Due::Answer(GrpcAnswer::Status(_, message)) => {
                        CallState::Failed(message.clone())
                    }
                    Due::Answer(_) => CallState::Answered,
                    Due::Timeout => CallState::TimedOut,
                };
                return Some((call.clone(), due));
            }
        }
        None
    }

    /// Drops the pending calls of a finished stream (the host cancels them).
    pub(crate) fn cancel_context(&mut self, worker: usize, context_id: u32) {
        let cancel = |call_worker: usize, call_context: u32, state: &mut CallState| {
            if call_worker == worker && call_context == context_id && *state == CallState::Pending {
                *state = CallState::Cancelled;
            }
        };
        for (call, _) in self.http.values_mut() {
            cancel(call.worker, call.context_id, &mut call.state);
        }
        for (call, _) in self.grpc.values_mut() {
            cancel(call.worker, call.context_id, &mut call.state);
        }
    }

    /// Pending dispatches of one stream (Kong resumes it when none is left).
    pub(crate) fn pending_for(&self, worker: usize, context_id: u32) -> usize {
        self.http
            .values()
            .filter(|(c, _)| {
                c.worker == worker && c.context_id == context_id && c.state == CallState::Pending
            })
            .count()
    }
}

fn due_at(
    dispatched: Duration,
    timeout: Duration,
    reply: Option<(bool, Duration)>,
) -> Option<Duration> {
    let answer = match reply {
        Some((false, delay)) => Some(dispatched + delay),
        _ => None,
    };
    let timeout = (!timeout.is_zero()).then(|| dispatched + timeout);
    match (answer, timeout) {
        (Some(a), Some(t)) => Some(a.min(t)),
        (a, t) => a.or(t),
    }
}

/// What reaches a pending call first.
enum Arrival {
    Answer,
    Timeout,
}

/// Whether a call dispatched at `dispatched_at` is due by `now`: its scripted answer (after
/// `delay`; `None` if it never comes) unless its timeout (zero: none) comes first.
fn arrival(
    dispatched_at: Duration,
    timeout: Duration,
    delay: Option<Duration>,
    now: Duration,
) -> Option<Arrival> {
    let answer_at = delay.map(|delay| dispatched_at + delay);
    let timeout_at = (!timeout.is_zero()).then(|| dispatched_at + timeout);
    match (answer_at, timeout_at) {
        (Some(a), Some(t)) if a <= t && a <= now => Some(Arrival::Answer),
        (Some(a), None) if a <= now => Some(Arrival::Answer),
        (_, Some(t)) if t <= now => Some(Arrival::Timeout),
        _ => None,
    }
}
