//! The `source` fingerprint of data read from disk is in every prep key: these pin its
//! bytes, so a change to its encoding must come with a stage version bump.

use super::*;
use sources::{Pixels, Plan, Sample, SplitPlan};

fn plan_in(dir: &Path) -> Plan {
    std::fs::create_dir_all(dir.join("images/banded")).unwrap();
    std::fs::write(dir.join("labels.txt"), "banded/a.jpg 0\ndotted/b.jpg 1\n").unwrap();
    std::fs::write(dir.join("images/banded/a.jpg"), [1u8, 2, 3]).unwrap();
    std::fs::write(dir.join("images/b.jpg"), [4u8, 5]).unwrap();
    let file = |id: &str, label: i32, path: &str| Sample {
        id: id.to_owned(),
        label,
        pixels: Pixels::File(dir.join(path)),
        origin: None,
    };
    Plan {
        classes: vec!["banded".into(), "dotted".into()],
        splits: vec![
            SplitPlan {
                name: "train",
                samples: vec![file("banded/a.jpg", 0, "images/banded/a.jpg")],
            },
            SplitPlan {
                name: "test",
                samples: vec![
                    file("dotted/b.jpg", 1, "images/b.jpg"),
                    Sample {
                        id: "test/0".into(),
                        label: 1,
                        pixels: Pixels::Procedural {
                            task: "source/test".into(),
                            seed: 0,
                            index: 0,
                            look: procedural::Look::Texture(procedural::Pattern::Stripes {
                                angle: 0.0,
                                freq: 1.0,
                            }),
                            render_size: 8,
                        },
                        origin: None,
                    },
                ],
            },
        ],
        index_files: vec![dir.join("labels.txt")],
        draws: Vec::new(),
    }
}

#[test]
fn the_source_fingerprint_is_pinned_and_follows_content_not_place() {
    let dir = tempfile::tempdir().unwrap();
    let fp = fingerprint(&plan_in(&dir.path().join("one"))).unwrap();
    assert_eq!(
        fp.as_str(),
        "253e5b160581e2019df2b603add2c504e94c9f1d598edc02b8a9b517497e27cf"
    );
    let two = plan_in(&dir.path().join("two"));
    assert_eq!(fingerprint(&two).unwrap(), fp, "the same files elsewhere");
    std::fs::write(dir.path().join("two/images/b.jpg"), [4u8, 6]).unwrap();
    assert_ne!(fingerprint(&two).unwrap(), fp, "an image's content");
    std::fs::write(dir.path().join("two/images/b.jpg"), [4u8, 5]).unwrap();
    std::fs::write(dir.path().join("two/labels.txt"), "changed\n").unwrap();
    assert_ne!(fingerprint(&two).unwrap(), fp, "a list file's content");
    std::fs::remove_file(dir.path().join("two/images/b.jpg")).unwrap();
    let e = fingerprint(&two).unwrap_err().to_string();
    assert!(e.contains("b.jpg"), "{e}");
}
