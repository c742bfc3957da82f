//! Per-person release: every person whose data an answer carries is a
//! subject — the citizen asked about, each member of a household, and each
//! relative named inside a record (father, mother, spouse, household head)
//! when any of their fields is released. Each person of a household is
//! checked against the grant's jurisdiction on their own; one outside it is
//! withheld and only counted. What leaves is built field by field from the
//! grant (never by deleting from the record), so no field of any person
//! leaves without that person among the subjects.

use serde_json::{Map, Value};

use super::catalog::FieldKind;
use super::{Denial, Grant, PolicySet};

/// Where a person stands in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The citizen a lookup asked about.
    Citizen,
    /// The head of a household answer.
    Head,
    /// Another member of a household answer.
    Member,
    /// A person named inside a record, by the catalog field that names
    /// them (`father`, `mother`, `spouse`, `household_head`).
    Relative(&'static str),
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Citizen => "citizen",
            Role::Head => "head",
            Role::Member => "member",
            Role::Relative(field) => field,
        }
    }
}

/// One person whose data leaves, with what leaves of them.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleasedPerson {
    pub role: Role,
    /// The person's personal ID as the national database gave it (to be
    /// pseudonymised at once; never stored or logged as is). `None` when
    /// the record names no valid one.
    pub personal_id: Option<String>,
    /// The released field paths of this person, as the grant names them.
    pub fields: Vec<String>,
    /// The person's mapped record (for the warehouse copy); a relative's is
    /// the part of the record that names them.
    pub mapped: Map<String, Value>,
    /// What of this person was released (for the warehouse copy).
    pub released: Map<String, Value>,
}

/// A released answer: every person in it, from whom the document for the
/// app is put together ([`Released::into_doc`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Released {
    pub people: Vec<ReleasedPerson>,
    /// Persons of a household outside the grant's jurisdiction, left out.
    pub withheld: usize,
    household: bool,
}

impl Released {
    /// The document for the app, made of what each record's own person
    /// released (a relative's part is inside their record's): a lookup's is
    /// the citizen's; a household's is its head (`null` when withheld), the
    /// members released and how many were withheld. Moves the records out
    /// rather than copying them, so it comes after their warehouse copies.
    pub fn into_doc(self) -> Value {
        let mut own = self
            .people
            .into_iter()
            .filter(|p| !matches!(p.role, Role::Relative(_)))
            .map(|p| (p.role, Value::Object(p.released)));
        if !self.household {
            return own.next().map_or(Value::Null, |(_, doc)| doc);
        }
        let mut head = Value::Null;
        let mut members = Vec::new();
        for (role, doc) in own {
            match role {
                Role::Head => head = doc,
                _ => members.push(doc),
            }
        }
        Value::Object(Map::from_iter([
            ("head".to_owned(), head),
            ("members".to_owned(), Value::Array(members)),
            ("withheld".to_owned(), Value::from(self.withheld)),
        ]))
    }

    /// Every released field path, each once, in order (the event's `fields`).
    pub fn fields(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for person in &self.people {
            for f in &person.fields {
                if !out.contains(f) {
                    out.push(f.clone());
                }
            }
        }
        out
    }
}

fn personal_id_of(mapped: &Map<String, Value>) -> Option<String> {
    mapped
        .get("personal_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

impl PolicySet {
    /// The catalog fields that name another person inside a record.
    fn relative_fields(&self) -> impl Iterator<Item = &str> {
        self.catalog
            .fields
            .iter()
            .filter(|f| matches!(f.kind, FieldKind::Person | FieldKind::HouseholdHead))
            .map(|f| f.id.as_str())
    }

    /// The people one released record carries: `role` for the record's own
    /// person (fields outside relatives), then each relative with a field
    /// released. A relative who is the person themself (a citizen who is
    /// their own household head) is merged into them.
    fn people_of(
        &self,
        role: Role,
        mapped: Map<String, Value>,
        doc: Map<String, Value>,
        paths: Vec<String>,
    ) -> Vec<ReleasedPerson> {
        let own_id = personal_id_of(&mapped);
        let mut own_fields = Vec::new();
        let mut relatives: Vec<ReleasedPerson> = Vec::new();
        for path in paths {
            let parent = path.split('.').next().unwrap_or(&path);
            let Some(field) = self.relative_fields().find(|f| *f == parent) else {
                own_fields.push(path);
                continue;
            };
            let named = mapped
                .get(field)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let their_id = personal_id_of(&named);
            if their_id.is_some() && their_id == own_id {
                own_fields.push(path);
                continue;
            }
            let role = Role::Relative(field_name(field));
            match relatives.iter_mut().find(|r| r.role == role) {
                Some(r) => r.fields.push(path),
                None => relatives.push(ReleasedPerson {
                    role,
                    personal_id: their_id,
                    fields: vec![path],
                    released: doc
                        .get(field)
                        .and_then(Value::as_object)
                        .map(|o| Map::from_iter([(field.to_owned(), Value::Object(o.clone()))]))
                        .unwrap_or_default(),
                    mapped: named,
                }),
            }
        }
        let mut out = vec![ReleasedPerson {
            role,
            personal_id: own_id,
            fields: own_fields,
            mapped,
            released: doc,
        }];
        out.extend(relatives);
        out
    }

    /// A lookup's answer: the citizen (refused outside the jurisdiction)
    /// and the relatives their record names.
    pub fn release_citizen(
        &self,
        grant: &Grant,
        mapped: Map<String, Value>,
        officer_unit: Option<u32>,
    ) -> Result<Released, Denial> {
        self.residence_check(grant, &mapped, officer_unit)?;
        let (doc, paths) = self.release(grant, &mapped);
        Ok(Released {
            people: self.people_of(Role::Citizen, mapped, doc, paths),
            withheld: 0,
            household: false,
        })
    }

    /// A household's answer: the citizen asked about (`asked`, refused
    /// outside the jurisdiction), then every other person checked on their
    /// own — withheld and counted when outside it.
    pub fn release_household(
        &self,
        grant: &Grant,
        head: Map<String, Value>,
        members: Vec<Map<String, Value>>,
        asked: &str,
        officer_unit: Option<u32>,
    ) -> Result<Released, Denial> {
        let is_asked = |m: &Map<String, Value>| personal_id_of(m).as_deref() == Some(asked);
        let asked_record = std::iter::once(&head)
            .chain(members.iter())
            .find(|m| is_asked(m))
            .unwrap_or(&head);
        self.residence_check(grant, asked_record, officer_unit)?;
        let mut people = Vec::new();
        let mut withheld = 0;
        let records =
            std::iter::once((Role::Head, head)).chain(members.into_iter().map(|m| (Role::Member, m)));
        for (role, mapped) in records {
            if !is_asked(&mapped) && !self.within_jurisdiction(grant, &mapped, officer_unit) {
                withheld += 1;
                continue;
            }
            let (doc, paths) = self.release(grant, &mapped);
            people.extend(self.people_of(role, mapped, doc, paths));
        }
        Ok(Released {
            people,
            withheld,
            household: true,
        })
    }
}

/// The catalog's relative fields as static names for [`Role::Relative`];
/// a catalog field of another name is a `relative`.
fn field_name(field: &str) -> &'static str {
    match field {
        "father" => "father",
        "mother" => "mother",
        "spouse" => "spouse",
        "household_head" => "household_head",
        _ => "relative",
    }
}
