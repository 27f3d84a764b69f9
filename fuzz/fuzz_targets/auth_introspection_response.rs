//! Introspection answers from a hostile endpoint: parsing never panics, and whatever is cached
//! is never served past the token's `exp`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_auth::introspection::{CachedAnswer, Introspected, IntrospectionConfig, TokenKey};

fuzz_target!(|data: &[u8]| {
    let config: IntrospectionConfig = serde_json::from_str(
        r#"{"upstream":"idp","authority":"idp","path":"/introspect","client_id":"c",
            "client_secret":"s","audiences":["api"],"cache_entries":4,"negative_cache_entries":4}"#,
    )
    .expect("fuzz config parses");
    let introspector = config.compile();
    let now_ms = 1_700_000_000_000u64;
    let Ok(answer) = introspector.parse_response(Some(200), data, data.len(), now_ms) else {
        return;
    };
    let mut cache = introspector.new_cache();
    let key = TokenKey::of(data);
    cache.insert(key, &answer, now_ms);
    if let Introspected::Active(info) = &answer {
        if let Some(exp) = info.exp {
            let after = exp.saturating_mul(1000);
            assert!(!matches!(
                cache.get(&key, after),
                Some(CachedAnswer::Active(_))
            ));
        }
    }
});
