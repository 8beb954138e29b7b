//! Golden tests of the encodings behind keys and ids: a fixed [`KeyInput`], a fixed file
//! list's artifact id and a fixed [`Fingerprint`] are pinned byte for byte in `golden/`. An
//! encoding change fails here unless its format version changed with it; only then does
//! `GRAFT_BLESS=1` rewrite the file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use crate::manifest::{ARTIFACT_ID_TAG, artifact_id};
use crate::{ArtifactId, FileEntry, Fingerprint, KEY_FORMAT_VERSION, KeyInput};

/// The first line of a golden file: the format version the pinned text belongs to.
fn header(format: &str) -> String {
    format!("format {format}\n")
}

/// Compares `text` with `golden/<name>`, which starts with the format line. Failing cases,
/// each a message saying what to do:
/// - same format, different text: the encoding changed without a version bump (blessing
///   refused);
/// - another format: a bumped version whose new encoding is not recorded yet (bless it).
fn check(name: &str, format: &str, text: &str) -> Result<(), String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name);
    let bless = std::env::var_os("GRAFT_BLESS").is_some();
    let want = header(format) + text;
    let have = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(_) if bless => String::new(),
        Err(e) => {
            return Err(format!(
                "{}: {e} (GRAFT_BLESS=1 creates it)",
                path.display()
            ));
        }
    };
    verdict(&have, &want, format, bless).inspect(|write| {
        if *write {
            std::fs::write(&path, &want).unwrap();
        }
    })?;
    Ok(())
}

/// Whether the golden text `have` accepts `want` (format line first): `Ok(true)` means bless
/// it (write `want`), `Ok(false)` equal, `Err` a message naming the fix.
fn verdict(have: &str, want: &str, format: &str, bless: bool) -> Result<bool, String> {
    if have == want {
        return Ok(false);
    }
    let same_format = have.lines().next() == want.lines().next();
    if same_format {
        return Err(format!(
            "the encoding changed but its format is still {format:?}: every existing key or id \
             would silently change meaning; bump the format version (KEY_FORMAT_VERSION, or the \
             tag), then GRAFT_BLESS=1 records the new encoding\n--- golden\n{have}\n--- now\n{want}"
        ));
    }
    if bless {
        return Ok(true);
    }
    Err(format!(
        "format is now {format:?}, the golden file has {:?}: run with GRAFT_BLESS=1 to record the \
         new encoding",
        have.lines().next().unwrap_or("")
    ))
}

fn hex_lines(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(32) {
        for b in chunk {
            write!(out, "{b:02x}").unwrap();
        }
        out.push('\n');
    }
    out
}

fn id(s: &str) -> ArtifactId {
    ArtifactId::parse(s).unwrap()
}

/// A key input with every kind of canonical value: nested arrays and objects, integers
/// (negative, beyond i64), floats, strings with non-ASCII, booleans, null.
fn fixed_key_input() -> (BTreeMap<String, Value>, BTreeMap<String, ArtifactId>) {
    let params = json!({
        "budgets": [1, 2, 4],
        "heuristics": [
            { "name": "gga", "gamma": 0.6, "score": "rank" },
            { "name": "manual", "edges": [[0, 1], [3, 2]] },
        ],
        "image_size": 32,
        "lr": 1e-7,
        "offset": -3,
        "big": 18_446_744_073_709_551_615u64,
        "label": "textures é",
        "proposals": true,
        "checkpoint": null,
        "empty": {},
    });
    let params = params
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let inputs = [
        ("dataset".to_owned(), id(&"a".repeat(64))),
        (
            "base".to_owned(),
            id("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
        ),
    ]
    .into();
    (params, inputs)
}

fn stage_key_text() -> String {
    let (params, inputs) = fixed_key_input();
    let input = KeyInput {
        stage: "finetune",
        stage_version: 7,
        params: &params,
        inputs: &inputs,
    };
    format!(
        "encoding\n{}key {}\n",
        hex_lines(&input.encode()),
        input.key()
    )
}

#[test]
fn stage_key_matches_golden() {
    check(
        "stage_key.txt",
        &format!("KEY_FORMAT_VERSION {KEY_FORMAT_VERSION}"),
        &stage_key_text(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn artifact_id_matches_golden() {
    let file = |name: &str, size: u64, c: char| FileEntry {
        name: name.to_owned(),
        size,
        blake3: c.to_string().repeat(64),
    };
    // Out of order on purpose: the id sorts by name.
    let files = [
        file("runs.parquet", 1234, 'b'),
        file("adapters-é.safetensors", 0, 'c'),
        file("epochs.parquet", u64::MAX, 'a'),
    ];
    let text = format!("artifact {}\n", artifact_id(&files));
    check(
        "artifact_id.txt",
        std::str::from_utf8(ARTIFACT_ID_TAG).unwrap(),
        &text,
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn fingerprint_matches_golden() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("tree/lib/__pycache__")).unwrap();
    std::fs::write(d.join("tree/main.py"), "import lib\n").unwrap();
    std::fs::write(d.join("tree/lib/x.py"), "K = 1\n").unwrap();
    std::fs::write(d.join("tree/lib.py"), "").unwrap();
    std::fs::write(d.join("tree/lib/__pycache__/x.pyc"), "junk").unwrap();
    std::fs::write(d.join("file"), [0u8, 1, 2, 255]).unwrap();
    let mut fp = Fingerprint::new(b"graft golden fingerprint\0");
    fp.part("name").raw(7i32.to_le_bytes()).u64(u64::MAX);
    fp.file(&d.join("file")).unwrap();
    let n = fp.dir(&d.join("tree"), |n| n == "__pycache__").unwrap();
    assert_eq!(n, 3);
    let text = format!(
        "fingerprint {}\nfile {}\n",
        fp.finish(),
        crate::hash_file(&d.join("file")).unwrap().hex()
    );
    check("fingerprint.txt", "fingerprint v1", &text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn an_encoding_change_without_a_version_bump_fails() {
    let golden = header("KEY_FORMAT_VERSION 1") + "key aa\n";
    let same = golden.clone();
    assert_eq!(verdict(&golden, &same, "v1", false), Ok(false));
    // Changed encoding, same version: refused, even when blessing.
    let changed = header("KEY_FORMAT_VERSION 1") + "key bb\n";
    for bless in [false, true] {
        let e = verdict(&golden, &changed, "KEY_FORMAT_VERSION 1", bless).unwrap_err();
        assert!(e.contains("bump the format version"), "{e}");
    }
    // Bumped version: fails until blessed.
    let bumped = header("KEY_FORMAT_VERSION 2") + "key bb\n";
    let e = verdict(&golden, &bumped, "KEY_FORMAT_VERSION 2", false).unwrap_err();
    assert!(e.contains("GRAFT_BLESS=1"), "{e}");
    assert_eq!(
        verdict(&golden, &bumped, "KEY_FORMAT_VERSION 2", true),
        Ok(true)
    );
}

#[test]
fn the_stage_key_text_follows_every_field() {
    // The golden text is not blind to a field: changing one changes it.
    let (mut params, inputs) = fixed_key_input();
    let base = stage_key_text();
    params.insert("lr".into(), json!(1e-6));
    let input = KeyInput {
        stage: "finetune",
        stage_version: 7,
        params: &params,
        inputs: &inputs,
    };
    assert!(!base.contains(input.key().as_str()));
    assert!(!base.contains(&hex_lines(&input.encode())));
}
