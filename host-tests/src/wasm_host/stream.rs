//! One HTTP stream through a plugin: what the host keeps for it, and how each callback's result
//! moves it on (continue, pause and buffer, local reply).

use std::collections::BTreeMap;

use super::abi::{action, LogLevel};
use super::error::{Failure, Result};
use super::headers::{Headers, Request};
use super::logs::LogOrigin;
use super::profile::{ResponseBodyPause, ResponseHeadersPause};
use super::vm::{Callback, Vm};

/// A local reply the plugin sent (`proxy_send_local_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    /// Without `:status`.
    pub headers: Headers,
    pub body: Vec<u8>,
    /// Envoy's response code details.
    pub details: String,
    pub grpc_status: Option<i32>,
}

/// Where a stream stands once the host has delivered everything already due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not waiting on the plugin: what was sent went on.
    Continue,
    /// Waiting on the plugin (a paused callback, a body it buffers).
    Pause,
    /// The plugin answered itself.
    LocalReply(LocalReply),
    /// The plugin reset the stream (`proxy_close_stream`).
    Reset,
}

/// The part of a stream a callback paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
}

/// What one side has passed on (to the upstream, or to the client).
#[derive(Debug, Clone, Default)]
pub(crate) struct Sent {
    pub headers: Option<Headers>,
    pub body: Vec<u8>,
    pub trailers: Option<Headers>,
}

/// Data that arrived while the headers were paused (Envoy: StopAllIterationAndWatermark; Kong
/// yields the whole phase): delivered when the plugin continues.
#[derive(Debug, Clone, Default)]
pub(crate) struct Held {
    pub body: Vec<u8>,
    pub body_seen: bool,
    pub eos: bool,
    pub trailers: Option<Headers>,
}

/// Everything the host keeps for one HTTP context.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamData {
    pub request: Request,
    /// The live maps the plugin reads and edits.
    pub request_headers: Option<Headers>,
    pub request_trailers: Option<Headers>,
    pub response_headers: Option<Headers>,
    pub response_trailers: Option<Headers>,
    /// Body bytes the plugin is buffering (what `HttpRequestBody` reads).
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    pub request_eos: bool,
    pub response_eos: bool,
    pub held_request: Option<Held>,
    pub held_response: Option<Held>,
    pub to_upstream: Sent,
    pub to_client: Sent,
    pub paused: Option<Step>,
    pub local_reply: Option<LocalReply>,
    /// Sent during the running callback; applied when it returns.
    pub pending_local: Option<LocalReply>,
    pub resume_request: bool,
    pub resume_response: bool,
    pub reset: bool,
    /// Kong buffers a response body once; a second Pause is ignored.
    pub kong_response_buffered: bool,
    /// Kong: nginx's `r->args`, the query Kong appends to the upstream's path (empty: none).
    /// Only a `:path` write with a `?` changes it (Kong 3.9+).
    pub kong_args: Vec<u8>,
    /// Kong: single-field headers (`kong_single_field`) removed in this stream, by map type.
    /// nginx keeps the field, marked deleted: adding to it later does nothing.
    pub kong_removed_fields: std::collections::BTreeSet<(u32, Vec<u8>)>,
    /// The plugin dispatched a call during the callback running now.
    pub dispatched_in_callback: bool,
    /// Kong answered 500 from the header filter: nginx finalises the request, and the
    /// upstream's body never reaches the client (or the filter).
    pub response_discarded: bool,
    pub properties_set: BTreeMap<String, Vec<u8>>,
    pub fuel: Vec<(Callback, u64)>,
    /// Host calls made from this stream's callbacks, in order, with
    /// [`super::abi::GUEST_ALLOCATION`] for each time the host called the guest's allocator to
    /// hand it data.
    pub host_calls: Vec<(Callback, &'static str)>,
    pub finished: bool,
}

impl StreamData {
    pub(crate) fn new(request: Request) -> Self {
        Self {
            request,
            ..Self::default()
        }
    }

    pub(crate) fn outcome(&self) -> Outcome {
        if self.reset {
            Outcome::Reset
        } else if let Some(reply) = &self.local_reply {
            Outcome::LocalReply(reply.clone())
        } else if self.paused.is_some() {
            Outcome::Pause
        } else {
            Outcome::Continue
        }
    }

    /// Request headers have reached the upstream (the response may come).
    pub(crate) fn request_forwarded(&self) -> bool {
        self.to_upstream.headers.is_some()
    }

    /// The client has the response headers.
    pub(crate) fn response_started(&self) -> bool {
        self.to_client.headers.is_some()
    }
}

pub(crate) fn stream(vm: &mut Vm, context: u32) -> Result<&mut StreamData> {
    vm.store
        .data_mut()
        .streams
        .get_mut(&context)
        .ok_or_else(|| Failure::usage(format!("no HTTP context {context} in this VM")))
}

pub(crate) fn num(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Calls a callback of this stream and books its fuel on the stream.
pub(crate) fn call(
    vm: &mut Vm,
    context: u32,
    callback: Callback,
    args: &[u32],
) -> Result<Option<u32>> {
    let (result, fuel) = vm.call(callback, context, args)?;
    stream(vm, context)?.fuel.push((callback, fuel));
    Ok(result)
}

fn host_log(vm: &Vm, level: LogLevel, message: String) {
    vm.store.data().log(LogOrigin::Host, level, message);
}

fn bad_action(callback: Callback, value: u32) -> Failure {
    Failure::new(
        super::error::FailureKind::Trap,
        format!("{callback} returned {value}, which is neither Continue (0) nor Pause (1)"),
    )
}

/// Applies what a callback left behind: its return action, a local reply, a continue request.
pub(crate) fn after_callback(
    vm: &mut Vm,
    context: u32,
    callback: Callback,
    result: Option<u32>,
) -> Result<()> {
    let profile = vm.store.data().profile;
    let worker = vm.store.data().worker;
    if let Some(reply) = stream(vm, context)?.pending_local.take() {
        return local_reply(vm, context, callback, reply);
    }
    // Kong: a dispatch marks the filter's next action as PAUSE, whatever the callback returned
    // (research note §6, "Dispatching marks the filter's next action as PAUSE").
    let dispatching = profile.resumes_after_dispatches()
        && matches!(callback, Callback::RequestHeaders | Callback::RequestBody)
        && vm
            .store
            .data()
            .world
            .borrow()
            .callouts
            .pending_for(worker, context)
            > 0;
    let pause = match result {
        None => false,
        Some(action::CONTINUE) => dispatching,
        Some(action::PAUSE) => true,
        Some(other) => return Err(bad_action(callback, other)),
    };
    if !pause {
        // Continuing a step the plugin had paused (a buffered body reaching its end).
        let data = stream(vm, context)?;
        if data.paused.is_some() && data.paused == step_of(callback) {
            data.paused = None;
        }
    }
    match callback {
        Callback::RequestHeaders if pause => {
            stream(vm, context)?.paused = Some(Step::RequestHeaders)
        }
        Callback::RequestHeaders => forward_request_headers(vm, context)?,
        Callback::RequestBody if pause => stream(vm, context)?.paused = Some(Step::RequestBody),
        Callback::RequestBody => flush_request_body(stream(vm, context)?),
        Callback::RequestTrailers if pause => {
            stream(vm, context)?.paused = Some(Step::RequestTrailers)
        }
        Callback::RequestTrailers => forward_request_trailers(stream(vm, context)?),
        Callback::ResponseHeaders if pause => match profile.response_headers_pause() {
            ResponseHeadersPause::Wait => stream(vm, context)?.paused = Some(Step::ResponseHeaders),
            ResponseHeadersPause::ServerError => {
                host_log(
                    vm,
                    LogLevel::Error,
                    "bad \"on_response_headers\" return action: \"PAUSE\"".to_owned(),
                );
                let data = stream(vm, context)?;
                data.response_headers = Some(Headers::new().with(":status", "500"));
                data.response_body.clear();
                data.to_client.headers = data.response_headers.clone();
                data.response_discarded = true;
            }
            ResponseHeadersPause::LocalResponseExpected => {
                host_log(
                    vm,
                    LogLevel::Warn,
                    "\"ResponseHeaders\" returned \"PAUSE\": local response expected but none produced".to_owned(),
                );
                forward_response_headers(vm, context)?;
            }
        },
        Callback::ResponseHeaders => forward_response_headers(vm, context)?,
        Callback::ResponseBody if pause => match profile.response_body_pause() {
            ResponseBodyPause::Buffer => {
                let data = stream(vm, context)?;
                if profile.is_kong() && data.kong_response_buffered && data.response_eos {
                    host_log(
                        vm,
                        LogLevel::Error,
                        "bad \"on_response_body\" return action: \"PAUSE\" (already buffered)"
                            .to_owned(),
                    );
                    flush_response_body(stream(vm, context)?);
                } else {
                    data.kong_response_buffered = true;
                    data.paused = Some(Step::ResponseBody);
                }
            }
            ResponseBodyPause::Error => {
                host_log(
                    vm,
                    LogLevel::Error,
                    "bad \"on_response_body\" return action: \"PAUSE\"".to_owned(),
                );
                flush_response_body(stream(vm, context)?);
            }
        },
        Callback::ResponseBody => flush_response_body(stream(vm, context)?),
        Callback::ResponseTrailers if pause => {
            stream(vm, context)?.paused = Some(Step::ResponseTrailers)
        }
        Callback::ResponseTrailers => forward_response_trailers(stream(vm, context)?),
        _ => {}
    }
    let data = stream(vm, context)?;
    let (request, response) = (
        std::mem::take(&mut data.resume_request),
        std::mem::take(&mut data.resume_response),
    );
    let new_call = std::mem::take(&mut data.dispatched_in_callback);
    // Kong 3.7+ resumes once no call of the request is pending. Before, ngx_wasm_module
    // tracks one call per filter (`pwexec->call`, until 261bd71e): any answer whose callback
    // made no new call resumes the request, other calls still pending.
    let kong_done = profile.resumes_after_dispatches()
        && matches!(callback, Callback::HttpCallResponse)
        && if profile.tracks_one_call_per_filter() {
            !new_call
        } else {
            vm.store
                .data()
                .world
                .borrow()
                .callouts
                .pending_for(worker, context)
                == 0
        };
    if request || kong_done {
        resume(vm, context, true)?;
    }
    if response {
        resume(vm, context, false)?;
    }
    Ok(())
}

fn step_of(callback: Callback) -> Option<Step> {
    Some(match callback {
        Callback::RequestHeaders => Step::RequestHeaders,
        Callback::RequestBody => Step::RequestBody,
        Callback::RequestTrailers => Step::RequestTrailers,
        Callback::ResponseHeaders => Step::ResponseHeaders,
        Callback::ResponseBody => Step::ResponseBody,
        Callback::ResponseTrailers => Step::ResponseTrailers,
        _ => return None,
    })
}

/// The plugin continued (`proxy_continue_stream`), or Kong's dispatches are all done.
pub(crate) fn resume(vm: &mut Vm, context: u32, request: bool) -> Result<()> {
    let data = stream(vm, context)?;
    let paused = match data.paused {
        Some(step @ (Step::RequestHeaders | Step::RequestBody | Step::RequestTrailers))
            if request =>
        {
            step
        }
        Some(step @ (Step::ResponseHeaders | Step::ResponseBody | Step::ResponseTrailers))
            if !request =>
        {
            step
        }
        _ => return Ok(()),
    };
    data.paused = None;
    match paused {
        Step::RequestHeaders => forward_request_headers(vm, context),
        Step::RequestBody => {
            flush_request_body(data);
            Ok(())
        }
        Step::RequestTrailers => {
            forward_request_trailers(data);
            Ok(())
        }
        Step::ResponseHeaders => forward_response_headers(vm, context),
        Step::ResponseBody => {
            flush_response_body(data);
            Ok(())
        }
        Step::ResponseTrailers => {
            forward_response_trailers(data);
            Ok(())
        }
    }
}

/// Kong 3.8 after a failed dispatch: no callback, the request resumes once no dispatch of
/// the stream is pending.
pub(crate) fn resume_after_dispatch(vm: &mut Vm, context: u32) -> Result<()> {
    let worker = vm.store.data().worker;
    let pending = vm
        .store
        .data()
        .world
        .borrow()
        .callouts
        .pending_for(worker, context);
    if pending == 0 {
        resume(vm, context, true)?;
    }
    Ok(())
}

fn forward_request_headers(vm: &mut Vm, context: u32) -> Result<()> {
    let kong = vm.store.data().profile.is_kong();
    let data = stream(vm, context)?;
    data.to_upstream.headers = data.request_headers.clone();
    if kong {
        // Kong proxies `$upstream_uri`: its router's path, the request target's normalised
        // before any filter ran (kong/runloop/handler.lua, access.before), then `?` and
        // `r->args` (access.after). A filter's `:path` reaches the upstream only through
        // `r->args`.
        let target = data.request.headers.first(b":path").unwrap_or_default();
        let path = target.split(|&b| b == b'?').next().unwrap_or_default();
        let mut upstream = super::profile::kong_upstream_path(path);
        if !data.kong_args.is_empty() || target.ends_with(b"?") {
            upstream.push(b'?');
            upstream.extend_from_slice(&data.kong_args);
        }
        if let Some(headers) = data.to_upstream.headers.as_mut() {
            headers.replace(b":path", &upstream);
        }
    }
    if let Some(held) = data.held_request.take() {
        if held.body_seen {
            deliver_request_body(vm, context, held.body, held.eos)?;
        }
        if let Some(trailers) = held.trailers {
            deliver_request_trailers(vm, context, trailers)?;
        }
    }
    Ok(())
}

fn flush_request_body(data: &mut StreamData) {
    let body = std::mem::take(&mut data.request_body);
    data.to_upstream.body.extend(body);
}

fn forward_request_trailers(data: &mut StreamData) {
    flush_request_body(data);
    data.to_upstream.trailers = data.request_trailers.clone();
}

fn forward_response_headers(vm: &mut Vm, context: u32) -> Result<()> {
    let data = stream(vm, context)?;
    data.to_client.headers = data.response_headers.clone();
    if let Some(held) = data.held_response.take() {
        if held.body_seen {
            deliver_response_body(vm, context, held.body, held.eos)?;
        }
        if let Some(trailers) = held.trailers {
            deliver_response_trailers(vm, context, trailers)?;
        }
    }
    Ok(())
}

fn flush_response_body(data: &mut StreamData) {
    let body = std::mem::take(&mut data.response_body);
    data.to_client.body.extend(body);
}

fn forward_response_trailers(data: &mut StreamData) {
    flush_response_body(data);
    data.to_client.trailers = data.response_trailers.clone();
}

/// A local reply ends the request: it goes to the client through the plugin's response
/// callbacks (Envoy sends local replies through the encoder filters, Kong through its header
/// and body filters), or, sent from a response callback, replaces the response.
fn local_reply(vm: &mut Vm, context: u32, callback: Callback, reply: LocalReply) -> Result<()> {
    let profile = vm.store.data().profile;
    let in_request = !matches!(
        callback,
        Callback::ResponseHeaders | Callback::ResponseBody | Callback::ResponseTrailers
    );
    let data = stream(vm, context)?;
    let mut reply = reply;
    if profile.is_kong() && !in_request {
        // From a response callback ngx_wasm_module (3.7+) sets only the status and the body:
        // the reply's headers are unmarshalled and dropped, the upstream's stay
        // (ngx_proxy_wasm_hfuncs_send_local_response, `entered_header_filter` branch).
        let mut kept = data.response_headers.clone().unwrap_or_default();
        kept.remove(b":status");
        reply.headers = kept;
    }
    data.local_reply = Some(reply.clone());
    data.paused = None;
    data.held_request = None;
    data.held_response = None;
    let mut headers = Headers::new().with(":status", reply.status.to_string());
    for (name, value) in reply.headers.pairs() {
        headers.add(name, value);
    }
    if data.response_started() {
        // Envoy cannot replace a response whose headers left: it resets the stream (Kong traps
        // at the call, see proxy_send_local_response).
        data.reset = true;
        return Ok(());
    }
    data.response_headers = Some(headers);
    data.response_body = reply.body.clone();
    data.response_eos = true;
    if in_request {
        let count = num(data.response_headers.as_ref().map_or(0, Headers::len));
        let eos = profile.header_eos(reply.body.is_empty());
        call(
            vm,
            context,
            Callback::ResponseHeaders,
            &[context, count, u32::from(eos)],
        )?;
        if !reply.body.is_empty() {
            let size = num(stream(vm, context)?.response_body.len());
            call(vm, context, Callback::ResponseBody, &[context, size, 1])?;
        }
        if stream(vm, context)?.pending_local.take().is_some() {
            host_log(
                vm,
                LogLevel::Warn,
                "a second local reply while sending one was ignored".to_owned(),
            );
        }
    }
    let data = stream(vm, context)?;
    data.to_client.headers = data.response_headers.clone();
    flush_response_body(data);
    Ok(())
}

/// Kong 3.4–3.7 end a request whose dispatch failed with a 500: the request never
/// reaches the upstream, and the filter, in error, gets no more callbacks
/// (`ngx_http_wasm_error` in ngx_http_proxy_wasm_dispatch.c; ngx_wasm_module's test
/// `130-proxy_dispatch_http.t` TEST 9 expects `500 Internal Server Error`).
pub(crate) fn host_error_reply(vm: &mut Vm, context: u32) -> Result<()> {
    let data = stream(vm, context)?;
    let body =
        b"<html>\r\n<head><title>500 Internal Server Error</title></head>\r\n</html>\r\n".to_vec();
    let reply = LocalReply {
        status: 500,
        headers: Headers::new().with("content-type", "text/html"),
        body: body.clone(),
        details: "dispatch failed".to_owned(),
        grpc_status: None,
    };
    data.local_reply = Some(reply);
    data.paused = None;
    data.held_request = None;
    data.held_response = None;
    data.response_headers = Some(
        Headers::new()
            .with(":status", "500")
            .with("content-type", "text/html"),
    );
    data.response_body = body;
    data.response_eos = true;
    data.to_client.headers = data.response_headers.clone();
    flush_response_body(data);
    Ok(())
}

pub(crate) fn deliver_request_body(
    vm: &mut Vm,
    context: u32,
    chunk: Vec<u8>,
    eos: bool,
) -> Result<()> {
    let whole = vm.store.data().profile.delivers_request_body_whole();
    let data = stream(vm, context)?;
    data.request_body.extend(chunk);
    data.request_eos = eos;
    if whole && !eos {
        return Ok(());
    }
    let size = num(data.request_body.len());
    let result = call(
        vm,
        context,
        Callback::RequestBody,
        &[context, size, u32::from(eos)],
    )?;
    after_callback(vm, context, Callback::RequestBody, result)
}

pub(crate) fn deliver_request_trailers(vm: &mut Vm, context: u32, trailers: Headers) -> Result<()> {
    let count = num(trailers.len());
    let calls_back = vm.store.data().profile.calls_trailer_callbacks();
    let data = stream(vm, context)?;
    data.request_trailers = Some(trailers);
    data.request_eos = true;
    if calls_back {
        let result = call(vm, context, Callback::RequestTrailers, &[context, count])?;
        after_callback(vm, context, Callback::RequestTrailers, result)
    } else {
        forward_request_trailers(data);
        Ok(())
    }
}

pub(crate) fn deliver_response_body(
    vm: &mut Vm,
    context: u32,
    chunk: Vec<u8>,
    eos: bool,
) -> Result<()> {
    let data = stream(vm, context)?;
    data.response_body.extend(chunk);
    data.response_eos = eos;
    let size = num(data.response_body.len());
    let result = call(
        vm,
        context,
        Callback::ResponseBody,
        &[context, size, u32::from(eos)],
    )?;
    after_callback(vm, context, Callback::ResponseBody, result)
}

pub(crate) fn deliver_response_trailers(
    vm: &mut Vm,
    context: u32,
    trailers: Headers,
) -> Result<()> {
    let count = num(trailers.len());
    let calls_back = vm.store.data().profile.calls_trailer_callbacks();
    let data = stream(vm, context)?;
    data.response_trailers = Some(trailers);
    data.response_eos = true;
    if calls_back {
        let result = call(vm, context, Callback::ResponseTrailers, &[context, count])?;
        after_callback(vm, context, Callback::ResponseTrailers, result)
    } else {
        forward_response_trailers(data);
        Ok(())
    }
}
