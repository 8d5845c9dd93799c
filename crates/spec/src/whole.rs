//! Whole numbers the way JSON Schema counts them: `30` and `30.0` are both the integer 30.
//!
//! Use as `#[serde(default, deserialize_with = "flotilla_spec::whole::option_u64")]` on
//! request fields a JSON Schema declares `integer`, so that every document the schema
//! accepts is accepted.

use std::fmt;

use serde::de::{Deserializer, Error, Unexpected, Visitor};

struct Whole;

impl<'de> Visitor<'de> for Whole {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a non-negative whole number")
    }

    fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_u64<E: Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Some(n))
    }

    fn visit_i64<E: Error>(self, n: i64) -> Result<Self::Value, E> {
        u64::try_from(n)
            .map(Some)
            .map_err(|_| E::invalid_value(Unexpected::Signed(n), &self))
    }

    fn visit_f64<E: Error>(self, f: f64) -> Result<Self::Value, E> {
        if f.fract() == 0.0 && (0.0..u64::MAX as f64).contains(&f) {
            Ok(Some(f as u64))
        } else {
            Err(E::invalid_value(Unexpected::Float(f), &self))
        }
    }
}

/// An optional non-negative whole number, written as an integer or as a float with no
/// fractional part.
pub fn option_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_option(Whole)
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    struct T {
        #[serde(default, deserialize_with = "super::option_u64")]
        n: Option<u64>,
    }

    fn parse(s: &str) -> Result<Option<u64>, serde_json::Error> {
        serde_json::from_str::<T>(s).map(|t| t.n)
    }

    #[test]
    fn integers_and_whole_floats_pass_fractions_and_negatives_do_not() {
        assert_eq!(parse(r#"{"n": 30}"#).unwrap(), Some(30));
        assert_eq!(parse(r#"{"n": 30.0}"#).unwrap(), Some(30));
        assert_eq!(parse(r#"{"n": null}"#).unwrap(), None);
        assert_eq!(parse(r#"{}"#).unwrap(), None);
        assert!(parse(r#"{"n": 30.5}"#).is_err());
        assert!(parse(r#"{"n": -1}"#).is_err());
        assert!(parse(r#"{"n": "30"}"#).is_err());
    }
}
