//! Property: for random catalogs, grants and upstream records, the released
//! document holds only granted fields, every masked field is masked, and
//! nothing outside the catalog ever appears.

use std::collections::BTreeMap;

use popgate::policy::{self, FieldKind, Mask, Operation, PolicyFiles};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const KINDS: [(&str, FieldKind); 7] = [
    ("text", FieldKind::Text),
    ("date", FieldKind::Date),
    ("name", FieldKind::Name),
    ("sex", FieldKind::Sex),
    ("address", FieldKind::Address),
    ("person", FieldKind::Person),
    ("household_head", FieldKind::HouseholdHead),
];
const MASKS: [(&str, Mask); 5] = [
    ("last4", Mask::Last4),
    ("year-only", Mask::YearOnly),
    ("initials", Mask::Initials),
    ("ward-only", Mask::WardOnly),
    ("redact", Mask::Redact),
];

#[derive(Debug, Clone)]
struct Case {
    kinds: Vec<usize>,
    /// Per field: 0 = not granted, 1 = whole, 2 = first sub-field only.
    grant: Vec<u8>,
    /// Per field: mask index to try (only applied where it fits).
    masks: Vec<Option<usize>>,
    record: Vec<Option<Value>>,
    extras: Vec<(String, String)>,
}

fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[0-9]{8}".prop_map(Value::from),
        "[a-zA-Z ]{0,20}".prop_map(Value::from),
        prop_oneof![Just("1"), Just("2"), Just("9")].prop_map(Value::from),
        ("[0-9]{2}", "[0-9]{5}", "[a-z ]{0,12}")
            .prop_map(|(p, w, d)| json!({"MaTinhThanh": p, "MaPhuongXa": w, "ChiTiet": d, "Secret_": "x"})),
        ("[A-Za-z ]{1,15}", "[0-9]{12}").prop_map(
            |(n, id)| json!({"HoVaTen": n, "QuocTich": "VN", "SoDinhDanh": id, "QuanHe": "Con", "Extra_": 1})
        ),
        Just(json!({"Ho": "Nguyễn", "ChuDem": "Văn", "Ten": "An"})),
        any::<i64>().prop_map(Value::from),
        Just(Value::Null),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..8).prop_flat_map(|n| {
        (
            proptest::collection::vec(0usize..KINDS.len(), n),
            proptest::collection::vec(0u8..3, n),
            proptest::collection::vec(proptest::option::of(0usize..MASKS.len()), n),
            proptest::collection::vec(proptest::option::of(any_value()), n),
            proptest::collection::vec(("XTRA_[a-z]{1,6}", "[a-z0-9]{0,10}"), 0..4),
        )
            .prop_map(|(kinds, grant, masks, record, extras)| Case {
                kinds,
                grant,
                masks,
                record,
                extras,
            })
    })
}

fn build(case: &Case) -> (PolicyFiles, Vec<String>, BTreeMap<String, Mask>, Value) {
    let mut fields = String::new();
    let mut granted = Vec::new();
    let mut masks = BTreeMap::new();
    let mut record = Map::new();
    for (i, &k) in case.kinds.iter().enumerate() {
        let (kind_name, kind) = KINDS[k];
        fields.push_str(&format!(
            "[[field]]\nid = \"f{i}\"\nlabel = \"Trường {i}\"\nclass = \"sensitive\"\nkind = \"{kind_name}\"\nupstream = \"U{i}\"\n\n"
        ));
        let path = match (case.grant[i], kind.subfields().first()) {
            (0, _) => None,
            (2, Some((sub, _))) => Some(format!("f{i}.{sub}")),
            _ => Some(format!("f{i}")),
        };
        if let Some(path) = path {
            let path_kind = match path.split_once('.') {
                Some((_, sub)) => policy::mask::subfield_kind(sub),
                None => kind,
            };
            if let Some(m) = case.masks[i]
                .map(|m| MASKS[m])
                .filter(|(_, m)| m.applies_to(path_kind))
            {
                masks.insert(path.clone(), m.1);
            }
            granted.push(path);
        }
        if let Some(v) = &case.record[i] {
            record.insert(format!("U{i}"), v.clone());
        }
    }
    for (k, v) in &case.extras {
        record.insert(k.clone(), Value::from(v.as_str()));
    }
    let field_list: Vec<String> = granted.iter().map(|p| format!("\"{p}\"")).collect();
    let mask_list: Vec<String> = masks
        .iter()
        .map(|(p, m)| format!("\"{p}\" = \"{}\"", m.as_str()))
        .collect();
    let app = format!(
        "id = \"app\"\nname = \"App\"\ncertificate_uri = \"urn:popgate:app:app\"\n\n[[grant]]\noperations = [\"lookup\"]\nroles = [\"officer\"]\npurpose = \"p\"\nfields = [{}]\nmasks = {{ {} }}\njurisdiction = \"province\"\nlegal_basis = \"test\"\n",
        field_list.join(", "),
        mask_list.join(", ")
    );
    let mut files = PolicyFiles::new();
    files.insert("fields.toml".into(), fields);
    files.insert(
        "purposes.toml".into(),
        "[[purpose]]\nid = \"p\"\nlabel = \"P\"\nlegal_basis = \"b\"\nretention_days = 1\n".into(),
    );
    files.insert("apps/app.toml".into(), app);
    (files, granted, masks, Value::Object(record))
}

fn is_masked(mask: Mask, v: &Value) -> bool {
    match (mask, v) {
        (_, Value::String(s)) if s == "***" => true,
        (Mask::Redact, _) => false,
        (Mask::Last4, Value::String(s)) => s.chars().rev().skip(4).all(|c| c == '*'),
        (Mask::YearOnly, Value::String(s)) => s.chars().count() <= 4,
        (Mask::Initials, Value::String(s)) => s
            .split_whitespace()
            .all(|w| w.chars().count() == 2 && w.ends_with('.')),
        (Mask::WardOnly, Value::Object(o)) => o.keys().all(|k| k == "province_code" || k == "ward_code"),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn nothing_ungranted_ever_leaves(case in case()) {
        let (files, granted, masks, record) = build(&case);
        let set = policy::parse(&files, 79).map_err(|p| TestCaseError::fail(p.to_string()))?;
        let app = &set.apps["app"];
        let grant = set.authorize(app, &["officer".to_owned()], Operation::Lookup, "p").expect("granted");
        let mapped = set.catalog.map_record(&record);
        // Read from JSON text, as the gateway reads answers, the mapping is
        // the same.
        let text = serde_json::value::to_raw_value(&record).expect("json");
        prop_assert_eq!(&set.catalog.map_json(&text), &mapped);
        // Mapping keeps catalog ids only: upstream keys and extras never pass.
        for key in mapped.keys() {
            prop_assert!(set.catalog.get(key).is_some(), "{key} is not in the catalog");
        }
        let (doc, released) = set.release(grant, &mapped);
        for path in &released {
            prop_assert!(granted.contains(path), "{path} released but not granted");
        }
        for (key, value) in &doc {
            let whole = granted.contains(key);
            if !whole {
                // Only granted sub-fields of a partly granted field.
                let obj = value.as_object().expect("partial fields are objects");
                for sub in obj.keys() {
                    let path = format!("{key}.{sub}");
                    prop_assert!(granted.contains(&path), "{path} released but not granted");
                }
            }
            if let Some(mask) = masks.get(key) {
                prop_assert!(is_masked(*mask, value), "{key} not masked by {mask:?}: {value}");
            }
            if let Value::Object(obj) = value {
                for (sub, v) in obj {
                    if let Some(mask) = masks.get(&format!("{key}.{sub}")) {
                        prop_assert!(is_masked(*mask, v), "{key}.{sub} not masked: {v}");
                    }
                }
            }
        }
        let text = serde_json::to_string(&doc).expect("json");
        prop_assert!(!text.contains("Secret_") && !text.contains("Extra_") && !text.contains("XTRA_"), "{text}");
    }
}

/// The sample catalog and purposes with one app whose household grant
/// releases `fields`, limited to the officer's ward.
fn household_policy(fields: &[&str]) -> PolicyFiles {
    let mut files = policy::samples::files();
    files.retain(|path, _| !path.starts_with("apps/"));
    let list: Vec<String> = fields.iter().map(|f| format!("\"{f}\"")).collect();
    files.insert(
        "apps/app.toml".into(),
        format!(
            "id = \"app\"\nname = \"App\"\ncertificate_uri = \"urn:popgate:app:app\"\n\n[[grant]]\noperations = [\"household\", \"lookup\"]\nroles = [\"officer\"]\npurpose = \"emergency-response\"\nfields = [{}]\njurisdiction = \"officer-unit\"\nlegal_basis = \"test\"\n",
            list.join(", ")
        ),
    );
    files
}

/// Field paths a grant may name, people's relatives' included.
const GRANTABLE: [&str; 12] = [
    "personal_id",
    "full_name",
    "date_of_birth",
    "current_address",
    "permanent_address",
    "father.full_name",
    "father.personal_id",
    "mother",
    "spouse.full_name",
    "household_head.full_name",
    "household_head.relation",
    "ethnicity",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// For random households and grants: every person whose data is in the
    /// answer — each released head or member, each relative of theirs with a
    /// field released — is among the released people, and nobody withheld
    /// or outside the grant leaves anything.
    #[test]
    fn no_field_of_any_person_leaves_without_that_person(
        index in 0u32..5_000,
        chosen in proptest::collection::vec(any::<bool>(), GRANTABLE.len()),
        unit_of in 0usize..4,
    ) {
        let population = popgate::sim::population::Population::new(7, 5_000, 79);
        let household = population.household(&population.citizen(index));
        let fields: Vec<&str> = GRANTABLE.iter().zip(&chosen).filter(|(_, c)| **c).map(|(f, _)| *f).collect();
        prop_assume!(!fields.is_empty());
        let set = policy::parse(&household_policy(&fields), 79).map_err(|p| TestCaseError::fail(p.to_string()))?;
        let grant = set
            .authorize(&set.apps["app"], &["officer".to_owned()], Operation::Household, "emergency-response")
            .expect("granted");
        let ward = |c: &popgate::sim::population::Citizen, address: &str| -> u32 {
            c.to_c06()[address]["MaPhuongXa"].as_str().and_then(|w| w.parse().ok()).expect("ward")
        };
        // The officer's ward: one where somebody of the household lives.
        let wards: Vec<u32> = household
            .iter()
            .flat_map(|c| [ward(c, "ThuongTru"), ward(c, "NoiOHienTai")])
            .collect();
        let unit = wards[unit_of % wards.len()];
        let asked = &household[0];
        let map = |c: &popgate::sim::population::Citizen| set.catalog.map_record(c.to_c06());
        let released = set.release_household(
            grant,
            map(asked),
            household[1..].iter().map(map).collect(),
            asked.personal_id().as_str(),
            Some(unit),
        );
        let Ok(released) = released else {
            // The head lives outside the ward: nothing leaves at all.
            prop_assert!(ward(asked, "ThuongTru") != unit && ward(asked, "NoiOHienTai") != unit);
            return Ok(());
        };
        let doc = released.clone().into_doc();
        let answer = doc.to_string();
        let mut shown = 0;
        for person in &household {
            let inside = ward(person, "ThuongTru") == unit || ward(person, "NoiOHienTai") == unit;
            let id = Some(person.personal_id().as_str().to_owned());
            let own = released
                .people
                .iter()
                .find(|p| p.personal_id == id && matches!(p.role, policy::release::Role::Head | policy::release::Role::Member));
            prop_assert_eq!(own.is_some(), inside || person.index() == asked.index(), "{}", person.index());
            if own.is_none() {
                // Withheld: their own record is not in the answer. Their name
                // may be, as a relative named in a released record — and then
                // they are among the released people in that role.
                if answer.contains(&person.full_name()) {
                    let as_relative = released
                        .people
                        .iter()
                        .any(|p| p.personal_id == id && matches!(p.role, policy::release::Role::Relative(_)));
                    // (Or somebody released bears the same name.)
                    let namesake = released
                        .people
                        .iter()
                        .any(|p| p.personal_id != id && p.mapped["full_name"].as_str() == Some(person.full_name().as_str()));
                    prop_assert!(as_relative || namesake, "a withheld person's name left unaccounted");
                }
                continue;
            }
            shown += 1;
            // Each relative of theirs with a field in the answer is a
            // person too (one without a personal ID as well).
            let record = person.to_c06();
            let own = own.expect("shown");
            for (field, key) in [("father", "Cha"), ("mother", "Me"), ("spouse", "VoChong"), ("household_head", "ChuHo")] {
                let named = record[key]["SoDinhDanh"].as_str().map(str::to_owned);
                if own.released.contains_key(field) && named != id {
                    let relative = released.people.iter().any(|p| {
                        p.role == policy::release::Role::Relative(field) && p.personal_id == named
                    });
                    prop_assert!(relative, "{field} of {} released unnamed", person.index());
                }
            }
        }
        prop_assert_eq!(shown + released.withheld, household.len());
        // The document is each record shown, as the grant releases it, in
        // the household's order, and the count withheld.
        let mut records = household.iter().filter(|c| {
            let id = Some(c.personal_id().as_str().to_owned());
            released.people.iter().any(|p| p.personal_id == id && !matches!(p.role, policy::release::Role::Relative(_)))
        });
        let as_released = |c: &popgate::sim::population::Citizen| serde_json::Value::Object(set.release(grant, &map(c)).0);
        let expected = serde_json::json!({
            "head": as_released(records.next().expect("the head was asked about")),
            "members": records.map(as_released).collect::<Vec<_>>(),
            "withheld": released.withheld,
        });
        prop_assert_eq!(doc, expected);
        // Every released field path belongs to somebody.
        for person in &released.people {
            for f in &person.fields {
                prop_assert!(fields.contains(&f.as_str()), "{f} released but not granted");
            }
        }
    }
}
