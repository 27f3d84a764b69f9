//! The root context every Palisade plugin shares: configure once (strictly, all or nothing),
//! then hand the compiled engine to each HTTP context.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::config::{self, ConfigError, PluginConfig};
use crate::reply::ErrorReply;

/// What a plugin crate provides to the shared root context.
pub trait Plugin: 'static {
    /// `palisade-auth`, ...: prefixes every log line.
    const NAME: &'static str;
    type Config: PluginConfig;
    /// The compiled, immutable form of the config (regexes built, keys parsed), shared by every
    /// HTTP context of this worker.
    type Engine: 'static;

    /// Turns a validated config into the engine; problems found here refuse the config too.
    fn compile(config: Self::Config) -> Result<Self::Engine, ConfigError>;

    fn http_context(engine: Rc<Self::Engine>, context_id: u32) -> Box<dyn HttpContext>;

    /// How often the root context's `on_tick` should run for this engine; `None` (the
    /// default): never. Set once per configuration (Kong traps on a second setting).
    fn tick_period(_engine: &Self::Engine) -> Option<std::time::Duration> {
        None
    }

    /// The root context's timer fired (resume paused streams, flush batches...).
    fn on_tick(_engine: &Self::Engine) {}

    /// The answer to an HTTP call-out the root context made (from `on_tick`): both hosts
    /// deliver it to the root context. Read it with `callout::http_call_response`.
    fn on_root_http_call_response(
        _engine: &Self::Engine,
        _token: u32,
        _num_headers: usize,
        _body_size: usize,
    ) {
    }
}

/// Sets up logging and registers the plugin's root context. Call from `proxy_wasm::main!`.
pub fn start<P: Plugin>() {
    super::init_logging(P::NAME);
    proxy_wasm::set_root_context(|_| {
        Box::new(PluginRoot::<P> {
            engine: None,
            tick: super::callout::RootTick::default(),
        })
    });
}

struct PluginRoot<P: Plugin> {
    engine: Option<Rc<P::Engine>>,
    tick: super::callout::RootTick,
}

impl<P: Plugin> Context for PluginRoot<P> {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(engine) = &self.engine {
            P::on_root_http_call_response(engine, token_id, num_headers, body_size);
        }
    }
}

impl<P: Plugin> RootContext for PluginRoot<P> {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        log::info!(
            "[{}] version {} (revision {}) starting",
            P::NAME,
            crate::VERSION,
            crate::GIT_REV
        );
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let compiled = super::plugin_configuration()
            .map_err(|err| err.to_string())
            .and_then(|bytes| config::load::<P::Config>(&bytes).map_err(|err| err.to_string()))
            .and_then(|config| P::compile(config).map_err(|err| err.to_string()));
        match compiled {
            Ok(engine) => {
                if let Some(period) = P::tick_period(&engine) {
                    if let Err(err) = self.tick.set(P::NAME, period) {
                        log::error!("[{}] configuration rejected: no timer: {err}", P::NAME);
                        return false;
                    }
                }
                self.engine = Some(Rc::new(engine));
                log::info!("[{}] configuration accepted", P::NAME);
                true
            }
            Err(reason) => {
                // One line, naming the field and the reason. Nothing of the new config applies.
                log::error!("[{}] configuration rejected: {reason}", P::NAME);
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(engine) = &self.engine {
            P::on_tick(engine);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(match &self.engine {
            Some(engine) => P::http_context(Rc::clone(engine), context_id),
            // A host that runs a plugin whose configuration was refused: fail closed rather
            // than let traffic through a plugin that does not know what to enforce (returning
            // None here would make the SDK panic and kill the VM).
            None => Box::new(Unconfigured { plugin: P::NAME }),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Unconfigured {
    plugin: &'static str,
}

impl Context for Unconfigured {}

impl HttpContext for Unconfigured {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let reply = ErrorReply::new(503, format!("{} is not configured", self.plugin));
        // Like every other refusal, quote the request's id so the client can report it.
        match super::send_error(self.plugin, &reply, super::request_id().as_deref()) {
            Ok(()) => Action::Pause,
            // Still fail closed: the request stays paused rather than pass unenforced.
            Err(err) => {
                log::error!(
                    "[{}] could not refuse an unconfigured request: {err}",
                    self.plugin
                );
                Action::Pause
            }
        }
    }
}

/// The HTTP context of a plugin whose own logic has not landed yet: lets every request through
/// untouched.
pub struct PassThrough;

impl Context for PassThrough {}

impl HttpContext for PassThrough {}

/// The whole adapter of a plugin whose own logic has not landed yet: its configuration is
/// parsed and validated in `on_configure` like any other (refused with one log line), and
/// traffic passes through untouched.
#[macro_export]
macro_rules! pass_through_plugin {
    ($name:literal, $config:ty) => {
        struct ValidatedPassThrough;

        impl $crate::host::Plugin for ValidatedPassThrough {
            const NAME: &'static str = $name;
            type Config = $config;
            type Engine = $config;

            fn compile(config: $config) -> Result<$config, $crate::config::ConfigError> {
                Ok(config)
            }

            fn http_context(
                _engine: ::std::rc::Rc<$config>,
                _context_id: u32,
            ) -> Box<dyn ::proxy_wasm::traits::HttpContext> {
                Box::new($crate::host::PassThrough)
            }
        }

        ::proxy_wasm::main! {{
            $crate::host::start::<ValidatedPassThrough>();
        }}
    };
}
