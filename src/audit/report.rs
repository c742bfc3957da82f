//! A citizen's access report: who accessed this citizen's data, when, why
//! and on which legal basis — never the officer (the design's rule; the
//! CJEU's reasoning in C-340/21). Each entry is one granted access, in
//! Vietnam time with its offset, with every label in Vietnamese and in
//! English; [`Letter`] is the printable A4 form, in Vietnamese.

use askama::Template;
use serde::Serialize;
use serde_json::Value;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use crate::clock::VIETNAM;
use crate::policy::catalog::subfield_label;
use crate::policy::PolicySet;
use crate::warehouse::audit_queries::{Residence, StoredEvent};

/// A label in both languages.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Label {
    pub vi: String,
    pub en: String,
}

impl Label {
    fn new(vi: impl Into<String>, en: impl Into<String>) -> Label {
        Label {
            vi: vi.into(),
            en: en.into(),
        }
    }
}

/// One released field of an entry.
#[derive(Debug, Clone, Serialize)]
pub struct ReportField {
    pub id: String,
    /// Vietnamese (the default).
    pub label: String,
    pub label_en: String,
}

/// One access, as the citizen reads it.
#[derive(Debug, Clone, Serialize)]
pub struct Access {
    /// Vietnam time with its offset, to the second.
    pub time: String,
    pub app: String,
    pub app_name: String,
    pub operation: String,
    pub operation_label: Label,
    pub purpose: String,
    pub purpose_label: String,
    pub purpose_label_en: String,
    pub legal_basis: Option<String>,
    pub case_ref: Option<String>,
    /// As which person this citizen was in the answer.
    pub role: String,
    pub role_label: Label,
    pub fields: Vec<ReportField>,
    /// Where the citizen lived by the record (the ward; an old-coded one
    /// as "old (cũ), nay thuộc new, province").
    pub residence: Option<String>,
    pub audit_id: String,
}

fn operation_label(op: &str) -> Label {
    match op {
        "lookup" => Label::new("Tra cứu thông tin công dân", "Citizen record lookup"),
        "verify" => Label::new(
            "Đối chiếu thông tin công dân (chỉ trả lời khớp hoặc không khớp)",
            "Check of citizen data (answered as match or no match only)",
        ),
        "household" => Label::new("Tra cứu thông tin hộ gia đình", "Household lookup"),
        other => Label::new(other, other),
    }
}

fn role_label(role: &str) -> Label {
    match role {
        "head" => Label::new("Chủ hộ", "Head of household"),
        "member" => Label::new("Thành viên hộ gia đình", "Household member"),
        _ => Label::new("Công dân được tra cứu", "The citizen asked about"),
    }
}

/// The labels of a field path (`id` or `id.sub`).
fn field_labels(policy: &PolicySet, path: &str) -> (String, String) {
    let (parent, sub) = match path.split_once('.') {
        Some((p, s)) => (p, Some(s)),
        None => (path, None),
    };
    let def = policy.catalog.get(parent);
    let vi = def.map_or_else(|| parent.to_owned(), |d| d.label.clone());
    let en = def
        .and_then(|d| d.label_en.clone())
        .unwrap_or_else(|| parent.to_owned());
    match sub.map(|s| (s, subfield_label(s))) {
        None => (vi, en),
        Some((_, Some((sub_vi, sub_en)))) => (format!("{vi}: {sub_vi}"), format!("{en}: {sub_en}")),
        Some((s, None)) => (format!("{vi}: {s}"), format!("{en}: {s}")),
    }
}

/// A stored RFC 3339 time in Vietnam time, to the second.
pub fn vietnam_time(t: &OffsetDateTime) -> String {
    t.to_offset(VIETNAM)
        .replace_nanosecond(0)
        .unwrap_or(*t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The report entry of one stored outcome event, for the citizen whose
/// pseudonym is `key`.
pub fn access(policy: &PolicySet, key: &str, e: &StoredEvent, residence: Option<&Residence>) -> Access {
    let b = &e.body;
    let text = |k: &str| b[k].as_str().map(str::to_owned);
    let app = text("app_id").unwrap_or_default();
    let purpose = text("purpose").unwrap_or_default();
    let operation = text("operation").unwrap_or_default();
    // This citizen's part of the answer (events before subjects were
    // recorded: the citizen asked about).
    let subject = b["subjects"]
        .as_array()
        .and_then(|list| list.iter().find(|s| s["key"].as_str() == Some(key)));
    let role = subject
        .and_then(|s| s["role"].as_str())
        .unwrap_or("citizen")
        .to_owned();
    let mut fields: Vec<ReportField> = Vec::new();
    for f in subject
        .map_or(&b["fields"], |s| &s["fields"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if f == "match" {
            // A verify answer: the fields checked, then whether they match.
            fields.push(ReportField {
                id: f.to_owned(),
                label: "Kết quả đối chiếu (khớp hoặc không khớp)".to_owned(),
                label_en: "Whether the data matched".to_owned(),
            });
            continue;
        }
        let (label, label_en) = field_labels(policy, f);
        fields.push(ReportField {
            id: f.to_owned(),
            label,
            label_en,
        });
    }
    let p = policy.purposes.get(&purpose);
    Access {
        time: vietnam_time(&e.key.ts),
        app_name: policy
            .apps
            .get(&app)
            .map_or_else(|| app.clone(), |a| a.name.clone()),
        app,
        operation_label: operation_label(&operation),
        operation,
        purpose_label: p.map_or_else(|| purpose.clone(), |p| p.label.clone()),
        purpose_label_en: p
            .and_then(|p| p.label_en.clone())
            .unwrap_or_else(|| purpose.clone()),
        purpose,
        legal_basis: text("legal_basis"),
        case_ref: text("case_ref"),
        role_label: role_label(&role),
        role,
        fields,
        residence: residence.map(|r| match &r.old_ward {
            Some(old) => format!("{old} (cũ), nay thuộc {}, {}", r.ward, r.province),
            None => format!("{}, {}", r.ward, r.province),
        }),
        audit_id: text("audit_id").unwrap_or_default(),
    }
}

/// `dd/mm/yyyy`, as Vietnamese letters write dates.
pub fn vietnamese_date(d: Date) -> String {
    d.format(format_description!("[day]/[month]/[year]"))
        .unwrap_or_default()
}

/// The printable letter (A4, Vietnamese).
#[derive(Template)]
#[template(path = "citizen_report.html")]
pub struct Letter {
    /// "Thành phố Hồ Chí Minh", …
    pub province: String,
    /// The report's date, in words: "ngày 1 tháng 12 năm 2026".
    pub dated: String,
    /// What the report covers, in words.
    pub period: String,
    pub accesses: Vec<LetterRow>,
    /// More accesses than one letter holds: ask for a narrower period.
    pub truncated: bool,
}

/// A row of the letter's table.
pub struct LetterRow {
    pub number: usize,
    /// `dd/mm/yyyy hh:mm` Vietnam time.
    pub when: String,
    pub agency: String,
    pub operation: String,
    pub purpose: String,
    pub legal_basis: String,
    pub case_ref: String,
    pub role: String,
    pub fields: String,
    pub residence: String,
}

impl Letter {
    pub fn new(
        province: String,
        today: Date,
        window: (Option<OffsetDateTime>, Option<OffsetDateTime>),
        accesses: &[Access],
        truncated: bool,
    ) -> Letter {
        let day = |t: &OffsetDateTime| vietnamese_date(t.to_offset(VIETNAM).date());
        let period = match window {
            (None, None) => "toàn bộ thời gian hệ thống lưu nhật ký".to_owned(),
            (Some(f), None) => format!("từ ngày {} đến nay", day(&f)),
            (None, Some(t)) => format!("đến trước ngày {}", day(&t)),
            (Some(f), Some(t)) => format!("từ ngày {} đến trước ngày {}", day(&f), day(&t)),
        };
        let rows = accesses
            .iter()
            .enumerate()
            .map(|(i, a)| LetterRow {
                number: i + 1,
                when: OffsetDateTime::parse(&a.time, &time::format_description::well_known::Rfc3339)
                    .ok()
                    .and_then(|t| {
                        t.format(format_description!("[day]/[month]/[year] [hour]:[minute]"))
                            .ok()
                    })
                    .unwrap_or_else(|| a.time.clone()),
                agency: a.app_name.clone(),
                operation: a.operation_label.vi.clone(),
                purpose: a.purpose_label.clone(),
                legal_basis: a.legal_basis.clone().unwrap_or_else(|| "—".to_owned()),
                case_ref: a.case_ref.clone().unwrap_or_else(|| "—".to_owned()),
                role: a.role_label.vi.clone(),
                residence: a.residence.clone().unwrap_or_else(|| "—".to_owned()),
                fields: a
                    .fields
                    .iter()
                    .map(|f| f.label.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            })
            .collect();
        Letter {
            province,
            dated: format!(
                "ngày {} tháng {} năm {}",
                today.day(),
                u8::from(today.month()),
                today.year()
            ),
            period,
            accesses: rows,
            truncated,
        }
    }
}
