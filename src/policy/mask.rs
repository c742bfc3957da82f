//! Masks a grant may put on a released field. A mask only ever removes
//! information; each applies to certain kinds of field, checked when the
//! policy is loaded.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::catalog::FieldKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mask {
    /// Every character but the last four becomes `*`.
    Last4,
    /// A date keeps its year only.
    YearOnly,
    /// A name becomes its initials: "Nguyễn Văn An" → "N. V. A.".
    Initials,
    /// An address keeps its province and ward codes, not the street.
    WardOnly,
    /// The value is replaced by `"***"`.
    Redact,
}

/// The text that replaces a redacted value.
pub const REDACTED: &str = "***";

impl Mask {
    pub fn as_str(self) -> &'static str {
        match self {
            Mask::Last4 => "last4",
            Mask::YearOnly => "year-only",
            Mask::Initials => "initials",
            Mask::WardOnly => "ward-only",
            Mask::Redact => "redact",
        }
    }

    pub fn applies_to(self, kind: FieldKind) -> bool {
        match self {
            Mask::Last4 => kind == FieldKind::Text,
            Mask::YearOnly => kind == FieldKind::Date,
            Mask::Initials => kind == FieldKind::Name,
            Mask::WardOnly => kind == FieldKind::Address,
            Mask::Redact => true,
        }
    }

    /// Applies the mask. A value of an unexpected shape is redacted rather
    /// than passed through.
    pub fn apply(self, kind: FieldKind, value: &Value) -> Value {
        if !self.applies_to(kind) {
            return Value::from(REDACTED);
        }
        match (self, value) {
            (Mask::Last4, Value::String(s)) => {
                let n = s.chars().count();
                Value::String(
                    s.chars()
                        .enumerate()
                        .map(|(i, c)| if i + 4 < n { '*' } else { c })
                        .collect(),
                )
            }
            (Mask::YearOnly, Value::String(s)) if s.len() >= 4 && s.is_char_boundary(4) => {
                Value::String(s[..4].to_owned())
            }
            (Mask::Initials, Value::String(s)) => Value::String(
                s.split_whitespace()
                    .filter_map(|w| w.chars().next())
                    .map(|c| format!("{c}."))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            (Mask::WardOnly, Value::Object(o)) => {
                let kept: Map<String, Value> = o
                    .iter()
                    .filter(|(k, _)| *k == "province_code" || *k == "ward_code")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                Value::Object(kept)
            }
            _ => Value::from(REDACTED),
        }
    }
}

/// The kind of a sub-field (`father.full_name` → a name, others text).
pub fn subfield_kind(child: &str) -> FieldKind {
    if child == "full_name" {
        FieldKind::Name
    } else {
        FieldKind::Text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_remove_what_they_say() {
        assert_eq!(
            Mask::Last4.apply(FieldKind::Text, &json!("079203001234")),
            json!("********1234")
        );
        assert_eq!(
            Mask::YearOnly.apply(FieldKind::Date, &json!("2003-04-05")),
            json!("2003")
        );
        assert_eq!(
            Mask::Initials.apply(FieldKind::Name, &json!("Nguyễn Văn An")),
            json!("N. V. A.")
        );
        assert_eq!(
            Mask::WardOnly.apply(
                FieldKind::Address,
                &json!({"province_code": "79", "ward_code": "26734", "detail": "Số 1"})
            ),
            json!({"province_code": "79", "ward_code": "26734"})
        );
        assert_eq!(
            Mask::Redact.apply(FieldKind::Address, &json!({"a": 1})),
            json!("***")
        );
        // A value of the wrong shape is redacted, never passed through.
        assert_eq!(Mask::YearOnly.apply(FieldKind::Date, &json!(12)), json!("***"));
        assert_eq!(Mask::Last4.apply(FieldKind::Date, &json!("x")), json!("***"));
    }
}
