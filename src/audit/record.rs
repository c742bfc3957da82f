//! The enriched copy the warehouse keeps of every released person
//! (`popgate.citizen_records`): who received it, for which purpose, on which
//! legal basis and policy version, the person's residence and permanent
//! address each as 2025 units (with the old codes and names when the
//! national database still coded them before the reform), the region, an
//! age band instead of the date of birth, sex, the household's size and the
//! person's role in it, only the fields the grant allows to store, and the
//! date the purpose's retention ends.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::policy::{Grant, PolicySet};

/// A pre-reform unit as the source coded it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OldUnit {
    pub province_code: Option<String>,
    pub province_name: Option<String>,
    pub district_code: Option<String>,
    pub district_name: Option<String>,
    pub ward_code: Option<String>,
    pub ward_name: Option<String>,
}

/// An address as 2025 units, with the old coding when the source used it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Place {
    pub ward_code: Option<String>,
    pub ward_name: Option<String>,
    pub province_code: Option<String>,
    pub province_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<OldUnit>,
    /// The old ward was divided: the 2025 ward is its default successor.
    #[serde(default)]
    pub ambiguous: bool,
}

/// The enriched copy of a released person for the warehouse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarehouseRecord {
    pub citizen_key: String,
    pub app_id: String,
    pub purpose: String,
    pub policy_version: u64,
    /// RFC 3339.
    pub released_at: String,
    /// The national database's `ThoiDiemDuLieu`, when given.
    pub data_as_of: Option<String>,
    /// The residence (current, else permanent) as 2025 units.
    pub ward_code: Option<String>,
    pub ward_name: Option<String>,
    pub province_code: Option<String>,
    pub province_name: Option<String>,
    pub age_band: Option<String>,
    pub fields: Map<String, Value>,
    /// RFC 3339: when the purge job deletes the record.
    pub retain_until: String,
    // Since schema 7 (older journal frames read without them).
    #[serde(default)]
    pub legal_basis: Option<String>,
    /// The residence's old coding, when the source used it.
    #[serde(default)]
    pub residence_old: Option<OldUnit>,
    #[serde(default)]
    pub residence_ambiguous: bool,
    /// The permanent address (thường trú).
    #[serde(default)]
    pub permanent: Option<Place>,
    /// The socio-economic region of the residence's province.
    #[serde(default)]
    pub region: Option<String>,
    /// `male` or `female`.
    #[serde(default)]
    pub sex: Option<String>,
    /// People in the household, when the answer was a household.
    #[serde(default)]
    pub household_size: Option<u32>,
    /// `head` or `member` (of the household the record names).
    #[serde(default)]
    pub household_role: Option<String>,
}

/// Who a released record is about and who received it.
pub struct RecordOf<'a> {
    pub citizen_key: &'a str,
    pub app_id: &'a str,
    /// The field paths released of this person: only these are stored.
    pub paths: &'a [String],
    /// The record in the catalog's field names, before masks.
    pub mapped: &'a Map<String, Value>,
    /// What the app received.
    pub released: &'a Map<String, Value>,
    /// The national database's `ThoiDiemDuLieu`.
    pub as_of: Option<String>,
    /// What the release relied on.
    pub legal_basis: Option<String>,
    /// The household's size, for a household answer.
    pub household_size: Option<u32>,
    /// `head` or `member` when the answer says so.
    pub household_role: Option<&'a str>,
}

/// A mapped address (`catalog::normalise_address`) as units.
fn place(address: Option<&Value>) -> Option<Place> {
    let a = address?.as_object()?;
    let units = crate::units::Units::get();
    let ward_code = a.get("ward_code").and_then(Value::as_str).map(str::to_owned);
    let ward = ward_code
        .as_deref()
        .and_then(|w| w.parse::<u32>().ok())
        .and_then(|w| units.ward(w));
    let province = ward.and_then(|w| units.province(w.province_code));
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let legacy = a.get("legacy");
    let given = a.get("as_given");
    let old = legacy.or(given).map(|l| OldUnit {
        province_code: text(l, "province_code"),
        province_name: text(l, "province_name"),
        district_code: text(l, "district_code"),
        district_name: text(l, "district_name"),
        ward_code: text(l, "ward_code"),
        ward_name: text(l, "ward_name"),
    });
    Some(Place {
        ward_code: ward.map(|w| format!("{:05}", w.code)),
        ward_name: ward.map(|w| w.name.to_owned()),
        province_code: province.map(|p| format!("{:02}", p.code)),
        province_name: province.map(|p| p.name.to_owned()),
        old,
        ambiguous: legacy.and_then(|l| l.get("divided")).and_then(Value::as_bool) == Some(true),
    })
}

impl WarehouseRecord {
    /// The enriched warehouse copy of a released person; `fields` holds
    /// only the released fields the grant lets the warehouse store.
    pub fn enrich(policy: &PolicySet, grant: &Grant, r: RecordOf<'_>) -> WarehouseRecord {
        let (mapped, released) = (r.mapped, r.released);
        let mut fields = Map::new();
        for path in grant.store.iter().filter(|p| r.paths.contains(p)) {
            let value = match path.split_once('.') {
                None => released.get(path).cloned(),
                Some((parent, child)) => released.get(parent).and_then(|p| p.get(child)).cloned(),
            };
            if let Some(v) = value {
                fields.insert(path.clone(), v);
            }
        }
        let current = place(mapped.get("current_address"));
        let permanent = place(mapped.get("permanent_address"));
        let residence = current
            .clone()
            .filter(|p| p.ward_code.is_some())
            .or_else(|| permanent.clone())
            .unwrap_or_default();
        let now = time::OffsetDateTime::now_utc();
        let birth_year = mapped
            .get("date_of_birth")
            .and_then(Value::as_str)
            .and_then(|d| d.get(..4))
            .and_then(|y| y.parse::<i32>().ok());
        let retention_days = policy
            .purposes
            .get(&grant.purpose)
            .map_or(0, |p| p.retention_days);
        let rfc3339 = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        // The record's own household relation: "Chủ hộ" is the head.
        let relation = mapped
            .get("household_head")
            .and_then(|h| h.get("relation"))
            .and_then(Value::as_str);
        let household_role = r
            .household_role
            .map(str::to_owned)
            .or_else(|| relation.map(|rel| if rel == "Chủ hộ" { "head" } else { "member" }.to_owned()));
        let region = residence
            .province_code
            .as_deref()
            .and_then(|p| p.parse::<u16>().ok())
            .and_then(crate::units::region_of)
            .map(str::to_owned);
        WarehouseRecord {
            citizen_key: r.citizen_key.to_owned(),
            app_id: r.app_id.to_owned(),
            purpose: grant.purpose.clone(),
            policy_version: policy.version,
            released_at: rfc3339(now),
            data_as_of: r.as_of,
            ward_code: residence.ward_code,
            ward_name: residence.ward_name,
            province_code: residence.province_code,
            province_name: residence.province_name,
            age_band: birth_year.and_then(|y| age_band(y, now.year())),
            fields,
            retain_until: rfc3339(now + time::Duration::days(i64::from(retention_days))),
            legal_basis: r.legal_basis,
            residence_old: residence.old,
            residence_ambiguous: residence.ambiguous,
            permanent,
            region,
            sex: mapped.get("sex").and_then(Value::as_str).map(str::to_owned),
            household_size: r.household_size,
            household_role,
        }
    }
}

/// Ten-year age bands, with 0–14 and 65+ as statistics offices use them.
pub fn age_band(birth_year: i32, current_year: i32) -> Option<String> {
    let age = current_year - birth_year;
    let band = match age {
        i32::MIN..=-1 => return None,
        0..=14 => "0-14",
        15..=24 => "15-24",
        25..=34 => "25-34",
        35..=44 => "35-44",
        45..=54 => "45-54",
        55..=64 => "55-64",
        _ => "65+",
    };
    Some(band.to_owned())
}
