//! The field catalog: every field of the national record that popgate knows,
//! with its canonical English id, Vietnamese label, sensitivity class, kind
//! and where it comes from in the upstream (C06) record — and the mapping of
//! an upstream record onto those ids.
//!
//! Mapping builds a new document from the catalog; anything upstream sends
//! that the catalog does not name is never copied.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The Personal Data Protection Law 2025 distinguishes basic from sensitive personal data; identity
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

/// A sub-field's label, in Vietnamese and English (`parent.child`: the
/// parent's label, then this).
pub fn subfield_label(sub: &str) -> Option<(&'static str, &'static str)> {
    Some(match sub {
        "province_code" => ("tỉnh, thành phố", "province"),
        "ward_code" => ("xã, phường, đặc khu", "commune or ward"),
        "detail" => ("số nhà, đường, thôn, tổ", "street address"),
        "full_name" => ("họ và tên", "full name"),
        "nationality" => ("quốc tịch", "nationality"),
        "personal_id" => ("số định danh cá nhân", "personal ID number"),
        "relation" => ("quan hệ với chủ hộ", "relation to the head of household"),
        _ => return None,
    })
}

/// One catalog entry.
#[derive(Debug, Clone)]
pub struct FieldDef {
    pub id: String,
    /// In Vietnamese, as officials and citizens read it.
    pub label: String,
    pub label_en: Option<String>,
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
        self.map_from(upstream)
    }

    /// [`Catalog::map_record`] straight from the record's JSON text, in one
    /// pass and without building a tree: members the catalog does not name
    /// are skipped, and only mapped values are allocated.
    pub fn map_json(&self, upstream: &RawValue) -> Map<String, Value> {
        self.map_from(&mut serde_json::Deserializer::from_str(upstream.get()))
    }

    fn map_from<'de, D: Deserializer<'de>>(&self, upstream: D) -> Map<String, Value> {
        // Anything but an object is refused by `deserialize_map`: an empty
        // record.
        upstream.deserialize_map(RecordReader(self)).unwrap_or_default()
    }
}

/// Reads a `CongDan` object member by member; a key repeated upstream
/// counts as its last value, as in a JSON object.
struct RecordReader<'c>(&'c Catalog);

impl<'de> Visitor<'de> for RecordReader<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a C06 record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let mut named = self.0.fields.iter().filter(|f| f.upstream == *key.0);
            match (named.next(), named.next()) {
                (None, _) => {
                    map.next_value::<IgnoredAny>()?;
                }
                (Some(field), None) => {
                    set(&mut out, &field.id, map.next_value_seed(Read::Field(field.kind))?)
                }
                (Some(_), Some(_)) => {
                    // Several catalog fields read this key: keep its value
                    // once, and read it for each of them.
                    let value: Value = map.next_value()?;
                    for field in self.0.fields.iter().filter(|f| f.upstream == *key.0) {
                        let read = Read::Field(field.kind).deserialize(&value).unwrap_or(None);
                        set(&mut out, &field.id, read);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Sets `key` to a value read, or removes it when the value read is absent:
/// a key repeated upstream counts as its last value.
fn set(out: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    match value {
        Some(v) => {
            out.insert(key.to_owned(), v);
        }
        None => {
            out.remove(key);
        }
    }
}

/// An object key, borrowed from the input unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Rewrites an address's codes as 2025 units (`province_code`,
/// `ward_code`), whichever way the national database coded them. An
/// old-coded address keeps what it was given under `legacy` (codes and
/// names, whether the old ward was divided and, if so, every 2025 ward it
/// went into, and the text "old name (cũ), nay thuộc new name, province");
/// one that resolves to nothing keeps no ward code and says `unresolved`.
fn normalise_address(out: &mut Map<String, Value>, district: Option<&str>) {
    let code = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .and_then(|s| s.trim().parse::<u32>().ok())
    };
    let Some(ward) = code(out.get("ward_code")) else {
        return;
    };
    let province = code(out.get("province_code")).and_then(|p| u16::try_from(p).ok());
    let district_code = district.and_then(|d| d.trim().parse::<u16>().ok());
    let units = crate::units::Units::get();
    match units.resolve(province, district_code, ward) {
        crate::units::Resolved::Current(w) => {
            out.insert(
                "province_code".into(),
                Value::String(format!("{:02}", w.province_code)),
            );
            out.insert("ward_code".into(), Value::String(format!("{:05}", w.code)));
        }
        crate::units::Resolved::Legacy {
            old,
            ward,
            candidates,
        } => {
            let province_name = units.province(ward.province_code).map_or("", |p| p.name);
            let mut legacy = Map::new();
            legacy.insert(
                "province_code".into(),
                Value::String(format!("{:02}", old.province_code)),
            );
            legacy.insert("province_name".into(), Value::from(old.province_name));
            legacy.insert(
                "district_code".into(),
                Value::String(format!("{:03}", old.district_code)),
            );
            legacy.insert("district_name".into(), Value::from(old.district_name));
            legacy.insert("ward_code".into(), Value::String(format!("{:05}", old.code)));
            legacy.insert("ward_name".into(), Value::from(old.name));
            legacy.insert("divided".into(), Value::Bool(old.divided));
            if old.divided {
                let all = candidates
                    .iter()
                    .map(|w| Value::String(format!("{:05}", w.code)))
                    .collect();
                legacy.insert("ward_candidates".into(), Value::Array(all));
            }
            legacy.insert(
                "as_text".into(),
                Value::String(format!(
                    "{} (cũ), nay thuộc {}, {province_name}",
                    old.name, ward.name
                )),
            );
            out.insert(
                "province_code".into(),
                Value::String(format!("{:02}", ward.province_code)),
            );
            out.insert("ward_code".into(), Value::String(format!("{:05}", ward.code)));
            out.insert("legacy".into(), Value::Object(legacy));
        }
        crate::units::Resolved::Unresolved => {
            crate::units::count_unresolved();
            let mut given = Map::new();
            for k in ["province_code", "ward_code"] {
                if let Some(v) = out.remove(k) {
                    given.insert(k.into(), v);
                }
            }
            if let Some(d) = district {
                given.insert("district_code".into(), Value::from(d));
            }
            out.insert("as_given".into(), Value::Object(given));
            out.insert("unresolved".into(), Value::Bool(true));
        }
    }
}

/// What to read from one upstream value. Every JSON value is accepted: one
/// of a shape the reading does not take is skipped and reads as `None`.
#[derive(Debug, Clone, Copy)]
enum Read {
    /// A catalog field's value, by its kind.
    Field(FieldKind),
    /// A string, or a name in parts (`{Ho, ChuDem, Ten}`) joined by spaces.
    Name,
    /// A string.
    Text,
}

impl<'de> DeserializeSeed<'de> for Read {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Value>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Read {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Option<Value>, E> {
        let kind = match self {
            Read::Name | Read::Text => FieldKind::Text,
            Read::Field(kind) => kind,
        };
        Ok(match kind {
            FieldKind::Text | FieldKind::Name => Some(Value::String(s.to_owned())),
            FieldKind::Date => {
                let b = s.as_bytes();
                (b.len() == 8 && b.iter().all(u8::is_ascii_digit))
                    .then(|| Value::String(format!("{}-{}-{}", &s[0..4], &s[4..6], &s[6..8])))
            }
            FieldKind::Sex => match s {
                "1" => Some(Value::from("male")),
                "2" => Some(Value::from("female")),
                _ => None,
            },
            FieldKind::Address | FieldKind::Person | FieldKind::HouseholdHead => None,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Value>, A::Error> {
        match self {
            Read::Name | Read::Field(FieldKind::Name) => {
                // `{Ho, ChuDem, Ten}`: the string parts that are not empty,
                // in that order, whatever the order upstream.
                let mut parts: [Option<Value>; 3] = [None, None, None];
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    match ["Ho", "ChuDem", "Ten"].iter().position(|p| *p == key.0) {
                        Some(i) => parts[i] = map.next_value_seed(Read::Text)?,
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let name = parts
                    .iter()
                    .filter_map(|p| p.as_ref().and_then(Value::as_str))
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                Ok((!name.is_empty()).then_some(Value::String(name)))
            }
            Read::Field(kind @ (FieldKind::Address | FieldKind::Person | FieldKind::HouseholdHead)) => {
                // Each sub-field is a string, or a name in parts.
                let mut out = Map::new();
                let mut district: Option<Value> = None;
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    match kind.subfields().iter().find(|(_, theirs)| *theirs == key.0) {
                        Some((ours, _)) => set(&mut out, ours, map.next_value_seed(Read::Name)?),
                        // Pre-reform coding: the district of the ward.
                        None if kind == FieldKind::Address && key.0 == "MaQuanHuyen" => {
                            district = map.next_value_seed(Read::Text)?;
                        }
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                if kind == FieldKind::Address {
                    normalise_address(&mut out, district.as_ref().and_then(Value::as_str));
                }
                Ok((!out.is_empty()).then_some(Value::Object(out)))
            }
            Read::Text | Read::Field(_) => {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(None)
            }
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Value>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<Value>, E> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog() -> Catalog {
        let field = |id: &str, kind, upstream: &str| FieldDef {
            id: id.to_owned(),
            label: id.to_owned(),
            label_en: None,
            class: Sensitivity::Personal,
            kind,
            upstream: upstream.to_owned(),
        };
        Catalog {
            fields: vec![
                field("personal_id", FieldKind::Text, "SoDinhDanh"),
                field("full_name", FieldKind::Name, "HoVaTen"),
                field("date_of_birth", FieldKind::Date, "NgayThangNamSinh"),
                field("birth_date_text", FieldKind::Text, "NgayThangNamSinh"),
                field("sex", FieldKind::Sex, "GioiTinh"),
                field("current_address", FieldKind::Address, "NoiOHienTai"),
                field("father", FieldKind::Person, "Cha"),
            ],
        }
    }

    /// Both readings: from JSON text, as answers are read, and from a tree.
    fn map(record: &str) -> Map<String, Value> {
        let c = catalog();
        let raw = RawValue::from_string(record.to_owned()).expect("json");
        let from_text = c.map_json(&raw);
        let tree: Value = serde_json::from_str(record).expect("json");
        assert_eq!(from_text, c.map_record(&tree), "{record}");
        from_text
    }

    #[test]
    fn maps_each_kind_and_leaves_out_what_the_catalog_does_not_name() {
        let out = map(r#"{"SoDinhDanh": "079203001234", "SoCMND": "x", "GioiTinh": "2",
                "HoVaTen": {"Ten": "Mai", "Ho": "Trần", "ChuDem": "", "X": "y"},
                "NgayThangNamSinh": "20030115",
                "NoiOHienTai": {"MaTinhThanh": "79", "MaPhuongXa": "25747", "ChiTiet": "Số 1", "Khac": [1]},
                "Cha": {"HoVaTen": {"Ho": "Trần", "Ten": "An"}, "SoDinhDanh": "079170000001"},
                "Extra": {"deep": [[[[["x"]]]]]}}"#);
        assert_eq!(
            Value::Object(out),
            json!({
                "personal_id": "079203001234",
                "full_name": "Trần Mai",
                "date_of_birth": "2003-01-15",
                "birth_date_text": "20030115",
                "sex": "female",
                "current_address": {"province_code": "79", "ward_code": "25747", "detail": "Số 1"},
                "father": {"full_name": "Trần An", "personal_id": "079170000001"},
            })
        );
    }

    #[test]
    fn values_of_another_shape_are_absent_and_the_last_of_a_repeated_key_counts() {
        let out = map(r#"{"SoDinhDanh": 79, "HoVaTen": ["Trần"], "GioiTinh": "3",
                "NgayThangNamSinh": "2003-01-15", "NoiOHienTai": "Số 1",
                "Cha": {"HoVaTen": null, "SoDinhDanh": "1", "SoDinhDanh": {"Ho": "x"}}}"#);
        assert_eq!(
            Value::Object(out),
            json!({"birth_date_text": "2003-01-15", "father": {"personal_id": "x"}})
        );
        let out = map(r#"{"SoDinhDanh": "1", "GioiTinh": "1", "SoDinhDanh": null}"#);
        assert_eq!(Value::Object(out), json!({"sex": "male"}));
        for not_a_record in ["[1, 2]", "\"text\"", "null", "7"] {
            assert!(map(not_a_record).is_empty(), "{not_a_record}");
        }
    }

    #[test]
    fn escapes_in_keys_and_values_are_read() {
        let out = map(r#"{"So\u0044inhDanh": "07920300\"1234", "HoVaTen": "L\u00ea An"}"#);
        assert_eq!(
            Value::Object(out),
            json!({"personal_id": "07920300\"1234", "full_name": "Lê An"})
        );
    }
}
