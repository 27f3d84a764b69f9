//! The proxy-wasm adapter: glue only.

use std::rc::Rc;

use palisade_kit::config::ConfigError;
use palisade_kit::host::{self, Map, Plugin};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::HeaderSecurityConfig;
use crate::security_headers::SecurityHeaders;

struct HeaderSecurity;

impl Plugin for HeaderSecurity {
    const NAME: &'static str = "palisade-header-security";
    type Config = HeaderSecurityConfig;
    type Engine = SecurityHeaders;

    fn compile(config: HeaderSecurityConfig) -> Result<SecurityHeaders, ConfigError> {
        Ok(SecurityHeaders::new(&config.security_headers))
    }

    fn http_context(engine: Rc<SecurityHeaders>, _context_id: u32) -> Box<dyn HttpContext> {
        Box::new(Stream { headers: engine })
    }
}

struct Stream {
    headers: Rc<SecurityHeaders>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // A header the host refuses to change is logged and skipped: the response still goes
        // out, with every other header applied.
        for name in &self.headers.remove {
            if let Err(err) = host::remove_header(Map::ResponseHeaders, name) {
                log::warn!("[palisade-header-security] could not remove {name}: {err}");
            }
        }
        for (name, value) in &self.headers.set {
            if let Err(err) = host::set_header(Map::ResponseHeaders, name, value.as_bytes()) {
                log::warn!("[palisade-header-security] could not set {name}: {err}");
            }
        }
        Action::Continue
    }
}

proxy_wasm::main! {{
    host::start::<HeaderSecurity>();
}}
