//! Path patterns of the classification rules: `/orders/*/items`, `/admin/**`. Segment-wise, so
//! `*` never crosses a `/`, and nothing is a regex (no backtracking per request). They match
//! the path as [`palisade_kit::path::normalize`] resolves it.

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
    fn patterns_match_the_normalised_path() {
        let admin = PathPattern::parse("/admin/**").unwrap();
        for evasive in [
            "//admin/users",
            "/api/../admin/x",
            "/%61dmin/x",
            "/admin;x/users",
        ] {
            let path = palisade_kit::path::normalize_str(evasive);
            assert!(admin.matches(&path), "{evasive}");
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
