//! Every disclosure accounted for: the journal's files are its owner's
//! only, and one process owns a journal.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::TestEnv;
use serde_json::json;

const LOOKUP: &str = "/v1/citizens/lookup";

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_is_readable_by_its_owner_only_and_has_one_process() {
    let env = TestEnv::start().await;
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let body = json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-1"}).to_string();
    let r = env.call("mot-cua", LOOKUP, &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    env.settle().await;

    // Released names, dates of birth and addresses live in these files.
    let journal = env.dir.path().join("data/journal");
    assert_eq!(mode(&journal), 0o700, "journal directory");
    let mut files = 0;
    for entry in std::fs::read_dir(&journal).expect("journal") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        files += 1;
    }
    assert!(files >= 2, "a segment and the checkpoint log at least");

    // A second gateway on the same journal refuses to start ...
    let second = popgate::gateway::Gateway::start(&env.config).await;
    let error = format!("{:#}", second.err().expect("a second gateway on one journal started"));
    assert!(error.contains("in use by another popgate process"), "{error}");
    // ... and the first one serves on, its warehouse untouched.
    let r = env.call("mot-cua", LOOKUP, &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    env.settle().await;
    env.stop().await;
}

/// The byte offsets of the frames of a segment, in order.
fn frame_offsets(segment: &std::path::Path) -> Vec<u64> {
    let mut reader = popgate::audit::journal::FrameReader::open(segment).expect("segment");
    let mut out = Vec::new();
    while let Some((_, at)) = reader.next_frame().expect("read") {
        out.push(at);
    }
    out
}

fn popgate(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_popgate"))
        .args(args)
        .output()
        .expect("popgate");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_inside_the_journal_stops_the_start_until_it_is_salvaged() {
    let mut env = TestEnv::start().await;
    let id = env.citizen(true).personal_id().as_str().to_owned();
    let body = json!({"personal_id": id, "purpose": "administrative-procedure", "case_ref": "HS-1"}).to_string();
    for _ in 0..10 {
        assert_eq!(env.call("mot-cua", LOOKUP, &body).await.status, 200);
    }
    env.settle().await;
    env.gateway.take().expect("running").stop().await;
    let journal = env.dir.path().join("data/journal");
    let (_, segment) = popgate::audit::journal::list_segments(&journal)
        .expect("segments")
        .pop()
        .expect("a segment");

    // An interrupted write at the very end is cut, and the gateway starts.
    let whole = std::fs::read(&segment).expect("segment");
    let mut torn = whole.clone();
    torn.extend_from_slice(&whole[..40]);
    std::fs::write(&segment, &torn).expect("write");
    let gateway = popgate::gateway::Gateway::start(&env.config).await.expect("starts past a torn tail");
    gateway.stop().await;
    assert_eq!(std::fs::read(&segment).expect("segment"), whole, "only the torn tail was cut");

    // One flipped bit in a frame in the middle: the gateway refuses to start
    // and says where, and what to do.
    let offsets = frame_offsets(&segment);
    assert!(offsets.len() > 10, "{offsets:?}");
    let at = offsets[5];
    let mut flipped = whole.clone();
    flipped[at as usize + 40] ^= 0x04;
    std::fs::write(&segment, &flipped).expect("write");
    let refused = popgate::gateway::Gateway::start(&env.config).await;
    let error = format!("{:#}", refused.err().expect("started on a damaged journal"));
    let name = segment.file_name().expect("name").to_string_lossy().into_owned();
    assert!(error.contains(&name), "{error}");
    assert!(error.contains(&format!("at byte {at}")), "{error}");
    assert!(error.contains("popgate audit journal salvage --dir"), "{error}");
    assert_eq!(std::fs::read(&segment).expect("segment"), flipped, "nothing was cut");

    let dir = journal.to_str().expect("path");
    let (ok, said) = popgate(&["audit", "journal", "inspect", "--dir", dir]);
    assert!(!ok && said.contains("DAMAGED") && said.contains(&format!("at byte {at}")), "{said}");
    let (ok, said) = popgate(&["audit", "journal", "salvage", "--dir", dir]);
    assert!(ok && said.contains("moved"), "{said}");
    let quarantined: Vec<_> = std::fs::read_dir(&journal)
        .expect("journal")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("quarantine-"))
        .collect();
    assert_eq!(quarantined.len(), 1, "the damaged tail is kept aside");
    let kept = std::fs::read_dir(quarantined[0].path()).expect("quarantine").count();
    assert_eq!(kept, 1, "the damaged segment's tail");
    let (ok, said) = popgate(&["audit", "journal", "inspect", "--dir", dir]);
    assert!(ok && said.contains("the journal opens"), "{said}");
    env.gateway = Some(
        popgate::gateway::Gateway::start(&env.config)
            .await
            .expect("starts once salvaged"),
    );
    env.stop().await;
}
