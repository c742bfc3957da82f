//! The wards before the reform of 1 July 2025 (63 provinces, with their
//! districts) and the 2025 ward or wards each one became, and the one
//! function that turns an address as the national database codes it —
//! either way — into a 2025 unit: [`Units::resolve`].
//!
//! The table (`vn-wards-legacy.tsv`) is built from
//! `shared/data/vn-wards-legacy-to-2025.tsv` (from the data of
//! `vietnamadminunits`, MIT License, Copyright (c) 2025 Tran Ngoc Minh Hieu):
//! old province code and name, old district code and name, old ward code
//! and name, the 2025 ward code, whether that target is the default one,
//! and whether the old ward went whole into it or was divided.

use std::collections::HashMap;

use super::{Units, Ward};

pub(super) const LEGACY_TSV: &str = include_str!("vn-wards-legacy.tsv");

/// A ward as it was coded before the reform.
#[derive(Debug, Clone)]
pub struct LegacyWard {
    pub province_code: u16,
    pub province_name: &'static str,
    pub district_code: u16,
    pub district_name: &'static str,
    pub code: u32,
    pub name: &'static str,
    /// The 2025 wards it became, the default one first.
    pub targets: Vec<u32>,
    /// Divided between several 2025 wards.
    pub divided: bool,
}

/// The legacy table, parsed once.
#[derive(Debug, Default)]
pub(super) struct Legacy {
    pub wards: Vec<LegacyWard>,
    pub index: HashMap<u32, usize>,
    /// 2025 ward → the legacy wards that went (wholly or partly) into it.
    pub into: HashMap<u32, Vec<usize>>,
}

impl Legacy {
    pub fn parse(tsv: &'static str) -> Legacy {
        let mut t = Legacy::default();
        for line in tsv.lines().filter(|l| !l.is_empty()) {
            let c: Vec<&'static str> = line.split('\t').collect();
            let [pc, pn, dc, dn, wc, wn, target, default, split] = c[..] else {
                continue;
            };
            let (Ok(pc), Ok(dc), Ok(wc), Ok(target)) = (
                pc.parse::<u16>(),
                dc.parse::<u16>(),
                wc.parse::<u32>(),
                target.parse::<u32>(),
            ) else {
                continue;
            };
            let i = *t.index.entry(wc).or_insert_with(|| {
                t.wards.push(LegacyWard {
                    province_code: pc,
                    province_name: pn,
                    district_code: dc,
                    district_name: dn,
                    code: wc,
                    name: wn,
                    targets: Vec::new(),
                    divided: false,
                });
                t.wards.len() - 1
            });
            let w = &mut t.wards[i];
            w.divided |= split == "divided";
            if default == "1" {
                w.targets.insert(0, target);
            } else {
                w.targets.push(target);
            }
            t.into.entry(target).or_default().push(i);
        }
        t
    }
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
mod tests {
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
                super::super::BIRTH_PROVINCE_CODES
                    .iter()
                    .any(|(c, _)| *c == old.province_code),
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
