//! proto3 JSON numbers for [`OrcaLoadReport`](super::OrcaLoadReport): a `double` is a JSON
//! number or a string holding one (`"0.5"`, `"NaN"`, `"Infinity"`), a `uint64` a number or a
//! decimal string (the proto3 JSON mapping, which Envoy's parser of the `JSON` form follows).

use std::collections::HashMap;
use std::fmt;

use serde::Deserializer;
use serde::de::{self, MapAccess, Visitor};

struct Double;

impl Visitor<'_> for Double {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, or a string holding one")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        match v {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            // Rust also reads "inf" and "nan"; proto3 JSON spells them as above.
            _ if v
                .chars()
                .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') =>
            {
                Err(E::invalid_value(
                    de::Unexpected::Str(v),
                    &"a number, or a string holding one",
                ))
            }
            _ => v.trim().parse().map_err(|_| {
                E::invalid_value(de::Unexpected::Str(v), &"a number, or a string holding one")
            }),
        }
    }
}

/// A proto3 JSON `double`.
pub(super) fn double<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(Double)
}

struct Uint64;

impl Visitor<'_> for Uint64 {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number of at least 0, or a string holding one")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        v.parse()
            .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

/// A proto3 JSON `uint64`.
pub(super) fn uint64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(Uint64)
}

struct DoubleMap;

/// One value of a map, read as a proto3 JSON `double`.
struct Value(f64);

impl<'de> de::Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        double(d).map(Value)
    }
}

impl<'de> Visitor<'de> for DoubleMap {
    type Value = HashMap<String, f64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of names to numbers")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = HashMap::new();
        while let Some((k, Value(v))) = map.next_entry::<String, Value>()? {
            if out.insert(k.clone(), v).is_some() {
                return Err(de::Error::custom(format!("duplicate key {k:?}")));
            }
        }
        Ok(out)
    }
}

/// A proto3 JSON `map<string, double>`.
pub(super) fn double_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<HashMap<String, f64>, D::Error> {
    d.deserialize_map(DoubleMap)
}
