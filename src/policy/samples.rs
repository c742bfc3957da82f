//! The sample policy set of `policies/`, built into the binary so that
//! `popgate demo` runs from any directory: the field catalog, the purposes
//! and one file per sample app.

use std::path::Path;

use super::PolicyFiles;

/// Each sample file: its path in a policy directory and its text.
const FILES: &[(&str, &str)] = &[
    ("fields.toml", include_str!("../../policies/fields.toml")),
    ("purposes.toml", include_str!("../../policies/purposes.toml")),
    (
        "apps/admin-cli.toml",
        include_str!("../../policies/apps/admin-cli.toml"),
    ),
    (
        "apps/audit-cli.toml",
        include_str!("../../policies/apps/audit-cli.toml"),
    ),
    (
        "apps/dia-chi-so.toml",
        include_str!("../../policies/apps/dia-chi-so.toml"),
    ),
    ("apps/ioc.toml", include_str!("../../policies/apps/ioc.toml")),
    (
        "apps/mot-cua.toml",
        include_str!("../../policies/apps/mot-cua.toml"),
    ),
    ("apps/y-te.toml", include_str!("../../policies/apps/y-te.toml")),
];

/// The sample set as policy files.
pub fn files() -> PolicyFiles {
    FILES
        .iter()
        .map(|(path, text)| ((*path).to_owned(), (*text).to_owned()))
        .collect()
}

/// Writes the sample set into `dir` (a policy directory), leaving any file
/// already there as it is.
pub fn write_to(dir: &Path) -> std::io::Result<()> {
    for (path, text) in FILES {
        let file = dir.join(path);
        if file.exists() {
            continue;
        }
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_set_is_the_policies_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let on_disk = crate::policy::read_dir(&dir).expect("policies/ reads");
        assert_eq!(
            files(),
            on_disk,
            "a file of policies/ is missing from samples.rs or differs"
        );
        assert!(crate::policy::parse(&files(), crate::config::DEFAULT_PROVINCE).is_ok());
    }
}
