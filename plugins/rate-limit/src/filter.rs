//! The proxy-wasm adapter: glue only.

use std::rc::Rc;

use palisade_kit::config::ConfigError;
use palisade_kit::host::{self, PassThrough, Plugin};
use proxy_wasm::traits::HttpContext;

use crate::config::RateLimitConfig;

struct RateLimit;

impl Plugin for RateLimit {
    const NAME: &'static str = "palisade-rate-limit";
    type Config = RateLimitConfig;
    type Engine = RateLimitConfig;

    fn compile(config: RateLimitConfig) -> Result<RateLimitConfig, ConfigError> {
        Ok(config)
    }

    fn http_context(_engine: Rc<RateLimitConfig>, _context_id: u32) -> Box<dyn HttpContext> {
        Box::new(PassThrough)
    }
}

proxy_wasm::main! {{
    host::start::<RateLimit>();
}}
