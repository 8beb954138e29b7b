//! What the key knows of the code the command runs: the content of the declared script (a
//! file, or every file under a directory) and the interpreter's version string. Paths,
//! mtimes and the location of the checkout never enter.

use std::path::Path;
use std::time::Duration;

use graft_store::ArtifactId;
use graft_store::key::Fingerprint;

use crate::program::{self, Invocation};

/// Directories and files left out of a script directory's hash: Python's byte-code cache
/// is written by running the script and says nothing new about it.
fn skipped(name: &str) -> bool {
    name == "__pycache__" || name.ends_with(".pyc") || name.starts_with('.')
}

/// The content hash of a script file, or of every file under a script directory (by
/// relative path, sorted; `__pycache__`, `*.pyc` and hidden entries skipped).
pub fn script(path: &Path) -> Result<ArtifactId, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_file() {
        let mut fp = Fingerprint::new(b"graft script file v1\0");
        fp.file(path).map_err(|e| e.to_string())?;
        return Ok(fp.finish());
    }
    let mut fp = Fingerprint::new(b"graft script directory v1\0");
    let files = fp.dir(path, skipped).map_err(|e| e.to_string())?;
    if files == 0 {
        return Err(format!(
            "{}: the script directory has no files",
            path.display()
        ));
    }
    Ok(fp.finish())
}

/// The interpreter's identity: the output of `program version_args...` (trimmed), or, with
/// no `version_args`, the program file's own content hash. Returns the fingerprint and the
/// text recorded in the manifest.
pub fn interpreter(
    program: &Path,
    version_args: &[String],
) -> Result<(ArtifactId, String), String> {
    if version_args.is_empty() {
        let mut fp = Fingerprint::new(b"graft program file v1\0");
        fp.file(program).map_err(|e| e.to_string())?;
        let id = fp.finish();
        let text = format!("program file blake3 {id}");
        return Ok((id, text));
    }
    let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
    let inv = Invocation {
        program: program.to_path_buf(),
        args: version_args.iter().map(Into::into).collect(),
        cwd,
        env: Vec::new(),
        timeout: Duration::from_secs(60),
        echo: false,
    };
    let finished = program::run(&inv).map_err(|e| format!("version_args: {e}"))?;
    let text = finished.output.trim().to_owned();
    let id = Fingerprint::new(b"graft interpreter version v1\0")
        .raw(text.as_bytes())
        .finish();
    Ok((id, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_hash_follows_its_content_not_its_mtime_or_place() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.py");
        std::fs::write(&a, "print(1)\n").unwrap();
        let first = script(&a).unwrap();
        std::fs::write(&a, "print(1)\n").unwrap();
        assert_eq!(script(&a).unwrap(), first, "rewriting the same bytes");
        let b = dir.path().join("b.py");
        std::fs::copy(&a, &b).unwrap();
        assert_eq!(script(&b).unwrap(), first, "another path, same content");
        std::fs::write(&a, "print(2)\n").unwrap();
        assert_ne!(script(&a).unwrap(), first);
        assert!(
            script(&dir.path().join("none.py"))
                .unwrap_err()
                .contains("none.py")
        );
    }

    #[test]
    fn a_script_directory_hashes_names_and_contents_but_not_byte_code() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("h");
        std::fs::create_dir_all(d.join("lib")).unwrap();
        std::fs::write(d.join("main.py"), "import lib.x\n").unwrap();
        std::fs::write(d.join("lib/x.py"), "K = 1\n").unwrap();
        let first = script(&d).unwrap();
        std::fs::create_dir_all(d.join("lib/__pycache__")).unwrap();
        std::fs::write(d.join("lib/__pycache__/x.cpython-311.pyc"), "junk").unwrap();
        assert_eq!(script(&d).unwrap(), first);
        std::fs::write(d.join("lib/x.py"), "K = 2\n").unwrap();
        let second = script(&d).unwrap();
        assert_ne!(second, first);
        std::fs::rename(d.join("lib/x.py"), d.join("lib/y.py")).unwrap();
        assert_ne!(script(&d).unwrap(), second, "a rename is a change");
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(script(&empty).unwrap_err().contains("no files"));
    }

    #[test]
    fn the_interpreter_is_its_version_output_or_its_file() {
        let sh = program::resolve("sh").unwrap();
        let args = |s: &str| vec!["-c".to_owned(), s.to_owned()];
        let (a, text) = interpreter(&sh, &args("echo 'Tool 1.0'")).unwrap();
        assert_eq!(text, "Tool 1.0");
        let (b, _) = interpreter(&sh, &args("echo 'Tool 1.1'")).unwrap();
        assert_ne!(a, b);
        assert_eq!(interpreter(&sh, &args("echo 'Tool 1.0'")).unwrap().0, a);
        let e = interpreter(&sh, &args("exit 2")).unwrap_err();
        assert!(e.contains("version_args") && e.contains("status 2"), "{e}");
        let (c, text) = interpreter(&sh, &[]).unwrap();
        assert!(text.starts_with("program file blake3"), "{text}");
        assert_ne!(c, a);
    }

    /// These hashes are in every command stage's key: pinned, so that a change of encoding
    /// comes with a stage version bump.
    #[test]
    fn script_and_interpreter_fingerprints_are_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("h");
        std::fs::create_dir_all(d.join("lib/__pycache__")).unwrap();
        std::fs::write(d.join("main.py"), "import lib\n").unwrap();
        std::fs::write(d.join("lib.py"), "").unwrap();
        std::fs::write(d.join("lib/x.py"), "K = 1\n").unwrap();
        std::fs::write(d.join("lib/__pycache__/x.pyc"), "junk").unwrap();
        std::fs::write(d.join(".hidden"), "junk").unwrap();
        let got = [
            script(&d.join("main.py")).unwrap().to_string(),
            script(&d).unwrap().to_string(),
            interpreter(&d.join("lib/x.py"), &[]).unwrap().1,
        ];
        assert_eq!(
            got,
            [
                "498496ac962d58f9356b8cfd525547950f1f74ff6cfd1349194b5d16d82b54e2",
                "2e4ed54b945bbee8adf9c2c70f9e6e0f79a23a3da5de23de360877fb9979e4d5",
                "program file blake3 207cd6ee95e54c7b8872f52b5e962b5d56d0abac70f4f40d388e96d4a7d5f7c3"
            ]
        );
        let sh = program::resolve("sh").unwrap();
        let args = ["-c".to_owned(), "echo 'Tool 1.0'".to_owned()];
        assert_eq!(
            interpreter(&sh, &args).unwrap().0.as_str(),
            "dc2559d086110c8f77cc23e68484a73cfbef844fd7a7bdeefb94155e5771fa02"
        );
    }
}
