//! The release `.wasm` of each plugin stays within its size ceiling: every proxy worker
//! compiles and holds it, and Istio pulls it per pod. The ceilings sit a little above today's
//! sizes, so growth is a decision rather than an accident.
//!
//! The plugins other than auth are built at opt-level 3 (Cargo.toml: their cost in V8 is their
//! instruction count), which costs them ~30% in size; auth stays at "z" but shares the kit and
//! the SDK, built at 3 for everyone, which cost it ~29 KB.
//!
//! palisade-auth's budget in issue #11 is 700 KB, now its ceiling; it is at ~696 KB (811 KB
//! before RSA and ECDSA moved from the RustCrypto crates to palisade-pubkey; `p384` alone was
//! ~120 KB).
//! Where it goes (measured from the name section of an unstripped build, docs/auth.md "Wasm
//! size"): core ~90 KB, serde_json and the derived config deserializers ~85 KB, our own code
//! ~82 KB, alloc's collections ~68 KB, palisade-pubkey ~55 KB, regex-lite ~29 KB.

use palisade_host_tests::envoy_harness::wasm_dir;

/// Bytes each plugin's release `.wasm` may take.
const CEILINGS: [(&str, u64); 5] = [
    ("palisade_auth.wasm", 700_000),
    // 457,852: +16 KB for the rate-limit service's headers and `call_per_limit` (spread over
    // the call-out paths, twiggy diff), +4 KB for sealing a key placed past other keys' slots.
    // 461,068: +1.2 KB to hold calls after one Kong 3.4-3.8 never answered.
    // 465,264: +1 KB to key a limit's slots by its definition, +3 KB to match routes and path
    // keys on the normalised path (the kit's `path::normalize`: `/login;x` dodged a login limit).
    ("palisade_rate_limit.wasm", 470_000),
    // 410,785: +1.1 KB to remember a share whose write failed and rewrite it at the next
    // renewal (a failed release had other workers shed against it for a whole lease).
    // 415,127: +0.5 KB to bound gauge names built from upstream names (Kong traps past 256).
    ("palisade_resilience.wasm", 420_000),
    ("palisade_header_security.wasm", 470_000),
    // 460,244 with the byte budget for buffered events; 467,320: +2.2 KB to redact URLs in
    // captured headers (a Referer's query), +1.1 KB to split a batch a collector refuses as
    // too large (413) instead of dropping it.
    ("palisade_audit.wasm", 470_000),
];

#[test]
fn every_plugin_stays_within_its_size_ceiling() {
    let dir = wasm_dir();
    let mut over = Vec::new();
    for (file, ceiling) in CEILINGS {
        let size = std::fs::metadata(dir.join(file))
            .unwrap_or_else(|err| panic!("{file}: {err}"))
            .len();
        println!("{file}: {size} bytes (ceiling {ceiling})");
        if size > ceiling {
            over.push(format!("{file}: {size} bytes > {ceiling}"));
        }
    }
    assert!(over.is_empty(), "{over:?}");
}
