//! The host a test talks to: loads plugins into worker VMs, owns the shared world, and runs the
//! event loop that delivers ticks, queue notifications and callout answers at their virtual time.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use wasmtime::Linker;

use super::abi::LogLevel;
use super::callouts::{
    CalloutReply, Due, GrpcAnswer, GrpcCall, GrpcReply, HttpAnswer, HttpCall,
    GRPC_DEADLINE_EXCEEDED,
};
use super::engine::{self, Plugin};
use super::error::{Failure, Result};
use super::headers::{Headers, PropertyValue};
use super::hostcalls;
use super::load::{Load, PluginVms};
use super::logs::{LogEntry, LogOrigin};
use super::metrics::MetricValue;
use super::profile::Profile;
use super::stream;
use super::vm::{CallResponse, Callback, Vm, VmState};
use super::world::{Event, RefusedProperty, SharedDataFault, World};

/// The default seed of WASI `random_get`.
pub const DEFAULT_SEED: u64 = 0x005E_ED0F_BA1E;

/// How many events one settle may deliver before the host calls it a livelock.
const MAX_EVENTS: usize = 100_000;

struct Inner {
    profile: Profile,
    world: Rc<RefCell<World>>,
    linker: Linker<VmState>,
    vms: RefCell<Vec<Rc<RefCell<Vm>>>>,
}

/// A deterministic proxy-wasm host (one per test). Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct Host(Rc<Inner>);

impl Host {
    pub fn new(profile: Profile) -> Self {
        Self::with_seed(profile, DEFAULT_SEED)
    }

    /// A host whose `random_get` starts from `seed`.
    pub fn with_seed(profile: Profile, seed: u64) -> Self {
        let linker = engine::engine()
            .and_then(|engine| {
                hostcalls::linker(engine, profile).map_err(|err| {
                    Failure::load(format!("cannot define the host functions: {err:#}"))
                })
            })
            .unwrap_or_else(|err| panic!("{err}"));
        Self(Rc::new(Inner {
            profile,
            world: Rc::new(RefCell::new(World::new(profile, seed))),
            linker,
            vms: RefCell::new(Vec::new()),
        }))
    }

    pub fn profile(&self) -> Profile {
        self.0.profile
    }

    /// Loads `plugin` with this configuration into one worker.
    pub fn load(&self, plugin: Plugin, configuration: &str) -> Result<PluginVms> {
        self.loader(plugin).configuration(configuration).start()
    }

    /// Loads `plugin` into `workers` VMs sharing this host's shared data, queues and clock.
    pub fn load_workers(
        &self,
        plugin: Plugin,
        configuration: &str,
        workers: usize,
    ) -> Result<PluginVms> {
        self.loader(plugin)
            .configuration(configuration)
            .workers(workers)
            .start()
    }

    /// Everything a load can set.
    pub fn loader(&self, plugin: Plugin) -> Load {
        Load::new(self.clone(), plugin)
    }

    pub(crate) fn vm(&self, index: usize) -> Result<Rc<RefCell<Vm>>> {
        self.0
            .vms
            .borrow()
            .get(index)
            .cloned()
            .ok_or_else(|| Failure::usage(format!("no worker {index}")))
    }

    pub(crate) fn world(&self) -> std::cell::RefMut<'_, World> {
        self.0.world.borrow_mut()
    }

    pub(crate) fn shared_world(&self) -> Rc<RefCell<World>> {
        Rc::clone(&self.0.world)
    }

    pub(crate) fn linker(&self) -> &Linker<VmState> {
        &self.0.linker
    }

    pub(crate) fn vm_count(&self) -> usize {
        self.0.vms.borrow().len()
    }

    pub(crate) fn push_vm(&self, vm: Vm) {
        self.0.vms.borrow_mut().push(Rc::new(RefCell::new(vm)));
    }

    /// Virtual time since the host started.
    pub fn elapsed(&self) -> Duration {
        self.world().clock.elapsed()
    }

    /// The virtual wall clock.
    pub fn now(&self) -> SystemTime {
        self.world().clock.now()
    }

    /// Moves the virtual clock on, firing every tick and delivering every callout answer or
    /// timeout due on the way, in time order.
    pub fn advance_clock(&self, by: Duration) -> Result<()> {
        let target = self.elapsed() + by;
        loop {
            let next_tick = self.next_tick();
            let next_call = self.world().callouts.next_due();
            let next = [next_tick.map(|(at, _)| at), next_call]
                .into_iter()
                .flatten()
                .min()
                .filter(|&at| at <= target);
            let Some(at) = next else { break };
            self.world().clock.set_elapsed(at);
            if let Some((tick_at, vm)) = next_tick {
                if tick_at <= at {
                    self.tick(vm, tick_at)?;
                }
            }
            self.settle()?;
        }
        self.world().clock.set_elapsed(target);
        self.settle()
    }

    /// The earliest tick due and its VM (lowest index first on a tie).
    fn next_tick(&self) -> Option<(Duration, usize)> {
        self.0
            .vms
            .borrow()
            .iter()
            .enumerate()
            .filter_map(|(index, vm)| {
                let vm = vm.borrow();
                if vm.dead.is_some() {
                    return None;
                }
                vm.store.data().next_tick.map(|at| (at, index))
            })
            .min()
    }

    fn tick(&self, index: usize, at: Duration) -> Result<()> {
        let vm = self.vm(index)?;
        let mut vm = vm.borrow_mut();
        let state = vm.store.data_mut();
        let root = state.root_context;
        state.next_tick = state.tick_period.map(|period| at + period);
        vm.call(Callback::Tick, root, &[root])?;
        // A timer resumes the streams it holds paused (set_effective_context, then
        // proxy_continue_stream): apply those resumes as a proxy would once the tick returns.
        let resumed: Vec<(u32, bool, bool)> = vm
            .store
            .data_mut()
            .streams
            .iter_mut()
            .filter(|(_, data)| data.resume_request || data.resume_response)
            .map(|(context, data)| {
                (
                    *context,
                    std::mem::take(&mut data.resume_request),
                    std::mem::take(&mut data.resume_response),
                )
            })
            .collect();
        for (context, request, response) in resumed {
            if request {
                stream::resume(&mut vm, context, true)?;
            }
            if response {
                stream::resume(&mut vm, context, false)?;
            }
        }
        Ok(())
    }

    /// Delivers everything due now: queue notifications, callout answers and timeouts.
    pub(crate) fn settle(&self) -> Result<()> {
        for _ in 0..MAX_EVENTS {
            let event = self.world().events.pop_front();
            if let Some(Event::QueueReady {
                vm,
                root_context,
                queue,
            }) = event
            {
                // Kong never calls on_queue_ready (PROXY_WASM.md "Supported Entrypoints").
                if !self.profile().is_kong() {
                    let vm = self.vm(vm)?;
                    vm.borrow_mut().call(
                        Callback::QueueReady,
                        root_context,
                        &[root_context, queue],
                    )?;
                }
                continue;
            }
            let now = self.elapsed();
            let http = self.world().callouts.take_due_http(now);
            if let Some((call, due)) = http {
                self.deliver_http(call, due)?;
                continue;
            }
            let grpc = self.world().callouts.take_due_grpc(now);
            if let Some((call, due)) = grpc {
                self.deliver_grpc(call, due)?;
                continue;
            }
            return Ok(());
        }
        Err(Failure::usage(format!(
            "more than {MAX_EVENTS} events at one instant: the plugin and the host loop"
        )))
    }

    fn deliver_http(&self, call: HttpCall, due: Due<HttpAnswer>) -> Result<()> {
        let profile = self.profile();
        let vm = self.vm(call.worker)?;
        let mut vm = vm.borrow_mut();
        let context = call.context_id;
        // A deleted root's call-outs are cancelled with it (Envoy's Context destructor), and
        // every call-out is the root's (cpp-host makes them on `root_context()`).
        if vm.store.data().root_deleted {
            return Ok(());
        }
        let is_stream = vm.store.data().streams.contains_key(&context);
        let failure = match &due {
            Due::Answer(HttpAnswer::Fail(reason)) => Some(reason.clone()),
            Due::Timeout => Some("timeout".to_owned()),
            Due::Answer(_) => None,
        };
        let response = match (due, &failure) {
            (
                Due::Answer(HttpAnswer::Respond {
                    headers,
                    body,
                    trailers,
                }),
                _,
            ) => CallResponse {
                headers,
                body,
                trailers,
            },
            (_, Some(reason)) if profile.is_kong() => {
                if !profile.calls_back_failed_dispatch() {
                    // Kong ≤ 3.8: logged, no callback; 3.8 resumes the request (ngx_wasm_module
                    // b26106c4), 3.4–3.7 answer it 500 themselves.
                    vm.store.data().log(
                        LogOrigin::Host,
                        LogLevel::Error,
                        format!("dispatch failed: {reason}"),
                    );
                    if is_stream && profile.fails_request_on_failed_dispatch() {
                        stream::host_error_reply(&mut vm, context)?;
                    } else if is_stream {
                        stream::resume_after_dispatch(&mut vm, context)?;
                    }
                    return Ok(());
                }
                CallResponse {
                    headers: Headers::new().with(":dispatch_status", reason),
                    ..CallResponse::default()
                }
            }
            _ => CallResponse::default(),
        };
        let args = if failure.is_some() {
            [context, call.token, 0, 0, 0]
        } else {
            let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            [
                context,
                call.token,
                count(response.headers.len()),
                count(response.body.len()),
                count(response.trailers.len()),
            ]
        };
        vm.store.data_mut().call_response = Some(response);
        let result = if is_stream {
            stream::call(&mut vm, context, Callback::HttpCallResponse, &args)
        } else {
            vm.call(Callback::HttpCallResponse, context, &args)
                .map(|(r, _)| r)
        };
        vm.store.data_mut().call_response = None;
        result?;
        if is_stream {
            stream::after_callback(&mut vm, context, Callback::HttpCallResponse, None)?;
        }
        Ok(())
    }

    fn deliver_grpc(&self, call: GrpcCall, due: Due<GrpcAnswer>) -> Result<()> {
        let vm = self.vm(call.worker)?;
        let mut vm = vm.borrow_mut();
        let context = call.context_id;
        if vm.store.data().root_deleted {
            return Ok(());
        }
        let is_stream = vm.store.data().streams.contains_key(&context);
        let (callback, args) = match due {
            Due::Answer(GrpcAnswer::Message(message)) => {
                let size = u32::try_from(message.len()).unwrap_or(u32::MAX);
                vm.store.data_mut().grpc_message = Some(message);
                (Callback::GrpcReceive, [context, call.token, size])
            }
            Due::Answer(GrpcAnswer::Status(code, message)) => {
                vm.store.data_mut().grpc_status = Some((code, message));
                (Callback::GrpcClose, [context, call.token, code])
            }
            Due::Answer(GrpcAnswer::Never) | Due::Timeout => {
                vm.store.data_mut().grpc_status =
                    Some((GRPC_DEADLINE_EXCEEDED, "timeout".to_owned()));
                (
                    Callback::GrpcClose,
                    [context, call.token, GRPC_DEADLINE_EXCEEDED],
                )
            }
        };
        let result = if is_stream {
            stream::call(&mut vm, context, callback, &args)
        } else {
            vm.call(callback, context, &args).map(|(r, _)| r)
        };
        let state = vm.store.data_mut();
        state.grpc_message = None;
        state.grpc_status = None;
        result?;
        if is_stream {
            stream::after_callback(&mut vm, context, callback, None)?;
        }
        Ok(())
    }

    /// Every log line so far, plugin and host, of every worker.
    pub fn logs(&self) -> Vec<LogEntry> {
        self.world().logs.clone()
    }

    /// Properties a plugin asked for that the Kong profile does not support (answered NotFound).
    pub fn refused_properties(&self) -> Vec<RefusedProperty> {
        self.world().refused_properties.clone()
    }

    /// Every metric defined so far, by name.
    pub fn metrics(&self) -> BTreeMap<String, MetricValue> {
        self.world().metrics.snapshot()
    }

    /// A shared-data entry: its value and cas.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.world().shared_data.get(key.as_bytes())
    }

    /// Writes a shared-data entry from the test (lands whatever the cas).
    pub fn put_shared_data(&self, key: &str, value: impl AsRef<[u8]>) {
        self.world().shared_data.put(key.as_bytes(), value.as_ref());
    }

    /// Gives an existing shared-data entry this version, as if written that many times: Kong's
    /// version is a u32 that wraps to 0. Returns whether the key exists.
    pub fn age_shared_data(&self, key: &str, cas: u32) -> bool {
        self.world().shared_data.age(key.as_bytes(), cas)
    }

    /// Every shared-data key held now, in byte order (lossy UTF-8): how much state plugins keep.
    pub fn shared_data_keys(&self) -> Vec<String> {
        self.world()
            .shared_data
            .keys()
            .iter()
            .map(|key| String::from_utf8_lossy(key).into_owned())
            .collect()
    }

    /// Fault injection: while `true`, every header map write the plugins make fails with
    /// INTERNAL_FAILURE (local replies still go out).
    pub fn refuse_header_writes(&self, refuse: bool) {
        self.world().refuse_header_writes = refuse;
    }

    /// Fault injection: while `Some`, shared data misbehaves as [`SharedDataFault`] says, for
    /// every VM of this host; `None` restores it (what it held before is untouched).
    pub fn fail_shared_data(&self, fault: Option<SharedDataFault>) {
        self.world().shared_data_fault = fault;
    }

    /// Evicts a shared-data key as Kong's shm zone does under memory pressure (its default
    /// `slru` eviction); returns whether it was there. Envoy never evicts shared data, so the
    /// Envoy profile refuses.
    pub fn evict_shared_data(&self, key: &str) -> Result<bool> {
        match self.profile() {
            Profile::Kong(_) => Ok(self.world().shared_data.evict(key.as_bytes())),
            Profile::Envoy => Err(Failure::usage(
                "Envoy never evicts shared data: eviction exists only in the Kong profile",
            )),
        }
    }

    /// Items waiting in a shared queue.
    pub fn queue_len(&self, name: &str) -> usize {
        let world = self.world();
        world
            .queues
            .resolve("", name.as_bytes())
            .map_or(0, |id| world.queues.len(id))
    }

    /// A property every request (and the root context) sees unless a request sets its own.
    pub fn set_property(&self, path: &str, value: impl Into<PropertyValue>) {
        self.world()
            .properties
            .insert(path.to_owned(), value.into());
    }

    /// An Envoy cluster dispatches may target.
    pub fn add_cluster(&self, name: &str) {
        self.world().clusters.insert(name.to_owned());
    }

    /// The next HTTP dispatch to `upstream` gets this reply (FIFO per upstream). Also makes
    /// `upstream` a known Envoy cluster.
    pub fn script_http_call(&self, upstream: &str, reply: CalloutReply) {
        let mut world = self.world();
        world.clusters.insert(upstream.to_owned());
        world.callouts.script_http(upstream, reply);
    }

    /// Answers a pending dispatch now (plus the reply's delay).
    pub fn answer_http_call(&self, token: u32, reply: CalloutReply) -> Result<()> {
        let now = self.elapsed();
        if !self.world().callouts.answer_http(token, now, reply) {
            return Err(Failure::usage(format!("no pending HTTP call {token}")));
        }
        self.settle()
    }

    /// Every HTTP dispatch so far, by token.
    pub fn http_calls(&self) -> Vec<HttpCall> {
        self.world()
            .callouts
            .http
            .values()
            .map(|(call, _)| call.clone())
            .collect()
    }

    /// The next gRPC call to `upstream` gets this reply; also makes it a known cluster.
    pub fn script_grpc_call(&self, upstream: &str, reply: GrpcReply) {
        let mut world = self.world();
        world.clusters.insert(upstream.to_owned());
        world.callouts.script_grpc(upstream, reply);
    }

    pub fn grpc_calls(&self) -> Vec<GrpcCall> {
        self.world()
            .callouts
            .grpc
            .values()
            .map(|(call, _)| call.clone())
            .collect()
    }
}
