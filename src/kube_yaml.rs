//! YAML read as Kubernetes reads it, into [`Tree`]s. `kubectl` and Istio turn YAML into JSON
//! with sigs.k8s.io/yaml, whose parser resolves plain scalars by YAML 1.1: `yes`, `on` and `y`
//! are booleans, `0777` is octal, `1_000` is a thousand. A YAML 1.2 reader calls those strings,
//! so `palisade validate` would pass a header value written `on` that reaches the plugin as
//! `true` (and refuse an `enabled: yes` the cluster reads as `true`). Quoted scalars are
//! strings in both. Keys given twice are kept, for the plugin's own refusal.
//!
//! [`to_yaml`] writes the rendered manifests so that Kubernetes (and Kong's YAML 1.1 reader)
//! reads back exactly the JSON they were made from: every string a YAML 1.1 or 1.2 reader
//! could take for something else is quoted. A JWK's `n` and `y` members are the case that
//! broke: written plain, Kubernetes reads them as the keys `false` and `true`.

use palisade_kit::config::Tree;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Why a text is not YAML Kubernetes would read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KubeYamlError(String);

/// Every document of `text` (an empty document is [`Tree::Null`]).
pub fn documents(text: &str) -> Result<Vec<Tree>, KubeYamlError> {
    let mut builder = Builder::default();
    Parser::new_from_str(text)
        .load(&mut builder, true)
        .map_err(|err| KubeYamlError(err.to_string()))?;
    match builder.error {
        Some(error) => Err(KubeYamlError(error)),
        None => Ok(builder.documents),
    }
}

/// A node being built: a sequence, or a mapping with the key waiting for its value.
enum Open {
    Sequence(usize, Vec<Tree>),
    Mapping(usize, Mapping),
}

#[derive(Default)]
struct Mapping {
    entries: Vec<(String, Tree)>,
    key: Option<Key>,
    /// Keys that came from a merge: the mapping's own value replaces them.
    merged: Vec<String>,
}

/// A mapping key: `<<` (a merge) or a key already turned into JSON's string form.
enum Key {
    Merge,
    Name(String),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    anchors: Vec<(usize, Tree)>,
    documents: Vec<Tree>,
    error: Option<String>,
    /// Nodes copied by aliases so far: a few lines of nested aliases ("billion laughs") would
    /// otherwise expand past any memory.
    expanded: usize,
}

/// The most nodes aliases may copy in one text, far above any real manifest.
const MAX_ALIAS_EXPANSION: usize = 100_000;

fn node_count(tree: &Tree) -> usize {
    match tree {
        Tree::Array(items) => 1 + items.iter().map(node_count).sum::<usize>(),
        Tree::Object(entries) => 1 + entries.iter().map(|(_, v)| node_count(v)).sum::<usize>(),
        _ => 1,
    }
}

impl Builder {
    fn fail(&mut self, mark: Marker, why: impl std::fmt::Display) {
        if self.error.is_none() {
            self.error = Some(format!(
                "line {} column {}: {why}",
                mark.line(),
                mark.col() + 1
            ));
        }
    }

    /// A finished node: the value of its parent, or a document.
    fn finish(&mut self, node: Tree, anchor: usize, mark: Marker) {
        if anchor > 0 {
            self.anchors.push((anchor, node.clone()));
        }
        match self.stack.last_mut() {
            None => self.documents.push(json_value(node)),
            Some(Open::Sequence(_, items)) => items.push(json_value(node)),
            Some(Open::Mapping(_, mapping)) => match mapping.key.take() {
                None => match json_key(&node) {
                    Ok(name) => mapping.key = Some(name),
                    Err(why) => self.fail(mark, why),
                },
                Some(Key::Name(name)) => mapping.insert(name, json_value(node)),
                Some(Key::Merge) => {
                    if let Err(why) = mapping.merge(node) {
                        self.fail(mark, why);
                    }
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        // The first error is the answer: building on would only cost time.
        if self.error.is_some() {
            return;
        }
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let tag = tag.map(|tag| tag.suffix);
                let plain = style == TScalarStyle::Plain;
                // A key `<<` merges the mapping (or mappings) that follow into this one.
                if let Some(Open::Mapping(_, mapping)) = self.stack.last_mut() {
                    if plain && tag.is_none() && text == "<<" && mapping.key.is_none() {
                        mapping.key = Some(Key::Merge);
                        return;
                    }
                }
                match scalar(&text, plain, tag.as_deref()) {
                    Ok(node) => self.finish(node, anchor, mark),
                    Err(why) => self.fail(mark, why),
                }
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Open::Sequence(anchor, Vec::new())),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Open::Mapping(anchor, Mapping::default()))
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Open::Sequence(anchor, items)) => {
                    self.finish(Tree::Array(items), anchor, mark)
                }
                Some(Open::Mapping(anchor, mapping)) => {
                    self.finish(Tree::Object(mapping.entries), anchor, mark)
                }
                None => self.fail(mark, "unbalanced collection"),
            },
            Event::Alias(id) => {
                let Some((_, node)) = self.anchors.iter().rev().find(|(anchor, _)| *anchor == id)
                else {
                    self.fail(mark, "alias of an unknown anchor");
                    return;
                };
                // Counted before it is copied.
                self.expanded = self.expanded.saturating_add(node_count(node));
                if self.expanded > MAX_ALIAS_EXPANSION {
                    self.fail(mark, "aliases expand to too many nodes");
                    return;
                }
                let node = node.clone();
                self.finish(node, 0, mark)
            }
            Event::DocumentStart => self.anchors.clear(),
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

impl Mapping {
    /// The mapping's own key: it replaces a merged one, and is kept twice when given twice.
    fn insert(&mut self, name: String, value: Tree) {
        if let Some(at) = self.merged.iter().position(|merged| *merged == name) {
            self.merged.swap_remove(at);
            if let Some(entry) = self.entries.iter_mut().find(|(known, _)| *known == name) {
                entry.1 = value;
                return;
            }
        }
        self.entries.push((name, value));
    }

    /// `<<: *base` or `<<: [*a, *b]`, as go-yaml v2 applies it: in document order, so a merge
    /// overrides the keys given before it and those after it override the merge; of several
    /// sources the earlier wins.
    fn merge(&mut self, sources: Tree) -> Result<(), &'static str> {
        const NOT_MAPPINGS: &str = "a merge key `<<` needs a mapping or a list of mappings";
        let sources = match sources {
            Tree::Object(_) => vec![sources],
            Tree::Array(items) => items,
            _ => return Err(NOT_MAPPINGS),
        };
        for source in sources.into_iter().rev() {
            let Tree::Object(source) = source else {
                return Err(NOT_MAPPINGS);
            };
            for (name, value) in source {
                if !self.merged.contains(&name) {
                    self.merged.push(name.clone());
                }
                match self
                    .entries
                    .iter_mut()
                    .rev()
                    .find(|(known, _)| *known == name)
                {
                    Some(entry) => entry.1 = value,
                    None => self.entries.push((name, value)),
                }
            }
        }
        Ok(())
    }
}

/// A mapping key as sigs.k8s.io/yaml writes it into JSON.
fn json_key(node: &Tree) -> Result<Key, &'static str> {
    Ok(Key::Name(match node {
        Tree::String(s) => s.clone(),
        Tree::Bool(b) => b.to_string(),
        // sigs.k8s.io/yaml takes int64 keys only, and writes float keys at 32-bit precision
        // ("1.5e+07"): refused here rather than read differently.
        Tree::Unsigned(n) if i64::try_from(*n).is_ok() => n.to_string(),
        Tree::Signed(n) => n.to_string(),
        Tree::Unsigned(_) | Tree::Float(_) => {
            return Err(
                "a key that is a float or above 2^63 is read differently by Kubernetes: quote it",
            )
        }
        Tree::Null => return Err("a null mapping key cannot be written as JSON"),
        Tree::Array(_) | Tree::Object(_) => {
            return Err("a collection as a mapping key cannot be written as JSON")
        }
    }))
}

/// One scalar, resolved as go-yaml v2 resolves it (`resolve.go`): quoted and block scalars and
/// `!!str` are strings; a plain one may be null, a boolean, an integer (Go's base prefixes,
/// `_` ignored) or a float. Timestamps stay strings, as sigs.k8s.io/yaml keeps them.
fn scalar(text: &str, plain: bool, tag: Option<&str>) -> Result<Tree, String> {
    let resolved = match tag {
        Some("str") => return Ok(Tree::String(text.to_owned())),
        None if !plain => return Ok(Tree::String(text.to_owned())),
        None | Some("null" | "bool" | "int" | "float") => resolve_plain(text),
        Some(other) => return Err(format!("the tag !!{other} has no JSON form")),
    };
    let agrees = match tag {
        None => true,
        Some(tag) => matches!(
            (tag, &resolved),
            ("null", Tree::Null)
                | ("bool", Tree::Bool(_))
                | ("int", Tree::Unsigned(_) | Tree::Signed(_))
                | (
                    "float",
                    Tree::Float(_) | Tree::Unsigned(_) | Tree::Signed(_)
                )
        ),
    };
    match resolved {
        _ if !agrees => Err(format!("{text:?} is not a !!{}", tag.unwrap_or_default())),
        Tree::Float(f) if !f.is_finite() => Err(format!("{text:?} has no JSON form")),
        other => Ok(other),
    }
}

fn resolve_plain(text: &str) -> Tree {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Tree::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Tree::Bool(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Tree::Bool(false)
        }
        ".nan" | ".NaN" | ".NAN" => return Tree::Float(f64::NAN),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Tree::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Tree::Float(f64::NEG_INFINITY),
        _ => {}
    }
    let first = text.as_bytes().first().copied().unwrap_or_default();
    if first == b'.' {
        return text
            .parse::<f64>()
            .ok()
            .filter(|_| is_yaml_float(text))
            .map_or_else(|| Tree::String(text.to_owned()), Tree::Float);
    }
    if !(first.is_ascii_digit() || first == b'+' || first == b'-') {
        return Tree::String(text.to_owned());
    }
    let digits = text.replace('_', "");
    if let Some(number) = go_int(&digits) {
        return number;
    }
    if is_yaml_float(&digits) {
        if let Ok(f) = digits.parse::<f64>() {
            return Tree::Float(f);
        }
    }
    Tree::String(text.to_owned())
}

/// Go's `strconv.ParseInt(s, 0, 64)`, then `ParseUint`: a sign, then `0x`, `0o`, `0b` or a
/// leading `0` (octal), else decimal.
fn go_int(text: &str) -> Option<Tree> {
    let (negative, unsigned) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = match unsigned.get(..2) {
        Some("0x" | "0X") => (16, &unsigned[2..]),
        Some("0o" | "0O") => (8, &unsigned[2..]),
        Some("0b" | "0B") => (2, &unsigned[2..]),
        _ if unsigned.len() > 1 && unsigned.starts_with('0') => (8, &unsigned[1..]),
        _ => (10, unsigned),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    if negative {
        let value = 0i64.checked_sub_unsigned(magnitude)?;
        Some(Tree::Signed(value))
    } else {
        Some(Tree::Unsigned(magnitude))
    }
}

/// go-yaml's `yamlStyleFloat`: `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_yaml_float(text: &str) -> bool {
    let rest = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", fraction)) => digits(fraction),
        Some((whole, fraction)) => digits(whole) && (fraction.is_empty() || digits(fraction)),
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

/// A value as it reaches the plugin: Go's JSON writes an integral float below 1e21 without a
/// fraction (`08` is the float 8 in YAML 1.1, and the plugin reads `8`).
fn json_value(node: Tree) -> Tree {
    match node {
        Tree::Float(f) => json_number(f),
        other => other,
    }
}

fn json_number(f: f64) -> Tree {
    if f.fract() == 0.0 && f.abs() < 1e21 {
        if f >= 0.0 && f <= u64::MAX as f64 {
            return Tree::Unsigned(f as u64);
        }
        if f < 0.0 && f >= i64::MIN as f64 {
            return Tree::Signed(f as i64);
        }
    }
    Tree::Float(f)
}

/// `value` as block YAML (one document, without `---`), read back by [`documents`] as the
/// JSON `serde_json` makes of it, fields in their declared order.
pub fn to_yaml<T: serde::Serialize>(value: &T) -> String {
    let tree = serde_json::to_string(value)
        .ok()
        .and_then(|json| serde_json::from_str::<Tree>(&json).ok())
        .unwrap_or(Tree::Null);
    let mut out = String::new();
    match &tree {
        Tree::Object(entries) if !entries.is_empty() => write_block(&tree, 0, &mut out),
        Tree::Array(items) if !items.is_empty() => write_block(&tree, 0, &mut out),
        other => {
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
    out
}

fn is_block(tree: &Tree) -> bool {
    matches!(tree, Tree::Object(e) if !e.is_empty())
        || matches!(tree, Tree::Array(i) if !i.is_empty())
}

/// A non-empty collection, each line indented by `indent`. A sequence under a mapping key is
/// not indented further (as libyaml writes it).
fn write_block(tree: &Tree, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match tree {
        Tree::Object(entries) => {
            for (key, value) in entries {
                out.push_str(&pad);
                out.push_str(&string(key));
                out.push(':');
                match value {
                    Tree::Object(_) if is_block(value) => {
                        out.push('\n');
                        write_block(value, indent + 2, out);
                    }
                    Tree::Array(_) if is_block(value) => {
                        out.push('\n');
                        write_block(value, indent, out);
                    }
                    _ => {
                        out.push(' ');
                        out.push_str(&inline(value));
                        out.push('\n');
                    }
                }
            }
        }
        Tree::Array(items) => {
            for item in items {
                out.push_str(&pad);
                out.push_str("- ");
                if is_block(item) {
                    // The item's block, its first line after the dash.
                    let mut nested = String::new();
                    write_block(item, indent + 2, &mut nested);
                    out.push_str(nested.get(indent + 2..).unwrap_or_default());
                } else {
                    out.push_str(&inline(item));
                    out.push('\n');
                }
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
}

fn inline(tree: &Tree) -> String {
    match tree {
        Tree::Null => "null".to_owned(),
        Tree::Bool(b) => b.to_string(),
        Tree::Unsigned(n) => n.to_string(),
        Tree::Signed(n) => n.to_string(),
        Tree::Float(f) => serde_json::to_string(f).unwrap_or_else(|_| "null".to_owned()),
        Tree::String(s) => string(s),
        Tree::Object(_) => "{}".to_owned(),
        Tree::Array(_) => "[]".to_owned(),
    }
}

/// A string scalar: plain when no YAML 1.1 or 1.2 reader could take it for anything else,
/// single-quoted when it needs quoting, double-quoted (escaped) when it holds a character a
/// single-quoted scalar cannot carry.
fn string(s: &str) -> String {
    // Control characters, the line separators YAML 1.1 breaks lines at, the BOM, and the two
    // non-characters outside YAML's printable set.
    let needs_escape = |c: char| {
        c.is_control()
            || matches!(
                c,
                '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
            )
    };
    if s.chars().any(needs_escape) {
        let mut out = String::from('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                c if needs_escape(c) => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
        return out;
    }
    if is_plain_safe(s) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let indicator = "-?:,[]{}#&*!|>'\"%@`".contains(first);
    // What starts like a number may be one to some reader: YAML 1.1 also has sexagesimal
    // numbers (`1:20`), dates and floats with several dots. They are made of these characters
    // only; a duration such as `30s` is not.
    let number_like = (first.is_ascii_digit() || first == '+' || first == '.')
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() || "xXoObB_+-.:tTzZ ".contains(c));
    !indicator
        && !number_like
        && s.trim() == s
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.ends_with(':')
        && s != "<<"
        && s.parse::<f64>().is_err()
        && resolve_plain(s) == Tree::String(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(text: &str) -> serde_json::Value {
        let docs = documents(text).unwrap();
        assert_eq!(docs.len(), 1, "{text}");
        docs[0].to_value()
    }

    #[test]
    fn plain_scalars_resolve_as_yaml_1_1() {
        assert_eq!(
            one("[yes, No, on, OFF, y, n, true, ~, null, '', 0777, 0x1F, 0b101, 1_000, -42, 08, 1.5, .5, 6e3, 2001-12-14, 1:20, +7]"),
            json!([true, false, true, false, true, false, true, null, null, "", 511, 31, 5, 1000, -42, 8, 1.5, 0.5, 6000, "2001-12-14", "1:20", 7])
        );
    }

    #[test]
    fn quoted_block_and_str_tagged_scalars_stay_strings() {
        assert_eq!(
            one("a: 'yes'\nb: \"on\"\nc: !!str 0777\nd: |\n  no\ne: plain text\n"),
            json!({"a": "yes", "b": "on", "c": "0777", "d": "no\n", "e": "plain text"})
        );
    }

    #[test]
    fn keys_are_written_as_json_strings_and_kept_when_repeated() {
        let docs = documents("on: 1\n2: x\nname: a\nname: b\n").unwrap();
        let Tree::Object(entries) = &docs[0] else {
            panic!("{docs:?}")
        };
        let keys: Vec<_> = entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["true", "2", "name", "name"]);
    }

    #[test]
    fn anchors_aliases_and_merges() {
        assert_eq!(
            one("base: &b {rate: 5, period: 1s}\nlimit:\n  name: x\n  <<: *b\n  rate: 7\nlist: [*b]\n"),
            json!({"base": {"rate": 5, "period": "1s"}, "limit": {"name": "x", "rate": 7, "period": "1s"}, "list": [{"rate": 5, "period": "1s"}]})
        );
        // As go-yaml v2: in document order, a merge overrides the keys before it, the keys
        // after it override the merge, and of several sources the earlier wins.
        assert_eq!(
            one("a: &a {x: 1}\nc: &c {x: 9, z: 9}\nb: {x: 2, <<: *a}\nd: {x: 2, <<: *a, x: 3}\ne: {<<: [*a, *c]}\n"),
            json!({"a": {"x": 1}, "c": {"x": 9, "z": 9}, "b": {"x": 1}, "d": {"x": 3}, "e": {"x": 1, "z": 9}})
        );
        // The mapping's own key given twice is kept twice, for the plugin's refusal.
        let docs = documents("b: {x: 2, x: 3}\n").unwrap();
        assert_eq!(
            docs[0].get("b"),
            Some(&Tree::Object(vec![
                ("x".into(), Tree::Unsigned(2)),
                ("x".into(), Tree::Unsigned(3))
            ]))
        );
    }

    #[test]
    fn documents_and_their_errors() {
        let docs = documents("a: 1\n---\n---\nb: 2\n").unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[1], Tree::Null);
        for (text, error) in [
            ("a: .inf\n", "line 1 column 4: \".inf\" has no JSON form"),
            (
                "~: 1\n",
                "line 1 column 1: a null mapping key cannot be written as JSON",
            ),
            ("a: !!int x\n", "line 1 column 10: \"x\" is not a !!int"),
            (
                "a: *nope\n",
                "while parsing node, found unknown anchor at byte 3 line 1 column 4",
            ),
        ] {
            assert_eq!(
                documents(text).map(|_| ()).unwrap_err().to_string(),
                error,
                "{text}"
            );
        }
        assert!(documents("a: [1, 2\n").is_err());
        for key in ["1.5e7: x\n", "18446744073709551615: x\n"] {
            assert!(
                documents(key).unwrap_err().to_string().contains("quote it"),
                "{key}"
            );
        }
        // Nested aliases that would expand a billion-fold stop at the cap.
        let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..7 {
            laughs.push_str(&format!(
                "a{i}: &a{i} [{}]\n",
                vec![format!("*a{}", i - 1); 10].join(", ")
            ));
        }
        assert!(documents(&laughs)
            .unwrap_err()
            .to_string()
            .contains("aliases expand to too many nodes"));
    }

    #[test]
    fn written_yaml_reads_back_as_the_json_it_came_from() {
        let value = json!({
            "kind": "WasmPlugin",
            "keys": [{"kty": "EC", "n": "u-hE", "y": "NpK9", "x": "KBTS"}],
            "ambiguous": ["1:20", "0.1.0", "5xx", "1e3", "yes", "on", "Off", "n", "~", "null", "", "0777", "1_000", "08", "1e3",
                ".5", "+7", "-", "- a", "2001-12-14", "inf", "<<", "a: b", "a #b", "x:", " pad",
                "it's", "{\"json\":true}", "*alias", "!tag", "%d", "@x", "`x`"],
            "escaped": ["line\nbreak", "tab\there", "quote\"and\\back\u{7}", "sep\u{2028}", "non\u{fffe}char"],
            "plain": ["oci://registry/palisade-auth:0.1.0", "api.example.com", "RS256", "a-b_c", "30s", "200ms"],
            "numbers": [0, -3, 1.5, 18446744073709551615u64],
            "empty": {"map": {}, "list": []},
            "nested": [[1, [2]], {"a": [{"b": null}]}],
            "on": true
        });
        let text = to_yaml(&value);
        assert_eq!(one(&text), value, "{text}");
        // And any YAML 1.2 reader reads it the same.
        let strict: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(strict, value, "{text}");
        for plain in [
            "oci://registry/palisade-auth:0.1.0",
            "api.example.com",
            "kty: EC",
            "- 30s",
        ] {
            assert!(text.contains(plain), "{plain} not plain in {text}");
        }
        for quoted in [
            "'n': u-hE",
            "'y': NpK9",
            "- 'yes'",
            "- '0777'",
            "- '1:20'",
            "- '0.1.0'",
            "- '5xx'",
            "'on': true",
            "- \"line\\nbreak\"",
        ] {
            assert!(text.contains(quoted), "{quoted} not in {text}");
        }
    }
}
