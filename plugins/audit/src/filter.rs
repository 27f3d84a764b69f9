//! The proxy-wasm adapter: glue only.

use std::rc::Rc;

use palisade_kit::config::ConfigError;
use palisade_kit::host::{self, PassThrough, Plugin};
use proxy_wasm::traits::HttpContext;

use crate::config::AuditConfig;

struct Audit;

impl Plugin for Audit {
    const NAME: &'static str = "palisade-audit";
    type Config = AuditConfig;
    type Engine = AuditConfig;

    fn compile(config: AuditConfig) -> Result<AuditConfig, ConfigError> {
        Ok(config)
    }

    fn http_context(_engine: Rc<AuditConfig>, _context_id: u32) -> Box<dyn HttpContext> {
        Box::new(PassThrough)
    }
}

proxy_wasm::main! {{
    host::start::<Audit>();
}}
