//! Loading a plugin's JSON configuration: serde with `deny_unknown_fields`, then the plugin's own
//! validation. Every problem carries the field path it is about, so an operator reading one log
//! line (or `palisade validate`) knows exactly what to fix.

use std::fmt;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

/// One thing wrong with a configuration: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path such as `limits[0].rate`; `.` for the document itself.
    pub path: String,
    pub reason: String,
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
    /// Validates the fields of `name` inside `f`.
    pub fn field<R>(&mut self, name: &str, f: impl FnOnce(&mut Problems) -> R) -> R {
        let segment = if self.path.is_empty() {
            name.to_owned()
        } else {
            format!(".{name}")
        };
        self.path.push(segment);
        let result = f(self);
        self.path.pop();
        result
    }

    /// Validates the element `index` of a list inside `f`.
    pub fn index<R>(&mut self, index: usize, f: impl FnOnce(&mut Problems) -> R) -> R {
        self.path.push(format!("[{index}]"));
        let result = f(self);
        self.path.pop();
        result
    }

    /// Validates the entry `key` of a map inside `f`.
    pub fn key<R>(&mut self, key: &str, f: impl FnOnce(&mut Problems) -> R) -> R {
        self.path.push(format!("[{key:?}]"));
        let result = f(self);
        self.path.pop();
        result
    }

    /// Records a problem at the current path.
    pub fn push(&mut self, reason: impl Into<String>) {
        let path = if self.path.is_empty() {
            ".".to_owned()
        } else {
            self.path.concat()
        };
        self.found.push(Problem {
            path,
            reason: reason.into(),
        });
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
    // serde would read a struct from an array, field by field in order: never what an operator
    // meant, so the document must be an object.
    if bytes.first() != Some(&b'{') && serde_json::from_slice::<serde_json::Value>(bytes).is_ok() {
        return Err(not_an_object());
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    // Deserialised without serde_path_to_error, whose wrapper around every visitor of every
    // configuration type costs each plugin ~60 KB of Wasm: the field path is recovered from
    // the error's position instead ([`path_at`]), only when there is an error.
    let parsed: Result<T, _> = T::deserialize(&mut de);
    let config = parsed.map_err(|err| {
        // Broken JSON has no field path; its line and column are in the reason.
        let path = if err.is_syntax() || err.is_eof() {
            ".".to_owned()
        } else {
            let path = path_at(bytes, consumed(bytes, err.line(), err.column()));
            variant_owner(path, &err.to_string())
        };
        single(&path, &err)
    })?;
    de.end().map_err(|err| single(".", &err))?;
    check(config)
}

/// Same as [`load`] for a document already parsed into JSON (the CLI's YAML input).
pub fn load_value<T: PluginConfig>(value: serde_json::Value) -> Result<T, ConfigError> {
    if !value.is_object() {
        return Err(not_an_object());
    }
    let parsed: Result<T, _> = serde_path_to_error::deserialize(value);
    let config = parsed.map_err(|err| single(&err.path().to_string(), err.inner()))?;
    check(config)
}

/// How many bytes of `doc` come before serde_json's (1-based) `line` and `column`: the
/// deserializer's position is just after the last byte it read.
fn consumed(doc: &[u8], line: usize, column: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match doc
            .get(start..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        {
            Some(newline) => start += newline + 1,
            None => break,
        }
    }
    start.saturating_add(column).min(doc.len())
}

/// The field path (`limits[0].rate`, `.` for the document) of the value a deserializer was
/// reading when it had read `consumed` bytes of the (well-formed so far) JSON `doc`: the key
/// or element being read, inside each enclosing object and array. A container just closed
/// (a missing field is reported at its `}`) is named by its own path. The same paths
/// serde_path_to_error gives, without its per-type code.
pub fn path_at(doc: &[u8], consumed: usize) -> String {
    enum Frame {
        /// The key being read in this object (`None` between a `,` and the next key).
        Object(Option<String>),
        /// The element being read.
        Array(usize),
    }
    let doc = doc.get(..consumed).unwrap_or(doc);
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while let Some(&byte) = doc.get(i) {
        i += 1;
        match byte {
            b'{' => stack.push(Frame::Object(None)),
            b'[' => stack.push(Frame::Array(0)),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array(index)) => *index += 1,
                Some(Frame::Object(key)) => *key = None,
                None => {}
            },
            b'"' => {
                let start = i - 1;
                let mut escaped = false;
                while let Some(&b) = doc.get(i) {
                    i += 1;
                    match (escaped, b) {
                        (false, b'\\') => escaped = true,
                        (false, b'"') => break,
                        _ => escaped = false,
                    }
                }
                if let Some(Frame::Object(key @ None)) = stack.last_mut() {
                    let raw = doc.get(start..i).unwrap_or_default();
                    *key = Some(
                        serde_json::from_slice::<String>(raw)
                            .unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned()),
                    );
                }
            }
            _ => {}
        }
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object(Some(key)) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Frame::Object(None) => {}
            Frame::Array(index) => {
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
            }
        }
    }
    if path.is_empty() {
        path.push('.');
    }
    path
}

/// An unknown variant of an externally tagged enum (`{"syslog": {...}}`) is reported once its
/// key is read; the field is the enum's, as serde_path_to_error names it, not the key's.
fn variant_owner(path: String, reason: &str) -> String {
    let variant = reason
        .strip_prefix("unknown variant `")
        .and_then(|rest| rest.split('`').next());
    match variant {
        Some(variant) if path == variant => ".".to_owned(),
        Some(variant) => match path.strip_suffix(variant).and_then(|p| p.strip_suffix('.')) {
            Some(owner) => owner.to_owned(),
            None => path,
        },
        None => path,
    }
}

fn not_an_object() -> ConfigError {
    ConfigError {
        problems: vec![Problem {
            path: ".".to_owned(),
            reason: "the configuration must be a JSON object".to_owned(),
        }],
    }
}

fn check<T: PluginConfig>(config: T) -> Result<T, ConfigError> {
    let mut problems = Problems::default();
    config.validate(&mut problems);
    problems.into_result().map(|()| config)
}

fn single(path: &str, err: &serde_json::Error) -> ConfigError {
    let path = path.to_owned();
    // serde_json appends " at line L column C"; the field path says more to an operator, but the
    // position still helps when the JSON itself is broken.
    let reason = err.to_string();
    let reason = if err.is_syntax() || err.is_eof() {
        reason
    } else {
        match reason.rfind(" at line ") {
            Some(cut) => reason.get(..cut).unwrap_or(&reason).to_owned(),
            None => reason,
        }
    };
    ConfigError {
        problems: vec![Problem { path, reason }],
    }
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
            "limits[0].rate: invalid type: string \"ten\", expected u32"
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
        let cases: [&[u8]; 13] = [
            br#"{"places":[{"heder":{"name":"x"}}]}"#,
            br#"{"places":[{"query":"q"}],"limits":[{"name":"query","rate":1,"query":2}]}"#,
            br#"{"limits":[{"name":"a","rate":1,"burts":2}]}"#,
            br#"{"limits":[{"name":"a","rate":1},{"name":"b","rate":"x"}]}"#,
            b"{\n  \"limits\": [\n    {\"name\": \"a\",\n     \"rate\": {\"x\": 1}}\n  ]\n}",
            br#"{"limits":[{"name":"a"}]}"#,
            br#"{"limits":{}}"#,
            br#"{"places":[{"query":"q"},{"header":{"name":"x","prefx":"B"}}]}"#,
            br#"{"places":[{"header":{"name":7}}]}"#,
            br#"{"places":[{"query":5}]}"#,
            br#"{"every":"soon"}"#,
            br#"{"limits":[],"nope":1}"#,
            br#"{"limits":[{"na\"me":"a"}]}"#,
        ];
        for doc in cases {
            let ours = load::<Nested>(doc).unwrap_err().to_string();
            let mut de = serde_json::Deserializer::from_slice(doc);
            let theirs = serde_path_to_error::deserialize::<_, Nested>(&mut de).unwrap_err();
            let reason = theirs.inner().to_string();
            let reason = reason.get(..reason.rfind(" at line ").unwrap()).unwrap();
            assert_eq!(
                ours,
                format!("{}: {reason}", theirs.path()),
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
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
        let err = load_value::<Sample>(serde_json::json!([])).unwrap_err();
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
    fn load_value_matches_load() {
        let value = serde_json::json!({"limits":[{"name":"a","rate":0}]});
        let err = load_value::<Sample>(value).unwrap_err();
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
