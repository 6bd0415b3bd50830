//! Tolerant serde helpers: PVE sends numbers as strings, booleans as 0/1 or "1", and leaves keys out.
//!
//! Every helper accepts `null` (and a missing key, with `#[serde(default)]`) as the default value.
//! Numbers that do not fit are an error, not a silent wrap.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

fn num_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

/// True for a float that converts to `u64` without clamping (`1e30` and `inf` do not fit).
fn fits_u64(f: f64) -> bool {
    (0.0..18_446_744_073_709_551_616.0).contains(&f)
}

fn u64_of(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| fits_u64(*f)).map(|f| f as u64)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().filter(|f| fits_u64(*f)).map(|f| f as u64))
        }
        Value::Bool(b) => Some(u64::from(*b)),
        _ => None,
    }
}

/// Parses PVE's loose booleans: `true`/`false`, `0`/`1` (number or string), `"yes"`/`"no"`, `"on"`/`"off"`.
pub(crate) fn bool_of(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|f| f != 0.0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Some(true),
            "0" | "false" | "no" | "off" | "" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// `u64` from a number, a numeric string or null (→ 0).
pub(crate) fn u64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(0);
    }
    u64_of(&v).ok_or_else(|| D::Error::custom(format!("expected an unsigned number, got {v}")))
}

/// `u32` from a number, a numeric string or null (→ 0).
pub(crate) fn u32_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u64_lenient(d)?;
    u32::try_from(n).map_err(|_| D::Error::custom(format!("{n} does not fit in u32")))
}

/// `f64` from a number, a numeric string or null (→ 0.0).
pub(crate) fn f64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(0.0);
    }
    num_of(&v).ok_or_else(|| D::Error::custom(format!("expected a number, got {v}")))
}

/// `bool` from a bool, 0/1, "0"/"1" or null (→ false). Used for `template` (undocumented, may be missing).
pub(crate) fn bool_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(false);
    }
    bool_of(&v).ok_or_else(|| D::Error::custom(format!("expected a boolean or 0/1, got {v}")))
}

/// `Option<bool>` from a bool, 0/1, "0"/"1"; null → None.
pub(crate) fn opt_bool_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    bool_of(&v)
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("expected a boolean or 0/1, got {v}")))
}

/// `Option<u64>` from a number or numeric string; null → None.
pub(crate) fn opt_u64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    u64_of(&v)
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("expected an unsigned number, got {v}")))
}

/// `Option<u32>` from a number or numeric string; null → None.
pub(crate) fn opt_u32_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match opt_u64_lenient(d)? {
        None => Ok(None),
        Some(n) => u32::try_from(n)
            .map(Some)
            .map_err(|_| D::Error::custom(format!("{n} does not fit in u32"))),
    }
}

/// `u8` from a number or numeric string (LXC `/interfaces` sends prefixes as `"16"`).
pub(crate) fn u8_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let n = u64_lenient(d)?;
    u8::try_from(n).map_err(|_| D::Error::custom(format!("{n} does not fit in u8")))
}

/// `Option<String>` from a string, a number (rendered) or null; an empty string stays `Some("")`.
pub(crate) fn opt_string_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(match v {
        Value::Null => None,
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if b { "1".into() } else { "0".into() }),
        other => return Err(D::Error::custom(format!("expected a string, got {other}"))),
    })
}

/// `String` from a string or a number (rendered); null → "".
pub(crate) fn string_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(opt_string_lenient(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    struct Row {
        #[serde(default, deserialize_with = "u64_lenient")]
        n: u64,
        #[serde(default, deserialize_with = "bool_lenient")]
        b: bool,
        #[serde(default, deserialize_with = "f64_lenient")]
        f: f64,
        #[serde(default, deserialize_with = "opt_string_lenient")]
        s: Option<String>,
    }

    #[test]
    fn numbers_as_strings_and_bools_as_integers_are_accepted() {
        let r: Row = serde_json::from_str(r#"{"n":"2048","b":"1","f":"0.25","s":42}"#).unwrap();
        assert_eq!((r.n, r.b, r.f, r.s.as_deref()), (2048, true, 0.25, Some("42")));
        let r: Row = serde_json::from_str(r#"{"n":2048.0,"b":true,"f":1}"#).unwrap();
        assert_eq!((r.n, r.b, r.f, r.s), (2048, true, 1.0, None));
        let r: Row = serde_json::from_str(r#"{"n":null,"b":0}"#).unwrap();
        assert_eq!((r.n, r.b), (0, false));
        let r: Row = serde_json::from_str("{}").unwrap();
        assert_eq!((r.n, r.b, r.f), (0, false, 0.0));
    }

    #[test]
    fn garbage_is_an_error_not_a_default() {
        assert!(serde_json::from_str::<Row>(r#"{"n":"lots"}"#).is_err());
        assert!(serde_json::from_str::<Row>(r#"{"b":"maybe"}"#).is_err());
    }
}
