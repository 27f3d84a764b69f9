//! header-security's request and response decisions on hostile headers: arbitrary names and
//! values (not UTF-8, control characters, huge), with CORS by exact, wildcard and regex origins,
//! limits and transforms all on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_header_security::config::HeaderSecurityConfig;
use palisade_header_security::engine::{HeaderSecurity, HostValues, StreamState};
use palisade_kit::config::{load, Problems};
use palisade_kit::header_pairs::decode_borrowed;
use palisade_kit::random::Xoshiro256;

const CONFIG: &[u8] = br#"{
  "security_headers": {"preset": "strict"},
  "cors": {"allow_origins": [{"exact": "https://app.example.com"}, {"wildcard": "https://*.example.org"},
                             {"regex": "https://[a-z]+\\.example\\.net"}],
           "allow_methods": ["GET", "POST"], "allow_headers": ["authorization"], "expose_headers": ["x-request-id"],
           "max_age": "10m", "allow_credentials": true},
  "limits": {"max_header_count": 50, "max_header_bytes": 8192, "allowed_methods": ["GET", "POST", "OPTIONS"],
             "allowed_hosts": ["api.example.com", "*.example.org"]},
  "transforms": {"request": [{"set": {"name": "x-client", "value": "${client_address}"}},
                             {"rename": {"from": "x-old", "to": "x-new"}}],
                 "response": [{"set": {"name": "x-route", "value": "${route}"}}, {"remove": "x-internal"}]},
  "trace_context": {"create": true, "sampling_rate": 0.5}
}"#;

struct Host;

impl HostValues for Host {
    fn client_address(&mut self) -> Option<String> {
        Some("203.0.113.9".to_owned())
    }
    fn route(&mut self) -> Option<String> {
        Some("orders".to_owned())
    }
}

fn engine() -> &'static HeaderSecurity {
    // Per thread, as a proxy worker holds it (the engine shares strings through `Rc`).
    thread_local! {
        static ENGINE: &'static HeaderSecurity = Box::leak(Box::new({
            let config: HeaderSecurityConfig = load(CONFIG).expect("the fuzz config is valid");
            let mut problems = Problems::default();
            let engine = HeaderSecurity::build(&config, &mut problems);
            problems.into_result().expect("the fuzz config compiles");
            engine
        }));
    }
    ENGINE.with(|engine| *engine)
}

fuzz_target!(|data: &[u8]| {
    // Request headers, then response headers, each an encoded map; a body length between them.
    let Some(request) = decode_borrowed(data) else {
        return;
    };
    let mut rng = Xoshiro256::from_seed([7; 32]);
    let mut state = StreamState::default();
    let engine = engine();
    let _ = engine.on_request_headers(&request, true, &mut rng, &mut Host, &mut state);
    let _ = engine.on_request_body(&mut state, data.len().saturating_mul(1 << 20));
    let _ = engine.on_response_headers(&state, &request, &mut Host);
});
