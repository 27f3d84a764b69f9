//! The one error reply every Palisade plugin sends: the same JSON body and content type whatever
//! refused the request, so clients and log pipelines parse one shape.

use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/json";

/// `{"error": ..., "status": ..., "request_id": ...}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody<'a> {
    /// A short, stable description of why (never a token, a header value or a secret).
    pub error: &'a str,
    pub status: u16,
    /// The request's `x-request-id`, when it has one, so a client can quote it.
    pub request_id: Option<&'a str>,
}

impl ErrorBody<'_> {
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and a number into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A local reply: status, extra headers, and the JSON error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    pub status: u16,
    pub error: String,
    pub headers: Vec<(String, String)>,
}

impl ErrorReply {
    pub fn new(status: u16, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(&self, request_id: Option<&str>) -> Vec<u8> {
        ErrorBody {
            error: &self.error,
            status: self.status,
            request_id,
        }
        .to_json()
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn body_shape_is_fixed() {
        let reply = ErrorReply::new(429, "rate limit exceeded").with_header("retry-after", "3");
        assert_eq!(
            String::from_utf8(reply.body(Some("abc-123"))).unwrap(),
            r#"{"error":"rate limit exceeded","status":429,"request_id":"abc-123"}"#
        );
        assert_eq!(
            String::from_utf8(reply.body(None)).unwrap(),
            r#"{"error":"rate limit exceeded","status":429,"request_id":null}"#
        );
        assert_eq!(reply.headers, vec![("retry-after".into(), "3".into())]);
    }

    #[test]
    fn hostile_text_is_escaped() {
        let reply = ErrorReply::new(400, "bad \"header\"\n");
        let body: serde_json::Value = serde_json::from_slice(&reply.body(Some("\u{0}"))).unwrap();
        assert_eq!(body["error"], "bad \"header\"\n");
        assert_eq!(body["request_id"], "\u{0}");
    }
}
