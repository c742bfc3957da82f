//! Vietnam's administrative units after the reorganisation of 1 July 2025:
//! 34 provinces and 3,321 wards/communes, with the national statistics
//! office's codes, plus the pre-2025 province codes that personal ID numbers
//! still start with.
//!
//! The table is compiled into the binary (`vn-wards-2025.tsv`, flattened from
//! the `vietnam-provinces` data set, version 2025.10.1) so that the simulator
//! and the warehouse enrichment never depend on a file at run time; so is
//! the table of the wards before the reform ([`legacy`]).

use std::collections::HashMap;
use std::sync::OnceLock;

pub mod legacy;
pub use legacy::LegacyWard;

/// Addresses from upstream that resolved to no unit, since start.
static UNRESOLVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts an address that resolved to no unit (`/metrics`).
pub fn count_unresolved() {
    UNRESOLVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Addresses that resolved to no unit since start.
pub fn unresolved_addresses() -> u64 {
    UNRESOLVED.load(std::sync::atomic::Ordering::Relaxed)
}

const WARDS_TSV: &str = include_str!("vn-wards-2025.tsv");

/// A province or centrally-run city after 1 July 2025.
#[derive(Debug)]
pub struct Province {
    pub code: u16,
    pub name: &'static str,
    /// Wards and communes, in the order of the source table.
    pub wards: Vec<Ward>,
}

/// A ward (phường), commune (xã) or special zone (đặc khu).
#[derive(Debug, Clone, Copy)]
pub struct Ward {
    pub code: u32,
    pub name: &'static str,
    pub province_code: u16,
}

/// The whole table, parsed once.
#[derive(Debug)]
pub struct Units {
    provinces: Vec<Province>,
    province_index: HashMap<u16, usize>,
    ward_index: HashMap<u32, (usize, usize)>,
    legacy: legacy::Legacy,
}

impl Units {
    /// The compiled-in table.
    pub fn get() -> &'static Units {
        static UNITS: OnceLock<Units> = OnceLock::new();
        UNITS.get_or_init(|| Units::parse(WARDS_TSV))
    }

    fn parse(tsv: &'static str) -> Units {
        let mut provinces: Vec<Province> = Vec::new();
        let mut province_index = HashMap::new();
        let mut ward_index = HashMap::new();
        for line in tsv.lines().filter(|l| !l.is_empty()) {
            let mut cols = line.split('\t');
            let (Some(pc), Some(pn), Some(wc), Some(wn)) =
                (cols.next(), cols.next(), cols.next(), cols.next())
            else {
                continue;
            };
            let (Ok(pc), Ok(wc)) = (pc.parse::<u16>(), wc.parse::<u32>()) else {
                continue;
            };
            let pi = *province_index.entry(pc).or_insert_with(|| {
                provinces.push(Province {
                    code: pc,
                    name: pn,
                    wards: Vec::new(),
                });
                provinces.len() - 1
            });
            let wards = &mut provinces[pi].wards;
            ward_index.insert(wc, (pi, wards.len()));
            wards.push(Ward {
                code: wc,
                name: wn,
                province_code: pc,
            });
        }
        Units {
            provinces,
            province_index,
            ward_index,
            legacy: legacy::Legacy::parse(legacy::LEGACY_TSV),
        }
    }

    pub fn provinces(&self) -> &[Province] {
        &self.provinces
    }

    pub fn province(&self, code: u16) -> Option<&Province> {
        self.province_index.get(&code).map(|&i| &self.provinces[i])
    }

    pub fn ward(&self, code: u32) -> Option<&Ward> {
        self.ward_index
            .get(&code)
            .map(|&(p, w)| &self.provinces[p].wards[w])
    }
}

/// Pre-2025 province codes (63 provinces) as they appear in the first three
/// digits of a personal ID, with the post-2025 province each one now belongs
/// to. IDs are not reissued when provinces merge.
pub const BIRTH_PROVINCE_CODES: [(u16, u16); 63] = [
    (1, 1),
    (2, 8),
    (4, 4),
    (6, 19),
    (8, 8),
    (10, 15),
    (11, 11),
    (12, 12),
    (14, 14),
    (15, 15),
    (17, 25),
    (19, 19),
    (20, 20),
    (22, 22),
    (24, 24),
    (25, 25),
    (26, 25),
    (27, 24),
    (30, 31),
    (31, 31),
    (33, 33),
    (34, 33),
    (35, 37),
    (36, 37),
    (37, 37),
    (38, 38),
    (40, 40),
    (42, 42),
    (44, 44),
    (45, 44),
    (46, 46),
    (48, 48),
    (49, 48),
    (51, 51),
    (52, 52),
    (54, 66),
    (56, 56),
    (58, 56),
    (60, 68),
    (62, 51),
    (64, 52),
    (66, 66),
    (67, 68),
    (68, 68),
    (70, 75),
    (72, 80),
    (74, 79),
    (75, 75),
    (77, 79),
    (79, 79),
    (80, 80),
    (82, 82),
    (83, 86),
    (84, 86),
    (86, 86),
    (87, 82),
    (89, 91),
    (91, 91),
    (92, 92),
    (93, 92),
    (94, 92),
    (95, 96),
    (96, 96),
];

/// The six socio-economic regions, as the statistics office groups
/// provinces, for the 34 provinces of 2025 (each by where its seat lies).
pub fn region_of(province: u16) -> Option<&'static str> {
    Some(match province {
        4 | 8 | 11 | 12 | 14 | 15 | 19 | 20 | 25 => "Trung du và miền núi phía Bắc",
        1 | 22 | 24 | 31 | 33 | 37 => "Đồng bằng sông Hồng",
        38 | 40 | 42 | 44 | 46 | 48 | 51 | 56 => "Bắc Trung Bộ và duyên hải miền Trung",
        52 | 66 | 68 => "Tây Nguyên",
        75 | 79 | 80 => "Đông Nam Bộ",
        82 | 86 | 91 | 92 | 96 => "Đồng bằng sông Cửu Long",
        _ => return None,
    })
}

/// The post-2025 province that a pre-2025 birth-registration code belongs to.
pub fn current_province_of_birth_code(old_code: u16) -> Option<u16> {
    BIRTH_PROVINCE_CODES
        .iter()
        .find(|(old, _)| *old == old_code)
        .map(|&(_, new)| new)
}

/// What an address's codes resolve to.
#[derive(Debug, Clone)]
pub enum Resolved<'a> {
    /// Coded in 2025 units.
    Current(&'a Ward),
    /// Coded before the reform: the old ward, its default 2025 ward, and
    /// every 2025 ward it went into (the default first).
    Legacy {
        old: &'a LegacyWard,
        ward: &'a Ward,
        candidates: Vec<&'a Ward>,
    },
    /// Neither coding knows these codes.
    Unresolved,
}

impl Units {
    /// A pre-reform ward by its code.
    pub fn legacy_ward(&self, code: u32) -> Option<&LegacyWard> {
        self.legacy.index.get(&code).map(|&i| &self.legacy.wards[i])
    }

    /// Every pre-reform ward, in the order of the source table.
    pub fn legacy_wards(&self) -> &[LegacyWard] {
        &self.legacy.wards
    }

    /// The pre-reform wards that went into a 2025 ward.
    pub fn legacy_wards_into(&self, ward: u32) -> impl Iterator<Item = &LegacyWard> {
        self.legacy
            .into
            .get(&ward)
            .into_iter()
            .flatten()
            .map(|&i| &self.legacy.wards[i])
    }

    /// Resolves an address's codes — province (`MaTinhThanh`), district
    /// (`MaQuanHuyen`, present only in pre-reform coding) and ward
    /// (`MaPhuongXa`) — to a 2025 ward. A district, or a province code that
    /// no longer exists, marks the old coding; otherwise a ward of that
    /// 2025 province is read as 2025, and an old ward of that province as
    /// old. Codes that disagree (a ward of another province) resolve to
    /// nothing.
    pub fn resolve(&self, province: Option<u16>, district: Option<u16>, ward: u32) -> Resolved<'_> {
        if district.is_none() {
            if let Some(w) = self.ward(ward) {
                if province.is_none_or(|p| p == w.province_code) {
                    return Resolved::Current(w);
                }
            }
        }
        let Some(old) = self.legacy_ward(ward) else {
            return Resolved::Unresolved;
        };
        if province.is_some_and(|p| p != old.province_code)
            || district.is_some_and(|d| d != old.district_code)
        {
            return Resolved::Unresolved;
        }
        let candidates: Vec<&Ward> = old.targets.iter().filter_map(|&t| self.ward(t)).collect();
        match candidates.first() {
            Some(&ward) => Resolved::Legacy {
                old,
                ward,
                candidates,
            },
            None => Resolved::Unresolved,
        }
    }
}

#[cfg(test)]
mod legacy_tests {
    use super::*;

    #[test]
    fn every_legacy_ward_resolves_to_wards_of_the_2025_table() {
        let units = Units::get();
        let legacy = units.legacy_wards();
        assert_eq!(legacy.len(), 10_035);
        let mut rows = 0;
        for old in legacy {
            rows += old.targets.len();
            assert!(!old.targets.is_empty(), "{}", old.code);
            assert_eq!(old.divided, old.targets.len() > 1, "{}", old.code);
            for t in &old.targets {
                assert!(units.ward(*t).is_some(), "{} -> {t}", old.code);
            }
            match units.resolve(Some(old.province_code), Some(old.district_code), old.code) {
                Resolved::Legacy {
                    old: o,
                    ward,
                    candidates,
                } => {
                    assert_eq!(o.code, old.code);
                    assert_eq!(ward.code, old.targets[0], "the default target first");
                    assert_eq!(candidates.len(), old.targets.len());
                }
                other => panic!("{} resolved to {other:?}", old.code),
            }
        }
        assert_eq!(rows, 10_597, "one row per target");
        // Every old province code is one of the 63.
        for old in legacy {
            assert!(
                BIRTH_PROVINCE_CODES.iter().any(|(c, _)| *c == old.province_code),
                "{}",
                old.province_code
            );
        }
    }

    #[test]
    fn binh_duong_resolves_into_ho_chi_minh_city() {
        let units = Units::get();
        let Resolved::Legacy {
            old,
            ward,
            candidates,
        } = units.resolve(Some(74), Some(718), 25741)
        else {
            panic!("74/718/25741 is a pre-reform ward");
        };
        assert_eq!(old.name, "Phường Hiệp Thành");
        assert_eq!(old.province_name, "Tỉnh Bình Dương");
        assert!(old.divided);
        assert_eq!(
            (ward.code, ward.name, ward.province_code),
            (25750, "Phường Phú Lợi", 79)
        );
        assert!(candidates.len() > 1);
        assert!(candidates.iter().all(|w| w.province_code == 79));
        // Without its district too (province 74 no longer exists).
        assert!(matches!(
            units.resolve(Some(74), None, 25741),
            Resolved::Legacy { .. }
        ));
        // A 2025 code reads as 2025; disagreeing codes resolve to nothing.
        assert!(
            matches!(units.resolve(Some(79), None, 25747), Resolved::Current(w) if w.name == "Phường Thủ Dầu Một")
        );
        assert!(matches!(
            units.resolve(Some(1), None, 25747),
            Resolved::Unresolved
        ));
        assert!(matches!(
            units.resolve(Some(74), Some(999), 25741),
            Resolved::Unresolved
        ));
        assert!(matches!(
            units.resolve(Some(79), None, 99_999),
            Resolved::Unresolved
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_34_provinces_and_3321_wards() {
        let units = Units::get();
        assert_eq!(units.provinces().len(), 34);
        let wards: usize = units.provinces().iter().map(|p| p.wards.len()).sum();
        assert_eq!(wards, 3321);
        let hcm = units.province(79).expect("province 79");
        assert_eq!(hcm.name, "Thành phố Hồ Chí Minh");
        let tdm = units.ward(25747).expect("ward 25747");
        assert_eq!(tdm.name, "Phường Thủ Dầu Một");
        assert_eq!(tdm.province_code, 79);
    }

    #[test]
    fn every_province_has_a_region() {
        for p in Units::get().provinces() {
            assert!(region_of(p.code).is_some(), "{} {}", p.code, p.name);
        }
        assert_eq!(region_of(79), Some("Đông Nam Bộ"));
    }

    #[test]
    fn every_birth_code_maps_to_an_existing_province() {
        let units = Units::get();
        for (old, new) in BIRTH_PROVINCE_CODES {
            assert!(units.province(new).is_some(), "{old} -> {new}");
        }
        let mut olds: Vec<u16> = BIRTH_PROVINCE_CODES.iter().map(|p| p.0).collect();
        olds.dedup();
        assert_eq!(olds.len(), 63);
        assert_eq!(current_province_of_birth_code(74), Some(79));
        assert_eq!(current_province_of_birth_code(3), None);
    }
}
