//! Without a terminal (CI, a log file, a Slurm job) progress bars are invisible, so the long
//! stages print one line per finished unit with its figures and the time left.

use crate::common::*;

#[test]
fn without_a_terminal_pretrain_and_finetune_print_a_line_per_epoch_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pipe = dir.path().join("lines.toml");
    std::fs::write(
        &pipe,
        r#"
[stages.src]
kind = "prep"
params = { source = "procedural", task = "source", image_size = 16, train = 64, val = 16, test = 16 }
[stages.tgt]
kind = "prep"
params = { source = "procedural", task = "textures", image_size = 16, seed = 1, train = 32, val = 16, test = 16 }
[stages.pretrain]
kind = "pretrain"
inputs = { dataset = "src" }
params = { preset = "vit-cpu-tiny", epochs = 2, batch = 32 }
[stages.finetune]
kind = "finetune"
inputs = { dataset = "tgt", base = "pretrain" }
params = { baselines = ["linear-probe", "full"], seeds = [0], epochs = 2, batch = 32, jobs = 1 }
"#,
    )
    .unwrap();
    // `run` pipes stderr: not a terminal.
    let o = run(graft(&store).args(["run", pipe.to_str().unwrap()]));
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let lines =
        |prefix: &str| -> Vec<&str> { err.lines().filter(|l| l.starts_with(prefix)).collect() };

    let pretrain = lines("pretrain: epoch ");
    assert_eq!(pretrain.len(), 2, "{err}");
    for (k, line) in pretrain.iter().enumerate() {
        assert!(
            line.starts_with(&format!("pretrain: epoch {}/2: loss ", k + 1))
                && line.contains(" %, ")
                && line.ends_with(" left"),
            "{line}"
        );
    }
    for label in ["linear-probe seed 0", "full seed 0"] {
        let epochs = lines(&format!("finetune: {label}: epoch "));
        assert_eq!(epochs.len(), 2, "{label}\n{err}");
        assert!(epochs[1].contains("epoch 2/2: loss ") && epochs[1].ends_with("about 0 s left"));
    }
    let runs = lines("finetune: run ");
    assert_eq!(runs.len(), 2, "{err}");
    for (k, line) in runs.iter().enumerate() {
        assert!(
            line.starts_with(&format!("finetune: run {}/2 done: ", k + 1))
                && line.contains(": ok, val ")
                && line.contains(" %, test ")
                && line.ends_with(" left"),
            "{line}"
        );
    }
    assert!(runs[1].ends_with("about 0 s left"), "{}", runs[1]);
}
