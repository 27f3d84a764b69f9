//! A compact JWS (RFC 7515 §7.1) taken apart strictly, each failure with its own
//! [`Rejection`]: size first (before any decoding), then segment count, base64url, the JOSE
//! header (`alg`, `kid`, `crit`), the claims object, the signature bytes. No key is looked at
//! here, and nothing from the token reaches an error.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use crate::config::Algorithm;
use crate::rejection::{Rejection, Segment};

/// The claims object.
pub type Claims = Map<String, Value>;

/// A token whose structure is sound; its signature is not verified yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<'t> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub claims: Claims,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'t [u8],
    pub signature: Vec<u8>,
}

/// Decodes a compact JWS of at most `max_bytes` bytes.
pub fn decode(token: &[u8], max_bytes: usize) -> Result<Decoded<'_>, Rejection> {
    if token.len() > max_bytes {
        return Err(Rejection::TooLarge { limit: max_bytes });
    }
    let segments = token.iter().filter(|&&b| b == b'.').count() + 1;
    let mut parts = token.splitn(3, |&b| b == b'.');
    let (Some(header), Some(payload), Some(signature), 3) =
        (parts.next(), parts.next(), parts.next(), segments)
    else {
        return Err(Rejection::SegmentCount(segments));
    };
    let signing_input = token
        .get(..header.len() + 1 + payload.len())
        .ok_or(Rejection::SegmentCount(segments))?;

    let header = object(header, Segment::Header)?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg,
        _ => return Err(Rejection::MissingAlg),
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(Rejection::AlgNone);
    }
    let alg = Algorithm::from_jose(alg).ok_or(Rejection::UnsupportedAlg)?;
    // RFC 7515 §4.1.11: a recipient must understand every listed extension; it understands
    // none. An empty or malformed list is also an error there.
    if header.contains_key("crit") {
        return Err(Rejection::UnsupportedCrit);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(Rejection::BadClaim("kid")),
    };

    let claims = object(payload, Segment::Payload)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| Rejection::BadBase64(Segment::Signature))?;
    Ok(Decoded {
        alg,
        kid,
        claims,
        signing_input,
        signature,
    })
}

/// A base64url segment holding a JSON object.
fn object(segment: &[u8], which: Segment) -> Result<Claims, Rejection> {
    let json = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Rejection::BadBase64(which))?;
    match serde_json::from_slice(&json) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Rejection::BadJson(which)),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    fn token(header: &str, payload: &str, signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            b64(header),
            b64(payload),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    #[test]
    fn a_well_formed_token_is_taken_apart() {
        let t = token(
            r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#,
            r#"{"iss":"i","sub":"s"}"#,
            b"sig",
        );
        let decoded = decode(t.as_bytes(), 8192).unwrap();
        assert_eq!(decoded.alg, Algorithm::RS256);
        assert_eq!(decoded.kid.as_deref(), Some("k1"));
        assert_eq!(decoded.claims["sub"], "s");
        assert_eq!(decoded.signature, b"sig");
        assert_eq!(
            decoded.signing_input,
            t.rsplit_once('.').unwrap().0.as_bytes()
        );
    }

    #[test]
    fn each_structural_fault_has_its_own_reason() {
        let ok_header = r#"{"alg":"ES256"}"#;
        let ok_payload = r#"{"iss":"i"}"#;
        let cases: Vec<(String, Rejection)> = vec![
            ("a".repeat(101), Rejection::TooLarge { limit: 100 }),
            ("abc".into(), Rejection::SegmentCount(1)),
            ("a.b".into(), Rejection::SegmentCount(2)),
            ("a.b.c.d".into(), Rejection::SegmentCount(4)),
            ("a.b.c.d.e".into(), Rejection::SegmentCount(5)),
            (
                format!("{}=.{}.", b64(ok_header), b64(ok_payload)),
                Rejection::BadBase64(Segment::Header),
            ),
            (
                format!(
                    "{}.{}.",
                    URL_SAFE_NO_PAD.encode("{\"alg\":"),
                    b64(ok_payload)
                ),
                Rejection::BadJson(Segment::Header),
            ),
            (
                token(r#"["ES256"]"#, ok_payload, b""),
                Rejection::BadJson(Segment::Header),
            ),
            (
                token(r#"{"typ":"JWT"}"#, ok_payload, b""),
                Rejection::MissingAlg,
            ),
            (
                token(r#"{"alg":256}"#, ok_payload, b""),
                Rejection::MissingAlg,
            ),
            (
                token(r#"{"alg":"none"}"#, ok_payload, b""),
                Rejection::AlgNone,
            ),
            (
                token(r#"{"alg":"NoNe"}"#, ok_payload, b""),
                Rejection::AlgNone,
            ),
            (
                token(r#"{"alg":"HS1"}"#, ok_payload, b""),
                Rejection::UnsupportedAlg,
            ),
            (
                token(r#"{"alg":"ES256","crit":["exp"],"exp":1}"#, ok_payload, b""),
                Rejection::UnsupportedCrit,
            ),
            (
                token(r#"{"alg":"ES256","kid":7}"#, ok_payload, b""),
                Rejection::BadClaim("kid"),
            ),
            (
                format!("{}.{}*.", b64(ok_header), b64(ok_payload)),
                Rejection::BadBase64(Segment::Payload),
            ),
            (
                token(ok_header, "not json", b""),
                Rejection::BadJson(Segment::Payload),
            ),
            (
                token(ok_header, r#""a string""#, b""),
                Rejection::BadJson(Segment::Payload),
            ),
            (
                format!("{}.{}.c2ln+", b64(ok_header), b64(ok_payload)),
                Rejection::BadBase64(Segment::Signature),
            ),
        ];
        for (token, expected) in cases {
            let limit = if matches!(expected, Rejection::TooLarge { .. }) {
                100
            } else {
                8192
            };
            assert_eq!(
                decode(token.as_bytes(), limit).err(),
                Some(expected),
                "{token}"
            );
        }
    }

    #[test]
    fn the_size_limit_applies_before_anything_else() {
        // 5 segments and bad base64, but too long first.
        assert_eq!(
            decode(b"*.*.*.*.*", 8).err(),
            Some(Rejection::TooLarge { limit: 8 })
        );
        assert_eq!(
            decode(b"*.*.*.*.*", 9).err(),
            Some(Rejection::SegmentCount(5))
        );
    }
}
