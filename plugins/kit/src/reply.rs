//! The one error reply every Palisade plugin sends: the same JSON body and content type whatever
//! refused the request, so clients and log pipelines parse one shape.

use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/json";

/// The response header through which a plugin that refuses a request names itself and why:
/// `x-palisade-denied-by: palisade-auth; reason="token expired"`. palisade-audit reads it into
/// the event and removes it before the response leaves the proxy.
pub const DENIED_BY: &str = "x-palisade-denied-by";

/// Reads a [`DENIED_BY`] value: the plugin and the reason.
pub fn parse_denied_by(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?;
    let (plugin, rest) = value.split_once(';').unwrap_or((value, ""));
    let plugin = plugin.trim();
    if plugin.is_empty() {
        return None;
    }
    let quoted = rest.trim().strip_prefix("reason=").unwrap_or("");
    let inner = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(quoted);
    let mut reason = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        reason.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    Some((plugin.to_owned(), reason))
}

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

    /// Names the refusing plugin in a [`DENIED_BY`] header (the reason is this reply's error,
    /// quoted; control characters become spaces).
    pub fn denied_by(self, plugin: &str) -> Self {
        let mut value = format!("{plugin}; reason=\"");
        for c in self.error.chars() {
            match c {
                '"' | '\\' => {
                    value.push('\\');
                    value.push(c);
                }
                c if c.is_control() => value.push(' '),
                c => value.push(c),
            }
        }
        value.push('"');
        self.with_header(DENIED_BY, value)
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
    fn denial_header_round_trips() {
        let reply = ErrorReply::new(401, "bad \"token\"\n").denied_by("palisade-auth");
        let (name, value) = &reply.headers[0];
        assert_eq!(name, DENIED_BY);
        assert_eq!(value, r#"palisade-auth; reason="bad \"token\" ""#);
        assert_eq!(
            parse_denied_by(value.as_bytes()),
            Some(("palisade-auth".into(), "bad \"token\" ".into()))
        );
        assert_eq!(
            parse_denied_by(b"palisade-rate-limit"),
            Some(("palisade-rate-limit".into(), String::new()))
        );
        assert_eq!(parse_denied_by(b" ; reason=\"x\""), None);
    }

    #[test]
    fn hostile_text_is_escaped() {
        let reply = ErrorReply::new(400, "bad \"header\"\n");
        let body: serde_json::Value = serde_json::from_slice(&reply.body(Some("\u{0}"))).unwrap();
        assert_eq!(body["error"], "bad \"header\"\n");
        assert_eq!(body["request_id"], "\u{0}");
    }
}
