//! Addresses across the 1 July 2025 reform, black-box: the simulator codes
//! a share of residences as before the reform (63 provinces, districts, old
//! wards); the gateway judges jurisdiction on the 2025 unit, releases both
//! codings, and the warehouse row carries both.

mod common;

use common::TestEnv;
use popgate::sim::population::Citizen;
use serde_json::{json, Value};

const LOOKUP: &str = "/v1/citizens/lookup";

/// The first citizen whose permanent and current residence are coded
/// (province, ward) before the reform.
fn coded(env: &TestEnv, province: &str, ward: Option<&str>) -> Option<Citizen> {
    let p = env.sim.population();
    (0..common::POPULATION).map(|i| p.citizen(i)).find(|c| {
        let r = c.to_c06();
        let t = &r["ThuongTru"];
        t.get("MaQuanHuyen").is_some()
            && t["MaTinhThanh"] == province
            && ward.is_none_or(|w| t["MaPhuongXa"] == w)
            && r["NoiOHienTai"] == *t
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_coded_residence_is_judged_by_its_2025_ward_and_kept_both_ways() {
    let env = TestEnv::start().await;
    // Phường Hiệp Thành of Bình Dương (74, district 718), divided in 2025,
    // by default into Phường Phú Lợi (25750) of Hồ Chí Minh City.
    let citizen = coded(&env, "74", Some("25741")).expect("a citizen coded 74/718/25741");
    assert_eq!(citizen.to_c06()["ThuongTru"]["MaQuanHuyen"], "718");
    let id = citizen.personal_id().as_str().to_owned();

    // The one-stop-shop of Hồ Chí Minh City (jurisdiction: the province).
    let body =
        json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-2026-000741"});
    let r = env.call("mot-cua", LOOKUP, &body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let address = &r.body["citizen"]["permanent_address"];
    assert_eq!(address["province_code"], "79", "{address}");
    assert_eq!(address["ward_code"], "25750", "{address}");
    let old = &address["legacy"];
    assert_eq!(old["province_code"], "74");
    assert_eq!(old["district_code"], "718");
    assert_eq!(old["ward_code"], "25741");
    assert_eq!(old["divided"], true);
    assert_eq!(
        old["as_text"],
        "Phường Hiệp Thành (cũ), nay thuộc Phường Phú Lợi, Thành phố Hồ Chí Minh"
    );
    let audit_id = r.body["audit_id"].as_str().expect("audit id").to_owned();

    // The IOC (jurisdiction: the officer's ward): the default successor and
    // any other ward the old one went into are inside; an unrelated ward is not.
    let candidates: Vec<String> = old["ward_candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert!(candidates.len() > 1 && candidates[0] == "25750", "{candidates:?}");
    let ioc = json!({"personal_id": id, "purpose": "emergency-response", "case_ref": "SOS-1"}).to_string();
    for (unit, allowed) in [
        (candidates[0].as_str(), true),
        (candidates[1].as_str(), true),
        ("26734", false),
    ] {
        let unit: u32 = unit.parse().expect("ward");
        let token = env.token_with("ioc", "ioc-1", &["officer"], Some(unit));
        let r = env
            .client("ioc")
            .post(&env.url(LOOKUP), Some(&token), &ioc)
            .await
            .expect("ioc");
        assert_eq!(r.status == 200, allowed, "unit {unit}: {}", r.body);
    }

    // The warehouse row carries both codings.
    env.settle().await;
    let db = env.admin_db().await;
    let row = db
        .query_one(
            "SELECT ward_code, ward_name, province_code, residence_old_province_code, residence_old_district_code,
                    residence_old_ward_code, residence_old_ward_name, residence_ambiguous,
                    permanent_ward_code, permanent_old_ward_code, permanent_old_province_name, region, legal_basis, sex
             FROM popgate.citizen_records WHERE audit_id = $1::text::uuid",
            &[&audit_id],
        )
        .await
        .expect("the record");
    let text = |i: usize| row.get::<_, Option<String>>(i);
    assert_eq!(text(0).as_deref(), Some("25750"));
    assert_eq!(text(1).as_deref(), Some("Phường Phú Lợi"));
    assert_eq!(text(2).as_deref(), Some("79"));
    assert_eq!(text(3).as_deref(), Some("74"));
    assert_eq!(text(4).as_deref(), Some("718"));
    assert_eq!(text(5).as_deref(), Some("25741"));
    assert_eq!(text(6).as_deref(), Some("Phường Hiệp Thành"));
    assert!(row.get::<_, bool>(7), "ambiguous");
    assert_eq!(text(8).as_deref(), Some("25750"));
    assert_eq!(text(9).as_deref(), Some("25741"));
    assert_eq!(text(10).as_deref(), Some("Tỉnh Bình Dương"));
    assert_eq!(text(11).as_deref(), Some("Đông Nam Bộ"));
    assert!(text(12).is_some_and(|b| b.contains("61/2018")));
    assert!(text(13).is_some());
    // The province's reporting view counts it, with no personal data.
    let counted: i64 = db
        .query_one(
            "SELECT coalesce(sum(records), 0)::bigint FROM popgate.citizen_records_by_ward_month
             WHERE month = date_trunc('month', now() AT TIME ZONE 'Asia/Ho_Chi_Minh')::date AND ward_code = '25750'",
            &[],
        )
        .await
        .expect("view")
        .get(0);
    assert!(counted >= 1);

    // The citizen's report names the old ward with its 2025 successor.
    let report = env
        .call_as(
            "audit-cli",
            "inspector-1",
            "auditor",
            "/audit/v1/citizens/accesses",
            Some(&json!({"personal_id": id}).to_string()),
        )
        .await
        .body;
    let entry = report["accesses"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["audit_id"] == audit_id.as_str()))
        .cloned()
        .expect("the access is reported");
    assert_eq!(
        entry["residence"], "Phường Hiệp Thành (cũ), nay thuộc Phường Phú Lợi, Thành phố Hồ Chí Minh",
        "{entry}"
    );

    // A citizen coded to an old ward of another province is refused.
    let elsewhere = (0..common::POPULATION)
        .map(|i| env.sim.population().citizen(i))
        .find(|c| c.legacy_coded() && c.residence_province() != 79)
        .expect("an old-coded citizen of another province");
    let body = json!({"personal_id": elsewhere.personal_id().as_str(), "purpose": "administrative-procedure", "case_ref": "HS-2026-000742"});
    let r = env.call("mot-cua", LOOKUP, &body.to_string()).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("outside the jurisdiction"),
        "{}",
        r.body
    );

    // An address that resolves to nothing is refused, says so, and is counted.
    let unknown = json!({
        "app": "mot-cua", "role": "officer", "operation": "lookup", "purpose": "administrative-procedure",
        "record": {"SoDinhDanh": "079203000123", "ThuongTru": {"MaTinhThanh": "74", "MaQuanHuyen": "718", "MaPhuongXa": "99999"}}
    });
    let r = env
        .call_as(
            "admin-cli",
            "admin-an",
            "policy-admin",
            "/admin/v1/policies/simulate",
            Some(&unknown.to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["decision"], "denied");
    assert!(
        r.body["reason"]
            .as_str()
            .unwrap_or("")
            .contains("resolves to no administrative unit"),
        "{}",
        r.body
    );
    let (_, metrics) = env.ops_get("/metrics").await;
    let unresolved: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("popgate_unresolved_addresses "))
        .and_then(|v| v.parse().ok())
        .expect("the metric");
    assert!(unresolved >= 1.0, "{metrics}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_codes_a_share_of_residences_before_the_reform() {
    let env = TestEnv::start().await;
    let p = env.sim.population();
    let legacy = (0..2000).filter(|&i| p.citizen(i).legacy_coded()).count();
    // 15 % of households; every old code resolves to the 2025 ward the
    // simulator placed the household in.
    assert!((150..=450).contains(&legacy), "{legacy} of 2000");
    let catalog = popgate::policy::load_dir(&common::policies_dir(), 79)
        .expect("policies")
        .catalog;
    for i in 0..2000 {
        let c = p.citizen(i);
        if !c.legacy_coded() {
            continue;
        }
        let mapped = catalog.map_record(c.to_c06());
        let address: &Value = &mapped["permanent_address"];
        assert!(address.get("unresolved").is_none(), "{address}");
        let province: u16 = address["province_code"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("province");
        assert_eq!(province, c.residence_province(), "{address}");
    }
    env.stop().await;
}
