//! A deterministic synthetic population, generated on demand and never
//! stored. Citizen `i` (0 ≤ i < size) is a pure function of the seed, `i`
//! and the configured province; its personal ID encodes `i` through a keyed
//! permutation of the six serial digits, so a lookup by ID inverts the
//! permutation instead of searching.
//!
//! Households are laid out in blocks of four consecutive indices, each block
//! split into one to four households; the first member of a household is its
//! head, the second usually the spouse, the rest children.

use serde_json::{json, Value};

use super::names::{self, pick};
use crate::personal_id::{PersonalId, Sex};
use crate::units::{Units, Ward, BIRTH_PROVINCE_CODES};

/// The largest population: one citizen per six-digit serial.
pub const MAX_POPULATION: u32 = 1_000_000;
const BLOCK: u32 = 4;
/// Ways of splitting a block of four into households (sizes in order).
const SPLITS: [&[u32]; 8] = [
    &[4],
    &[4],
    &[3, 1],
    &[1, 3],
    &[2, 2],
    &[2, 1, 1],
    &[1, 2, 1],
    &[1, 1, 2],
];
/// Percentage of households residing in the configured province.
const RESIDENT_PERCENT: u64 = 88;

#[derive(Debug, Clone)]
pub struct Population {
    seed: u64,
    size: u32,
    province: u16,
    /// Residences coded before the 2025 reform, per thousand.
    legacy_permille: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Head,
    Spouse,
    Child,
}

impl Role {
    fn label(self, sex: Sex) -> &'static str {
        match (self, sex) {
            (Role::Head, _) => "Chủ hộ",
            (Role::Spouse, Sex::Male) => "Chồng",
            (Role::Spouse, Sex::Female) => "Vợ",
            (Role::Child, _) => "Con",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Household {
    /// Index of the head; members are `head .. head + len`.
    head: u32,
    len: u32,
}

/// What can be computed about a person without looking at relatives.
#[derive(Debug, Clone)]
struct Core {
    index: u32,
    household: Household,
    role: Role,
    sex: Sex,
    birth: (i32, u8, u8),
    name: [&'static str; 3],
    id: PersonalId,
}

/// A generated citizen: everything the simulator can answer about them.
#[derive(Debug, Clone)]
pub struct Citizen {
    core: Core,
    record: Value,
    /// The 2025 province of the permanent residence, however it is coded.
    residence_province: u16,
}

impl Citizen {
    pub fn personal_id(&self) -> &PersonalId {
        &self.core.id
    }

    pub fn index(&self) -> u32 {
        self.core.index
    }

    /// The 2025 province of the permanent residence (whichever way the
    /// record codes it).
    pub fn residence_province(&self) -> u16 {
        self.residence_province
    }

    /// Whether the permanent residence is coded before the 2025 reform.
    pub fn legacy_coded(&self) -> bool {
        self.record["ThuongTru"].get("MaQuanHuyen").is_some()
    }

    /// Full name as one string.
    pub fn full_name(&self) -> String {
        self.core.name.join(" ")
    }

    /// Date of birth as `YYYY-MM-DD`.
    pub fn date_of_birth(&self) -> String {
        let (y, m, d) = self.core.birth;
        format!("{y:04}-{m:02}-{d:02}")
    }

    /// The `CongDan` object of the national database's answers.
    pub fn to_c06(&self) -> &Value {
        &self.record
    }
}

impl Population {
    pub fn new(seed: u64, size: u32, province: u16) -> Population {
        Population {
            seed,
            size: size.clamp(1, MAX_POPULATION),
            province,
            legacy_permille: 0,
        }
    }

    /// The same population with a share (0 to 1) of residences coded as
    /// before the 2025 reform (`MaTinhThanh` of the 63 provinces,
    /// `MaQuanHuyen`, the old `MaPhuongXa`), chosen per household by the
    /// seed.
    pub fn with_legacy_share(mut self, share: f64) -> Population {
        self.legacy_permille = (share.clamp(0.0, 1.0) * 1000.0).round() as u64;
        self
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    /// The citizen with this ID, if the population has one.
    pub fn find(&self, id: &PersonalId) -> Option<Citizen> {
        let index = self.unpermute(id.serial());
        if index >= self.size {
            return None;
        }
        let citizen = self.citizen(index);
        (citizen.core.id == *id).then_some(citizen)
    }

    /// Citizen number `index`; `index` must be below `size`.
    pub fn citizen(&self, index: u32) -> Citizen {
        let core = self.core(index);
        let record = self.record(&core);
        let residence_province = self.residence_province(core.household);
        Citizen {
            core,
            record,
            residence_province,
        }
    }

    /// All members of the citizen's household, head first.
    pub fn household(&self, citizen: &Citizen) -> Vec<Citizen> {
        let hh = citizen.core.household;
        (hh.head..hh.head + hh.len).map(|i| self.citizen(i)).collect()
    }

    /// `count` citizen IDs spread over the population; both residents of the
    /// configured province and people living elsewhere are included.
    pub fn sample_ids(&self, count: usize) -> Vec<String> {
        let mut inside = Vec::new();
        let mut outside = Vec::new();
        let want_outside = (count / 4).max(1);
        let mut i = 0u32;
        while (inside.len() + outside.len() < count || outside.len() < want_outside) && i < self.size {
            let index = (u64::from(i) * 7919 % u64::from(self.size)) as u32;
            let c = self.citizen(index);
            let id = c.personal_id().as_str().to_owned();
            if c.residence_province() == self.province {
                if inside.len() < count - want_outside.min(count) {
                    inside.push(id);
                }
            } else if outside.len() < want_outside {
                outside.push(id);
            }
            i += 1;
        }
        inside.extend(outside);
        inside
    }

    fn hash(&self, tag: u64, x: u64) -> u64 {
        splitmix(self.seed ^ splitmix(tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ x))
    }

    fn household_of(&self, index: u32) -> Household {
        let block = index / BLOCK;
        let split = SPLITS[(self.hash(1, u64::from(block)) % SPLITS.len() as u64) as usize];
        let mut start = block * BLOCK;
        for &len in split {
            if index < start + len {
                let len = len.min(self.size - start);
                return Household { head: start, len };
            }
            start += len;
        }
        Household { head: index, len: 1 }
    }

    fn role(&self, hh: Household, index: u32) -> Role {
        match index - hh.head {
            0 => Role::Head,
            1 if self.hash(2, u64::from(hh.head)) % 10 < 8 => Role::Spouse,
            _ => Role::Child,
        }
    }

    fn head_sex(&self, hh: Household) -> Sex {
        if self.hash(3, u64::from(hh.head)) % 10 < 7 {
            Sex::Male
        } else {
            Sex::Female
        }
    }

    fn head_birth_year(&self, hh: Household) -> i32 {
        let r = self.hash(4, u64::from(hh.head));
        if hh.len == 1 {
            1950 + (r % 56) as i32
        } else {
            1945 + (r % 50) as i32
        }
    }

    fn core(&self, index: u32) -> Core {
        let hh = self.household_of(index);
        let role = self.role(hh, index);
        let r = self.hash(5, u64::from(index));
        let head_sex = self.head_sex(hh);
        let head_year = self.head_birth_year(hh);
        let (sex, year) = match role {
            Role::Head => (head_sex, head_year),
            Role::Spouse => (opposite(head_sex), (head_year + (r % 9) as i32 - 4).min(2005)),
            Role::Child => (
                if r.is_multiple_of(2) {
                    Sex::Male
                } else {
                    Sex::Female
                },
                (head_year + 20 + ((r >> 8) % 16) as i32).min(2024),
            ),
        };
        let month = 1 + ((r >> 16) % 12) as u8;
        let day = 1 + ((r >> 24) % 28) as u8;
        let surname = match role {
            Role::Child => self.father_surname(hh),
            _ => self.own_surname(index),
        };
        let middle = match sex {
            Sex::Male => pick(names::MIDDLE_MALE, r >> 32),
            Sex::Female => pick(names::MIDDLE_FEMALE, r >> 32),
        };
        let given = match sex {
            Sex::Male => pick(names::GIVEN_MALE, self.hash(6, u64::from(index))),
            Sex::Female => pick(names::GIVEN_FEMALE, self.hash(6, u64::from(index))),
        };
        let birth_code = self.birth_province_code(hh, index);
        let id = PersonalId::compose(birth_code, sex, year, self.permute(index));
        Core {
            index,
            household: hh,
            role,
            sex,
            birth: (year, month, day),
            name: [surname, middle, given],
            id,
        }
    }

    fn own_surname(&self, index: u32) -> &'static str {
        pick(names::SURNAMES, self.hash(7, u64::from(index)))
    }

    fn father_surname(&self, hh: Household) -> &'static str {
        let spouse_is_father =
            hh.len > 1 && self.role(hh, hh.head + 1) == Role::Spouse && self.head_sex(hh) == Sex::Female;
        if spouse_is_father {
            self.own_surname(hh.head + 1)
        } else {
            self.own_surname(hh.head)
        }
    }

    /// Current province of residence of a household.
    fn residence_province(&self, hh: Household) -> u16 {
        if self.hash(8, u64::from(hh.head)) % 100 < RESIDENT_PERCENT {
            return self.province;
        }
        let others: Vec<u16> = Units::get()
            .provinces()
            .iter()
            .map(|p| p.code)
            .filter(|&c| c != self.province)
            .collect();
        others[(self.hash(9, u64::from(hh.head)) % others.len() as u64) as usize]
    }

    fn birth_province_code(&self, hh: Household, index: u32) -> u16 {
        let r = self.hash(10, u64::from(index));
        let living_in = self.residence_province(hh);
        let local: Vec<u16> = BIRTH_PROVINCE_CODES
            .iter()
            .filter(|&&(_, new)| new == living_in)
            .map(|&(old, _)| old)
            .collect();
        if r % 100 < 78 && !local.is_empty() {
            // The province's own historical code dominates (079 over 074/077).
            let first = local.iter().copied().find(|&c| c == living_in);
            match (first, (r >> 8) % 10) {
                (Some(code), 0..=5) => code,
                _ => local[((r >> 16) % local.len() as u64) as usize],
            }
        } else {
            BIRTH_PROVINCE_CODES[((r >> 24) % 63) as usize].0
        }
    }

    fn ward_in(&self, province: u16, roll: u64) -> Option<&'static Ward> {
        let p = Units::get().province(province)?;
        p.wards.get((roll % p.wards.len().max(1) as u64) as usize)
    }

    /// A residence in `ward`; coded as before the reform for a share of
    /// rolls, as one of the old wards that went into it.
    fn residence(&self, ward: Option<&'static Ward>, roll: u64) -> Value {
        let legacy = self.hash(16, roll) % 1000 < self.legacy_permille;
        let old = ward.filter(|_| legacy).and_then(|w| {
            let olds: Vec<_> = Units::get().legacy_wards_into(w.code).collect();
            (!olds.is_empty()).then(|| olds[(self.hash(17, roll) % olds.len() as u64) as usize])
        });
        let Some(old) = old else {
            return self.address(ward, roll);
        };
        let street = names::STREETS[(roll % names::STREETS.len() as u64) as usize];
        json!({
            "MaTinhThanh": format!("{:02}", old.province_code),
            "MaQuanHuyen": format!("{:03}", old.district_code),
            "MaPhuongXa": format!("{:05}", old.code),
            "ChiTiet": format!(
                "Số {} {}, {}, {}, {}",
                1 + (roll >> 8) % 300,
                street,
                old.name,
                old.district_name,
                old.province_name
            ),
        })
    }

    fn address(&self, ward: Option<&'static Ward>, roll: u64) -> Value {
        let Some(ward) = ward else {
            return Value::Null;
        };
        let province_name = Units::get()
            .province(ward.province_code)
            .map(|p| p.name)
            .unwrap_or_default();
        let street = names::STREETS[(roll % names::STREETS.len() as u64) as usize];
        let detail = if ward.name.starts_with("Phường") {
            format!(
                "Số {} {}, {}, {}",
                1 + (roll >> 8) % 300,
                street,
                ward.name,
                province_name
            )
        } else {
            format!("Thôn {}, {}, {}", 1 + (roll >> 8) % 12, ward.name, province_name)
        };
        json!({
            "MaTinhThanh": format!("{:02}", ward.province_code),
            "MaPhuongXa": format!("{:05}", ward.code),
            "ChiTiet": detail,
        })
    }

    fn relative(&self, core: &Core) -> Value {
        json!({
            "HoVaTen": core.name.join(" "),
            "QuocTich": "Việt Nam",
            "SoDinhDanh": core.id.as_str(),
        })
    }

    /// A parent who is not in the population (elders often have no ID).
    fn outside_parent(&self, index: u32, sex: Sex, surname: &'static str) -> Value {
        let r = self.hash(11 + u64::from(sex == Sex::Female), u64::from(index));
        let (middle, given) = match sex {
            Sex::Male => (pick(names::MIDDLE_MALE, r), pick(names::GIVEN_MALE, r >> 20)),
            Sex::Female => (pick(names::MIDDLE_FEMALE, r), pick(names::GIVEN_FEMALE, r >> 20)),
        };
        json!({
            "HoVaTen": format!("{surname} {middle} {given}"),
            "QuocTich": "Việt Nam",
            "SoDinhDanh": Value::Null,
        })
    }

    fn record(&self, core: &Core) -> Value {
        let hh = core.household;
        let head = self.core(hh.head);
        let spouse = (hh.len > 1)
            .then(|| self.core(hh.head + 1))
            .filter(|c| c.role == Role::Spouse);
        let r = self.hash(13, u64::from(core.index));
        let hr = self.hash(14, u64::from(hh.head));
        let province = self.residence_province(hh);
        let home_ward = self.ward_in(province, hr);
        let permanent = self.residence(home_ward, hr >> 12);
        let current = if r.is_multiple_of(10) {
            self.residence(self.ward_in(province, r >> 4), r >> 20)
        } else {
            permanent.clone()
        };
        let birth_place = crate::units::current_province_of_birth_code(core.id.birth_province_code())
            .and_then(|p| self.ward_in(p, r >> 28));
        let hometown_province =
            Units::get().provinces()[(self.hash(15, u64::from(hh.head)) % 34) as usize].code;
        let hometown = self.address(self.ward_in(hometown_province, hr >> 30), hr >> 40);

        let (father, mother) = match core.role {
            Role::Child => {
                let (f, m) = match (head.sex, &spouse) {
                    (Sex::Male, Some(s)) => (self.relative(&head), self.relative(s)),
                    (Sex::Female, Some(s)) => (self.relative(s), self.relative(&head)),
                    (Sex::Male, None) => (
                        self.relative(&head),
                        self.outside_parent(core.index, Sex::Female, self.own_surname(hh.head + 7)),
                    ),
                    (Sex::Female, None) => (
                        self.outside_parent(core.index, Sex::Male, core.name[0]),
                        self.relative(&head),
                    ),
                };
                (f, m)
            }
            _ => (
                self.outside_parent(core.index, Sex::Male, core.name[0]),
                self.outside_parent(core.index, Sex::Female, self.own_surname(core.index + 13)),
            ),
        };
        let partner = match core.role {
            Role::Head => spouse.as_ref().map(|s| self.relative(s)),
            Role::Spouse => Some(self.relative(&head)),
            Role::Child => None,
        };
        let age = 2026 - core.birth.0;
        let marital = match (core.role, &partner) {
            (_, Some(_)) => "Đã kết hôn",
            (Role::Head, None) if age > 70 && r.is_multiple_of(3) => "Góa",
            (Role::Head, None) if age > 35 && r.is_multiple_of(5) => "Ly hôn",
            (Role::Head, None) if age > 30 && r.is_multiple_of(2) => "Đã kết hôn",
            _ => "Độc thân",
        };
        let old_id = (core.birth.0 < 1998 && r % 10 < 8)
            .then(|| format!("{:09}", self.hash(16, u64::from(core.index)) % 1_000_000_000));
        let (y, m, d) = core.birth;
        json!({
            "SoDinhDanh": core.id.as_str(),
            "SoCMND": old_id,
            "HoVaTen": { "Ho": core.name[0], "ChuDem": core.name[1], "Ten": core.name[2] },
            "NgayThangNamSinh": format!("{y:04}{m:02}{d:02}"),
            "GioiTinh": if core.sex == Sex::Male { "1" } else { "2" },
            "DanToc": pick(names::ETHNICITIES, self.hash(17, u64::from(hh.head))),
            "TonGiao": pick(names::RELIGIONS, self.hash(18, u64::from(hh.head))),
            "QuocTich": "Việt Nam",
            "TinhTrangHonNhan": marital,
            "NhomMau": pick(names::BLOOD_TYPES, self.hash(19, u64::from(core.index))),
            "NoiDangKyKhaiSinh": self.address(birth_place, r >> 36),
            "QueQuan": hometown,
            "ThuongTru": permanent,
            "NoiOHienTai": current,
            "Cha": father,
            "Me": mother,
            "VoChong": partner,
            "ChuHo": {
                "HoVaTen": head.name.join(" "),
                "SoDinhDanh": head.id.as_str(),
                "QuanHe": core.role.label(core.sex),
            },
            "SoSoHoKhau": format!("{:09}", self.hash(20, u64::from(hh.head)) % 1_000_000_000),
        })
    }

    /// Keyed permutation of [0, 10⁶): a four-round Feistel network on the
    /// two base-1000 halves, so serials look random yet decode to an index.
    fn permute(&self, index: u32) -> u32 {
        let (mut l, mut r) = (index / 1000, index % 1000);
        for round in 0..4 {
            let f = (self.hash(100 + round, u64::from(r)) % 1000) as u32;
            (l, r) = (r, (l + f) % 1000);
        }
        l * 1000 + r
    }

    fn unpermute(&self, serial: u32) -> u32 {
        let (mut l, mut r) = (serial / 1000, serial % 1000);
        for round in (0..4).rev() {
            let f = (self.hash(100 + round, u64::from(l)) % 1000) as u32;
            (l, r) = ((r + 1000 - f) % 1000, l);
        }
        l * 1000 + r
    }
}

fn opposite(sex: Sex) -> Sex {
    match sex {
        Sex::Male => Sex::Female,
        Sex::Female => Sex::Male,
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_bijection_on_a_sample() {
        let p = Population::new(42, MAX_POPULATION, 79);
        let mut seen = std::collections::HashSet::new();
        for i in (0..MAX_POPULATION).step_by(97) {
            let s = p.permute(i);
            assert!(s < MAX_POPULATION);
            assert_eq!(p.unpermute(s), i);
            assert!(seen.insert(s));
        }
    }

    #[test]
    fn every_generated_id_is_valid_and_found_again() {
        let p = Population::new(7, 50_000, 79);
        for i in (0..50_000).step_by(13) {
            let c = p.citizen(i);
            let id = PersonalId::parse(c.personal_id().as_str(), 2026).expect("valid id");
            let found = p.find(&id).expect("found");
            assert_eq!(found.index(), i);
            assert_eq!(found.to_c06(), c.to_c06());
        }
    }

    #[test]
    fn deterministic_for_a_seed_and_different_across_seeds() {
        let a = Population::new(1, 1000, 79).citizen(500);
        let b = Population::new(1, 1000, 79).citizen(500);
        let c = Population::new(2, 1000, 79).citizen(500);
        assert_eq!(a.to_c06(), b.to_c06());
        assert_ne!(a.to_c06(), c.to_c06());
    }

    #[test]
    fn households_are_consistent() {
        let p = Population::new(3, 10_000, 79);
        for i in (0..10_000).step_by(37) {
            let c = p.citizen(i);
            let members = p.household(&c);
            assert!(members.iter().any(|m| m.index() == i));
            let head = &members[0];
            assert_eq!(head.to_c06()["ChuHo"]["QuanHe"], "Chủ hộ");
            for m in &members {
                assert_eq!(m.to_c06()["ChuHo"]["SoDinhDanh"], head.to_c06()["SoDinhDanh"]);
                assert_eq!(m.to_c06()["SoSoHoKhau"], head.to_c06()["SoSoHoKhau"]);
                assert_eq!(m.to_c06()["ThuongTru"], head.to_c06()["ThuongTru"]);
            }
        }
    }

    #[test]
    fn most_live_in_the_province_and_some_elsewhere() {
        let p = Population::new(9, 20_000, 79);
        let inside = (0..20_000)
            .step_by(7)
            .filter(|&i| p.citizen(i).residence_province() == 79)
            .count();
        let total = (0..20_000).step_by(7).count();
        assert!(inside * 100 > total * 80, "{inside}/{total}");
        assert!(inside < total);
        let sample = p.sample_ids(24);
        assert_eq!(sample.len(), 24);
        let outside = sample
            .iter()
            .filter_map(|id| p.find(&PersonalId::parse(id, 2026).expect("valid")))
            .filter(|c| c.residence_province() != 79)
            .count();
        assert!(outside >= 6, "{outside}");
    }

    #[test]
    fn unknown_ids_are_not_found() {
        let p = Population::new(1, 1000, 79);
        let c = p.citizen(10);
        let mut digits = c.personal_id().as_str().to_owned();
        // Same serial with another birth year is somebody who does not exist.
        let year = (digits[4..6].parse::<u32>().expect("digits") + 1) % 100;
        digits.replace_range(4..6, &format!("{year:02}"));
        if let Ok(other) = PersonalId::parse(&digits, 2026) {
            assert!(p.find(&other).is_none());
        }
    }
}
