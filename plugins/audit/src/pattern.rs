//! Path patterns of the classification rules: `/orders/*/items`, `/admin/**`. Segment-wise, so
//! `*` never crosses a `/`, and nothing is a regex (no backtracking per request).

use std::borrow::Cow;

/// The path the rules see: escapes of unreserved characters decoded, `.` and `..` segments
/// resolved, repeated slashes merged (RFC 3986 §6.2.2; Envoy's `normalize_path` and
/// `merge_slashes`), so `//admin/x`, `/api/../admin/x` and `/%61dmin/x` are all classified as
/// `/admin/x`, as a server resolving them reads them. Case is kept: paths are case-sensitive. Other
/// escapes stay encoded (an encoded `/` is no separator).
pub fn normalize(path: &str) -> Cow<'_, str> {
    let plain = !path.contains('%') && !path.contains("//") && !path.contains("/.");
    if plain {
        return Cow::Borrowed(path);
    }
    let mut decoded = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        let (head, tail) = rest.split_at(at);
        decoded.push_str(head);
        let escape = tail
            .get(1..3)
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escape {
            Some(byte) if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) => {
                decoded.push(char::from(byte));
                rest = tail.get(3..).unwrap_or_default();
            }
            Some(_) => {
                decoded.push_str(&tail.get(..3).unwrap_or_default().to_ascii_uppercase());
                rest = tail.get(3..).unwrap_or_default();
            }
            // A `%` that starts no escape is itself encoded, so it cannot join the escape
            // decoded after it (`/%%36%31dmin` must not become `/%61dmin`, then `/admin`).
            None => {
                decoded.push_str("%25");
                rest = tail.get(1..).unwrap_or_default();
            }
        }
    }
    decoded.push_str(rest);
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded.split('/') {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            segment => kept.push(segment),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one non-empty segment.
    Any,
}

/// A compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<Segment>,
    /// Ends with `/**`: any rest, including none.
    open_ended: bool,
}

impl PathPattern {
    /// Parses `/a/*/b` or `/a/**`; the reason is a config problem.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(format!("{pattern:?} must start with /"));
        };
        let (rest, open_ended) = match rest.strip_suffix("**") {
            Some(head) if head.is_empty() || head.ends_with('/') => {
                (head.strip_suffix('/').unwrap_or(head), true)
            }
            _ => (rest, false),
        };
        let mut segments = Vec::new();
        if !rest.is_empty() {
            for segment in rest.split('/') {
                segments.push(match segment {
                    "*" => Segment::Any,
                    s if s.contains('*') => {
                        return Err(format!(
                            "{pattern:?}: `*` must be a whole segment, and `**` only the last"
                        ))
                    }
                    s => Segment::Literal(s.to_owned()),
                });
            }
        }
        Ok(Self {
            segments,
            open_ended,
        })
    }

    /// Does this path (without its query) match?
    pub fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = if rest.is_empty() {
            None
        } else {
            Some(rest.split('/'))
        }
        .into_iter()
        .flatten();
        for segment in &self.segments {
            let Some(part) = parts.next() else {
                return false;
            };
            let ok = match segment {
                Segment::Any => !part.is_empty(),
                Segment::Literal(literal) => literal == part,
            };
            if !ok {
                return false;
            }
        }
        self.open_ended || parts.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn paths_are_normalised_before_matching() {
        for (raw, normal) in [
            ("/admin/users", "/admin/users"),
            ("//admin/users", "/admin/users"),
            ("/api/../admin/x", "/admin/x"),
            ("/api/./admin/./x", "/api/admin/x"),
            ("/%61dmin/x", "/admin/x"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2", "/a%252"),
            ("/%%36%31dmin/x", "/%2561dmin/x"),
            ("/%a%62", "/%25ab"),
            ("/../..", "/"),
            ("/a/b/..", "/a/"),
            ("/a//", "/a/"),
            ("/Admin/x", "/Admin/x"),
            ("/%E2%82%AC", "/%E2%82%AC"),
        ] {
            assert_eq!(normalize(raw), normal, "{raw}");
        }
        assert!(matches!(normalize("/api/orders"), Cow::Borrowed(_)));
        // Normalising a normal path changes nothing.
        for raw in ["/%%36%31dmin/x", "/%a%62", "//a/./b/../%7e%2F", "/x%"] {
            let once = normalize(raw).into_owned();
            assert_eq!(normalize(&once), once, "{raw}");
        }
        let admin = PathPattern::parse("/admin/**").unwrap();
        for evasive in ["//admin/users", "/api/../admin/x", "/%61dmin/x"] {
            assert!(admin.matches(&normalize(evasive)), "{evasive}");
        }
    }

    fn m(pattern: &str, path: &str) -> bool {
        PathPattern::parse(pattern).unwrap().matches(path)
    }

    #[test]
    fn literal_and_star_segments() {
        assert!(m("/orders", "/orders"));
        assert!(!m("/orders", "/orders/1"));
        assert!(!m("/orders", "/order"));
        assert!(m("/orders/*/items", "/orders/42/items"));
        assert!(!m("/orders/*/items", "/orders//items"));
        assert!(!m("/orders/*/items", "/orders/42/43/items"));
        assert!(m("/", "/"));
        assert!(!m("/", "/a"));
    }

    #[test]
    fn double_star_matches_any_rest_including_none() {
        assert!(m("/admin/**", "/admin"));
        assert!(m("/admin/**", "/admin/users/7"));
        assert!(!m("/admin/**", "/administrator"));
        assert!(m("/**", "/"));
        assert!(m("/**", "/anything/at/all"));
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        assert_eq!(
            PathPattern::parse("admin").unwrap_err(),
            "\"admin\" must start with /"
        );
        assert!(PathPattern::parse("/a*b").is_err());
        assert!(PathPattern::parse("/**/x").is_err());
        assert!(PathPattern::parse("/a**").is_err());
    }
}
