//! Loading a plugin's JSON configuration: serde with `deny_unknown_fields`, then the plugin's own
//! validation. Every problem carries the field path it is about, so an operator reading one log
//! line (or `palisade validate`) knows exactly what to fix.

use std::fmt;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

pub use tree::Tree;
use tree::TreeDeserializer;

mod tree;

/// One thing wrong with a configuration: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path such as `limits[0].rate`; `.` for the document itself.
    pub path: String,
    pub reason: String,
}

impl Problem {
    /// A problem with the document as a whole (path `.`).
    fn of_document(reason: impl Into<String>) -> Problem {
        Problem {
            path: ".".to_owned(),
            reason: reason.into(),
        }
    }
}

impl From<Problem> for ConfigError {
    fn from(problem: Problem) -> ConfigError {
        ConfigError {
            problems: vec![problem],
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// A configuration that was refused, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for problem in &self.problems {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Collects validation problems under a field path.
#[derive(Debug, Default)]
pub struct Problems {
    found: Vec<Problem>,
    path: Vec<String>,
}

impl Problems {
    // The generic methods are thin: each closure makes a copy of them (dozens per plugin), so
    // the path is built out of line, once.

    /// Validates the fields of `name` inside `f`.
    pub fn field<R>(&mut self, name: &str, f: impl FnOnce(&mut Problems) -> R) -> R {
        self.enter_field(name);
        let result = f(self);
        self.path.pop();
        result
    }

    /// Validates the element `index` of a list inside `f`.
    pub fn index<R>(&mut self, index: usize, f: impl FnOnce(&mut Problems) -> R) -> R {
        self.enter(format!("[{index}]"));
        let result = f(self);
        self.path.pop();
        result
    }

    /// Validates the entry `key` of a map inside `f`.
    pub fn key<R>(&mut self, key: &str, f: impl FnOnce(&mut Problems) -> R) -> R {
        self.enter(format!("[{key:?}]"));
        let result = f(self);
        self.path.pop();
        result
    }

    #[inline(never)]
    fn enter_field(&mut self, name: &str) {
        let segment = if self.path.is_empty() {
            name.to_owned()
        } else {
            format!(".{name}")
        };
        self.path.push(segment);
    }

    #[inline(never)]
    fn enter(&mut self, segment: String) {
        self.path.push(segment);
    }

    /// Records a problem at the current path.
    pub fn push(&mut self, reason: impl Into<String>) {
        self.push_reason(reason.into());
    }

    #[inline(never)]
    fn push_reason(&mut self, reason: String) {
        let path = if self.path.is_empty() {
            ".".to_owned()
        } else {
            self.path.concat()
        };
        self.found.push(Problem { path, reason });
    }

    /// Records a problem at `field` below the current path.
    pub fn push_at(&mut self, field: &str, reason: impl Into<String>) {
        let reason = reason.into();
        self.field(field, |p| p.push(reason));
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    pub fn into_result(self) -> Result<(), ConfigError> {
        if self.found.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: self.found,
            })
        }
    }
}

/// A plugin configuration: deserialised strictly, then validated as a whole.
pub trait PluginConfig: DeserializeOwned + JsonSchema {
    /// Records every semantic problem (ranges, references, formats serde cannot check).
    fn validate(&self, problems: &mut Problems);
}

/// Parses and validates a configuration. Empty input (no `configuration` given to the filter)
/// means `{}`: every field's default.
pub fn load<T: PluginConfig>(bytes: &[u8]) -> Result<T, ConfigError> {
    let trimmed = bytes.trim_ascii();
    let bytes = if trimmed.is_empty() { b"{}" } else { trimmed };
    // Broken JSON has no field path; its line and column are in the reason.
    let tree: Tree =
        serde_json::from_slice(bytes).map_err(|err| Problem::of_document(err.to_string()))?;
    load_tree(&tree)
}

/// Same as [`load`] for a document already read into a [`Tree`] (the CLI's JSON and YAML).
pub fn load_tree<T: PluginConfig>(tree: &Tree) -> Result<T, ConfigError> {
    if !matches!(tree, Tree::Object(_)) {
        return Err(Problem::of_document("the configuration must be a JSON object").into());
    }
    if let Some(problem) = duplicate(tree) {
        return Err(problem.into());
    }
    let config = T::deserialize(TreeDeserializer(tree)).map_err(Problem::from)?;
    check(config)
}

/// The first key given twice in one object of `tree`, with the object's path.
pub fn duplicate(tree: &Tree) -> Option<Problem> {
    tree.duplicate().map(Problem::from)
}

fn check<T: PluginConfig>(config: T) -> Result<T, ConfigError> {
    let mut problems = Problems::default();
    config.validate(&mut problems);
    problems.into_result().map(|()| config)
}

/// The JSON Schema of a configuration type, from the same types `load` uses.
pub fn schema<T: PluginConfig>() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    generator.into_root_schema_for::<T>().to_value()
}

/// Is `name` a valid HTTP field name (RFC 9110 token), in lower case as HTTP/2 requires?
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

/// Is `value` a valid HTTP field value: visible ASCII, spaces and tabs inside, nothing that
/// could split a header (CR, LF, NUL) or other control characters.
pub fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
        && !value.starts_with([' ', '\t'])
        && !value.ends_with([' ', '\t'])
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Limit {
        name: String,
        rate: u32,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default)]
        limits: Vec<Limit>,
    }

    impl PluginConfig for Sample {
        fn validate(&self, problems: &mut Problems) {
            problems.field("limits", |p| {
                for (i, limit) in self.limits.iter().enumerate() {
                    p.index(i, |p| {
                        if limit.rate == 0 {
                            p.push_at("rate", "must be at least 1");
                        }
                        if limit.name.is_empty() {
                            p.push_at("name", "must not be empty");
                        }
                    });
                }
            });
        }
    }

    #[test]
    fn empty_input_means_defaults() {
        let sample: Sample = load(b"").unwrap();
        assert!(sample.limits.is_empty());
        let sample: Sample = load(b"  \n").unwrap();
        assert!(sample.limits.is_empty());
    }

    /// Kong hands an empty list over as `{}` (cjson); a non-empty object is still no list.
    #[test]
    fn an_empty_object_reads_as_an_empty_list() {
        let sample: Sample = load(br#"{"limits":{}}"#).unwrap();
        assert!(sample.limits.is_empty());
        assert_eq!(
            load::<Sample>(br#"{"limits":{"name":"a"}}"#)
                .unwrap_err()
                .to_string(),
            "limits: invalid type: map, expected a sequence"
        );
    }

    #[test]
    fn misspelt_field_is_refused_with_its_path() {
        let err = load::<Sample>(br#"{"limits":[{"name":"a","rate":1,"burts":2}]}"#).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].path, "limits[0].burts");
        assert!(
            err.problems[0].reason.starts_with("unknown field `burts`"),
            "{}",
            err.problems[0].reason
        );
        assert!(!err.problems[0].reason.contains("at line"));
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = load::<Sample>(br#"{"limits":[{"name":"a","rate":"ten"}]}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "limits[0].rate: invalid type: a string, expected u32"
        );
        // Worded as serde words them, but a float's digits are not printed (see `Redacted`).
        for (doc, reason) in [
            (
                &br#"{"limits":[{"name":"a","rate":1.5}]}"#[..],
                "a floating point number",
            ),
            (
                br#"{"limits":[{"name":"a","rate":true}]}"#,
                "boolean `true`",
            ),
            (br#"{"limits":[{"name":"a","rate":null}]}"#, "unit value"),
            (br#"{"limits":[{"name":"a","rate":[]}]}"#, "sequence"),
        ] {
            assert_eq!(
                load::<Sample>(doc).unwrap_err().to_string(),
                format!("limits[0].rate: invalid type: {reason}, expected u32")
            );
        }
        assert_eq!(
            load::<Sample>(br#"{"limits":[{"name":"a","rate":-1}]}"#)
                .unwrap_err()
                .to_string(),
            "limits[0].rate: invalid value: integer `-1`, expected u32"
        );
    }

    /// A string in the wrong place may be a secret (an API key where its hash belongs): a
    /// config error, which is logged, never carries its text.
    #[test]
    fn a_misplaced_string_is_never_echoed() {
        for doc in [
            &br#"{"limits":[{"name":"a","rate":"sk-live-1234"}]}"#[..],
            br#"{"limits":["sk-live-1234"]}"#,
            br#"{"limits":"sk-live-1234"}"#,
            br#"{"places":["sk-live-1234"]}"#,
            br#"{"limits":[{"name":"a","rate":1,"burst":"sk-live-1234"}]}"#,
            br#"{"every":"sk-live-1234"}"#,
        ] {
            let err = load::<Nested>(doc).unwrap_err().to_string();
            assert!(!err.contains("sk-live"), "{err}");
        }
        assert_eq!(
            load::<Nested>(br#"{"places":["sk-live-1234"]}"#)
                .unwrap_err()
                .to_string(),
            "places[0]: unknown variant, expected `header` or `query`"
        );
    }

    #[allow(dead_code)] // only ever deserialized
    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields, rename_all = "snake_case")]
    enum Where {
        Header { name: String },
        Query(String),
    }

    #[allow(dead_code)] // only ever deserialized
    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Nested {
        #[serde(default)]
        limits: Vec<Limit>,
        #[serde(default)]
        places: Vec<Where>,
        #[serde(default)]
        every: Option<crate::duration::ConfigDuration>,
    }

    impl PluginConfig for Nested {
        fn validate(&self, _: &mut Problems) {}
    }

    /// Each error names the same path serde_path_to_error does.
    #[test]
    fn error_paths_match_serde_path_to_error() {
        let cases: [&[u8]; 15] = [
            br#"{"places":[{"heder":{"name":"x"}}]}"#,
            br#"{"places":[{"query":"q"}],"limits":[{"name":"query","rate":1,"query":2}]}"#,
            br#"{"limits":[{"name":"a","rate":1,"burts":2}]}"#,
            br#"{"limits":[{"name":"a","rate":1},{"name":"b","rate":"x"}]}"#,
            b"{\n  \"limits\": [\n    {\"name\": \"a\",\n     \"rate\": {\"x\": 1}}\n  ]\n}",
            br#"{"limits":[{"name":"a"}]}"#,
            br#"{"limits":{"name":"a"}}"#,
            br#"{"places":[{"query":"q"},{"header":{"name":"x","prefx":"B"}}]}"#,
            br#"{"places":[{"header":{"name":7}}]}"#,
            br#"{"places":[{"query":5}]}"#,
            br#"{"every":"soon"}"#,
            br#"{"limits":[],"nope":1}"#,
            br#"{"limits":[{"na\"me":"a"}]}"#,
            br#"{"limits":[{"name":"a","rate":1,"rate":2}]}"#,
            br#"{"limits":[{"name":"a","rate":1}],"places":[{"header":{}}]}"#,
        ];
        for doc in cases {
            let ours = load::<Nested>(doc).unwrap_err().to_string();
            let mut de = serde_json::Deserializer::from_slice(doc);
            let theirs = serde_path_to_error::deserialize::<_, Nested>(&mut de).unwrap_err();
            let reason = theirs.inner().to_string();
            let reason = reason.get(..reason.rfind(" at line ").unwrap()).unwrap();
            // serde names a misplaced string's text; ours names only its kind.
            let reason = match reason.split_once("string \"") {
                Some((before, rest)) => {
                    let after = rest.split_once('"').unwrap().1;
                    format!("{before}a string{after}")
                }
                None => match reason.split_once("unknown variant `") {
                    Some((before, rest)) => {
                        format!("{before}unknown variant{}", rest.split_once('`').unwrap().1)
                    }
                    None => reason.to_owned(),
                },
            };
            assert_eq!(
                ours,
                format!("{}: {reason}", theirs.path()),
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
    }

    /// serde_json would read a struct from an array, field by field in order; the schema refuses
    /// that, and so does the plugin, at any depth.
    #[test]
    fn a_struct_is_never_read_from_an_array() {
        let err = load::<Nested>(br#"{"limits":[["a",1]]}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "limits[0]: invalid type: sequence, expected struct Limit"
        );
        let err = load::<Nested>(br#"{"places":[{"header":["x"]}]}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "places[0].header: invalid type: sequence, expected struct variant Where::Header"
        );
        // What serde_json alone makes of the first: accepted.
        let limits: Vec<Limit> = serde_json::from_str(r#"[["a",1]]"#).unwrap();
        assert_eq!(limits[0].rate, 1);
    }

    /// A key given twice: serde refuses it in a struct, and a map would keep the last one
    /// silently; the tree refuses both, at the object's path.
    #[test]
    fn a_key_given_twice_is_refused_in_a_map_too() {
        #[derive(Debug, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        struct Headers {
            #[serde(default)]
            headers: std::collections::BTreeMap<String, String>,
        }
        impl PluginConfig for Headers {
            fn validate(&self, _: &mut Problems) {}
        }
        let err = load::<Headers>(br#"{"headers":{"a":"1","b":"2","a":"3"}}"#).unwrap_err();
        assert_eq!(err.to_string(), "headers: duplicate field `a`");
        // What serde_json alone makes of it: the last one.
        let alone: Headers = serde_json::from_str(r#"{"headers":{"a":"1","a":"3"}}"#).unwrap();
        assert_eq!(alone.headers["a"], "3");
        let err = load::<Nested>(br#"{"limits":[{"name":"a","rate":1}],"limits":[]}"#).unwrap_err();
        assert_eq!(err.to_string(), ".: duplicate field `limits`");
    }

    #[test]
    fn an_enum_must_be_a_name_or_one_entry() {
        let err =
            load::<Nested>(br#"{"places":[{"query":"q","header":{"name":"x"}}]}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "places[0]: invalid value: map, expected map with a single key"
        );
        let err = load::<Nested>(br#"{"places":[5]}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "places[0]: invalid type: integer `5`, expected string or map"
        );
    }

    #[test]
    fn broken_json_keeps_its_position() {
        let err = load::<Sample>(br#"{"limits": [}"#).unwrap_err();
        assert!(err.to_string().contains("line 1 column"), "{err}");
    }

    #[test]
    fn the_document_must_be_an_object() {
        for bad in [&b"[]"[..], b"[[]]", b"null", b"3", b"\"{}\""] {
            let err = load::<Sample>(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                ".: the configuration must be a JSON object"
            );
        }
        let err = load_tree::<Sample>(&Tree::Array(Vec::new())).unwrap_err();
        assert_eq!(
            err.to_string(),
            ".: the configuration must be a JSON object"
        );
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(load::<Sample>(br#"{} {}"#).is_err());
    }

    #[test]
    fn every_semantic_problem_is_reported() {
        let err = load::<Sample>(br#"{"limits":[{"name":"","rate":0},{"name":"b","rate":0}]}"#)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "limits[0].rate: must be at least 1; limits[0].name: must not be empty; limits[1].rate: must be at least 1"
        );
    }

    #[test]
    fn load_tree_matches_load() {
        let value = serde_json::json!({"limits":[{"name":"a","rate":0}]});
        let err = load_tree::<Sample>(&Tree::deserialize(value).unwrap()).unwrap_err();
        assert_eq!(err.to_string(), "limits[0].rate: must be at least 1");
    }

    #[test]
    fn schema_comes_from_the_types() {
        let schema = schema::<Sample>();
        assert_eq!(schema["additionalProperties"], serde_json::json!(false));
        assert!(schema["$defs"]["Limit"]["properties"]["rate"].is_object());
    }

    #[test]
    fn header_names_and_values() {
        assert!(is_header_name("x-frame-options"));
        assert!(!is_header_name("X-Frame-Options"));
        assert!(!is_header_name("bad name"));
        assert!(!is_header_name(""));
        assert!(is_header_value("max-age=31536000; includeSubDomains"));
        assert!(is_header_value(""));
        assert!(!is_header_value("a\r\nset-cookie: x"));
        assert!(!is_header_value("nul\0"));
        assert!(!is_header_value(" leading"));
    }
}
