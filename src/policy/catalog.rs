//! The field catalog: every field of the national record that popgate knows,
//! with its canonical English id, Vietnamese label, sensitivity class, kind
//! and where it comes from in the upstream (C06) record — and the mapping of
//! an upstream record onto those ids.
//!
//! Mapping builds a new document from the catalog; anything upstream sends
//! that the catalog does not name is never copied.

use serde::Deserialize;
use serde_json::{Map, Value};

/// Decree 13/2023 distinguishes basic from sensitive personal data; identity
/// fields are the ones that single a person out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sensitivity {
    Identity,
    Personal,
    Sensitive,
}

/// How an upstream value is turned into the catalog's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    /// A string copied as is.
    Text,
    /// `YYYYMMDD` upstream, `YYYY-MM-DD` here.
    Date,
    /// `{Ho, ChuDem, Ten}` or a string upstream, one string here.
    Name,
    /// `"1"`/`"2"` upstream, `"male"`/`"female"` here.
    Sex,
    /// `{MaTinhThanh, MaPhuongXa, ChiTiet}` upstream,
    /// `{province_code, ward_code, detail}` here.
    Address,
    /// `{HoVaTen, QuocTich, SoDinhDanh}` upstream,
    /// `{full_name, nationality, personal_id}` here.
    Person,
    /// `{HoVaTen, SoDinhDanh, QuanHe}` upstream,
    /// `{full_name, personal_id, relation}` here.
    HouseholdHead,
}

impl FieldKind {
    /// The sub-fields a grant may name as `parent.child`, with the upstream
    /// key each one comes from.
    pub fn subfields(self) -> &'static [(&'static str, &'static str)] {
        match self {
            FieldKind::Address => &[
                ("province_code", "MaTinhThanh"),
                ("ward_code", "MaPhuongXa"),
                ("detail", "ChiTiet"),
            ],
            FieldKind::Person => &[
                ("full_name", "HoVaTen"),
                ("nationality", "QuocTich"),
                ("personal_id", "SoDinhDanh"),
            ],
            FieldKind::HouseholdHead => &[
                ("full_name", "HoVaTen"),
                ("personal_id", "SoDinhDanh"),
                ("relation", "QuanHe"),
            ],
            _ => &[],
        }
    }
}

/// One catalog entry.
#[derive(Debug, Clone)]
pub struct FieldDef {
    pub id: String,
    pub label: String,
    pub class: Sensitivity,
    pub kind: FieldKind,
    /// Key of the upstream `CongDan` object.
    pub upstream: String,
}

/// The whole catalog, in file order.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub fields: Vec<FieldDef>,
}

impl Catalog {
    pub fn get(&self, id: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.id == id)
    }

    /// Whether `path` (`id` or `id.sub`) names a catalog field.
    pub fn resolves(&self, path: &str) -> bool {
        match path.split_once('.') {
            None => self.get(path).is_some(),
            Some((parent, child)) => self
                .get(parent)
                .is_some_and(|f| f.kind.subfields().iter().any(|(s, _)| *s == child)),
        }
    }

    /// Maps an upstream `CongDan` object onto catalog ids. Fields missing or
    /// null upstream are absent; values of an unexpected shape are dropped.
    pub fn map_record(&self, upstream: &Value) -> Map<String, Value> {
        let mut out = Map::new();
        for field in &self.fields {
            let Some(raw) = upstream.get(&field.upstream) else {
                continue;
            };
            if let Some(value) = map_value(field.kind, raw) {
                out.insert(field.id.clone(), value);
            }
        }
        out
    }
}

fn map_value(kind: FieldKind, raw: &Value) -> Option<Value> {
    match kind {
        FieldKind::Text => raw.as_str().map(|s| Value::String(s.to_owned())),
        FieldKind::Date => {
            let s = raw.as_str()?;
            let b = s.as_bytes();
            (b.len() == 8 && b.iter().all(u8::is_ascii_digit))
                .then(|| Value::String(format!("{}-{}-{}", &s[0..4], &s[4..6], &s[6..8])))
        }
        FieldKind::Name => name_string(raw).map(Value::String),
        FieldKind::Sex => match raw.as_str()? {
            "1" => Some(Value::from("male")),
            "2" => Some(Value::from("female")),
            _ => None,
        },
        FieldKind::Address | FieldKind::Person | FieldKind::HouseholdHead => {
            let obj = raw.as_object()?;
            let mut out = Map::new();
            for (ours, theirs) in kind.subfields() {
                let value = obj.get(*theirs).and_then(|v| match v {
                    Value::String(_) => Some(v.clone()),
                    Value::Object(_) => name_string(v).map(Value::String),
                    _ => None,
                });
                if let Some(value) = value {
                    out.insert((*ours).to_owned(), value);
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
    }
}

/// `{Ho, ChuDem, Ten}` → "Ho ChuDem Ten"; a plain string is kept.
fn name_string(raw: &Value) -> Option<String> {
    match raw {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => {
            let parts: Vec<&str> = ["Ho", "ChuDem", "Ten"]
                .iter()
                .filter_map(|k| o.get(*k).and_then(Value::as_str))
                .filter(|s| !s.is_empty())
                .collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        }
        _ => None,
    }
}
