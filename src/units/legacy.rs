//! The wards before the reform of 1 July 2025 (63 provinces, with their
//! districts) and the 2025 ward or wards each one became; the unit table's `resolve`
//! turns an address as the national database codes it — either way — into
//! a 2025 unit.
//!
//! The table (`vn-wards-legacy.tsv`) is built from
//! `shared/data/vn-wards-legacy-to-2025.tsv` (from the data of
//! `vietnamadminunits`, MIT License, Copyright (c) 2025 Tran Ngoc Minh Hieu):
//! old province code and name, old district code and name, old ward code
//! and name, the 2025 ward code, whether that target is the default one,
//! and whether the old ward went whole into it or was divided.

use std::collections::HashMap;

pub(crate) const LEGACY_TSV: &str = include_str!("vn-wards-legacy.tsv");

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
pub(crate) struct Legacy {
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
