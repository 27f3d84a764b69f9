//! palisade-rate-limit's answers from a rate-limit service: any bytes, as protobuf (gRPC) and
//! as lyft's JSON, give a response or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_rate_limit::proto::RateLimitResponse;

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = RateLimitResponse::from_protobuf(data) {
        assert!(response.statuses.len() <= palisade_rate_limit::proto::MAX_STATUSES);
    }
    let _ = RateLimitResponse::from_json(data);
});
