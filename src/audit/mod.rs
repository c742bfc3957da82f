//! Audit that cannot be lost or silently rewritten.
//!
//! Every request that reaches a decision produces an [`event::AuditEvent`];
//! events form one hash chain per instance ([`event`]), are made durable in
//! a local [`journal`] before any answer is released, are anchored by signed
//! [`checkpoint`]s, and are shipped to the warehouse by [`shipper`]. The
//! [`verify`] module recomputes chains and checkpoints from the warehouse.
//!
//! This module never stores a personal ID: citizens appear only as keyed
//! pseudonyms.

pub mod checkpoint;
pub mod event;
pub mod journal;
pub mod shipper;
pub mod verify;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
