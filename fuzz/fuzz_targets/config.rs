//! Every plugin's configuration parser and validator on arbitrary bytes: refusing is fine,
//! panicking is not (a panic in `on_configure` kills the VM). The first byte picks the plugin.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_kit::config::{load, Problems};

fuzz_target!(|data: &[u8]| {
    let Some((which, config)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            let _ = load::<palisade_auth::config::AuthConfig>(config);
        }
        1 => {
            let _ = load::<palisade_rate_limit::config::RateLimitConfig>(config);
        }
        2 => {
            let _ = load::<palisade_resilience::config::ResilienceConfig>(config);
        }
        3 => {
            // Also compile what validated: regexes, origin patterns, transforms.
            if let Ok(config) =
                load::<palisade_header_security::config::HeaderSecurityConfig>(config)
            {
                let mut problems = Problems::default();
                let _ =
                    palisade_header_security::engine::HeaderSecurity::build(&config, &mut problems);
            }
        }
        _ => {
            let _ = load::<palisade_audit::config::AuditConfig>(config);
        }
    }
});
