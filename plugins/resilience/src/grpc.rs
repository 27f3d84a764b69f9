//! gRPC answers as the circuit judges them. A gRPC error usually arrives with HTTP 200 and a
//! `grpc-status`: in the trailers, or in the headers when the server fails before any message
//! (a trailers-only response). Envoy's router feeds its outlier detection the HTTP status the
//! gRPC status maps to (`Grpc::Utility::grpcToHttpStatus`, source/common/grpc/status.cc); the
//! circuit breaker classifies the same mapped status, so `UNAVAILABLE` counts as a 503.

use palisade_kit::header_pairs::get;

/// Whether a request is gRPC: `content-type` `application/grpc`, alone or followed by
/// `+<format>` or parameters, as Envoy's router tells (`Grpc::Common::hasGrpcContentType`);
/// `application/grpc-web` is not.
pub fn is_grpc(headers: &[(&[u8], &[u8])]) -> bool {
    get(headers, "content-type").is_some_and(|value| {
        let value = value.trim_ascii();
        value
            .get(..16)
            .is_some_and(|head| head.eq_ignore_ascii_case(b"application/grpc"))
            && matches!(value.get(16), None | Some(b'+' | b';'))
    })
}

/// The HTTP status a `grpc-status` value stands for; a value that is no number maps to 500
/// (Envoy's `InvalidCode`).
pub fn http_status(grpc_status: &[u8]) -> u16 {
    let code = std::str::from_utf8(grpc_status)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok());
    match code {
        Some(0) => 200,
        Some(1) => 499,
        Some(3 | 9 | 11) => 400,
        Some(4) => 504,
        Some(5) => 404,
        Some(6 | 10) => 409,
        Some(7) => 403,
        Some(8) => 429,
        Some(12) => 501,
        Some(14) => 503,
        Some(16) => 401,
        // Unknown (2), Internal (13), DataLoss (15), and anything else.
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn grpc_statuses_map_as_envoys_router_maps_them() {
        let cases: [(&[u8], u16); 20] = [
            (b"0", 200),
            (b"1", 499),
            (b"2", 500),
            (b"3", 400),
            (b"4", 504),
            (b"5", 404),
            (b"6", 409),
            (b"7", 403),
            (b"8", 429),
            (b"9", 400),
            (b"10", 409),
            (b"11", 400),
            (b"12", 501),
            (b"13", 500),
            (b"14", 503),
            (b"15", 500),
            (b"16", 401),
            (b"17", 500),
            (b"", 500),
            (b"\xff", 500),
        ];
        for (value, status) in cases {
            assert_eq!(http_status(value), status, "{value:?}");
        }
    }

    #[test]
    fn only_grpc_content_types_are_grpc() {
        let is = |value: &[u8]| is_grpc(&[(b"content-type".as_slice(), value)]);
        assert!(is(b"application/grpc"));
        assert!(is(b"Application/GRPC+proto"));
        assert!(is(b"application/grpc; charset=utf-8"));
        assert!(!is(b"application/grpc-web"));
        assert!(!is(b"application/json"));
        assert!(!is(b"application/grp"));
        assert!(!is_grpc(&[]));
    }
}
