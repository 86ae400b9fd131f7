//! JSON-friendly representations shared by the message types.
//!
//! The test-vector format (see `docs/protocol.md`) writes integers as JSON numbers, but a
//! 64-bit value beyond 2^53 cannot survive a JavaScript or `f64` JSON parser, so such values
//! are written as decimal strings. Deserialisation accepts either form for any value.

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use std::fmt;

/// Largest integer magnitude every JSON parser represents exactly (2^53).
const JSON_SAFE_INTEGER_MAX: u64 = 1 << 53;

pub(crate) fn serialize_u64<S: Serializer>(value: u64, s: S) -> Result<S::Ok, S::Error> {
    if value > JSON_SAFE_INTEGER_MAX {
        s.collect_str(&value)
    } else {
        s.serialize_u64(value)
    }
}

pub(crate) fn serialize_i64<S: Serializer>(value: i64, s: S) -> Result<S::Ok, S::Error> {
    if value.unsigned_abs() > JSON_SAFE_INTEGER_MAX {
        s.collect_str(&value)
    } else {
        s.serialize_i64(value)
    }
}

struct U64Visitor;

impl Visitor<'_> for U64Visitor {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an unsigned 64-bit integer, as a number or a decimal string")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        v.parse()
            .map_err(|_| E::custom(format!("{v:?} is not a u64")))
    }
}

struct I64Visitor;

impl Visitor<'_> for I64Visitor {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a signed 64-bit integer, as a number or a decimal string")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("{v} exceeds i64")))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        v.parse()
            .map_err(|_| E::custom(format!("{v:?} is not an i64")))
    }
}

pub(crate) fn deserialize_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(U64Visitor)
}

pub(crate) fn deserialize_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(I64Visitor)
}
