//! One Wasm VM (a wasmtime instance standing for one proxy worker): its state as host functions
//! see it, and calling its callbacks with fuel metering and trap reporting.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use wasmtime::{Func, Instance, Memory, Store, TypedFunc, Val};

use super::abi::LogLevel;
use super::error::{Failure, FailureKind, Result};
use super::logs::{LogEntry, LogOrigin};
use super::profile::Profile;
use super::random::SeededRandom;
use super::stream::StreamData;
use super::world::World;

/// Fuel a single callback may burn before the host calls it a runaway loop.
const FUEL_PER_CALLBACK: u64 = 20_000_000_000;

/// A guest export the host calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Callback {
    Initialize,
    ContextCreate,
    VmStart,
    Configure,
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
    HttpCallResponse,
    GrpcReceive,
    GrpcClose,
    Tick,
    QueueReady,
    Log,
    Done,
    Delete,
}

impl Callback {
    pub fn export(self) -> &'static str {
        match self {
            Self::Initialize => "_initialize",
            Self::ContextCreate => "proxy_on_context_create",
            Self::VmStart => "proxy_on_vm_start",
            Self::Configure => "proxy_on_configure",
            Self::RequestHeaders => "proxy_on_request_headers",
            Self::RequestBody => "proxy_on_request_body",
            Self::RequestTrailers => "proxy_on_request_trailers",
            Self::ResponseHeaders => "proxy_on_response_headers",
            Self::ResponseBody => "proxy_on_response_body",
            Self::ResponseTrailers => "proxy_on_response_trailers",
            Self::HttpCallResponse => "proxy_on_http_call_response",
            Self::GrpcReceive => "proxy_on_grpc_receive",
            Self::GrpcClose => "proxy_on_grpc_close",
            Self::Tick => "proxy_on_tick",
            Self::QueueReady => "proxy_on_queue_ready",
            Self::Log => "proxy_on_log",
            Self::Done => "proxy_on_done",
            Self::Delete => "proxy_on_delete",
        }
    }

    /// The stream callbacks ngx_wasm_module calls whether or not the module exports them.
    pub(crate) const KONG_CALLS_UNCHECKED: [Callback; 7] = [
        Self::RequestHeaders,
        Self::RequestBody,
        Self::ResponseHeaders,
        Self::ResponseBody,
        Self::Log,
        Self::Done,
        Self::Delete,
    ];

    fn kong_calls_unchecked(self) -> bool {
        Self::KONG_CALLS_UNCHECKED.contains(&self)
    }
}

impl fmt::Display for Callback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.export())
    }
}

/// What the VM is doing, for the host calls it restricts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// `_initialize`: cpp-host allows only logging and a few WASI calls.
    Initializing,
    /// Inside `proxy_on_memory_allocate`, called by the host.
    Allocating,
    Running,
}

/// The plugin identity the host answers properties with.
#[derive(Debug, Clone)]
pub(crate) struct PluginInfo {
    pub name: String,
    pub root_id: String,
    pub vm_id: String,
    pub configuration: Vec<u8>,
    pub vm_configuration: Vec<u8>,
}

/// An HTTP call's response while `on_http_call_response` runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallResponse {
    pub headers: super::headers::Headers,
    pub body: Vec<u8>,
    pub trailers: super::headers::Headers,
}

/// The store data: everything host functions read and change for this VM.
pub(crate) struct VmState {
    pub world: Rc<RefCell<World>>,
    pub profile: Profile,
    pub worker: usize,
    pub plugin: PluginInfo,
    pub root_context: u32,
    pub memory: Option<Memory>,
    pub allocator: Option<TypedFunc<u32, u32>>,
    pub phase: Phase,
    /// The context host calls act on (`proxy_set_effective_context` changes it).
    pub active_context: u32,
    /// The callback running now.
    pub callback: Option<Callback>,
    pub streams: BTreeMap<u32, StreamData>,
    /// Properties set on the root context.
    pub root_properties: BTreeMap<String, Vec<u8>>,
    pub call_response: Option<CallResponse>,
    pub grpc_message: Option<Vec<u8>>,
    pub grpc_status: Option<(u32, String)>,
    pub tick_period: Option<Duration>,
    pub next_tick: Option<Duration>,
    /// The root context's `proxy_on_done` returned false: it lives on (ticks, call-out answers)
    /// until it calls `proxy_done` (cpp-host's `pending_done_`).
    pub pending_done: bool,
    /// The root context is deleted (cpp-host's `onDelete`): its call-outs are cancelled, never
    /// answered, and it gets no more ticks.
    pub root_deleted: bool,
    /// Set by a host function that fails the test; reported instead of the bare trap.
    pub fatal: Option<Failure>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub random: SeededRandom,
    pub next_context_id: u32,
}

impl VmState {
    /// Records a failure and returns the trap that unwinds the guest.
    pub(crate) fn fail(&mut self, kind: FailureKind, message: String) -> wasmtime::Error {
        self.fatal = Some(Failure::new(kind, message.clone()));
        wasmtime::Error::msg(message)
    }

    pub(crate) fn log(&self, origin: LogOrigin, level: LogLevel, message: String) {
        self.world.borrow_mut().logs.push(LogEntry {
            worker: self.worker,
            context_id: self.active_context,
            origin,
            level,
            message,
        });
    }

    /// Books a host call (or the host's call into the guest allocator) on the stream whose
    /// callback is running; calls from root-context callbacks are not per request.
    pub(crate) fn count_host_call(&mut self, name: &'static str) {
        let Some(callback) = self.callback else {
            return;
        };
        if let Some(stream) = self.streams.get_mut(&self.active_context) {
            stream.host_calls.push((callback, name));
        }
    }

    pub(crate) fn new_context_id(&mut self) -> u32 {
        self.next_context_id += 1;
        self.next_context_id
    }
}

/// A VM: the store and its instance. After a trap it is dead, as the real worker's VM would be.
pub(crate) struct Vm {
    pub store: Store<VmState>,
    pub instance: Instance,
    pub dead: Option<Failure>,
    /// Fuel burnt by every callback so far.
    pub fuel_total: u64,
}

impl Vm {
    fn describe(&self) -> String {
        let state = self.store.data();
        format!(
            "{} worker {} ({} profile)",
            state.plugin.name,
            state.worker,
            state.profile.describe()
        )
    }

    /// Calls `callback` on `context` with i32 arguments. Returns its i32 result (`None` when it
    /// returns nothing, or the module does not export it) and the fuel it burnt.
    pub(crate) fn call(
        &mut self,
        callback: Callback,
        context: u32,
        args: &[u32],
    ) -> Result<(Option<u32>, u64)> {
        if let Some(dead) = &self.dead {
            return Err(Failure::new(
                dead.kind,
                format!(
                    "{} is dead after an earlier failure, cannot call {callback}: {}",
                    self.describe(),
                    dead.message
                ),
            ));
        }
        let Some(func) = self.instance.get_func(&mut self.store, callback.export()) else {
            if self.store.data().profile.is_kong() && callback.kong_calls_unchecked() {
                return Err(Failure::new(
                    FailureKind::HostCrash,
                    format!(
                        "{}: ngx_wasm_module calls {} without checking that the module exports it (ngx_wavm_instance_call_funcref, src/wasm/vm/ngx_wavm.c): the nginx worker crashes",
                        self.describe(),
                        callback.export()
                    ),
                ));
            }
            // Envoy calls only the callbacks a module exports (proxy-wasm-cpp-host context.cc).
            return Ok((None, 0));
        };
        let logs_before = self.store.data().world.borrow().logs.len();
        {
            let state = self.store.data_mut();
            state.phase = if callback == Callback::Initialize {
                Phase::Initializing
            } else {
                Phase::Running
            };
            state.active_context = context;
            state.callback = Some(callback);
        }
        let outcome = self.invoke(func, callback, args);
        {
            let state = self.store.data_mut();
            state.phase = Phase::Running;
            state.callback = None;
        }
        let remaining = self.store.get_fuel().unwrap_or(0);
        let fuel = FUEL_PER_CALLBACK.saturating_sub(remaining);
        self.fuel_total = self.fuel_total.saturating_add(fuel);
        match outcome {
            Ok(result) => Ok((result, fuel)),
            Err(err) => {
                let failure = self.failure(callback, err, logs_before);
                self.dead = Some(failure.clone());
                Err(failure)
            }
        }
    }

    fn invoke(
        &mut self,
        func: Func,
        callback: Callback,
        args: &[u32],
    ) -> std::result::Result<Option<u32>, wasmtime::Error> {
        let ty = func.ty(&self.store);
        if ty.params().len() != args.len() || ty.results().len() > 1 {
            return Err(wasmtime::Error::msg(format!(
                "export {callback} has signature {ty:?}, expected {} i32 parameters",
                args.len()
            )));
        }
        let params: Vec<Val> = args
            .iter()
            .map(|&a| Val::I32(i32::from_ne_bytes(a.to_ne_bytes())))
            .collect();
        let mut results = vec![Val::I32(0); ty.results().len()];
        self.store.set_fuel(FUEL_PER_CALLBACK)?;
        func.call(&mut self.store, &params, &mut results)?;
        Ok(match results.first() {
            Some(Val::I32(value)) => Some(u32::from_ne_bytes(value.to_ne_bytes())),
            _ => None,
        })
    }

    /// Turns a trap into a failure that says what happened: the host's own reason when a host
    /// function failed the call, else the trap with the plugin's last critical log line (its
    /// panic hook logs the panic message there before aborting).
    fn failure(&mut self, callback: Callback, err: wasmtime::Error, logs_before: usize) -> Failure {
        let who = self.describe();
        if let Some(fatal) = self.store.data_mut().fatal.take() {
            return Failure::new(fatal.kind, format!("{who}: {callback}: {}", fatal.message));
        }
        let state = self.store.data();
        let world = state.world.borrow();
        let panic = world
            .logs
            .get(logs_before..)
            .unwrap_or_default()
            .iter()
            .rev()
            .find(|entry| {
                entry.worker == state.worker
                    && entry.origin == LogOrigin::Plugin
                    && entry.level == LogLevel::Critical
            })
            .map(|entry| entry.message.clone());
        let cause = err.root_cause().to_string();
        let hint = if matches!(
            err.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::OutOfFuel)
        ) {
            format!(" (the callback burnt all of its {FUEL_PER_CALLBACK} fuel: a runaway loop?)")
        } else {
            String::new()
        };
        let message = match panic {
            Some(panic) => format!("{who}: {callback} trapped: {panic}\n({cause}{hint})\n{err:?}"),
            None => format!("{who}: {callback} trapped: {cause}{hint}\n{err:?}"),
        };
        Failure::new(FailureKind::Trap, message)
    }
}
