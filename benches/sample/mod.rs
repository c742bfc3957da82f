//! Sample audit events and warehouse records for the benchmarks: shaped
//! like the gateway's own, with synthetic values only.

#![allow(dead_code)] // each benchmark uses part of it

use std::path::Path;
use std::time::Duration;

use popgate::audit::event::{AuditEvent, EventKind};
use popgate::audit::journal::JournalSettings;
use popgate::audit::WarehouseRecord;
use serde_json::json;

/// An outcome event of a granted lookup, as the gateway writes one.
pub fn event(i: u64) -> AuditEvent {
    AuditEvent {
        request_id: format!("req-{i}"),
        intent_id: Some(uuid::Uuid::now_v7().to_string()),
        app_id: Some("mot-cua".into()),
        officer_id: Some("canbo-01".into()),
        officer_unit: Some("26734".into()),
        purpose: Some("administrative-procedure".into()),
        case_ref: Some("HS-2026-000123".into()),
        citizen_key: Some("9f".repeat(32)),
        fields: vec![
            "full_name".into(),
            "date_of_birth".into(),
            "sex".into(),
            "permanent_address".into(),
        ],
        policy_version: Some(1),
        http_status: Some(200),
        upstream_status: Some("ok".into()),
        upstream_ms: Some(3),
        upstream_digest: Some("ab".repeat(32)),
        released_digest: Some("cd".repeat(32)),
        ..AuditEvent::new(EventKind::Outcome, "lookup", "granted")
    }
}

/// The intent event that precedes `event(i)`'s outcome.
pub fn intent(i: u64) -> AuditEvent {
    let mut e = event(i);
    e.kind = EventKind::Intent;
    e.decision = "pending".into();
    e.fields = Vec::new();
    e.http_status = None;
    e.upstream_status = None;
    e.upstream_ms = None;
    e.upstream_digest = None;
    e.released_digest = None;
    e.intent_id = None;
    e
}

/// The enriched warehouse record of a released citizen.
pub fn record(i: u64) -> WarehouseRecord {
    WarehouseRecord {
        citizen_key: format!("{:064x}", i),
        app_id: "mot-cua".into(),
        purpose: "administrative-procedure".into(),
        policy_version: 1,
        released_at: "2026-11-27T10:00:00Z".into(),
        data_as_of: Some("2026-11-27T09:00:00Z".into()),
        ward_code: Some("26734".into()),
        ward_name: Some("Phường Bến Nghé".into()),
        province_code: Some("79".into()),
        province_name: Some("Thành phố Hồ Chí Minh".into()),
        age_band: Some("25-34".into()),
        fields: json!({
            "full_name": "Nguyễn Văn An",
            "date_of_birth": "1990-01-01",
            "sex": "male",
            "permanent_address": {"province": "79", "ward": "26734", "detail": "12 Đường Số 1"}
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
        retain_until: "2027-11-27T10:00:00Z".into(),
        legal_basis: Some("Nghị định 61/2018/NĐ-CP".into()),
        residence_old: None,
        residence_ambiguous: false,
        permanent: None,
        region: Some("Đông Nam Bộ".into()),
        sex: Some("male".into()),
        household_size: None,
        household_role: Some("head".into()),
    }
}

/// A journal in `dir` that never refuses for backlog, with the gateway's
/// checkpoint cadence.
pub fn journal_settings(dir: &Path) -> JournalSettings {
    JournalSettings {
        dir: dir.to_owned(),
        instance_id: "bench".into(),
        segment_bytes: 256 * 1024 * 1024,
        checkpoint_every: 10_000,
        checkpoint_interval: Duration::from_secs(10),
        max_backlog_events: u64::MAX,
        max_backlog_age: Duration::from_secs(u64::MAX / 4),
        fail_writes: None,
    }
}
