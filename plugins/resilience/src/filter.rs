//! The proxy-wasm adapter: glue only.

use std::rc::Rc;

use palisade_kit::config::ConfigError;
use palisade_kit::host::{self, PassThrough, Plugin};
use proxy_wasm::traits::HttpContext;

use crate::config::ResilienceConfig;

struct Resilience;

impl Plugin for Resilience {
    const NAME: &'static str = "palisade-resilience";
    type Config = ResilienceConfig;
    type Engine = ResilienceConfig;

    fn compile(config: ResilienceConfig) -> Result<ResilienceConfig, ConfigError> {
        Ok(config)
    }

    fn http_context(_engine: Rc<ResilienceConfig>, _context_id: u32) -> Box<dyn HttpContext> {
        Box::new(PassThrough)
    }
}

proxy_wasm::main! {{
    host::start::<Resilience>();
}}
