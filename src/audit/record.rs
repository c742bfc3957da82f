//! The enriched copy of a granted lookup that the warehouse keeps
//! (`popgate.citizen_records`): only the fields the grant allows to store,
//! with the ward and province named from the administrative units, an age
//! band instead of the date of birth, and the date the purpose's retention
//! ends.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::policy::{Grant, PolicySet};

/// The enriched copy of a granted lookup for the warehouse
/// (`popgate.citizen_records`): only the fields the grant allows to store.
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
    pub ward_code: Option<String>,
    pub ward_name: Option<String>,
    pub province_code: Option<String>,
    pub province_name: Option<String>,
    pub age_band: Option<String>,
    pub fields: Map<String, Value>,
    /// RFC 3339: when the purge job deletes the record.
    pub retain_until: String,
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
}

impl WarehouseRecord {
    /// The enriched warehouse copy of a released citizen, when the grant
    /// lets the warehouse store any of the released fields.
    pub fn enrich(policy: &PolicySet, grant: &Grant, r: RecordOf<'_>) -> Option<WarehouseRecord> {
        let (mapped, released) = (r.mapped, r.released);
        let stored: Vec<&String> = grant.store.iter().filter(|p| r.paths.contains(p)).collect();
        if stored.is_empty() {
            return None;
        }
        let mut fields = Map::new();
        for path in stored {
            let value = match path.split_once('.') {
                None => released.get(path).cloned(),
                Some((parent, child)) => released.get(parent).and_then(|p| p.get(child)).cloned(),
            };
            if let Some(v) = value {
                fields.insert(path.clone(), v);
            }
        }
        let ward_code = ["current_address", "permanent_address"]
            .iter()
            .find_map(|f| {
                mapped
                    .get(*f)
                    .and_then(|a| a.get("ward_code"))
                    .and_then(Value::as_str)
            })
            .map(str::to_owned);
        let units = crate::units::Units::get();
        let ward = ward_code
            .as_deref()
            .and_then(|w| w.parse::<u32>().ok())
            .and_then(|w| units.ward(w));
        let province = ward.and_then(|w| units.province(w.province_code));
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
        Some(WarehouseRecord {
            citizen_key: r.citizen_key.to_owned(),
            app_id: r.app_id.to_owned(),
            purpose: grant.purpose.clone(),
            policy_version: policy.version,
            released_at: rfc3339(now),
            data_as_of: r.as_of,
            ward_code,
            ward_name: ward.map(|w| w.name.to_owned()),
            province_code: province.map(|p| format!("{:02}", p.code)),
            province_name: province.map(|p| p.name.to_owned()),
            age_band: birth_year.and_then(|y| age_band(y, now.year())),
            fields,
            retain_until: rfc3339(now + time::Duration::days(i64::from(retention_days))),
        })
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
