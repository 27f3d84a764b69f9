//! API-key lookup on hostile headers and queries: never panics, and only the one real key (in
//! one of its accepted spellings) authenticates.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_auth::api_keys::{ApiKeyOutcome, ApiKeys, ApiKeysConfig};

fn keys() -> &'static ApiKeys {
    static KEYS: OnceLock<ApiKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        // printf %s alpha-key-1 | sha256sum
        let config: ApiKeysConfig = serde_json::from_str(
            r#"{"from":[{"header":{"name":"x-api-key"}},
                        {"header":{"name":"authorization","prefix":"ApiKey "}},
                        {"query":{"name":"api_key"}}],
                "keys":[{"sha256":"43b55e4e8bedb56b2b27b73ae0cdbc9ff724dd55b1af0bd7e67d7e5c919c3d29","consumer":"alpha"}]}"#,
        )
        .expect("fuzz config parses");
        config.compile()
    })
}

fuzz_target!(|data: &[u8]| {
    // Fields separated by NUL: header name, header value, [name, value]..., last one the query.
    let parts: Vec<&[u8]> = data.split(|&b| b == 0).collect();
    let (query, pairs) = match parts.split_last() {
        Some((query, pairs)) => (Some(*query), pairs),
        None => (None, &[][..]),
    };
    let headers: Vec<(&[u8], &[u8])> = pairs
        .chunks_exact(2)
        .map(|pair| (pair[0], pair[1]))
        .collect();
    let keys = keys();
    if let ApiKeyOutcome::Valid(key) = keys.authenticate(&headers, query) {
        assert_eq!(key.consumer, "alpha");
    }
    if let Some(query) = query {
        if let Some(stripped) = keys.query_without_keys(query) {
            assert!(stripped.len() < query.len() || query.is_empty());
        }
    }
});
