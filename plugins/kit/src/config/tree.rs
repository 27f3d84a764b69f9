//! A configuration document as written, and a serde deserializer over it that is stricter than
//! serde_json's and names the field of every error.
//!
//! serde_json reads a struct from an array too, field by field in order; an operator who writes
//! `[...]` where an object belongs never means that, and the JSON Schema (`palisade schema`,
//! `palisade validate`) refuses it, so the plugin must as well. Reading the document into a
//! [`Tree`] first lets [`TreeDeserializer::deserialize_struct`] refuse arrays at any depth, and
//! lets every error carry the path of the value it is about without wrapping each visitor (what
//! serde_path_to_error does, at ~60 KB of Wasm per plugin).

use std::fmt;
use std::slice;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    Unexpected, VariantAccess, Visitor,
};
use serde::Deserialize;

/// A JSON value. Objects keep their entries in document order, duplicates included, so a type
/// read from a tree sees exactly what it would see reading the text (and refuses a duplicate
/// field as it would there).
#[derive(Debug, Clone, PartialEq)]
pub enum Tree {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    String(String),
    Array(Vec<Tree>),
    Object(Vec<(String, Tree)>),
}

impl Tree {
    /// The first key given twice in one object, depth first in document order: an error at
    /// that object's path. serde would refuse it in a struct, but a map (and serde_json's
    /// `Value`) keeps the last one silently, which is never what an operator meant.
    pub(crate) fn duplicate(&self) -> Option<TreeError> {
        match self {
            Tree::Array(items) => items.iter().enumerate().find_map(|(index, item)| {
                item.duplicate()
                    .map(|err| err.within(Segment::Index(index)))
            }),
            Tree::Object(entries) => entries.iter().enumerate().find_map(|(i, (key, value))| {
                let earlier = entries.get(..i).unwrap_or_default();
                if earlier.iter().any(|(k, _)| k == key) {
                    return Some(de::Error::custom(format_args!("duplicate field `{key}`")));
                }
                value.duplicate().map(|err| err.within_key(key))
            }),
            _ => None,
        }
    }

    /// As serde_json's `Value` (a repeated key keeps its last value).
    pub fn to_value(&self) -> serde_json::Value {
        match self {
            Tree::Null => serde_json::Value::Null,
            Tree::Bool(b) => serde_json::Value::Bool(*b),
            Tree::Unsigned(n) => serde_json::Value::from(*n),
            Tree::Signed(n) => serde_json::Value::from(*n),
            Tree::Float(n) => serde_json::Value::from(*n),
            Tree::String(s) => serde_json::Value::String(s.clone()),
            Tree::Array(items) => items.iter().map(Tree::to_value).collect(),
            Tree::Object(entries) => serde_json::Value::Object(
                entries
                    .iter()
                    .map(|(key, value)| (key.clone(), value.to_value()))
                    .collect(),
            ),
        }
    }

    /// The value of `key` in an object (the last, as [`Tree::to_value`] keeps).
    pub fn get(&self, key: &str) -> Option<&Tree> {
        match self {
            Tree::Object(entries) => entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Tree::Null => Unexpected::Unit,
            Tree::Bool(b) => Unexpected::Bool(*b),
            Tree::Unsigned(n) => Unexpected::Unsigned(*n),
            Tree::Signed(n) => Unexpected::Signed(*n),
            Tree::Float(n) => Unexpected::Float(*n),
            Tree::String(s) => Unexpected::Str(s),
            Tree::Array(_) => Unexpected::Seq,
            Tree::Object(_) => Unexpected::Map,
        }
    }
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Tree, D::Error> {
        deserializer.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Tree, E> {
        Ok(Tree::Null)
    }

    fn visit_none<E>(self) -> Result<Tree, E> {
        Ok(Tree::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Tree, D::Error> {
        Tree::deserialize(deserializer)
    }

    fn visit_bool<E>(self, value: bool) -> Result<Tree, E> {
        Ok(Tree::Bool(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Tree, E> {
        Ok(Tree::Unsigned(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Tree, E> {
        Ok(Tree::Signed(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Tree, E> {
        Ok(Tree::Float(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Tree, E> {
        Ok(Tree::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Tree, E> {
        Ok(Tree::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Tree::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Tree::Object(entries))
    }
}

/// One step of a field path.
#[derive(Debug)]
enum Segment {
    Index(usize),
    Key(String),
}

/// Why a value could not be read, and where: the path is collected innermost first as the
/// error leaves each array element, object entry and enum variant. Boxed: every `Result` of
/// every configuration type carries it, and one pointer moves in less code than three.
#[derive(Debug)]
pub(crate) struct TreeError(Box<Located>);

#[derive(Debug)]
struct Located {
    within: Vec<Segment>,
    reason: String,
}

impl TreeError {
    fn within(mut self, segment: Segment) -> TreeError {
        self.0.within.push(segment);
        self
    }

    fn within_key(self, key: &str) -> TreeError {
        self.within(Segment::Key(key.to_owned()))
    }

    /// `limits[0].rate`, `.` for the document itself: the paths serde_path_to_error prints.
    pub(crate) fn path(&self) -> String {
        if self.0.within.is_empty() {
            return ".".to_owned();
        }
        let mut path = String::new();
        for segment in self.0.within.iter().rev() {
            match segment {
                Segment::Index(index) => {
                    path.push('[');
                    path.push_str(&index.to_string());
                    path.push(']');
                }
                Segment::Key(key) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                }
            }
        }
        path
    }
}

impl From<TreeError> for super::Problem {
    fn from(err: TreeError) -> super::Problem {
        super::Problem {
            path: err.path(),
            reason: err.0.reason,
        }
    }
}

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path(), self.0.reason)
    }
}

impl std::error::Error for TreeError {}

impl de::Error for TreeError {
    fn custom<T: fmt::Display>(reason: T) -> TreeError {
        TreeError(Box::new(Located {
            within: Vec::new(),
            reason: reason.to_string(),
        }))
    }

    // A string in the wrong place may be a secret (an API key written where its hash belongs,
    // a client secret): the message names its kind, never its text, since it is logged.
    fn invalid_type(unexpected: Unexpected<'_>, expected: &dyn de::Expected) -> TreeError {
        TreeError::custom(format_args!(
            "invalid type: {}, expected {expected}",
            Redacted(unexpected)
        ))
    }

    fn invalid_value(unexpected: Unexpected<'_>, expected: &dyn de::Expected) -> TreeError {
        TreeError::custom(format_args!(
            "invalid value: {}, expected {expected}",
            Redacted(unexpected)
        ))
    }

    fn unknown_variant(_variant: &str, expected: &'static [&'static str]) -> TreeError {
        let listed = |names: &[&str]| {
            names
                .iter()
                .map(|name| format!("`{name}`"))
                .collect::<Vec<_>>()
        };
        match expected {
            [] => TreeError::custom("unknown variant, there are none"),
            [only] => TreeError::custom(format_args!("unknown variant, expected `{only}`")),
            [first, second] => TreeError::custom(format_args!(
                "unknown variant, expected `{first}` or `{second}`"
            )),
            names => TreeError::custom(format_args!(
                "unknown variant, expected one of {}",
                listed(names).join(", ")
            )),
        }
    }
}

/// An [`Unexpected`] with any text left out, worded as serde words it otherwise. Never through
/// `Unexpected`'s own `Display`, nor with the number of a float: printing an f64 links ~15 KB of
/// float formatting into every plugin, for an error whose path and expected type say what to
/// fix.
struct Redacted<'a>(Unexpected<'a>);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Unexpected::Str(_) => f.write_str("a string"),
            Unexpected::Bytes(_) => f.write_str("bytes"),
            Unexpected::Char(_) => f.write_str("a character"),
            Unexpected::Float(_) => f.write_str("a floating point number"),
            Unexpected::Bool(b) => write!(f, "boolean `{b}`"),
            Unexpected::Unsigned(n) => write!(f, "integer `{n}`"),
            Unexpected::Signed(n) => write!(f, "integer `{n}`"),
            Unexpected::Unit => f.write_str("unit value"),
            Unexpected::Option => f.write_str("Option value"),
            Unexpected::NewtypeStruct => f.write_str("newtype struct"),
            Unexpected::Seq => f.write_str("sequence"),
            Unexpected::Map => f.write_str("map"),
            Unexpected::Enum => f.write_str("enum"),
            Unexpected::UnitVariant => f.write_str("unit variant"),
            Unexpected::NewtypeVariant => f.write_str("newtype variant"),
            Unexpected::TupleVariant => f.write_str("tuple variant"),
            Unexpected::StructVariant => f.write_str("struct variant"),
            Unexpected::Other(other) => f.write_str(other),
        }
    }
}

/// Reads a type from a [`Tree`] as serde_json reads it from text, except that a struct must be
/// an object.
pub(crate) struct TreeDeserializer<'a>(pub(crate) &'a Tree);

impl<'de> Deserializer<'de> for TreeDeserializer<'de> {
    type Error = TreeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TreeError> {
        match self.0 {
            Tree::Null => visitor.visit_unit(),
            Tree::Bool(b) => visitor.visit_bool(*b),
            Tree::Unsigned(n) => visitor.visit_u64(*n),
            Tree::Signed(n) => visitor.visit_i64(*n),
            Tree::Float(n) => visitor.visit_f64(*n),
            Tree::String(s) => visitor.visit_borrowed_str(s),
            Tree::Array(items) => {
                let mut elements = Elements {
                    items: items.iter(),
                    index: 0,
                };
                let value = visitor.visit_seq(&mut elements)?;
                match elements.items.len() {
                    0 => Ok(value),
                    _ => Err(de::Error::invalid_length(
                        items.len(),
                        &"fewer elements in array",
                    )),
                }
            }
            Tree::Object(entries) => {
                let mut map = Entries {
                    entries: entries.iter(),
                    value: None,
                };
                let value = visitor.visit_map(&mut map)?;
                match map.entries.len() {
                    0 => Ok(value),
                    _ => Err(de::Error::invalid_length(
                        entries.len(),
                        &"fewer elements in map",
                    )),
                }
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TreeError> {
        match self.0 {
            Tree::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TreeError> {
        visitor.visit_newtype_struct(self)
    }

    /// The one place this is stricter than serde_json: no struct from an array.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TreeError> {
        match self.0 {
            Tree::Object(_) => self.deserialize_any(visitor),
            other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TreeError> {
        match self.0 {
            Tree::String(name) => visitor.visit_enum(name.as_str().into_deserializer()),
            Tree::Object(entries) => match entries.as_slice() {
                [(name, content)] => visitor.visit_enum(Variant { name, content }),
                _ => Err(de::Error::invalid_value(
                    Unexpected::Map,
                    &"map with a single key",
                )),
            },
            other => Err(de::Error::invalid_type(
                other.unexpected(),
                &"string or map",
            )),
        }
    }

    /// An empty object reads as an empty list. Kong 3.5+ keeps a filter's JSON config as Lua
    /// tables and hands it over `cjson.encode`d (`kong/runloop/wasm.lua`); a table read back
    /// from its database carries no array marker, and cjson writes an empty one as `{}`. An
    /// empty object where a list belongs can only have been an empty list.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TreeError> {
        match self.0 {
            Tree::Object(entries) if entries.is_empty() => visitor.visit_seq(&mut Elements {
                items: [].iter(),
                index: 0,
            }),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TreeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct tuple tuple_struct map identifier
    }
}

struct Elements<'a> {
    items: slice::Iter<'a, Tree>,
    index: usize,
}

impl<'de> SeqAccess<'de> for Elements<'de> {
    type Error = TreeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TreeError> {
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        let index = self.index;
        self.index += 1;
        seed.deserialize(TreeDeserializer(item))
            .map(Some)
            .map_err(|err| err.within(Segment::Index(index)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Entries<'a> {
    entries: slice::Iter<'a, (String, Tree)>,
    /// The entry whose key was read last, until its value is.
    value: Option<&'a (String, Tree)>,
}

impl<'de> MapAccess<'de> for Entries<'de> {
    type Error = TreeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TreeError> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(entry);
        let key = entry.0.as_str();
        // An unknown field is the key's error, named by the key.
        seed.deserialize(BorrowedStrDeserializer::<TreeError>::new(key))
            .map(Some)
            .map_err(|err| err.within_key(key))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, TreeError> {
        let Some((key, value)) = self.value.take() else {
            return Err(de::Error::custom("a value was read before its key"));
        };
        seed.deserialize(TreeDeserializer(value))
            .map_err(|err| err.within_key(key))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// An externally tagged enum written as `{"variant": content}`.
struct Variant<'a> {
    name: &'a str,
    content: &'a Tree,
}

impl<'de> EnumAccess<'de> for Variant<'de> {
    type Error = TreeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), TreeError> {
        // An unknown variant is the enum's error: no segment of its own.
        let variant = seed.deserialize(BorrowedStrDeserializer::<TreeError>::new(self.name))?;
        Ok((variant, self))
    }
}

impl<'de> VariantAccess<'de> for Variant<'de> {
    type Error = TreeError;

    fn unit_variant(self) -> Result<(), TreeError> {
        match self.content {
            Tree::Null => Ok(()),
            other => Err(de::Error::invalid_type(other.unexpected(), &"unit variant")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, TreeError> {
        seed.deserialize(TreeDeserializer(self.content))
            .map_err(|err| err.within_key(self.name))
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, TreeError> {
        TreeDeserializer(self.content)
            .deserialize_seq(visitor)
            .map_err(|err| err.within_key(self.name))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TreeError> {
        TreeDeserializer(self.content)
            .deserialize_struct("", fields, visitor)
            .map_err(|err| err.within_key(self.name))
    }
}
