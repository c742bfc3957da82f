//! The deployment files: the systemd unit verifies and is hardened; the
//! migration command brings a warehouse to this build's schema.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/popgate.service"))
        .expect("deploy/popgate.service");
    for directive in [
        "User=popgate",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=popgate",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "UMask=0077",
        "CapabilityBoundingSet=",
    ] {
        assert!(unit.lines().any(|l| l.trim() == directive), "{directive}");
    }
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("systemd-analyze is not on this machine: the unit's syntax is not verified here");
        return;
    }
    // The unit as installed, pointing at this build's binary.
    let dir = tempfile::tempdir().expect("dir");
    let copy = dir.path().join("popgate.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/popgate", env!("CARGO_BIN_EXE_popgate")),
    )
    .expect("unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warehouse_migrate_reports_the_schema_version() {
    let env = common::TestEnv::start().await;
    let out = Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args([
            "warehouse",
            "migrate",
            "--admin-url",
            &env.gateway().warehouse_admin_url,
        ])
        .output()
        .expect("migrate");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let latest = popgate::warehouse::MIGRATIONS.last().map_or(0, |m| m.0);
    assert!(said.contains(&format!("schema version {latest}")), "{said}");
    assert!(!said.contains("password"), "{said}");
    env.stop().await;
}
