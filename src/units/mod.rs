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
pub use legacy::{LegacyWard, Resolved};

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
