//! Rules from a hostile configuration, then decisions on hostile requests: validation and
//! compilation agree, and nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_auth::rules::{RequestFacts, RuleDecision, RulesConfig};
use palisade_kit::config::Problems;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(5, |&b| b == 0);
    let config = parts.next().unwrap_or_default();
    let authority = parts.next();
    let path = std::str::from_utf8(parts.next().unwrap_or_default()).unwrap_or("/");
    let method = parts.next().unwrap_or(b"GET");
    let principal = parts.next();
    let Ok(config) = serde_json::from_slice::<RulesConfig>(config) else {
        return;
    };
    let mut problems = Problems::default();
    config.validate(&mut problems);
    let compiled = config.compile();
    if !problems.is_empty() {
        return;
    }
    let rules = compiled.expect("a validated config compiles");
    let decision = rules.decide(&RequestFacts {
        authority,
        path,
        method,
        peer_principal: principal,
    });
    if let RuleDecision::Require { requirement, .. } = decision {
        let claims = serde_json::json!({"scope": path, "scp": [path], "sub": "x"});
        let _ = requirement.authorize(&claims);
    }
});
