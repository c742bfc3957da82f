//! Reading (and writing back) the values that need more than their type:
//! durations with units, https URLs, and the one-value checks, which fail
//! as the value is read so that the error points at it.

use std::time::Duration;

use http::Uri;
use serde::de::Error;
use serde::{Deserialize, Deserializer, Serializer};

/// `"250ms"`, `"5s"`, `"2m"`, `"6h"`, `"1d"`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().ok()?;
    let secs = |k: u64| n.checked_mul(k).map(Duration::from_secs);
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "s" => secs(1),
        "m" | "min" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    }
}

/// A duration as text, in the largest unit that states it exactly.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms > 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Given {
    Text(String),
    Number(u64),
}

/// A duration given as text with a unit, or as a bare number in
/// `unit` (the unit of the older `*_ms`, `*_secs`, `*_hours` keys).
fn duration<'de, D: Deserializer<'de>>(d: D, unit: Duration) -> Result<Duration, D::Error> {
    match Given::deserialize(d)? {
        Given::Number(n) => unit
            .checked_mul(u32::try_from(n).map_err(|_| D::Error::custom("the duration is too long"))?)
            .ok_or_else(|| D::Error::custom("the duration is too long")),
        Given::Text(t) => parse_duration(&t).ok_or_else(|| {
            D::Error::custom(format!(
                "'{t}' is not a duration such as \"250ms\", \"5s\", \"10m\", \"6h\" or \"1d\""
            ))
        }),
    }
}

macro_rules! duration_in {
    ($name:ident, $unit:expr) => {
        pub mod $name {
            use super::*;
            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
                duration(d, $unit)
            }
            pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&format_duration(*v))
            }
        }
    };
}
duration_in!(millis, Duration::from_millis(1));
duration_in!(secs, Duration::from_secs(1));
duration_in!(hours, Duration::from_secs(3600));

/// The token leeway: a duration of at most `MAX_LEEWAY_SECS`.
pub mod leeway {
    use super::*;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let max = crate::auth::token::MAX_LEEWAY_SECS;
        let v = duration(d, Duration::from_secs(1))?;
        if v > Duration::from_secs(max) {
            return Err(D::Error::custom(format!("must be at most {max} seconds")));
        }
        Ok(v)
    }
    pub use super::secs::serialize;
}

fn https<E: Error>(text: &str) -> Result<Uri, E> {
    let uri: Uri = text
        .parse()
        .map_err(|_| E::custom(format!("'{text}' is not a URL")))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        return Err(E::custom("must be an https:// URL with a host"));
    }
    Ok(uri)
}

pub mod https_uri {
    use super::*;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Uri, D::Error> {
        https(&String::deserialize(d)?)
    }
    pub fn serialize<S: Serializer>(v: &Uri, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }
}

pub mod optional_https_uri {
    use super::*;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uri>, D::Error> {
        Option::<String>::deserialize(d)?.map(|t| https(&t)).transpose()
    }
    pub fn serialize<S: Serializer>(v: &Option<Uri>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(uri) => s.serialize_str(&uri.to_string()),
            None => s.serialize_none(),
        }
    }
}

pub fn province<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let code = u16::deserialize(d)?;
    match crate::units::Units::get().province(code) {
        Some(_) => Ok(code),
        None => Err(D::Error::custom(format!(
            "{code} is not a province code (codes after the 2025 reorganisation)"
        ))),
    }
}

pub fn algorithms<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    for name in &names {
        let allowed = name
            .parse::<jsonwebtoken::Algorithm>()
            .is_ok_and(|a| crate::auth::token::ASYMMETRIC_ALGORITHMS.contains(&a));
        if !allowed {
            return Err(D::Error::custom(format!(
                "'{name}' is not an allowed asymmetric algorithm"
            )));
        }
    }
    Ok(names)
}

pub fn positive<'de, D: Deserializer<'de>, T>(d: D) -> Result<T, D::Error>
where
    T: Deserialize<'de> + Default + PartialEq,
{
    let v = T::deserialize(d)?;
    if v == T::default() {
        return Err(D::Error::custom("must be a positive number"));
    }
    Ok(v)
}

pub fn positive_scale<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if !(v > 0.0 && v.is_finite()) {
        return Err(D::Error::custom("must be a positive number"));
    }
    Ok(v)
}

/// An `http://` URL with a host (a local collector or agent).
pub mod optional_http_uri {
    use super::*;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uri>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| {
                let uri: Uri = t
                    .parse()
                    .map_err(|_| D::Error::custom(format!("'{t}' is not a URL")))?;
                if uri.scheme_str() != Some("http") || uri.host().is_none() {
                    return Err(D::Error::custom(
                        "must be an http:// URL with a host, such as http://127.0.0.1:4318/v1/traces (a collector or agent beside the gateway)",
                    ));
                }
                Ok(uri)
            })
            .transpose()
    }
    pub use super::optional_https_uri::serialize;
}
