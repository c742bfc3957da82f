//! The console's pages: each reads and acts through the admin and audit
//! surfaces ([`WebConsole::call`]) and renders a template of
//! `templates/console/`.

use askama::Template;
use http::{header, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::clock::VIETNAM;
use crate::console::charts::{self, Chart};
use crate::console::frame::{
    html, letter_for_console, query_value, redirect, whole, with_type, Chrome, Form, Problem, Visit,
    WebConsole,
};
use crate::server::Body;

type Page = hyper::Response<Body>;

/// A time of the API (RFC 3339) as officials read it: Vietnam time.
fn vn(ts: &Value) -> String {
    ts.as_str()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .map(|t| {
            let t = t.to_offset(VIETNAM);
            format!(
                "{:02}/{:02}/{} {:02}:{:02}:{:02}",
                t.day(),
                u8::from(t.month()),
                t.year(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_else(|| text(ts))
}

/// A JSON value as page text ("" for null).
fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// A date field (`YYYY-MM-DD`, Vietnam's calendar) as the API's time:
/// the day's start, or with `next` the next day's start (inclusive "to").
fn day_start(date: &str, next: bool) -> Option<String> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(date, &format).ok()?;
    let d = if next { d.next_day()? } else { d };
    Some(format!("{}T00:00:00+07:00", d.format(&format).ok()?))
}

fn state_label(c: &Chrome, state: &str) -> String {
    match state {
        "active" => c.t("đang áp dụng", "active"),
        "proposed" => c.t("chờ phê duyệt", "proposed"),
        "rejected" => c.t("bị từ chối", "rejected"),
        "superseded" => c.t("đã thay thế", "superseded"),
        "expired" => c.t("hết hiệu lực", "expired"),
        other => other,
    }
    .to_owned()
}

impl WebConsole {
    fn problem(&self, visit: &Visit, p: Problem) -> Page {
        let c = visit.chrome();
        let text = match p.status {
            StatusCode::FORBIDDEN => c.t("Bạn không có quyền thực hiện việc này.", "You may not do this."),
            StatusCode::NOT_FOUND => c.t("Không tìm thấy.", "Not found."),
            StatusCode::CONFLICT => c.t(
                "Việc này không còn thực hiện được.",
                "This can no longer be done.",
            ),
            s if s.is_server_error() => c.t(
                "Hệ thống tạm thời không phục vụ được.",
                "The service is not available just now.",
            ),
            _ => c.t("Yêu cầu chưa đúng.", "The request is not right."),
        };
        self.message(visit, p.status, text, Some(p.detail))
    }
}

pub async fn get(console: &WebConsole, visit: &Visit, path: &str, query: Option<&str>) -> Page {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let result = match segments.as_slice() {
        [""] => home(console, visit).await,
        ["policies"] => policies(console, visit).await,
        ["policies", "versions", n] => match n.parse::<u64>() {
            Ok(n) => version(console, visit, n).await,
            Err(_) => not_found(visit),
        },
        ["policies", "propose"] => {
            let file = query_value(query, "file");
            propose_page(console, visit, file, None, None, String::new()).await
        }
        ["audit", "search"] => search(console, visit, &Form(Vec::new()), false).await,
        ["audit", "events", id] if id.parse::<uuid::Uuid>().is_ok() => event(console, visit, id).await,
        ["audit", "alerts"] => {
            alerts(
                console,
                visit,
                crate::api::request::query_param(query, "all").is_none(),
            )
            .await
        }
        ["audit", "holds"] => holds(console, visit).await,
        ["audit", "verify"] => verify(console, visit).await,
        ["audit", "citizen"] => Ok(html(
            StatusCode::OK,
            &CitizenPage {
                title: visit
                    .chrome()
                    .t("Báo cáo cho công dân", "Citizen report")
                    .to_owned(),
                c: visit.chrome(),
            },
        )),
        _ => not_found(visit),
    };
    result.unwrap_or_else(|p| console.problem(visit, p))
}

pub async fn post(console: &WebConsole, visit: &Visit, path: &str, form: &Form) -> Page {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let result = match segments.as_slice() {
        ["policies", "propose"] => propose(console, visit, form).await,
        ["policies", "versions", n, action @ ("approve" | "reject" | "confirm")] => match n.parse::<u64>() {
            Ok(n) => decide(console, visit, n, action, form).await,
            Err(_) => not_found(visit),
        },
        ["policies", "freeze"] => {
            let body = json!({ "app": form.get("app"), "reason": form.get("reason") });
            console
                .call(visit, Method::POST, "/admin/v1/policies/freeze", Some(body))
                .await
                .map(|v| {
                    redirect(&format!(
                        "/policies/versions/{}",
                        v["version"].as_u64().unwrap_or(0)
                    ))
                })
        }
        ["audit", "search"] => search(console, visit, form, true).await,
        ["audit", "export"] => export(console, visit, form).await,
        ["audit", "alerts", id, "resolve"] if id.parse::<uuid::Uuid>().is_ok() => console
            .call(
                visit,
                Method::POST,
                &format!("/audit/v1/alerts/{id}/resolve"),
                Some(json!({ "note": form.get("note") })),
            )
            .await
            .map(|_| redirect("/audit/alerts")),
        ["audit", "holds"] => {
            let mut body = json!({
                "until": form.get("until"), "reason": form.get("reason"), "legal_basis": form.get("legal_basis"),
            });
            for k in ["case_ref", "app", "purpose"] {
                if let Some(v) = form.opt(k) {
                    body[k] = json!(v);
                }
            }
            console
                .call(visit, Method::POST, "/audit/v1/holds", Some(body))
                .await
                .map(|_| redirect("/audit/holds"))
        }
        ["audit", "holds", id, action @ ("approve" | "lift")] if id.parse::<uuid::Uuid>().is_ok() => console
            .call(
                visit,
                Method::POST,
                &format!("/audit/v1/holds/{id}/{action}"),
                Some(json!({ "reason": form.get("reason") })),
            )
            .await
            .map(|_| redirect("/audit/holds")),
        ["audit", "citizen", "report"] => citizen_report(console, visit, form).await,
        ["audit", "evidence"] => evidence(console, visit, form).await,
        _ => not_found(visit),
    };
    result.unwrap_or_else(|p| console.problem(visit, p))
}

fn not_found(visit: &Visit) -> Result<Page, Problem> {
    Err(Problem {
        status: StatusCode::NOT_FOUND,
        detail: format!("no page at {}", visit.path.chars().take(80).collect::<String>()),
    })
}

#[derive(Template)]
#[template(path = "console/home.html")]
struct Home {
    title: String,
    c: Chrome,
    name: String,
    active_version: u64,
    proposals: usize,
    open_alerts: usize,
    charts: Vec<Chart>,
}

async fn home(console: &WebConsole, visit: &Visit) -> Result<Page, Problem> {
    let c = visit.chrome();
    let (mut active_version, mut proposals, mut open_alerts, mut list) = (0, 0, 0, Vec::new());
    if c.is_admin {
        let v = console
            .call(visit, Method::GET, "/admin/v1/policies", None)
            .await?;
        active_version = v["active_version"].as_u64().unwrap_or(0);
        proposals = v["versions"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|v| v["state"] == "proposed").count());
    }
    if c.is_auditor {
        let a = console
            .call(visit, Method::GET, "/audit/v1/alerts?state=open&limit=500", None)
            .await?;
        open_alerts = a["alerts"].as_array().map_or(0, Vec::len);
        let days = 14;
        let s = console
            .call(visit, Method::GET, &format!("/audit/v1/stats?days={days}"), None)
            .await?;
        let today = console.clock().now().to_offset(VIETNAM).date();
        let day_list: Vec<String> = (0..days)
            .rev()
            .filter_map(|d| today.checked_sub(time::Duration::days(d)))
            .map(|d| d.to_string())
            .collect();
        let triples = |key: &str, a: &str, b: &str| -> Vec<(String, String, i64)> {
            s[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| (text(&r[a]), text(&r[b]), r["count"].as_i64().unwrap_or(0)))
                .collect()
        };
        let shorten = |r: String| r.chars().take(60).collect::<String>();
        let denials: Vec<(String, String, i64)> = triples("denials_by_day_and_reason", "day", "reason")
            .into_iter()
            .map(|(d, r, n)| (d, shorten(r), n))
            .collect();
        let officers: Vec<(String, i64)> = s["officers_by_distinct_citizens_7d"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    format!("{} · {}", text(&r["officer"]), text(&r["app"])),
                    r["citizens"].as_i64().unwrap_or(0),
                )
            })
            .collect();
        list = vec![
            charts::stacked_by_day(
                "chart-accesses",
                c.t(
                    "Lượt truy cập mỗi ngày theo ứng dụng (14 ngày)",
                    "Accesses per day by app (14 days)",
                )
                .to_owned(),
                &day_list,
                &triples("accesses_by_day_and_app", "day", "app"),
            ),
            charts::stacked_by_day(
                "chart-denials",
                c.t(
                    "Lượt từ chối mỗi ngày theo lý do (14 ngày)",
                    "Denials per day by reason (14 days)",
                )
                .to_owned(),
                &day_list,
                &denials,
            ),
            charts::bars(
                "chart-officers",
                c.t(
                    "Cán bộ theo số công dân khác nhau đã xem (7 ngày)",
                    "Officers by distinct citizens seen (7 days)",
                )
                .to_owned(),
                &officers,
            ),
        ];
    }
    let name = c.user.clone().unwrap_or_default();
    Ok(html(
        StatusCode::OK,
        &Home {
            title: c.t("Trang chính", "Start").to_owned(),
            c,
            name,
            active_version,
            proposals,
            open_alerts,
            charts: list,
        },
    ))
}

struct VersionRow {
    version: u64,
    state: String,
    state_label: String,
    emergency: bool,
    author: String,
    approver: String,
    reason: String,
    time: String,
}

fn version_row(c: &Chrome, v: &Value) -> VersionRow {
    let state = text(&v["state"]);
    VersionRow {
        version: v["version"].as_u64().unwrap_or(0),
        state_label: state_label(c, &state),
        state,
        emergency: v["emergency"].as_bool().unwrap_or(false),
        author: text(&v["author"]),
        approver: text(&v["approver"]),
        reason: text(&v["reason"]),
        time: vn(if v["activated_at"].is_null() {
            &v["created_at"]
        } else {
            &v["activated_at"]
        }),
    }
}

#[derive(Template)]
#[template(path = "console/policies.html")]
struct Policies {
    title: String,
    c: Chrome,
    versions: Vec<VersionRow>,
    apps: Vec<String>,
}

async fn policies(console: &WebConsole, visit: &Visit) -> Result<Page, Problem> {
    let v = console
        .call(visit, Method::GET, "/admin/v1/policies", None)
        .await?;
    let c = visit.chrome();
    let mut versions: Vec<VersionRow> = v["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| version_row(&c, v))
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.version));
    let apps = console.api.policy.snapshot().apps.keys().cloned().collect();
    Ok(html(
        StatusCode::OK,
        &Policies {
            title: c.t("Chính sách truy cập", "Access policies").to_owned(),
            c,
            versions,
            apps,
        },
    ))
}

struct DiffLine {
    class: &'static str,
    text: String,
}

/// The diff document as lines, coloured by what they do to access.
fn diff_lines(c: &Chrome, d: &Value) -> Vec<DiffLine> {
    let mut out = Vec::new();
    let mut line = |class, text: String| out.push(DiffLine { class, text });
    for (key, class, sign) in [
        ("added", "add", "+"),
        ("removed", "del", "−"),
        ("changed", "chg", "~"),
    ] {
        for f in d["files"][key].as_array().into_iter().flatten() {
            line(class, format!("{sign} {} {}", c.t("tệp", "file"), text(f)));
        }
    }
    for (key, class, sign) in [("fields_added", "add", "+"), ("fields_removed", "del", "−")] {
        for f in d["catalog"][key].as_array().into_iter().flatten() {
            line(class, format!("{sign} {} {}", c.t("trường", "field"), text(f)));
        }
    }
    for (key, class, sign) in [("added", "add", "+"), ("removed", "del", "−")] {
        for f in d["purposes"][key].as_array().into_iter().flatten() {
            line(
                class,
                format!("{sign} {} {}", c.t("mục đích", "purpose"), text(f)),
            );
        }
    }
    for app in d["apps"].as_array().into_iter().flatten() {
        let id = text(&app["app"]);
        let (app_word, grant_word) = (c.t("ứng dụng", "app"), c.t("quyền", "grant"));
        match app["change"].as_str() {
            Some("added") => {
                line("add", format!("+ {app_word} {id}"));
                for g in app["grants"].as_array().into_iter().flatten() {
                    line(
                        "add",
                        format!("    + grant {}: {}", text(&g["purpose"]), text(&g["fields"])),
                    );
                }
            }
            Some("removed") => line("del", format!("− {app_word} {id}")),
            _ => {
                line("head", format!("{app_word} {id}"));
                for g in app["grants"].as_array().into_iter().flatten() {
                    let key = text(&g["grant"]);
                    match g["change"].as_str() {
                        Some("added") => {
                            line("add", format!("    + grant {key}: {}", text(&g["now"]["fields"])))
                        }
                        Some("removed") => {
                            line("del", format!("    − grant {key}: {}", text(&g["was"]["fields"])))
                        }
                        _ => {
                            line("head", format!("    {grant_word} {key}"));
                            for (k, v) in g["changes"].as_object().into_iter().flatten() {
                                let (class, sign) = if k.ends_with("_added") {
                                    ("add", "+")
                                } else if k.ends_with("_removed") {
                                    ("del", "−")
                                } else {
                                    ("chg", "~")
                                };
                                let value = match (v.get("from"), v.get("to")) {
                                    (Some(a), Some(b)) => format!("{} → {}", text(a), text(b)),
                                    _ => text(v),
                                };
                                line(class, format!("        {sign} {}: {value}", change_label(c, k)));
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// What a grant's change is called on the page.
fn change_label<'a>(c: &Chrome, key: &'a str) -> &'a str {
    match key {
        "fields_added" => c.t("thêm trường", "fields added"),
        "fields_removed" => c.t("bỏ trường", "fields removed"),
        "operations_added" => c.t("thêm nghiệp vụ", "operations added"),
        "operations_removed" => c.t("bỏ nghiệp vụ", "operations removed"),
        "store_added" => c.t("thêm trường lưu kho", "stored fields added"),
        "store_removed" => c.t("bỏ trường lưu kho", "stored fields removed"),
        "masks" => c.t("che dữ liệu", "masks"),
        "jurisdiction" => c.t("phạm vi địa bàn", "jurisdiction"),
        "case_ref_required" => c.t("bắt buộc mã hồ sơ", "case reference required"),
        "limits_per_minute" => c.t("giới hạn mỗi phút", "limit per minute"),
        "legal_basis" => c.t("căn cứ pháp lý", "legal basis"),
        other => other,
    }
}

/// An alert rule's name on the page.
fn rule_label<'a>(c: &Chrome, rule: &'a str) -> &'a str {
    use crate::audit::alerts as a;
    match rule {
        a::DISTINCT_CITIZENS => c.t("nhiều công dân khác nhau", "many distinct citizens"),
        a::REPEATED_DENIALS => c.t("bị từ chối liên tiếp", "repeated denials"),
        a::OFF_HOURS => c.t("ngoài giờ làm việc", "off hours"),
        a::WATCH_LIST => c.t("công dân trong danh sách theo dõi", "watched citizen"),
        a::CASE_SPREAD => c.t("một hồ sơ, nhiều công dân", "one case, many citizens"),
        a::CHAIN_FORK => c.t("chuỗi nhật ký bị rẽ nhánh", "audit chain fork"),
        a::POLICY_SIGNATURE => c.t(
            "phiên bản chính sách không có chữ ký hợp lệ",
            "unsigned policy version",
        ),
        a::VERIFY_FAILURE => c.t("kiểm tra toàn vẹn thất bại", "log verification failed"),
        other => other,
    }
}

struct ReplayRow {
    app: String,
    purpose: String,
    requests: u64,
    denied: u64,
    lose: String,
    gain: String,
}

struct Replay {
    replayed: u64,
    rows: Vec<ReplayRow>,
}

fn counts(v: &Value) -> String {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, n)| format!("{k} ({n})"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Template)]
#[template(path = "console/version.html")]
struct VersionPage {
    title: String,
    c: Chrome,
    v: VersionRow,
    based_on: u64,
    can_decide: bool,
    own_proposal: bool,
    can_confirm: bool,
    diff: Vec<DiffLine>,
    replay: Option<Replay>,
    files: Vec<(String, String)>,
}

async fn version(console: &WebConsole, visit: &Visit, n: u64) -> Result<Page, Problem> {
    let v = console
        .call(
            visit,
            Method::GET,
            &format!("/admin/v1/policies/versions/{n}"),
            None,
        )
        .await?;
    let c = visit.chrome();
    let row = version_row(&c, &v);
    let based_on = v["based_on"].as_u64().unwrap_or(n.saturating_sub(1));
    let diff = if based_on > 0 && based_on != n {
        let d = console
            .call(
                visit,
                Method::GET,
                &format!("/admin/v1/policies/versions/{n}/diff?against={based_on}"),
                None,
            )
            .await?;
        diff_lines(&c, &d)
    } else {
        Vec::new()
    };
    let me = &visit.session.official.id;
    let proposed = row.state == "proposed";
    let replay = if proposed {
        let now = console.clock().now();
        let window = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
        let r = console
            .call(
                visit,
                Method::POST,
                "/admin/v1/policies/simulate",
                Some(json!({ "version": n, "replay": { "from": window(now - time::Duration::days(7)), "to": window(now) } })),
            )
            .await?;
        Some(Replay {
            replayed: r["replayed"].as_u64().unwrap_or(0),
            rows: r["by_app_and_purpose"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| ReplayRow {
                    app: text(&x["app"]),
                    purpose: text(&x["purpose"]),
                    requests: x["requests"].as_u64().unwrap_or(0),
                    denied: x["would_be_denied"].as_u64().unwrap_or(0),
                    lose: counts(&x["would_lose"]),
                    gain: counts(&x["would_gain"]),
                })
                .collect(),
        })
    } else {
        None
    };
    let files = v["files"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, t)| (k.clone(), text(t)))
        .collect();
    let can_confirm =
        row.emergency && row.state == "active" && !v["expires_at"].is_null() && &row.author != me;
    Ok(html(
        StatusCode::OK,
        &VersionPage {
            title: format!("{} {n}", c.t("Phiên bản", "Version")),
            can_decide: proposed && &row.author != me,
            own_proposal: proposed && &row.author == me,
            can_confirm,
            c,
            v: row,
            based_on,
            diff,
            replay,
            files,
        },
    ))
}

async fn decide(
    console: &WebConsole,
    visit: &Visit,
    n: u64,
    action: &str,
    form: &Form,
) -> Result<Page, Problem> {
    let body = match action {
        "reject" => json!({ "reason": form.opt("reason") }),
        _ => json!({}),
    };
    console
        .call(
            visit,
            Method::POST,
            &format!(
                "/admin/v1/policies/{}/{n}/{action}",
                if action == "confirm" {
                    "versions"
                } else {
                    "proposals"
                }
            ),
            Some(body),
        )
        .await?;
    Ok(redirect(&format!("/policies/versions/{n}")))
}

struct SourceLine {
    text: String,
    problems: Vec<String>,
}

#[derive(Template)]
#[template(path = "console/propose.html")]
struct Propose {
    title: String,
    c: Chrome,
    file_names: Vec<String>,
    path: String,
    text: String,
    reason: String,
    checked: bool,
    problems: Vec<String>,
    lines: Vec<SourceLine>,
}

/// The editor; with `edited` (path, text), that file checked against the
/// active set, its problems shown at their lines.
async fn propose_page(
    console: &WebConsole,
    visit: &Visit,
    file: Option<String>,
    edited: Option<(String, String)>,
    extra: Option<String>,
    reason: String,
) -> Result<Page, Problem> {
    let v = console
        .call(visit, Method::GET, "/admin/v1/policies", None)
        .await?;
    let files: crate::policy::PolicyFiles = v["files"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, t)| (k.clone(), text(t)))
        .collect();
    let file_names: Vec<String> = files.keys().cloned().collect();
    let c = visit.chrome();
    let (path, body, checked, mut problems, mut lines) = match edited {
        None => {
            let path = file
                .filter(|f| files.contains_key(f))
                .or_else(|| file_names.iter().find(|f| f.starts_with("apps/")).cloned())
                .unwrap_or_default();
            let text = files.get(&path).cloned().unwrap_or_default();
            (path, text, false, Vec::new(), Vec::new())
        }
        Some((path, text)) => {
            let mut all = files.clone();
            all.insert(path.clone(), text.clone());
            let province = console.api.policy.snapshot().province;
            let found = crate::policy::parse(&all, province)
                .err()
                .map(|p| p.0)
                .unwrap_or_default();
            let mut lines: Vec<SourceLine> = text
                .lines()
                .map(|l| SourceLine {
                    text: l.to_owned(),
                    problems: Vec::new(),
                })
                .collect();
            let mut listed = Vec::new();
            for p in found {
                listed.push(p.to_string());
                if p.file == path && p.line >= 1 {
                    if let Some(l) = lines.get_mut(p.line - 1) {
                        l.problems.push(format!("{}:{}: {}", p.line, p.col, p.message));
                    }
                }
            }
            if listed.iter().any(|_| true) && lines.is_empty() {
                lines.push(SourceLine {
                    text: String::new(),
                    problems: Vec::new(),
                });
            }
            (path, text, true, listed, lines)
        }
    };
    if let Some(e) = extra {
        problems.push(e);
        if lines.is_empty() {
            lines = body
                .lines()
                .map(|l| SourceLine {
                    text: l.to_owned(),
                    problems: Vec::new(),
                })
                .collect();
        }
    }
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok(html(
        status,
        &Propose {
            title: c.t("Đề xuất thay đổi", "Propose a change").to_owned(),
            c,
            file_names,
            path,
            text: body,
            reason,
            checked: checked || !problems.is_empty(),
            problems,
            lines,
        },
    ))
}

async fn propose(console: &WebConsole, visit: &Visit, form: &Form) -> Result<Page, Problem> {
    let path = form.get("path").to_owned();
    // Browsers send CR LF from a textarea; policy files are stored with LF.
    let text = form.raw("text").replace("\r\n", "\n");
    let reason = form.get("reason").to_owned();
    if form.get("action") != "submit" {
        return propose_page(console, visit, None, Some((path, text)), None, reason).await;
    }
    let body = json!({ "reason": reason, "files": { path.clone(): text } });
    match console
        .call(visit, Method::POST, "/admin/v1/policies/proposals", Some(body))
        .await
    {
        Ok(v) => Ok(redirect(&format!(
            "/policies/versions/{}",
            v["version"].as_u64().unwrap_or(0)
        ))),
        Err(p) if p.status.is_client_error() && p.status != StatusCode::FORBIDDEN => {
            propose_page(console, visit, None, Some((path, text)), Some(p.detail), reason).await
        }
        Err(p) => Err(p),
    }
}

/// The search form's fields, as typed.
#[derive(Default)]
struct Filters {
    personal_id: String,
    app: String,
    officer: String,
    purpose: String,
    case_ref: String,
    decision: String,
    from: String,
    to: String,
}

impl Filters {
    fn of(form: &Form) -> Filters {
        Filters {
            personal_id: form.get("personal_id").to_owned(),
            app: form.get("app").to_owned(),
            officer: form.get("officer").to_owned(),
            purpose: form.get("purpose").to_owned(),
            case_ref: form.get("case_ref").to_owned(),
            decision: form.get("decision").to_owned(),
            from: form.get("from").to_owned(),
            to: form.get("to").to_owned(),
        }
    }

    /// The search body of `/audit/v1/events/search` and `/export`.
    fn body(&self) -> Result<Value, Problem> {
        let mut b = json!({});
        for (k, v) in [
            ("personal_id", &self.personal_id),
            ("app", &self.app),
            ("officer", &self.officer),
            ("purpose", &self.purpose),
            ("case_ref", &self.case_ref),
            ("decision", &self.decision),
        ] {
            if !v.is_empty() {
                b[k] = json!(v);
            }
        }
        put_dates(&mut b, &self.from, &self.to)?;
        Ok(b)
    }
}

struct EventRow {
    audit_id: String,
    time: String,
    app: String,
    officer: String,
    operation: String,
    purpose: String,
    case_ref: String,
    decision: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "console/search.html")]
struct Search {
    title: String,
    c: Chrome,
    f: Filters,
    decisions: Vec<(&'static str, &'static str, &'static str)>,
    searched: bool,
    events: Vec<EventRow>,
    next_cursor: Option<String>,
}

async fn search(console: &WebConsole, visit: &Visit, form: &Form, run: bool) -> Result<Page, Problem> {
    let f = Filters::of(form);
    let c = visit.chrome();
    let (mut events, mut next_cursor) = (Vec::new(), None);
    if run {
        let mut body = f.body()?;
        if let Some(cursor) = form.opt("cursor") {
            body["cursor"] = json!(cursor);
        }
        let v = console
            .call(visit, Method::POST, "/audit/v1/events/search", Some(body))
            .await?;
        events = v["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| EventRow {
                audit_id: text(&e["audit_id"]),
                time: vn(&e["ts"]),
                app: text(&e["app_id"]),
                officer: text(&e["officer_id"]),
                operation: text(&e["operation"]),
                purpose: text(&e["purpose"]),
                case_ref: text(&e["case_ref"]),
                decision: text(&e["decision"]),
                reason: text(&e["reason"]),
            })
            .collect();
        next_cursor = v["next_cursor"].as_str().map(str::to_owned);
    }
    Ok(html(
        StatusCode::OK,
        &Search {
            title: c.t("Tra cứu nhật ký", "Search the log").to_owned(),
            c,
            f,
            decisions: vec![
                ("", "(tất cả)", "(any)"),
                ("granted", "cho phép", "granted"),
                ("denied", "từ chối", "denied"),
                ("error", "lỗi", "error"),
                ("abandoned", "bỏ dở", "abandoned"),
            ],
            searched: run,
            events,
            next_cursor,
        },
    ))
}

/// Passes a download of the audit surface through, as an attachment.
async fn download(
    console: &WebConsole,
    visit: &Visit,
    path: &str,
    accept: &str,
    body: Value,
    filename: &str,
) -> Result<Page, Problem> {
    let resp = console
        .raw_call(visit, Method::POST, path, accept, Some(body))
        .await;
    if !resp.status().is_success() {
        let (status, bytes) = whole(resp).await;
        return Err(Problem::of(status, &bytes));
    }
    let mut resp = resp;
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

async fn export(console: &WebConsole, visit: &Visit, form: &Form) -> Result<Page, Problem> {
    let body = Filters::of(form).body()?;
    download(
        console,
        visit,
        "/audit/v1/events/export",
        "text/csv",
        body,
        "audit-events.csv",
    )
    .await
}

#[derive(Template)]
#[template(path = "console/event.html")]
struct EventPage {
    title: String,
    c: Chrome,
    rows: Vec<(String, String)>,
    instance: String,
    seq: String,
    prev_hash: String,
    hash: String,
    subjects: Vec<(String, String, String)>,
}

async fn event(console: &WebConsole, visit: &Visit, id: &str) -> Result<Page, Problem> {
    let e = console
        .call(visit, Method::GET, &format!("/audit/v1/events/{id}"), None)
        .await?;
    let c = visit.chrome();
    let labels: [(&str, &str, &str); 17] = [
        ("audit_id", "Mã sự kiện", "Audit id"),
        ("ts", "Thời gian (giờ Việt Nam)", "Time (Vietnam)"),
        ("kind", "Loại", "Kind"),
        ("app_id", "Ứng dụng", "App"),
        ("officer_id", "Cán bộ", "Officer"),
        ("officer_unit", "Đơn vị", "Unit"),
        ("operation", "Thao tác", "Operation"),
        ("purpose", "Mục đích", "Purpose"),
        ("case_ref", "Mã hồ sơ", "Case reference"),
        ("legal_basis", "Căn cứ pháp lý", "Legal basis"),
        ("decision", "Kết quả", "Decision"),
        ("reason", "Lý do", "Reason"),
        ("fields", "Trường đã cung cấp", "Released fields"),
        ("policy_version", "Phiên bản chính sách", "Policy version"),
        ("http_status", "Mã HTTP", "HTTP status"),
        ("request_id", "Mã yêu cầu", "Request id"),
        ("citizen_key", "Bí danh công dân", "Citizen pseudonym"),
    ];
    let rows = labels
        .iter()
        .map(|(k, vi, en)| {
            let value = if *k == "ts" { vn(&e[*k]) } else { text(&e[*k]) };
            (c.t(vi, en).to_owned(), value)
        })
        .collect();
    let subjects = e["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| (text(&s["key"]), text(&s["role"]), text(&s["fields"])))
        .collect();
    Ok(html(
        StatusCode::OK,
        &EventPage {
            title: c.t("Sự kiện nhật ký", "Audit event").to_owned(),
            c,
            rows,
            instance: text(&e["instance_id"]),
            seq: text(&e["seq"]),
            prev_hash: text(&e["prev_hash"]),
            hash: text(&e["hash"]),
            subjects,
        },
    ))
}

struct AlertRow {
    id: String,
    time: String,
    rule: String,
    who: String,
    summary: String,
    resolved: Option<String>,
}

#[derive(Template)]
#[template(path = "console/alerts.html")]
struct Alerts {
    title: String,
    c: Chrome,
    open_only: bool,
    alerts: Vec<AlertRow>,
}

async fn alerts(console: &WebConsole, visit: &Visit, open_only: bool) -> Result<Page, Problem> {
    let path = if open_only {
        "/audit/v1/alerts?state=open&limit=500"
    } else {
        "/audit/v1/alerts?limit=500"
    };
    let v = console.call(visit, Method::GET, path, None).await?;
    let c = visit.chrome();
    let alerts = v["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| AlertRow {
            id: text(&a["id"]),
            time: vn(&a["raised_at"]),
            rule: rule_label(&c, a["rule"].as_str().unwrap_or("")).to_owned(),
            who: [text(&a["app_id"]), text(&a["officer_id"])]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" · "),
            summary: text(&a["summary"]),
            resolved: (a["state"] == "resolved").then(|| {
                format!(
                    "{} — {}: {}",
                    vn(&a["resolved_at"]),
                    text(&a["resolved_by"]),
                    text(&a["note"])
                )
            }),
        })
        .collect();
    Ok(html(
        StatusCode::OK,
        &Alerts {
            title: c.t("Cảnh báo", "Alerts").to_owned(),
            c,
            open_only,
            alerts,
        },
    ))
}

struct HoldRow {
    id: String,
    scope: String,
    until: String,
    reason: String,
    legal_basis: String,
    state: String,
    can_approve: bool,
    can_lift: bool,
}

#[derive(Template)]
#[template(path = "console/holds.html")]
struct Holds {
    title: String,
    c: Chrome,
    holds: Vec<HoldRow>,
}

async fn holds(console: &WebConsole, visit: &Visit) -> Result<Page, Problem> {
    let v = console.call(visit, Method::GET, "/audit/v1/holds", None).await?;
    let c = visit.chrome();
    let me = &visit.session.official.id;
    let holds = v["holds"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let lifted = !h["lifted_at"].is_null();
            let needs = h["needs_approval"].as_bool().unwrap_or(false);
            let scope = match h["case_ref"].as_str() {
                Some(case) => format!("{} {case}", c.t("hồ sơ", "case")),
                None => format!("{} · {}", text(&h["app"]), text(&h["purpose"])),
            };
            HoldRow {
                id: text(&h["id"]),
                scope,
                until: format!(
                    "{} ({} {})",
                    text(&h["until"]),
                    c.t("hiệu lực đến", "in force until"),
                    text(&h["in_force_until"])
                ),
                reason: text(&h["reason"]),
                legal_basis: text(&h["legal_basis"]),
                state: if lifted {
                    c.t("đã dỡ bỏ", "lifted")
                } else if needs {
                    c.t("chờ kiểm tra viên thứ hai phê duyệt", "awaits a second auditor")
                } else if h["in_force"].as_bool().unwrap_or(false) {
                    c.t("đang hiệu lực", "in force")
                } else {
                    c.t("hết hạn", "ended")
                }
                .to_owned(),
                can_approve: !lifted && needs && text(&h["requested_by"]) != *me,
                can_lift: !lifted,
            }
        })
        .collect();
    Ok(html(
        StatusCode::OK,
        &Holds {
            title: c.t("Tạm hoãn thông báo", "Disclosure holds").to_owned(),
            c,
            holds,
        },
    ))
}

#[derive(Template)]
#[template(path = "console/verify.html")]
struct Verify {
    title: String,
    c: Chrome,
    whole: bool,
    summary: String,
    problems: Vec<String>,
}

async fn verify(console: &WebConsole, visit: &Visit) -> Result<Page, Problem> {
    let v = console.call(visit, Method::GET, "/audit/v1/verify", None).await?;
    let c = visit.chrome();
    let problems = v["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            format!(
                "{} #{}: {}",
                text(&f["instance"]),
                text(&f["seq"]),
                text(&f["what"])
            )
        })
        .collect();
    Ok(html(
        StatusCode::OK,
        &Verify {
            title: c.t("Kiểm tra toàn vẹn", "Verify the log").to_owned(),
            c,
            whole: v["whole"].as_bool().unwrap_or(false),
            summary: text(&v["summary"]),
            problems,
        },
    ))
}

#[derive(Template)]
#[template(path = "console/citizen.html")]
struct CitizenPage {
    title: String,
    c: Chrome,
}

/// The body of a citizen's report or an evidence bundle from the form.
fn window_body(form: &Form, keys: &[&str]) -> Result<Value, Problem> {
    let mut b = json!({});
    for k in keys {
        if let Some(v) = form.opt(k) {
            b[*k] = json!(v);
        }
    }
    put_dates(&mut b, form.get("from"), form.get("to"))?;
    Ok(b)
}

/// The form's date range (Vietnam calendar days, `to` inclusive) as the
/// API's `from` and `to` times; an empty field sets nothing.
fn put_dates(b: &mut Value, from: &str, to: &str) -> Result<(), Problem> {
    for (k, v, next) in [("from", from, false), ("to", to, true)] {
        if !v.is_empty() {
            b[k] = json!(day_start(v, next).ok_or(Problem {
                status: StatusCode::BAD_REQUEST,
                detail: format!("{k} must be a date (YYYY-MM-DD)"),
            })?);
        }
    }
    Ok(())
}

async fn citizen_report(console: &WebConsole, visit: &Visit, form: &Form) -> Result<Page, Problem> {
    let body = window_body(form, &["personal_id"])?;
    let resp = console
        .raw_call(
            visit,
            Method::POST,
            "/audit/v1/citizens/accesses",
            "text/html",
            Some(body),
        )
        .await;
    let (status, bytes) = whole(resp).await;
    if !status.is_success() {
        return Err(Problem::of(status, &bytes));
    }
    let letter = letter_for_console(&String::from_utf8_lossy(&bytes));
    Ok(with_type(
        StatusCode::OK,
        "text/html; charset=utf-8",
        bytes::Bytes::from(letter),
    ))
}

async fn evidence(console: &WebConsole, visit: &Visit, form: &Form) -> Result<Page, Problem> {
    let body = window_body(form, &["case_ref", "personal_id"])?;
    download(
        console,
        visit,
        "/audit/v1/evidence",
        "application/json",
        body,
        "evidence-bundle.json",
    )
    .await
}
