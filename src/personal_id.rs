//! The 12-digit personal identification number (số định danh cá nhân).
//!
//! Layout: three digits of the province where the birth was registered (the
//! pre-2025 code), one digit for century and sex, two digits of the birth
//! year, six serial digits. A `PersonalId` can only be built from a string
//! with that structure. Error messages never repeat the number itself.

use std::fmt;

use crate::units::current_province_of_birth_code;

/// A structurally valid personal ID. Its `Debug` form hides the digits so
/// that it can never leak into a log line by accident.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PersonalId(String);

/// Why a string is not a personal ID; the messages say what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PersonalIdError {
    #[error("personal_id must be exactly 12 digits")]
    Shape,
    #[error("personal_id does not start with a valid birth-registration province code")]
    Province,
    #[error("personal_id has a birth year in the future or more than 130 years ago")]
    BirthYear,
}

/// The earliest and latest plausible birth years are relative to this year.
const MAX_AGE_YEARS: i32 = 130;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sex {
    Male,
    Female,
}

impl PersonalId {
    /// Parses and checks the structure against the current year.
    pub fn parse(s: &str, current_year: i32) -> Result<PersonalId, PersonalIdError> {
        let b = s.as_bytes();
        if b.len() != 12 || !b.iter().all(u8::is_ascii_digit) {
            return Err(PersonalIdError::Shape);
        }
        let digit = |i: usize| i32::from(b[i] - b'0');
        let province = (digit(0) * 100 + digit(1) * 10 + digit(2)) as u16;
        if current_province_of_birth_code(province).is_none() {
            return Err(PersonalIdError::Province);
        }
        let year = century_base(digit(3)) + digit(4) * 10 + digit(5);
        if year > current_year || year < current_year - MAX_AGE_YEARS {
            return Err(PersonalIdError::BirthYear);
        }
        Ok(PersonalId(s.to_owned()))
    }

    /// Builds the ID of a simulated citizen; the parts must be in range.
    pub fn compose(birth_province: u16, sex: Sex, birth_year: i32, serial: u32) -> PersonalId {
        let century = (birth_year.div_euclid(100) - 19).rem_euclid(5) * 2;
        let sex_digit = century + i32::from(sex == Sex::Female);
        PersonalId(format!(
            "{:03}{}{:02}{:06}",
            birth_province,
            sex_digit,
            birth_year.rem_euclid(100),
            serial % 1_000_000
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn birth_province_code(&self) -> u16 {
        self.0[0..3].parse().unwrap_or_default()
    }

    pub fn sex(&self) -> Sex {
        if (self.0.as_bytes()[3] - b'0').is_multiple_of(2) {
            Sex::Male
        } else {
            Sex::Female
        }
    }

    pub fn birth_year(&self) -> i32 {
        let b = self.0.as_bytes();
        century_base(i32::from(b[3] - b'0')) + i32::from(b[4] - b'0') * 10 + i32::from(b[5] - b'0')
    }

    /// The six serial digits.
    pub fn serial(&self) -> u32 {
        self.0[6..12].parse().unwrap_or_default()
    }
}

/// Digits 0/1: 1900s, 2/3: 2000s, 4/5: 2100s, 6/7: 2200s, 8/9: 2300s.
fn century_base(d: i32) -> i32 {
    1900 + (d / 2) * 100
}

impl fmt::Debug for PersonalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PersonalId(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_well_formed_ids() {
        let id = PersonalId::parse("079303001234", 2026).expect("valid");
        assert_eq!(id.birth_province_code(), 79);
        assert_eq!(id.sex(), Sex::Female);
        assert_eq!(id.birth_year(), 2003);
        assert_eq!(id.serial(), 1234);
        let id = PersonalId::parse("001085123456", 2026).expect("valid");
        assert_eq!((id.sex(), id.birth_year()), (Sex::Male, 1985));
    }

    #[test]
    fn rejects_each_structural_error() {
        assert_eq!(
            PersonalId::parse("07920300123", 2026),
            Err(PersonalIdError::Shape)
        );
        assert_eq!(
            PersonalId::parse("07920300123x", 2026),
            Err(PersonalIdError::Shape)
        );
        assert_eq!(
            PersonalId::parse("０７９203001234", 2026),
            Err(PersonalIdError::Shape)
        );
        assert_eq!(
            PersonalId::parse("003203001234", 2026),
            Err(PersonalIdError::Province)
        );
        assert_eq!(
            PersonalId::parse("079227001234", 2026),
            Err(PersonalIdError::BirthYear)
        );
        assert_eq!(
            PersonalId::parse("079490001234", 2026),
            Err(PersonalIdError::BirthYear)
        );
    }

    #[test]
    fn compose_round_trips_and_debug_hides_digits() {
        let id = PersonalId::compose(74, Sex::Female, 1999, 42);
        assert_eq!(id.as_str(), "074199000042");
        let again = PersonalId::parse(id.as_str(), 2026).expect("valid");
        assert_eq!((again.sex(), again.birth_year()), (Sex::Female, 1999));
        assert_eq!(
            PersonalId::compose(79, Sex::Male, 2010, 7).as_str(),
            "079210000007"
        );
        assert!(!format!("{id:?}").contains("074"));
    }
}
