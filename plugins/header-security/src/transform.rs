//! Header transforms: add, set, remove and rename, in configured order, with values that may use
//! `${request_id}`, `${client_address}` and `${route}`.

use palisade_kit::config::{is_header_name, is_header_value, Problems};
use std::borrow::Cow;

use palisade_kit::header_pairs::{Edit, Pairs};
use palisade_kit::identity;

use crate::config::HeaderTransform;

/// Values a template may use, read from the host only when a template needs them.
pub trait Variables {
    fn request_id(&mut self) -> Option<String>;
    /// The client's IP address (no port).
    fn client_address(&mut self) -> Option<String>;
    /// The name of the route the host matched.
    fn route(&mut self) -> Option<String>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    RequestId,
    ClientAddress,
    Route,
}

/// A header value with variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

impl Template {
    fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            let (literal, tail) = rest.split_at(start);
            if !literal.is_empty() {
                parts.push(Part::Literal(literal.to_owned()));
            }
            let tail = tail.get(2..).unwrap_or_default();
            let end = tail.find('}').ok_or("has an unclosed ${")?;
            let (name, after) = tail.split_at(end);
            parts.push(match name {
                "request_id" => Part::RequestId,
                "client_address" => Part::ClientAddress,
                "route" => Part::Route,
                other => {
                    return Err(format!(
                    "uses unknown variable ${{{other}}} (known: request_id, client_address, route)"
                ))
                }
            });
            rest = after.get(1..).unwrap_or_default();
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        // Checked with each variable standing in as one visible character.
        let shape: String = parts
            .iter()
            .map(|p| match p {
                Part::Literal(text) => text.as_str(),
                _ => "x",
            })
            .collect();
        if !is_header_value(&shape) {
            return Err("has control characters or surrounding whitespace".to_owned());
        }
        Ok(Self(parts))
    }

    fn render(&self, vars: &mut dyn Variables) -> Vec<u8> {
        let mut out = String::new();
        for part in &self.0 {
            let value = match part {
                Part::Literal(text) => Some(text.clone()),
                Part::RequestId => vars.request_id(),
                Part::ClientAddress => vars.client_address(),
                Part::Route => vars.route(),
            };
            // Host-provided values are not trusted to be clean header content.
            out.extend(
                value
                    .unwrap_or_default()
                    .chars()
                    .filter(|c| !c.is_control()),
            );
        }
        out.into_bytes()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Add(String, Template),
    Set(String, Template),
    Remove(String),
    Rename { from: String, to: String },
}

/// Which header map a list of transforms edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// Headers no transform may touch: framing and connection management belong to the proxy.
const PROXY_OWNED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "host",
];

/// A compiled list of transforms.
#[derive(Debug, Clone, Default)]
pub struct Transforms {
    ops: Vec<Op>,
    renames: bool,
}

impl Transforms {
    pub fn build(list: &[HeaderTransform], direction: Direction, problems: &mut Problems) -> Self {
        let check_name = |name: &str, p: &mut Problems| {
            if !is_header_name(name) {
                p.push(format!("{name:?} is not a lower-case HTTP header name"));
            } else if PROXY_OWNED.contains(&name) {
                p.push(format!(
                    "{name:?} is managed by the proxy and cannot be transformed"
                ));
            } else if direction == Direction::Request && identity::is_owned(name.as_bytes()) {
                p.push(format!(
                    "{name:?} is owned by palisade-auth (identity headers cannot be set by configuration)"
                ));
            }
        };
        let mut ops = Vec::new();
        for (i, transform) in list.iter().enumerate() {
            problems.index(i, |p| {
                let op = match transform {
                    HeaderTransform::Add(nv) | HeaderTransform::Set(nv) => {
                        let variant = if matches!(transform, HeaderTransform::Add(_)) {
                            "add"
                        } else {
                            "set"
                        };
                        p.field(variant, |p| {
                            p.field("name", |p| check_name(&nv.name, p));
                            match Template::parse(&nv.value) {
                                Ok(template) => Some(match transform {
                                    HeaderTransform::Add(_) => Op::Add(nv.name.clone(), template),
                                    _ => Op::Set(nv.name.clone(), template),
                                }),
                                Err(reason) => {
                                    p.push_at("value", reason);
                                    None
                                }
                            }
                        })
                    }
                    HeaderTransform::Remove(name) => {
                        p.field("remove", |p| check_name(name, p));
                        Some(Op::Remove(name.clone()))
                    }
                    HeaderTransform::Rename(rename) => {
                        p.field("rename", |p| {
                            p.field("from", |p| check_name(&rename.from, p));
                            p.field("to", |p| check_name(&rename.to, p));
                            if rename.from == rename.to {
                                p.push_at("to", "must differ from `from`");
                            }
                        });
                        Some(Op::Rename {
                            from: rename.from.clone(),
                            to: rename.to.clone(),
                        })
                    }
                };
                ops.extend(op);
            });
        }
        let renames = ops.iter().any(|op| matches!(op, Op::Rename { .. }));
        Self { ops, renames }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Whether [`Self::apply`] looks at the headers: only a rename does (it moves the values
    /// a header has); adds, sets and removes are blind edits.
    pub fn reads_headers(&self) -> bool {
        self.renames
    }

    /// The edits that carry out every transform, in order, on `headers`. A rename moves the
    /// values the header has at that point (after the transforms before it).
    pub fn apply<'a>(
        &'a self,
        headers: &[(&[u8], &[u8])],
        vars: &mut dyn Variables,
    ) -> Vec<Edit<'a>> {
        // Only a rename needs to know the current values: keep a model of the map then.
        let mut model: Option<Pairs> = self.renames.then(|| {
            headers
                .iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect()
        });
        let name_of = |name: &'a String| Cow::Borrowed(name.as_str());
        let mut edits = Vec::with_capacity(self.ops.len());
        for op in &self.ops {
            match op {
                Op::Add(name, template) => {
                    let value = template.render(vars);
                    if let Some(model) = model.as_mut() {
                        model.push((name.as_bytes().to_vec(), value.clone()));
                    }
                    edits.push(Edit::Add(name_of(name), value.into()));
                }
                Op::Set(name, template) => {
                    let value = template.render(vars);
                    if let Some(model) = model.as_mut() {
                        model.retain(|(n, _)| !n.eq_ignore_ascii_case(name.as_bytes()));
                        model.push((name.as_bytes().to_vec(), value.clone()));
                    }
                    edits.push(Edit::Set(name_of(name), value.into()));
                }
                Op::Remove(name) => {
                    if let Some(model) = model.as_mut() {
                        model.retain(|(n, _)| !n.eq_ignore_ascii_case(name.as_bytes()));
                    }
                    edits.push(Edit::Remove(name_of(name)));
                }
                Op::Rename { from, to } => {
                    let Some(model) = model.as_mut() else {
                        continue;
                    };
                    let values: Vec<Vec<u8>> = model
                        .iter()
                        .filter(|(n, _)| n.eq_ignore_ascii_case(from.as_bytes()))
                        .map(|(_, v)| v.clone())
                        .collect();
                    if values.is_empty() {
                        continue;
                    }
                    model.retain(|(n, _)| {
                        !n.eq_ignore_ascii_case(from.as_bytes())
                            && !n.eq_ignore_ascii_case(to.as_bytes())
                    });
                    edits.push(Edit::Remove(name_of(from)));
                    edits.push(Edit::Remove(name_of(to)));
                    for value in values {
                        model.push((to.as_bytes().to_vec(), value.clone()));
                        edits.push(Edit::Add(name_of(to), value.into()));
                    }
                }
            }
        }
        edits
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    struct Fixed {
        reads: u32,
    }

    impl Variables for Fixed {
        fn request_id(&mut self) -> Option<String> {
            Some("req-1".into())
        }
        fn client_address(&mut self) -> Option<String> {
            self.reads += 1;
            Some("10.0.0.7".into())
        }
        fn route(&mut self) -> Option<String> {
            self.reads += 1;
            None
        }
    }

    fn build(json: &str, direction: Direction) -> Result<Transforms, String> {
        let list: Vec<HeaderTransform> = serde_json::from_str(json).unwrap();
        let mut problems = Problems::default();
        let transforms = Transforms::build(&list, direction, &mut problems);
        problems
            .into_result()
            .map(|()| transforms)
            .map_err(|e| e.to_string())
    }

    fn pairs(list: &[(&str, &str)]) -> Pairs {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn operations_in_order_with_variables() {
        let t = build(
            r#"[{"set":{"name":"x-client","value":"${client_address} via ${route}"}},
                {"add":{"name":"x-trace","value":"id=${request_id}"}},
                {"remove":"x-internal"},
                {"rename":{"from":"x-old","to":"x-new"}}]"#,
            Direction::Request,
        )
        .unwrap();
        let mut vars = Fixed { reads: 0 };
        let owned = pairs(&[("x-old", "a"), ("x-old", "b"), ("x-new", "stale")]);
        let edits = t.apply(&palisade_kit::header_pairs::borrow(&owned), &mut vars);
        assert_eq!(
            edits,
            vec![
                Edit::Set("x-client".into(), b"10.0.0.7 via ".to_vec().into()),
                Edit::Add("x-trace".into(), b"id=req-1".to_vec().into()),
                Edit::Remove("x-internal".into()),
                Edit::Remove("x-old".into()),
                Edit::Remove("x-new".into()),
                Edit::Add("x-new".into(), b"a".to_vec().into()),
                Edit::Add("x-new".into(), b"b".to_vec().into()),
            ]
        );
        assert_eq!(vars.reads, 2);
    }

    #[test]
    fn rename_sees_earlier_transforms_and_skips_absent_headers() {
        let t = build(
            r#"[{"set":{"name":"x-a","value":"1"}},{"rename":{"from":"x-a","to":"x-b"}},{"rename":{"from":"x-none","to":"x-c"}}]"#,
            Direction::Response,
        )
        .unwrap();
        let edits = t.apply(&[], &mut Fixed { reads: 0 });
        assert_eq!(
            edits,
            vec![
                Edit::Set("x-a".into(), b"1".to_vec().into()),
                Edit::Remove("x-a".into()),
                Edit::Remove("x-b".into()),
                Edit::Add("x-b".into(), b"1".to_vec().into()),
            ]
        );
    }

    #[test]
    fn variables_are_read_only_when_used() {
        let t = build(
            r#"[{"set":{"name":"x-a","value":"static"}}]"#,
            Direction::Request,
        )
        .unwrap();
        let mut vars = Fixed { reads: 0 };
        t.apply(&[], &mut vars);
        assert_eq!(vars.reads, 0);
    }

    #[test]
    fn bad_transforms_are_refused() {
        assert_eq!(
            build(
                r#"[{"set":{"name":"x-a","value":"a\r\nx-injected: 1"}},
                    {"add":{"name":"x-b","value":"${user}"}},
                    {"add":{"name":"X-C","value":"${request_id"}},
                    {"remove":"content-length"},
                    {"rename":{"from":"x-d","to":"x-d"}},
                    {"set":{"name":"x-palisade-subject","value":"admin"}}]"#,
                Direction::Request,
            )
            .unwrap_err(),
            "[0].set.value: has control characters or surrounding whitespace; \
             [1].add.value: uses unknown variable ${user} (known: request_id, client_address, route); \
             [2].add.name: \"X-C\" is not a lower-case HTTP header name; [2].add.value: has an unclosed ${; \
             [3].remove: \"content-length\" is managed by the proxy and cannot be transformed; \
             [4].rename.to: must differ from `from`; \
             [5].set.name: \"x-palisade-subject\" is owned by palisade-auth (identity headers cannot be set by configuration)"
        );
        // Responses may carry identity headers: only the request side is palisade-auth's.
        assert!(build(
            r#"[{"set":{"name":"x-palisade-subject","value":"x"}}]"#,
            Direction::Response
        )
        .is_ok());
    }

    #[test]
    fn control_characters_from_variables_are_dropped() {
        struct Hostile;
        impl Variables for Hostile {
            fn request_id(&mut self) -> Option<String> {
                Some("a\r\nset-cookie: x".into())
            }
            fn client_address(&mut self) -> Option<String> {
                None
            }
            fn route(&mut self) -> Option<String> {
                None
            }
        }
        let t = build(
            r#"[{"set":{"name":"x-a","value":"${request_id}"}}]"#,
            Direction::Response,
        )
        .unwrap();
        assert_eq!(
            t.apply(&[], &mut Hostile),
            vec![Edit::Set("x-a".into(), b"aset-cookie: x".to_vec().into())]
        );
    }
}
