//! Loading a plugin into worker VMs (`_initialize`, root context, `on_vm_start`,
//! `on_configure`), and the handles a test gets back: the plugin's workers and their streams.

use std::collections::BTreeMap;

use wasmtime::Store;

use super::abi::LogLevel;
use super::engine::{self, Plugin};
use super::error::{Failure, FailureKind, Result};
use super::headers::Request;
use super::host::Host;
use super::http_stream::HttpStream;
use super::logs::{LogEntry, LogOrigin};
use super::random::SeededRandom;
use super::stream::{self, StreamData};
use super::vm::{Callback, Phase, PluginInfo, Vm, VmState};

/// What `on_configure` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Configured {
    Accepted,
    /// `on_configure` returned false; `log` is the last error-level line it logged.
    Rejected {
        log: Option<String>,
    },
}

/// A plugin load being set up ([`Host::loader`]).
pub struct Load {
    host: Host,
    plugin: Plugin,
    name: String,
    configuration: Vec<u8>,
    vm_configuration: Vec<u8>,
    root_id: String,
    workers: usize,
}

impl Load {
    pub(crate) fn new(host: Host, plugin: Plugin) -> Self {
        Self {
            host,
            name: plugin.name(),
            plugin,
            configuration: Vec::new(),
            vm_configuration: Vec::new(),
            root_id: String::new(),
            workers: 1,
        }
    }

    /// The plugin configuration (`proxy_get_buffer_bytes(PluginConfiguration)`).
    pub fn configuration(mut self, configuration: impl AsRef<[u8]>) -> Self {
        self.configuration = configuration.as_ref().to_vec();
        self
    }

    pub fn vm_configuration(mut self, configuration: impl AsRef<[u8]>) -> Self {
        self.vm_configuration = configuration.as_ref().to_vec();
        self
    }

    pub fn root_id(mut self, root_id: &str) -> Self {
        self.root_id = root_id.to_owned();
        self
    }

    /// The `plugin_name` property (default: the `.wasm` file stem).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Instantiates every worker: `_initialize`, root context, `on_vm_start`, `on_configure`.
    pub fn start(self) -> Result<PluginVms> {
        let module = engine::module(&self.plugin, self.host.profile())?;
        let mut indices = Vec::new();
        let mut configured = Vec::new();
        for _ in 0..self.workers {
            let (index, result) = self.start_worker(&module)?;
            indices.push(index);
            configured.push(result);
        }
        let first = configured.first().cloned().unwrap_or(Configured::Accepted);
        if configured.iter().any(|c| c != &first) {
            return Err(Failure::load(format!(
                "workers disagree on the configuration: {configured:?}"
            )));
        }
        Ok(PluginVms {
            host: self.host,
            name: self.name,
            workers: indices,
            configured: first,
        })
    }

    fn start_worker(&self, module: &wasmtime::Module) -> Result<(usize, Configured)> {
        let host = &self.host;
        let profile = host.profile();
        let index = host.vm_count();
        let seed = host.world().seed;
        let state = VmState {
            world: host.shared_world(),
            profile,
            worker: index,
            plugin: PluginInfo {
                name: self.name.clone(),
                root_id: self.root_id.clone(),
                vm_id: String::new(),
                configuration: self.configuration.clone(),
                vm_configuration: self.vm_configuration.clone(),
            },
            root_context: 0,
            memory: None,
            allocator: None,
            phase: Phase::Running,
            active_context: 0,
            callback: None,
            streams: BTreeMap::new(),
            root_properties: BTreeMap::new(),
            call_response: None,
            grpc_message: None,
            grpc_status: None,
            tick_period: None,
            next_tick: None,
            pending_done: false,
            root_deleted: false,
            fatal: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
            random: SeededRandom::new(seed, index),
            next_context_id: 0,
        };
        let mut store = Store::new(module.engine(), state);
        for import in module.imports() {
            let known = host
                .linker()
                .get(&mut store, import.module(), import.name())
                .is_ok();
            if !known {
                let why = if profile.is_kong() && import.module() == "env" {
                    " (ngx_wasm_module refuses to load it: \"missing host function\", src/wasm/vm/ngx_wavm.c:738)"
                } else {
                    ""
                };
                return Err(Failure::load(format!(
                    "{} imports {}.{}, which the {} host does not provide{why}",
                    self.name,
                    import.module(),
                    import.name(),
                    profile.describe()
                )));
            }
        }
        let instance = host
            .linker()
            .instantiate(&mut store, module)
            .map_err(|err| Failure::load(format!("{} does not instantiate: {err:#}", self.name)))?;
        if instance
            .get_func(&mut store, "proxy_abi_version_0_2_1")
            .is_none()
        {
            return Err(Failure::load(format!(
                "{} does not export proxy_abi_version_0_2_1: this host speaks proxy-wasm ABI 0.2.1 only",
                self.name
            )));
        }
        let allocator = instance
            .get_typed_func::<u32, u32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<u32, u32>(&mut store, "malloc"))
            .ok();
        let memory = instance.get_memory(&mut store, "memory");
        {
            let state = store.data_mut();
            state.allocator = allocator;
            state.memory = memory;
        }
        let mut vm = Vm {
            store,
            instance,
            dead: None,
            fuel_total: 0,
        };
        vm.call(Callback::Initialize, 0, &[])?;
        let root = vm.store.data_mut().new_context_id();
        vm.store.data_mut().root_context = root;
        vm.call(Callback::ContextCreate, root, &[root, 0])?;
        let size = |bytes: &[u8]| u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let (started, _) = vm.call(
            Callback::VmStart,
            root,
            &[root, size(&self.vm_configuration)],
        )?;
        if started == Some(0) {
            return Err(Failure::load(format!(
                "{}: proxy_on_vm_start returned false",
                self.name
            )));
        }
        let logs_before = host.world().logs.len();
        let (accepted, _) = vm.call(
            Callback::Configure,
            root,
            &[root, size(&self.configuration)],
        )?;
        let configured = if accepted == Some(0) {
            let log = host
                .world()
                .logs
                .get(logs_before..)
                .unwrap_or_default()
                .iter()
                .rev()
                .find(|entry| {
                    entry.worker == index
                        && entry.origin == LogOrigin::Plugin
                        && entry.level >= LogLevel::Error
                })
                .map(|entry| entry.message.clone());
            Configured::Rejected { log }
        } else {
            Configured::Accepted
        };
        host.push_vm(vm);
        host.settle()?;
        Ok((index, configured))
    }
}

/// A plugin loaded into one or more workers.
pub struct PluginVms {
    host: Host,
    name: String,
    workers: Vec<usize>,
    configured: Configured,
}

impl PluginVms {
    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn configured(&self) -> &Configured {
        &self.configured
    }

    pub fn is_accepted(&self) -> bool {
        self.configured == Configured::Accepted
    }

    /// The error line `on_configure` logged when it refused the configuration.
    pub fn rejection(&self) -> Option<&str> {
        match &self.configured {
            Configured::Rejected { log } => log.as_deref(),
            Configured::Accepted => None,
        }
    }

    /// Worker `n` of this plugin (panics when there is no such worker).
    pub fn worker(&self, n: usize) -> Worker {
        let vm = *self.workers.get(n).unwrap_or_else(|| {
            panic!(
                "{} has {} workers, not {}",
                self.name,
                self.workers.len(),
                n + 1
            )
        });
        Worker {
            host: self.host.clone(),
            vm,
            configured: self.configured.clone(),
        }
    }

    pub fn workers(&self) -> Vec<Worker> {
        (0..self.workers.len()).map(|n| self.worker(n)).collect()
    }

    /// A request on worker 0.
    pub fn http_request(&self, request: Request) -> Result<HttpStream> {
        self.worker(0).http_request(request)
    }

    /// A request on worker 0 even if its configuration was refused ([`Worker::forced_request`]).
    pub fn forced_request(&self, request: Request) -> Result<HttpStream> {
        self.worker(0).forced_request(request)
    }

    /// The log lines of this plugin's workers.
    pub fn logs(&self) -> Vec<LogEntry> {
        self.host
            .logs()
            .into_iter()
            .filter(|entry| self.workers.contains(&entry.worker))
            .collect()
    }
}

/// One worker VM of a plugin.
pub struct Worker {
    host: Host,
    vm: usize,
    configured: Configured,
}

impl Worker {
    /// The VM's index in its host (the `worker` of log lines).
    pub fn index(&self) -> usize {
        self.vm
    }

    /// A new HTTP stream (`proxy_on_context_create`); drive it with [`HttpStream`]'s methods.
    pub fn http_request(&self, request: Request) -> Result<HttpStream> {
        if let Configured::Rejected { log } = &self.configured {
            return Err(Failure::usage(format!(
                "on_configure refused the configuration ({}): Envoy rejects such a configuration and Kong fails the filter chain, so no request ever reaches this plugin",
                log.as_deref().unwrap_or("no log line")
            )));
        }
        self.forced_request(request)
    }

    /// A new HTTP stream whether or not `on_configure` accepted the configuration. Neither real
    /// host sends a request to a plugin that refused its configuration ([`Self::http_request`]
    /// fails then); this checks what the plugin would do if one did (fail closed, or for
    /// palisade-audit, stay out of the way).
    pub fn forced_request(&self, request: Request) -> Result<HttpStream> {
        let context = {
            let vm = self.host.vm(self.vm)?;
            let mut vm = vm.borrow_mut();
            let state = vm.store.data_mut();
            let root = state.root_context;
            let context = state.new_context_id();
            state.streams.insert(context, StreamData::new(request));
            stream::call(&mut vm, context, Callback::ContextCreate, &[context, root])?;
            context
        };
        Ok(HttpStream {
            host: self.host.clone(),
            vm: self.vm,
            context,
        })
    }

    /// Calls `proxy_on_configure` again on the same root context with a new configuration.
    /// Neither real host does (both make a new root context for a new configuration): this
    /// checks a plugin would survive one that did. Returns whether it was accepted.
    pub fn reconfigure(&self, configuration: &str) -> Result<bool> {
        let vm = self.host.vm(self.vm)?;
        let mut vm = vm.borrow_mut();
        let state = vm.store.data_mut();
        state.plugin.configuration = configuration.as_bytes().to_vec();
        let root = state.root_context;
        let size = u32::try_from(configuration.len()).unwrap_or(u32::MAX);
        let (accepted, _) = vm.call(Callback::Configure, root, &[root, size])?;
        Ok(accepted != Some(0))
    }

    /// Tears the plugin down as Envoy does when its configuration is replaced or removed
    /// (cpp-host's `startShutdown`): the root context's `proxy_on_done`. True: done now, the
    /// root is deleted (no more ticks; its call-outs are cancelled, never answered). False: it
    /// lives on, ticking and answered, until it calls `proxy_done` ([`Self::is_root_deleted`]).
    pub fn shut_down(&self) -> Result<bool> {
        let vm = self.host.vm(self.vm)?;
        let mut vm = vm.borrow_mut();
        let root = vm.store.data().root_context;
        let (done, _) = vm.call(Callback::Done, root, &[root])?;
        let done = done != Some(0);
        let state = vm.store.data_mut();
        if done {
            state.root_deleted = true;
            state.tick_period = None;
            state.next_tick = None;
        } else {
            state.pending_done = true;
        }
        Ok(done)
    }

    /// Whether the root context is gone: done at once in `proxy_on_done`, or later through
    /// `proxy_done`.
    pub fn is_root_deleted(&self) -> Result<bool> {
        let vm = self.host.vm(self.vm)?;
        let deleted = vm.borrow().store.data().root_deleted;
        Ok(deleted)
    }

    /// Kills the VM as a trap does: no callback of it runs again (its ticks stop, its open
    /// streams never reach `on_done`/`on_log`), and calling it fails with a trap.
    pub fn crash(&self, reason: &str) -> Result<()> {
        let vm = self.host.vm(self.vm)?;
        let mut vm = vm.borrow_mut();
        vm.dead = Some(Failure::new(
            FailureKind::Trap,
            format!("crashed by the test: {reason}"),
        ));
        Ok(())
    }

    /// Plugin and host log lines of this worker.
    pub fn logs(&self) -> Vec<LogEntry> {
        self.host
            .logs()
            .into_iter()
            .filter(|entry| entry.worker == self.vm)
            .collect()
    }

    /// What the plugin wrote to stdout (WASI `fd_write` on fd 1).
    pub fn stdout(&self) -> String {
        self.with_state(|state| String::from_utf8_lossy(&state.stdout).into_owned())
    }

    pub fn stderr(&self) -> String {
        self.with_state(|state| String::from_utf8_lossy(&state.stderr).into_owned())
    }

    /// Fuel every callback of this worker burnt so far (start-up included).
    pub fn fuel(&self) -> u64 {
        self.host.vm(self.vm).map_or(0, |vm| vm.borrow().fuel_total)
    }

    fn with_state<R>(&self, f: impl FnOnce(&VmState) -> R) -> R {
        let vm = self.host.vm(self.vm).unwrap_or_else(|err| panic!("{err}"));
        let vm = vm.borrow();
        f(vm.store.data())
    }
}
