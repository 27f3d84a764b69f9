//! Durations in configuration, written as operators write them in Envoy and Kong: `250ms`,
//! `30s`, `5m`, `1h`.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A duration from configuration: a whole number followed by `ms`, `s`, `m` or `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    pub const fn get(self) -> Duration {
        self.0
    }
}

/// Why a duration string was refused. It does not repeat the text: a string in the wrong
/// field may be a secret, and config errors are logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration: expected a whole number followed by ms, s, m or h (e.g. \"30s\")")]
pub struct DurationError;

impl std::str::FromStr for ConfigDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let refuse = || DurationError;
        let digits_end = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(refuse)?;
        let (number, unit) = text.split_at(digits_end);
        let number: u64 = number.parse().map_err(|_| refuse())?;
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(refuse()),
        };
        let millis = number.checked_mul(millis_per_unit).ok_or_else(refuse)?;
        Ok(Self(Duration::from_millis(millis)))
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(3_600_000) && ms != 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms != 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1_000) {
            write!(f, "{}s", ms / 1_000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor, so that a refused duration is an error of the string being read: the
        // deserializer then knows where it is (`config::load` names the field from that).
        struct Text;
        impl de::Visitor<'_> for Text {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<ConfigDuration, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Text)
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl JsonSchema for ConfigDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(ms|s|m|h)$",
            "description": "A whole number followed by ms, s, m or h, e.g. \"30s\".",
        })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!("250ms".parse(), Ok(ConfigDuration::from_millis(250)));
        assert_eq!("30s".parse(), Ok(ConfigDuration::from_secs(30)));
        assert_eq!("5m".parse(), Ok(ConfigDuration::from_secs(300)));
        assert_eq!("1h".parse(), Ok(ConfigDuration::from_secs(3600)));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for bad in [
            "",
            "30",
            "s",
            "-1s",
            "1.5s",
            "30 s",
            "30sec",
            "18446744073709551615h",
        ] {
            assert!(
                bad.parse::<ConfigDuration>().is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn displays_in_the_largest_whole_unit() {
        for text in ["250ms", "30s", "5m", "1h", "0s", "90s"] {
            let d: ConfigDuration = text.parse().unwrap();
            assert_eq!(d.to_string(), text);
        }
    }

    #[test]
    fn deserializes_from_json_string() {
        let d: ConfigDuration = serde_json::from_str("\"60s\"").unwrap();
        assert_eq!(d.get(), Duration::from_secs(60));
        let err = serde_json::from_str::<ConfigDuration>("60").unwrap_err();
        assert!(err.to_string().contains("invalid type"));
    }
}
