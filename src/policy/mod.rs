//! Access policy: the field catalog, the purposes, and the apps with their
//! grants — parsed once from TOML into one immutable [`PolicySet`], then
//! evaluated per request. Everything not granted is denied: an unknown app,
//! role, operation, purpose or field releases nothing.
//!
//! Layout of a policy directory:
//! `fields.toml` (the catalog), `purposes.toml`, `apps/<app>.toml`.
//! Every problem found while loading is reported as `FILE:LINE:COL: message`.

pub mod catalog;
pub mod diff;
pub mod mask;
pub mod release;
pub mod samples;
pub mod signature;
pub mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};
use toml::Spanned;

pub use catalog::{Catalog, FieldDef, FieldKind, Sensitivity};
pub use mask::Mask;

/// The operations an app can be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Lookup,
    Verify,
    Household,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Lookup => "lookup",
            Operation::Verify => "verify",
            Operation::Household => "household",
        }
    }
}

/// A purpose for which citizen data may be requested.
#[derive(Debug, Clone)]
pub struct Purpose {
    pub id: String,
    /// In Vietnamese, as officials and citizens read it.
    pub label: String,
    pub label_en: Option<String>,
    pub legal_basis: String,
    pub retention_days: u32,
    /// The form a `case_ref` must have for this purpose (for example the
    /// one-stop-shop's dossier number), matched whole.
    pub case_ref_pattern: Option<regex::Regex>,
}

/// Where the citizens an app may see must reside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Jurisdiction {
    /// The configured province.
    Province,
    /// One of these wards.
    Wards(Vec<u32>),
    /// The ward named in the officer's token.
    OfficerUnit,
}

/// Rate limits a grant sets for its app and purpose.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantLimits {
    pub per_minute: Option<u32>,
}

/// One grant of an app: operations × roles for one purpose.
#[derive(Debug, Clone)]
pub struct Grant {
    pub operations: Vec<Operation>,
    pub roles: Vec<String>,
    pub purpose: String,
    /// Field paths (`id` or `id.sub`) released, in order.
    pub fields: Vec<String>,
    pub masks: BTreeMap<String, Mask>,
    pub jurisdiction: Jurisdiction,
    pub case_ref_required: bool,
    pub legal_basis: Option<String>,
    /// Released fields that may be kept in the warehouse.
    pub store: Vec<String>,
    pub limits: GrantLimits,
}

/// A provincial application.
#[derive(Debug, Clone)]
pub struct App {
    pub id: String,
    pub name: String,
    pub certificate_uri: String,
    pub grants: Vec<Grant>,
}

/// Why a request is not authorised; shown to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("the purpose is not one the policy defines; use a purpose id of purposes.toml")]
    UnknownPurpose,
    #[error("the app is not granted the operation '{op}' for the purpose '{purpose}'")]
    NotGranted { op: &'static str, purpose: String },
    #[error("the role(s) of this officer are not granted '{op}' for the purpose '{purpose}'")]
    RoleNotGranted { op: &'static str, purpose: String },
    #[error("the grant for the purpose '{0}' requires a case_ref")]
    CaseRefRequired(String),
    #[error("the citizen resides outside the jurisdiction of this grant")]
    OutsideJurisdiction,
    #[error("the citizen's address in the national database resolves to no administrative unit (before or after the 2025 reform), so it is treated as outside the jurisdiction; the data office can check the unit tables")]
    UnresolvedAddress,
}

/// The whole active policy, immutable once built.
#[derive(Debug, Clone)]
pub struct PolicySet {
    /// Version number in the policy store; 0 for a set read from files.
    pub version: u64,
    /// The province whose jurisdiction `Jurisdiction::Province` means.
    pub province: u16,
    pub catalog: Catalog,
    pub purposes: HashMap<String, Purpose>,
    pub apps: HashMap<String, App>,
    by_certificate_uri: HashMap<String, String>,
}

impl PolicySet {
    /// The app whose certificate carries `uri`.
    pub fn app_by_certificate_uri(&self, uri: &str) -> Option<&App> {
        self.by_certificate_uri.get(uri).and_then(|id| self.apps.get(id))
    }

    /// The grant that allows `app` to perform `op` for `purpose` with one of
    /// `roles`, or the reason it may not.
    pub fn authorize<'a>(
        &'a self,
        app: &'a App,
        roles: &[String],
        op: Operation,
        purpose: &str,
    ) -> Result<&'a Grant, Denial> {
        if !self.purposes.contains_key(purpose) {
            return Err(Denial::UnknownPurpose);
        }
        let mut for_op = app
            .grants
            .iter()
            .filter(|g| g.purpose == purpose && g.operations.contains(&op))
            .peekable();
        if for_op.peek().is_none() {
            return Err(Denial::NotGranted {
                op: op.as_str(),
                purpose: purpose.to_owned(),
            });
        }
        for_op
            .find(|g| g.roles.iter().any(|r| roles.contains(r)))
            .ok_or_else(|| Denial::RoleNotGranted {
                op: op.as_str(),
                purpose: purpose.to_owned(),
            })
    }

    /// Whether a mapped record lies inside the grant's jurisdiction; either
    /// the permanent or the current residence counts.
    pub fn within_jurisdiction(
        &self,
        grant: &Grant,
        record: &Map<String, Value>,
        officer_unit: Option<u32>,
    ) -> bool {
        self.residence_check(grant, record, officer_unit).is_ok()
    }

    /// [`PolicySet::within_jurisdiction`] with the reason when not: outside,
    /// or an address that resolved to no 2025 unit. Each residence is read
    /// as a 2025 ward (`catalog::normalise_address`); an old ward divided
    /// between several 2025 wards is inside when any of them is.
    pub fn residence_check(
        &self,
        grant: &Grant,
        record: &Map<String, Value>,
        officer_unit: Option<u32>,
    ) -> Result<(), Denial> {
        let units = crate::units::Units::get();
        let ward_of = |v: &Value| v.as_str().and_then(|w| w.parse::<u32>().ok());
        let mut unresolved = false;
        let mut wards: Vec<u32> = Vec::new();
        for f in ["permanent_address", "current_address"] {
            let Some(address) = record.get(f) else { continue };
            if address.get("unresolved").and_then(Value::as_bool) == Some(true) {
                unresolved = true;
                continue;
            }
            let candidates = address["legacy"]["ward_candidates"].as_array();
            match candidates {
                Some(all) => wards.extend(all.iter().filter_map(ward_of)),
                None => wards.extend(address.get("ward_code").and_then(ward_of)),
            }
        }
        let inside = wards.into_iter().any(|ward| match &grant.jurisdiction {
            Jurisdiction::Province => units.ward(ward).is_some_and(|w| w.province_code == self.province),
            Jurisdiction::Wards(list) => list.contains(&ward),
            Jurisdiction::OfficerUnit => officer_unit == Some(ward),
        });
        match (inside, unresolved) {
            (true, _) => Ok(()),
            (false, true) => Err(Denial::UnresolvedAddress),
            (false, false) => Err(Denial::OutsideJurisdiction),
        }
    }

    /// Builds the released document from the grant's field list (never by
    /// deleting from the record), masks applied. Returns the document and
    /// the paths actually released.
    pub fn release(&self, grant: &Grant, record: &Map<String, Value>) -> (Map<String, Value>, Vec<String>) {
        let mut out = Map::new();
        let mut released = Vec::new();
        for path in &grant.fields {
            let (value, kind) = match path.split_once('.') {
                None => (record.get(path), self.catalog.get(path).map(|f| f.kind)),
                Some((parent, child)) => (
                    record.get(parent).and_then(|p| p.get(child)),
                    Some(mask::subfield_kind(child)),
                ),
            };
            let (Some(value), Some(kind)) = (value, kind) else {
                continue;
            };
            let value = match grant.masks.get(path) {
                Some(m) => m.apply(kind, value),
                None => value.clone(),
            };
            match path.split_once('.') {
                None => {
                    out.insert(path.clone(), value);
                }
                Some((parent, child)) => {
                    let slot = out
                        .entry(parent.to_owned())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(obj) = slot {
                        obj.insert(child.to_owned(), value);
                    }
                }
            }
            released.push(path.clone());
        }
        (out, released)
    }
}

/// One problem in a policy directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.message)
    }
}

/// All problems of a policy set that cannot be loaded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct Problems(pub Vec<Problem>);

/// Policy files by path relative to the policy directory (`apps/x.toml`).
pub type PolicyFiles = BTreeMap<String, String>;

/// Reads every policy file of `dir`.
pub fn read_dir(dir: &Path) -> Result<PolicyFiles, Problems> {
    let mut files = PolicyFiles::new();
    let problem = |file: &Path, message: String| Problem {
        file: file.display().to_string(),
        line: 1,
        col: 1,
        message,
    };
    for name in ["fields.toml", "purposes.toml"] {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                files.insert(name.to_owned(), text);
            }
            Err(e) => return Err(Problems(vec![problem(&path, format!("cannot read: {e}"))])),
        }
    }
    let apps_dir = dir.join("apps");
    let entries = std::fs::read_dir(&apps_dir)
        .map_err(|e| Problems(vec![problem(&apps_dir, format!("cannot read: {e}"))]))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                files.insert(format!("apps/{name}"), text);
            }
            Err(e) => return Err(Problems(vec![problem(&path, format!("cannot read: {e}"))])),
        }
    }
    Ok(files)
}

/// Legal instruments that policies may no longer cite: the citation, what
/// replaced it, and since when.
pub const REPEALED: &[(&str, &str, &str)] = &[(
    "13/2023/NĐ-CP",
    "Luật Bảo vệ dữ liệu cá nhân 2025 (Luật số 91/2025/QH15) and Nghị định 356/2025/NĐ-CP",
    "2026-01-01",
)];

/// Things in a valid policy set that an admin should fix: citations of
/// repealed instruments, at the line and column where they stand.
pub fn warnings(files: &PolicyFiles) -> Vec<Problem> {
    let mut out = Vec::new();
    for (file, text) in files {
        for (repealed, by, since) in REPEALED {
            for (at, _) in text.match_indices(repealed) {
                let (line, col) = line_col(text, at);
                out.push(Problem {
                    file: file.clone(),
                    line,
                    col,
                    message: format!(
                        "warning: {repealed} is cited, but it was replaced on {since} by {by}; cite the instrument in force"
                    ),
                });
            }
        }
    }
    out
}

/// Loads and validates the policy files of `dir`; problem locations are
/// prefixed with `dir`.
pub fn load_dir(dir: &Path, province: u16) -> Result<PolicySet, Problems> {
    let files = read_dir(dir)?;
    parse(&files, province).map_err(|Problems(list)| {
        Problems(
            list.into_iter()
                .map(|p| Problem {
                    file: dir.join(&p.file).display().to_string(),
                    ..p
                })
                .collect(),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFieldsFile {
    field: Vec<RawField>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    id: Spanned<String>,
    label: String,
    /// The label in English (citizen reports in English); optional.
    #[serde(default)]
    label_en: Option<String>,
    class: Sensitivity,
    kind: FieldKind,
    upstream: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPurposesFile {
    purpose: Vec<RawPurpose>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPurpose {
    id: Spanned<String>,
    label: String,
    #[serde(default)]
    label_en: Option<String>,
    legal_basis: String,
    retention_days: u32,
    #[serde(default)]
    case_ref_pattern: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    id: Spanned<String>,
    name: String,
    certificate_uri: Spanned<String>,
    #[serde(default)]
    grant: Vec<Spanned<RawGrant>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    operations: Vec<Operation>,
    roles: Spanned<Vec<String>>,
    purpose: Spanned<String>,
    fields: Vec<Spanned<String>>,
    #[serde(default)]
    masks: BTreeMap<String, Spanned<Mask>>,
    jurisdiction: Spanned<RawJurisdiction>,
    #[serde(default)]
    case_ref_required: bool,
    legal_basis: Option<String>,
    #[serde(default)]
    store: Vec<Spanned<String>>,
    #[serde(default)]
    limits: GrantLimits,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawJurisdiction {
    Named(String),
    Wards { wards: Vec<u32> },
}

/// Collects problems for one file with line/column resolution.
struct FileProblems<'a> {
    file: &'a str,
    text: &'a str,
    out: &'a mut Vec<Problem>,
}

impl FileProblems<'_> {
    fn at(&mut self, span: std::ops::Range<usize>, message: impl Into<String>) {
        let (line, col) = line_col(self.text, span.start);
        self.out.push(Problem {
            file: self.file.to_owned(),
            line,
            col,
            message: message.into(),
        });
    }

    fn parse<T: serde::de::DeserializeOwned>(&mut self) -> Option<T> {
        match toml::from_str::<T>(self.text) {
            Ok(v) => Some(v),
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                self.at(span, e.message().trim().to_owned());
                None
            }
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary_compat(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while i > 0 && !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// Parses and validates a complete set of policy files.
pub fn parse(files: &PolicyFiles, province: u16) -> Result<PolicySet, Problems> {
    let mut problems = Vec::new();
    let missing = |name: &str| Problem {
        file: name.to_owned(),
        line: 1,
        col: 1,
        message: "required file is missing".to_owned(),
    };

    let mut catalog = Catalog::default();
    match files.get("fields.toml") {
        None => problems.push(missing("fields.toml")),
        Some(text) => {
            let mut fp = FileProblems {
                file: "fields.toml",
                text,
                out: &mut problems,
            };
            if let Some(raw) = fp.parse::<RawFieldsFile>() {
                for f in raw.field {
                    let id = f.id.get_ref();
                    if id.is_empty() || id.contains('.') || !id.is_ascii() {
                        fp.at(f.id.span(), "field ids are ASCII, non-empty and contain no '.'");
                    } else if catalog.get(id).is_some() {
                        fp.at(f.id.span(), format!("field '{id}' is defined twice"));
                    } else {
                        catalog.fields.push(FieldDef {
                            id: id.clone(),
                            label: f.label,
                            label_en: f.label_en,
                            class: f.class,
                            kind: f.kind,
                            upstream: f.upstream,
                        });
                    }
                }
            }
        }
    }

    let mut purposes = HashMap::new();
    match files.get("purposes.toml") {
        None => problems.push(missing("purposes.toml")),
        Some(text) => {
            let mut fp = FileProblems {
                file: "purposes.toml",
                text,
                out: &mut problems,
            };
            if let Some(raw) = fp.parse::<RawPurposesFile>() {
                for p in raw.purpose {
                    let id = p.id.get_ref().clone();
                    if purposes.contains_key(&id) {
                        fp.at(p.id.span(), format!("purpose '{id}' is defined twice"));
                        continue;
                    }
                    if p.legal_basis.trim().is_empty() {
                        fp.at(p.id.span(), format!("purpose '{id}' needs a legal_basis"));
                    }
                    let case_ref_pattern = p.case_ref_pattern.and_then(|pattern| {
                        let whole = format!("^(?:{})$", pattern.get_ref());
                        match regex::Regex::new(&whole) {
                            Ok(re) => Some(re),
                            Err(_) => {
                                fp.at(
                                    pattern.span(),
                                    "case_ref_pattern is not a valid regular expression".to_owned(),
                                );
                                None
                            }
                        }
                    });
                    purposes.insert(
                        id.clone(),
                        Purpose {
                            id,
                            label: p.label,
                            label_en: p.label_en,
                            legal_basis: p.legal_basis,
                            retention_days: p.retention_days,
                            case_ref_pattern,
                        },
                    );
                }
            }
        }
    }

    let mut apps: HashMap<String, App> = HashMap::new();
    let mut by_certificate_uri = HashMap::new();
    for (file, text) in files.iter().filter(|(f, _)| f.starts_with("apps/")) {
        let mut fp = FileProblems {
            file,
            text,
            out: &mut problems,
        };
        let Some(raw) = fp.parse::<RawApp>() else {
            continue;
        };
        let id = raw.id.get_ref().clone();
        if apps.contains_key(&id) {
            fp.at(
                raw.id.span(),
                format!("app '{id}' is defined in another file too"),
            );
            continue;
        }
        let uri = raw.certificate_uri.get_ref().clone();
        if let Some(other) = by_certificate_uri.get(&uri) {
            fp.at(
                raw.certificate_uri.span(),
                format!("certificate_uri is already the identity of app '{other}'"),
            );
        } else {
            by_certificate_uri.insert(uri.clone(), id.clone());
        }
        let mut grants = Vec::new();
        let mut seen: HashSet<(Operation, String, String)> = HashSet::new();
        for g in raw.grant {
            let span = g.span();
            let g = g.into_inner();
            if let Some(grant) = validate_grant(&mut fp, span, g, &catalog, &purposes, &mut seen) {
                grants.push(grant);
            }
        }
        apps.insert(
            id.clone(),
            App {
                id,
                name: raw.name,
                certificate_uri: uri,
                grants,
            },
        );
    }

    if problems.is_empty() {
        Ok(PolicySet {
            version: 0,
            province,
            catalog,
            purposes,
            apps,
            by_certificate_uri,
        })
    } else {
        Err(Problems(problems))
    }
}

fn validate_grant(
    fp: &mut FileProblems<'_>,
    span: std::ops::Range<usize>,
    g: RawGrant,
    catalog: &Catalog,
    purposes: &HashMap<String, Purpose>,
    seen: &mut HashSet<(Operation, String, String)>,
) -> Option<Grant> {
    let before = fp.out.len();
    let purpose = g.purpose.get_ref().clone();
    if !purposes.contains_key(&purpose) {
        fp.at(g.purpose.span(), format!("unknown purpose '{purpose}'"));
    }
    if g.operations.is_empty() {
        fp.at(span.clone(), "a grant needs at least one operation");
    }
    if g.roles.get_ref().is_empty() {
        fp.at(g.roles.span(), "a grant needs at least one role");
    }
    for op in &g.operations {
        for role in g.roles.get_ref() {
            if !seen.insert((*op, purpose.clone(), role.clone())) {
                fp.at(
                    g.roles.span(),
                    format!(
                        "another grant of this app already covers '{}' for role '{role}' and purpose '{purpose}'",
                        op.as_str()
                    ),
                );
            }
        }
    }
    let mut fields = Vec::new();
    let mut sensitive = false;
    for f in &g.fields {
        let path = f.get_ref();
        if !catalog.resolves(path) {
            fp.at(f.span(), format!("unknown field '{path}'"));
            continue;
        }
        let parent = path.split('.').next().unwrap_or(path);
        if fields.contains(path) {
            fp.at(f.span(), format!("field '{path}' is listed twice"));
            continue;
        }
        if fields
            .iter()
            .any(|p: &String| p == parent || p.split('.').next() == Some(path.as_str()))
        {
            fp.at(
                f.span(),
                format!("field '{path}' overlaps another field of this grant"),
            );
            continue;
        }
        if catalog
            .get(parent)
            .is_some_and(|d| d.class == Sensitivity::Sensitive)
        {
            sensitive = true;
        }
        fields.push(path.clone());
    }
    if sensitive && g.legal_basis.as_deref().is_none_or(|s| s.trim().is_empty()) {
        fp.at(
            span.clone(),
            "this grant releases a sensitive field and needs a legal_basis",
        );
    }
    let mut masks = BTreeMap::new();
    for (path, m) in &g.masks {
        if !fields.contains(path) {
            fp.at(
                m.span(),
                format!("mask for '{path}', which this grant does not release"),
            );
            continue;
        }
        let kind = match path.split_once('.') {
            None => catalog.get(path).map(|f| f.kind),
            Some((_, child)) => Some(mask::subfield_kind(child)),
        };
        if let Some(kind) = kind {
            if !m.get_ref().applies_to(kind) {
                fp.at(
                    m.span(),
                    format!("mask '{}' does not apply to field '{path}'", m.get_ref().as_str()),
                );
                continue;
            }
        }
        masks.insert(path.clone(), *m.get_ref());
    }
    for s in &g.store {
        if !fields.contains(s.get_ref()) {
            fp.at(
                s.span(),
                format!("store names '{}', which this grant does not release", s.get_ref()),
            );
        }
    }
    let jurisdiction = match g.jurisdiction.get_ref() {
        RawJurisdiction::Named(n) if n == "province" => Jurisdiction::Province,
        RawJurisdiction::Named(n) if n == "officer-unit" => Jurisdiction::OfficerUnit,
        RawJurisdiction::Named(n) => {
            fp.at(
                g.jurisdiction.span(),
                format!("jurisdiction '{n}' is not 'province', 'officer-unit' or {{ wards = [...] }}"),
            );
            Jurisdiction::Province
        }
        RawJurisdiction::Wards { wards } => {
            for w in wards {
                if crate::units::Units::get().ward(*w).is_none() {
                    fp.at(g.jurisdiction.span(), format!("ward code {w} does not exist"));
                }
            }
            Jurisdiction::Wards(wards.clone())
        }
    };
    (fp.out.len() == before).then(|| Grant {
        operations: g.operations,
        roles: g.roles.into_inner(),
        purpose,
        fields,
        masks,
        jurisdiction,
        case_ref_required: g.case_ref_required,
        legal_basis: g.legal_basis,
        store: g.store.into_iter().map(Spanned::into_inner).collect(),
        limits: g.limits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 11), (2, 5));
    }

    #[test]
    fn shipped_policies_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let set = load_dir(&dir, 79).expect("policies/ is valid");
        assert!(set.apps.contains_key("mot-cua"));
        assert!(set.apps.contains_key("y-te"));
        assert!(set.app_by_certificate_uri("urn:popgate:app:mot-cua").is_some());
    }
}
