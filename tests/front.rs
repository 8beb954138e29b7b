//! `graft-front` (issue 10, a rerun that costs nothing): through it, a rerun with every
//! stage fresh starts none of the stage binaries with tensors, and a stage with work to do
//! is handed to its own binary.

use std::path::Path;

use crate::common::*;

/// A bin directory with the real runner, front and prep, and in place of the pretrain and
/// fine-tune binaries scripts that record that they were started and fail.
fn bin_dir_with_recorders(dir: &Path) -> std::path::PathBuf {
    let real = bin_dir();
    let bins = dir.join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    for kind in ["pretrain", "finetune"] {
        let script = bins.join(format!("graft-{kind}"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho {kind} >> \"{}\"\nexit 3\n",
                dir.join("started").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // The front is copied last: newer than the scripts, so it answers for them.
    std::thread::sleep(std::time::Duration::from_millis(20));
    for b in ["graft", "graft-prep", "graft-front"] {
        std::fs::copy(real.join(b), bins.join(b)).unwrap();
    }
    bins
}

fn started(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("started")).unwrap_or_default()
}

#[test]
fn a_fresh_rerun_starts_no_tensor_binary_and_work_goes_to_the_stage_binary() {
    assert!(
        bin_dir().join("graft-front").exists(),
        "graft-front is not built: run `cargo build --workspace --bins` first"
    );
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let file = small_finetune_pipeline(dir.path(), "front", "[]");
    // First run with the real binaries (through the real front).
    let first = ok(graft(&store).arg("run").arg(&file));
    assert_eq!(status_of(&first, "finetune"), "ran", "{first}");

    let bins = bin_dir_with_recorders(dir.path());
    let runner = || {
        let mut c = std::process::Command::new(bins.join("graft"));
        c.arg("--store").arg(&store).env("GRAFT_BIN_DIR", &bins);
        c
    };
    // Every stage fresh: answered by the front, the recorders never start.
    let again = ok(runner().arg("run").arg(&file));
    for stage in ["src", "tgt", "pretrain", "finetune"] {
        assert_eq!(status_of(&again, stage), "fresh", "{again}");
    }
    let status = ok(runner().arg("status").arg(&file));
    assert_eq!(status_of(&status, "finetune"), "fresh", "{status}");
    assert_eq!(started(dir.path()), "", "a tensor binary was started");

    // Work to do (a new seed): the front hands the fine-tune stage to its binary.
    let out = run(runner()
        .arg("run")
        .arg(&file)
        .args(["-S", "finetune.seeds=[1]"]));
    assert!(!out.status.success(), "{}", stdout(&out));
    assert_eq!(started(dir.path()), "finetune\n");

    // A stage binary newer than the front decides for itself, even when fresh.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let script = bins.join("graft-pretrain");
    let text = std::fs::read(&script).unwrap();
    std::fs::write(&script, text).unwrap();
    let out = run(runner().arg("run").arg(&file));
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        started(dir.path()).contains("pretrain"),
        "{}",
        started(dir.path())
    );
}
