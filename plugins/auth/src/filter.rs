//! The proxy-wasm adapter: glue only.

use std::rc::Rc;

use palisade_kit::config::ConfigError;
use palisade_kit::host::{self, PassThrough, Plugin};
use proxy_wasm::traits::HttpContext;

use crate::config::AuthConfig;

struct Auth;

impl Plugin for Auth {
    const NAME: &'static str = "palisade-auth";
    type Config = AuthConfig;
    type Engine = AuthConfig;

    fn compile(config: AuthConfig) -> Result<AuthConfig, ConfigError> {
        Ok(config)
    }

    fn http_context(_engine: Rc<AuthConfig>, _context_id: u32) -> Box<dyn HttpContext> {
        Box::new(PassThrough)
    }
}

proxy_wasm::main! {{
    host::start::<Auth>();
}}
