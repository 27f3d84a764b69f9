//! The handle a test drives one HTTP stream with: each call is an event from the client or the
//! upstream, and returns where the stream stands once the host has delivered what became due.

use super::error::{Failure, Result};
use super::headers::{Headers, Response};
use super::host::Host;
use super::logs::LogEntry;
use super::stream::{
    after_callback, call, deliver_request_body, deliver_request_trailers, deliver_response_body,
    deliver_response_trailers, num, stream, Held, LocalReply, Outcome, Step, StreamData,
};
use super::vm::{Callback, Vm};

/// A test's handle on one HTTP stream of one worker.
pub struct HttpStream {
    pub(crate) host: Host,
    pub(crate) vm: usize,
    pub(crate) context: u32,
}

impl HttpStream {
    pub fn context_id(&self) -> u32 {
        self.context
    }

    /// Runs `f` on the VM and the stream's data, then delivers what became due.
    fn drive(&mut self, f: impl FnOnce(&mut Vm, u32) -> Result<()>) -> Result<Outcome> {
        {
            let vm = self.host.vm(self.vm)?;
            let mut vm = vm.borrow_mut();
            if stream(&mut vm, self.context)?.finished {
                return Err(Failure::usage("the stream is finished"));
            }
            f(&mut vm, self.context)?;
        }
        self.host.settle()?;
        Ok(self.outcome())
    }

    /// Reads the stream's data (kept after `finish`, for fuel and logs).
    fn with_data<R>(&self, f: impl FnOnce(&StreamData) -> R) -> R {
        let vm = self.host.vm(self.vm).unwrap_or_else(|err| panic!("{err}"));
        let vm = vm.borrow();
        let data = vm
            .store
            .data()
            .streams
            .get(&self.context)
            .unwrap_or_else(|| panic!("no HTTP context {} in worker {}", self.context, self.vm));
        f(data)
    }

    /// The request headers arrive (`proxy_on_request_headers`); `eos` when there is no body.
    pub fn send_request_headers(&mut self, eos: bool) -> Result<Outcome> {
        self.drive(|vm, context| {
            let profile = vm.store.data().profile;
            let data = stream(vm, context)?;
            if data.request_headers.is_some() {
                return Err(Failure::usage("request headers were already sent"));
            }
            let headers = profile.request_map(&data.request.headers);
            if profile.is_kong() {
                let target = data.request.headers.first(b":path").unwrap_or_default();
                if let Some(at) = target.iter().position(|&b| b == b'?') {
                    data.kong_args = target.get(at + 1..).unwrap_or_default().to_vec();
                }
            }
            // Kong counts the ordinary headers only (`ngx_http_wasm_req_headers_count`); its
            // map puts the four pseudo-headers ahead of them.
            let count = if profile.is_kong() {
                num(headers
                    .pairs()
                    .iter()
                    .filter(|(name, _)| !name.starts_with(b":"))
                    .count())
            } else {
                num(headers.len())
            };
            data.request_headers = Some(headers);
            data.request_eos = eos;
            let result = call(
                vm,
                context,
                Callback::RequestHeaders,
                &[context, count, u32::from(profile.header_eos(eos))],
            )?;
            after_callback(vm, context, Callback::RequestHeaders, result)
        })
    }

    /// A request body chunk arrives. While the headers are paused it is held, and delivered
    /// when the plugin continues; a paused body keeps buffering (the plugin sees it all).
    pub fn send_request_body(&mut self, chunk: impl AsRef<[u8]>, eos: bool) -> Result<Outcome> {
        let chunk = chunk.as_ref().to_vec();
        self.drive(|vm, context| {
            let data = stream(vm, context)?;
            check_request_open(data)?;
            if data.paused == Some(Step::RequestHeaders) {
                let held = data.held_request.get_or_insert_with(Held::default);
                held.body.extend(chunk);
                held.body_seen = true;
                held.eos = eos;
                return Ok(());
            }
            deliver_request_body(vm, context, chunk, eos)
        })
    }

    /// Request trailers arrive (Kong never calls `on_request_trailers`: they pass unseen).
    pub fn send_request_trailers(&mut self, trailers: Headers) -> Result<Outcome> {
        self.drive(|vm, context| {
            let data = stream(vm, context)?;
            check_request_open(data)?;
            if matches!(data.paused, Some(Step::RequestHeaders)) {
                data.held_request.get_or_insert_with(Held::default).trailers = Some(trailers);
                return Ok(());
            }
            deliver_request_trailers(vm, context, trailers)
        })
    }

    /// Kong: a filter before this one answered the request locally. This filter's request
    /// callbacks never run (`ngx_proxy_wasm_resume` restarts the chain at the response step),
    /// but its response and log callbacks do, with the local reply as the response: send it
    /// with [`Self::send_response_headers`].
    pub fn earlier_filter_replied(&mut self) -> Result<Outcome> {
        self.drive(|vm, context| {
            let profile = vm.store.data().profile;
            if !profile.is_kong() {
                return Err(Failure::usage(
                    "Envoy runs no later filter's response phase for a local reply",
                ));
            }
            let data = stream(vm, context)?;
            if data.request_headers.is_some() {
                return Err(Failure::usage("request headers were already sent"));
            }
            let headers = profile.request_map(&data.request.headers);
            data.request_headers = Some(headers.clone());
            data.to_upstream.headers = Some(headers);
            Ok(())
        })
    }

    /// The upstream answers (`proxy_on_response_headers`); `eos` when there is no body.
    pub fn send_response_headers(&mut self, response: Response, eos: bool) -> Result<Outcome> {
        self.drive(|vm, context| {
            let profile = vm.store.data().profile;
            let data = stream(vm, context)?;
            if data.local_reply.is_some() || data.reset {
                return Err(Failure::usage("the plugin already ended this stream (local reply or reset): no upstream response comes"));
            }
            if !data.request_forwarded() {
                return Err(Failure::usage(format!(
                    "the request headers never reached the upstream (the stream is {:?}): it cannot answer",
                    data.outcome()
                )));
            }
            if data.response_headers.is_some() {
                return Err(Failure::usage("response headers were already sent"));
            }
            let count = num(response.headers.len());
            data.response_headers = Some(response.headers);
            data.response_eos = eos;
            let result = call(vm, context, Callback::ResponseHeaders, &[context, count, u32::from(profile.header_eos(eos))])?;
            after_callback(vm, context, Callback::ResponseHeaders, result)
        })
    }

    /// A response body chunk arrives (held while the response headers are paused).
    pub fn send_response_body(&mut self, chunk: impl AsRef<[u8]>, eos: bool) -> Result<Outcome> {
        let chunk = chunk.as_ref().to_vec();
        self.drive(|vm, context| {
            let data = stream(vm, context)?;
            if data.response_discarded {
                return Ok(());
            }
            check_response_open(data)?;
            if data.paused == Some(Step::ResponseHeaders) {
                let held = data.held_response.get_or_insert_with(Held::default);
                held.body.extend(chunk);
                held.body_seen = true;
                held.eos = eos;
                return Ok(());
            }
            deliver_response_body(vm, context, chunk, eos)
        })
    }

    /// Response trailers arrive (Kong never calls `on_response_trailers`).
    pub fn send_response_trailers(&mut self, trailers: Headers) -> Result<Outcome> {
        self.drive(|vm, context| {
            let data = stream(vm, context)?;
            check_response_open(data)?;
            if matches!(data.paused, Some(Step::ResponseHeaders)) {
                data.held_response
                    .get_or_insert_with(Held::default)
                    .trailers = Some(trailers);
                return Ok(());
            }
            deliver_response_trailers(vm, context, trailers)
        })
    }

    /// Ends the stream: `on_done`, `on_log`, `on_delete` (Envoy's order: the filter is destroyed
    /// before access logging; Kong: `on_log` in nginx's log phase first). Pending callouts of
    /// the stream are cancelled.
    pub fn finish(&mut self) -> Result<()> {
        {
            let vm = self.host.vm(self.vm)?;
            let mut vm = vm.borrow_mut();
            let context = self.context;
            if stream(&mut vm, context)?.finished {
                return Ok(());
            }
            let worker = vm.store.data().worker;
            vm.store
                .data()
                .world
                .borrow_mut()
                .callouts
                .cancel_context(worker, context);
            // Envoy runs the access log (`Context::log`: on_log) before it destroys the filter
            // (`Context::onDestroy`: on_done, then on_delete). ngx_wasm_module's log phase
            // calls on_done then on_log for ABI 0.1.0-0.2.1 (`ngx_proxy_wasm_on_log`), and
            // on_delete when the filter is freed.
            let order = if vm.store.data().profile.is_kong() {
                [Callback::Done, Callback::Log, Callback::Delete]
            } else {
                [Callback::Log, Callback::Done, Callback::Delete]
            };
            for callback in order {
                call(&mut vm, context, callback, &[context])?;
            }
            stream(&mut vm, context)?.finished = true;
        }
        self.host.settle()
    }

    /// Where the stream stands now (after clock advances, callout answers...).
    pub fn outcome(&self) -> Outcome {
        self.with_data(StreamData::outcome)
    }

    /// The request's header map as the plugins have left it so far (what a later filter, or
    /// the access log, would read), whether or not it went upstream.
    pub fn request_headers(&self) -> Headers {
        self.with_data(|data| {
            data.request_headers
                .clone()
                .unwrap_or_else(|| data.request.headers.clone())
        })
    }

    /// The request headers as the upstream received them. Panics if they never left.
    pub fn upstream_request_headers(&self) -> Headers {
        self.with_data(|data| {
            data.to_upstream.headers.clone().unwrap_or_else(|| {
                panic!(
                    "the request headers never reached the upstream (stream outcome: {:?})",
                    data.outcome()
                )
            })
        })
    }

    /// Whether the request headers went upstream (nothing does before them).
    pub fn reached_upstream(&self) -> bool {
        self.with_data(|data| data.to_upstream.headers.is_some())
    }

    /// The request body bytes the upstream received so far.
    pub fn upstream_request_body(&self) -> Vec<u8> {
        self.with_data(|data| data.to_upstream.body.clone())
    }

    pub fn upstream_request_trailers(&self) -> Option<Headers> {
        self.with_data(|data| data.to_upstream.trailers.clone())
    }

    /// The response headers as the client received them (`:status` included). Panics if none
    /// left yet.
    pub fn response_headers(&self) -> Headers {
        self.with_data(|data| {
            data.to_client.headers.clone().unwrap_or_else(|| {
                panic!(
                    "no response headers reached the client (stream outcome: {:?})",
                    data.outcome()
                )
            })
        })
    }

    /// The client's response status.
    pub fn response_status(&self) -> u16 {
        self.response_headers()
            .get(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The response body bytes the client received so far.
    pub fn response_body(&self) -> Vec<u8> {
        self.with_data(|data| data.to_client.body.clone())
    }

    pub fn response_trailers(&self) -> Option<Headers> {
        self.with_data(|data| data.to_client.trailers.clone())
    }

    pub fn local_reply(&self) -> Option<LocalReply> {
        self.with_data(|data| data.local_reply.clone())
    }

    /// Fuel this stream's callbacks burnt, in total.
    pub fn fuel(&self) -> u64 {
        self.with_data(|data| data.fuel.iter().map(|(_, fuel)| fuel).sum())
    }

    /// Fuel per callback, in call order.
    pub fn fuel_by_callback(&self) -> Vec<(Callback, u64)> {
        self.with_data(|data| data.fuel.clone())
    }

    /// Host calls this stream's callbacks made, in order, with the callback that made each.
    /// The host calling the guest's allocator to hand it data (a header map, a property) counts
    /// as [`super::abi::GUEST_ALLOCATION`]: in Envoy's V8 that crossing back into the VM is the
    /// dearest of all.
    pub fn host_calls(&self) -> Vec<(Callback, &'static str)> {
        self.with_data(|data| data.host_calls.clone())
    }

    /// How many host calls (allocations into the guest included) the stream made.
    pub fn host_call_count(&self) -> usize {
        self.with_data(|data| data.host_calls.len())
    }

    /// Log lines logged from this stream's context.
    pub fn logs(&self) -> Vec<LogEntry> {
        self.host
            .logs()
            .into_iter()
            .filter(|entry| entry.worker == self.vm && entry.context_id == self.context)
            .collect()
    }
}

fn check_request_open(data: &StreamData) -> Result<()> {
    if data.request_headers.is_none() {
        return Err(Failure::usage("send the request headers first"));
    }
    if data.local_reply.is_some() || data.reset {
        return Err(Failure::usage(
            "the plugin already ended this stream (local reply or reset)",
        ));
    }
    if data.to_upstream.trailers.is_some() || data.request_trailers.is_some() {
        return Err(Failure::usage("the request already ended with trailers"));
    }
    Ok(())
}

fn check_response_open(data: &StreamData) -> Result<()> {
    if data.response_headers.is_none() {
        return Err(Failure::usage("send the response headers first"));
    }
    if data.local_reply.is_some() || data.reset {
        return Err(Failure::usage(
            "the plugin already ended this stream (local reply or reset)",
        ));
    }
    if data.response_trailers.is_some() {
        return Err(Failure::usage("the response already ended with trailers"));
    }
    Ok(())
}
