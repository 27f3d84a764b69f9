//! The proxy-wasm header-map encoding, as a host might hand it over: decoding never panics or
//! over-reads, and what decodes re-encodes to a map that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_kit::header_pairs::{decode_borrowed, encode};

fuzz_target!(|data: &[u8]| {
    if let Some(fields) = decode_borrowed(data) {
        let again = encode(&fields);
        assert_eq!(decode_borrowed(&again), Some(fields));
    }
});
