//! JWT and JWKS entry points on hostile bytes: a JWKS document parsed as a provider's keys, a
//! raw bearer token, and a token assembled from arbitrary header, payload and signature bytes
//! (so the fuzzer reaches claim and signature checks, not only base64). Refusing is fine,
//! panicking is not; an assembled token, whose signature the fuzzer made up, is never accepted.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use palisade_auth::config::AuthConfig;
use palisade_auth::engine::{Authenticator, InlineKeys, Verdict};
use palisade_auth::jwks::KeySet;
use palisade_kit::config::{load, Problems};

/// Seconds since the epoch the tokens are checked at (2026-12-01).
const NOW: u64 = 1_796_083_200;

thread_local! {
    // Built once: keys are prepared at configuration time, as in the plugin. (Not Sync: the
    // prepared keys are reference-counted, as a Wasm worker needs.)
    static ENGINE: Authenticator = authenticator();
}

/// RS256/ES256 keys of the bench fixtures, and an HMAC provider.
fn authenticator() -> Authenticator {
    {
        let jwks = include_str!("../../host-tests/fixtures/bench/jwks.json");
        let config = format!(
            r#"{{"providers": [
                {{"name": "keys", "issuer": "https://idp.bench.example", "audiences": ["palisade-bench"],
                  "algorithms": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"],
                  "jwks": {{"inline": {jwks}}}}},
                {{"name": "hmac", "issuer": "https://hmac.example", "audiences": ["palisade-bench"],
                  "algorithms": ["HS256", "HS384", "HS512"], "jwks": null,
                  "hmac_secret": "cGFsaXNhZGUtZnV6ei1obWFjLXNlY3JldC1wYWxpc2FkZS1mdXp6LWhtYWMtc2VjcmV0LXBhbGlzYWRlLWZ1enotaG1hYy1zZWNyZXQt"}}
            ]}}"#
        );
        let config: AuthConfig = load(config.as_bytes()).expect("the fuzz auth config loads");
        let mut problems = Problems::default();
        let engine = Authenticator::build(&config, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        engine
    }
}

/// Verifies a token; with `forged`, it must not be accepted.
fn check(token: &[u8], forged: bool) {
    let mut bearer = b"Bearer ".to_vec();
    bearer.extend_from_slice(token);
    let headers: [(&[u8], &[u8]); 3] = [
        (b":method", b"GET"),
        (b":path", b"/"),
        (b"authorization", &bearer),
    ];
    let verdict = ENGINE.with(|engine| engine.authenticate(&headers, NOW, &InlineKeys));
    // The fuzzer has no private key: an assembled token's signature is arbitrary bytes (the
    // seed corpus holds no real signature in this mode), so it never verifies. Raw tokens
    // include the valid bench tokens of the seed corpus.
    assert!(
        !(forged && matches!(verdict, Verdict::Allow(_))),
        "a forged token was accepted: {}",
        String::from_utf8_lossy(token)
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let _ = KeySet::parse(rest);
        }
        1 => check(rest, false),
        _ => {
            let mut parts = rest.splitn(3, |&b| b == 0);
            let header = parts.next().unwrap_or_default();
            let payload = parts.next().unwrap_or_default();
            let signature = parts.next().unwrap_or_default();
            let token = format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(payload),
                URL_SAFE_NO_PAD.encode(signature)
            );
            check(token.as_bytes(), true);
        }
    }
});
