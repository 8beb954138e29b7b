//! Checkpoints by timm name: `checkpoint = "timm/<model>"` (or timm's own
//! `"hf-hub:timm/<model>"`) is the `model.safetensors` of the Hugging Face repository
//! `timm/<model>` as the hub's client left it in the local cache. Nothing is downloaded.
//!
//! A value is a hub name when it starts with `hf-hub:`, or with `timm/` and is not an
//! existing file; anything else is a path. Only timm's repositories are read: graft loads
//! timm's state-dict layout, which other owners' repositories do not have.
//!
//! The cache directory is the one `huggingface_hub` uses ([`HubEnv::cache_dir`]):
//!
//! | set | cache |
//! |-----|-------|
//! | `HF_HUB_CACHE` | it |
//! | `HUGGINGFACE_HUB_CACHE` (the older name) | it |
//! | `HF_HOME` | `$HF_HOME/hub` |
//! | `XDG_CACHE_HOME` | `$XDG_CACHE_HOME/huggingface/hub` |
//! | none | `~/.cache/huggingface/hub` |
//!
//! taking the first that is set (and not empty), with a leading `~` expanded. In it, the
//! layout the hub writes:
//!
//! ```text
//! models--timm--<model>/refs/main                             the commit `main` points at
//! models--timm--<model>/snapshots/<commit>/model.safetensors  usually a link into blobs/
//! models--timm--<model>/blobs/<sha256>                        the bytes
//! ```
//!
//! Without `refs/main`, the one snapshot that holds `model.safetensors` is used; with
//! several, the error names them. Only [`HubEnv::from_process`] reads the process
//! environment; everything else takes a [`HubEnv`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The file of a snapshot that holds the weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// The environment variables that place the Hugging Face cache (unset or empty: `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubEnv {
    pub hf_hub_cache: Option<PathBuf>,
    pub huggingface_hub_cache: Option<PathBuf>,
    pub hf_home: Option<PathBuf>,
    pub xdg_cache_home: Option<PathBuf>,
    pub home: Option<PathBuf>,
}

impl HubEnv {
    /// The process's environment.
    pub fn from_process() -> HubEnv {
        HubEnv::from_vars(|name| std::env::var_os(name))
    }

    /// The variables as `var` gives them by name.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> HubEnv {
        let get = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        HubEnv {
            hf_hub_cache: get("HF_HUB_CACHE"),
            huggingface_hub_cache: get("HUGGINGFACE_HUB_CACHE"),
            hf_home: get("HF_HOME"),
            xdg_cache_home: get("XDG_CACHE_HOME"),
            home: get("HOME"),
        }
    }

    /// The hub cache directory, by the precedence in the module docs.
    pub fn cache_dir(&self) -> Result<PathBuf, String> {
        let dir = if let Some(dir) = self.hf_hub_cache.as_ref() {
            dir.clone()
        } else if let Some(dir) = self.huggingface_hub_cache.as_ref() {
            dir.clone()
        } else if let Some(home) = self.hf_home.as_ref() {
            home.join("hub")
        } else if let Some(cache) = self.xdg_cache_home.as_ref() {
            cache.join("huggingface").join("hub")
        } else {
            Path::new("~/.cache/huggingface/hub").to_owned()
        };
        self.expand_home(&dir)
    }

    /// `path` with a leading `~` replaced by `HOME`.
    fn expand_home(&self, path: &Path) -> Result<PathBuf, String> {
        let Ok(rest) = path.strip_prefix("~") else {
            return Ok(path.to_owned());
        };
        let home = self.home.as_ref().ok_or_else(|| {
            format!(
                "the Hugging Face cache is {} but HOME is not set (set HF_HUB_CACHE or HF_HOME)",
                path.display()
            )
        })?;
        Ok(home.join(rest))
    }
}

/// A timm model on the Hugging Face hub, as a `checkpoint` value named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubName {
    /// The value as written, for messages.
    pub given: String,
    /// The model, without the owner: `vit_base_patch16_224.augreg_in21k`.
    pub model: String,
}

impl HubName {
    /// The hub name a `checkpoint` value gives: `None` for a path, an error for a value that
    /// is meant as a hub name but is not a timm one.
    pub fn parse(value: &str) -> Option<Result<HubName, String>> {
        HubName::parse_where(value, Path::new(value).exists())
    }

    /// [`HubName::parse`], told whether `value` exists as a path.
    fn parse_where(value: &str, exists: bool) -> Option<Result<HubName, String>> {
        let repo = match value.strip_prefix("hf-hub:") {
            Some(repo) => repo,
            None if value.starts_with("timm/") && !exists => value,
            None => return None,
        };
        let err = |why: String| Some(Err(format!("checkpoint = {value:?}: {why}")));
        let Some(model) = repo.strip_prefix("timm/") else {
            return err(
                "only timm's models (timm/<model>) are read from the Hugging Face cache: graft \
                 loads timm's state-dict layout; give another model's file as a path"
                    .into(),
            );
        };
        if let Some(why) = bad_repo_name(model) {
            return err(format!(
                "{model:?} is not a model name on the hub ({why}); expected \
                 timm/<model>, as in timm/vit_base_patch16_224.augreg_in21k"
            ));
        }
        Some(Ok(HubName {
            given: value.to_owned(),
            model: model.to_owned(),
        }))
    }

    /// The repository's directory in the cache `cache`.
    pub fn repo_dir(&self, cache: &Path) -> PathBuf {
        cache.join(format!("models--timm--{}", self.model))
    }

    /// The weights file of the snapshot `main` points at, in the cache `env` places.
    pub fn locate(&self, env: &HubEnv) -> Result<PathBuf, String> {
        let cache = env
            .cache_dir()
            .map_err(|e| format!("checkpoint = {:?}: {e}", self.given))?;
        self.locate_in(&cache)
    }

    /// [`HubName::locate`] in the cache directory `cache`.
    pub fn locate_in(&self, cache: &Path) -> Result<PathBuf, String> {
        let repo = self.repo_dir(cache);
        if !repo.is_dir() {
            return Err(self.not_cached(&repo, "no such directory"));
        }
        let snapshots = repo.join("snapshots");
        let main = repo.join("refs").join("main");
        if main.exists() {
            let commit = std::fs::read_to_string(&main)
                .map_err(|e| format!("checkpoint = {:?}: {}: {e}", self.given, main.display()))?;
            let commit = commit.trim();
            if bad_commit(commit) {
                return Err(format!(
                    "checkpoint = {:?}: {} holds {commit:?}, not a commit hash",
                    self.given,
                    main.display()
                ));
            }
            let file = snapshots.join(commit).join(WEIGHTS_FILE);
            return self.weights(&file);
        }
        let mut found = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&snapshots) {
            for entry in entries.flatten() {
                let file = entry.path().join(WEIGHTS_FILE);
                if file.symlink_metadata().is_ok() {
                    found.push(file);
                }
            }
        }
        found.sort();
        match found.as_slice() {
            [] => Err(self.not_cached(&snapshots, "no snapshot holds model.safetensors")),
            [file] => self.weights(file),
            several => Err(format!(
                "checkpoint = {:?}: {} has no refs/main and {} snapshots hold {WEIGHTS_FILE} \
                 ({}): write the commit to use into {} or set checkpoint to one file's path",
                self.given,
                repo.display(),
                several.len(),
                several
                    .iter()
                    .map(|f| snapshot_name(f))
                    .collect::<Vec<_>>()
                    .join(", "),
                main.display()
            )),
        }
    }

    /// `file` when it is there (through links), the error that says what is missing if not.
    fn weights(&self, file: &Path) -> Result<PathBuf, String> {
        if file.is_file() {
            return Ok(file.to_owned());
        }
        if file.symlink_metadata().is_ok() {
            return Err(self.not_cached(
                file,
                "a link whose blob is missing (an interrupted download?)",
            ));
        }
        Err(self.not_cached(file, "no such file"))
    }

    /// The error of a model the cache lacks: where it looked and the command that fills it.
    fn not_cached(&self, looked: &Path, why: &str) -> String {
        let model = &self.model;
        format!(
            "checkpoint = {:?}: not in the Hugging Face cache ({}: {why}; the cache is \
             HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub). Nothing is \
             downloaded: fill the cache with \
             .venv/bin/python -c 'import timm; timm.create_model(\"{model}\", pretrained=True)' \
             (or: hf download timm/{model} {WEIGHTS_FILE}) under the same environment, or \
             save the file as README.md, section \"Checkpoints\", shows and set checkpoint to \
             its path",
            self.given,
            looked.display()
        )
    }
}

/// Why `name` cannot be a repository name on the hub (letters, digits, `-`, `_`, `.`;
/// neither `--` nor `..`; no `-` or `.` at either end), or `None`.
fn bad_repo_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("empty");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Some("letters, digits, '-', '_' and '.' only");
    }
    if name.contains("--") || name.contains("..") {
        return Some("'--' and '..' are not allowed");
    }
    if name.starts_with(['-', '.']) || name.ends_with(['-', '.']) {
        return Some("'-' and '.' cannot start or end it");
    }
    None
}

/// Whether `refs/main`'s content cannot name a snapshot directory.
fn bad_commit(commit: &str) -> bool {
    commit.is_empty() || commit.contains(['/', '\\']) || commit == "." || commit == ".."
}

/// The snapshot directory's name of a weights file in it.
fn snapshot_name(file: &Path) -> String {
    file.parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A directory removed when dropped.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "graft-hub-{tag}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) fn env(vars: &[(&str, &str)]) -> HubEnv {
        let vars: BTreeMap<&str, &str> = vars.iter().copied().collect();
        HubEnv::from_vars(|name| vars.get(name).map(OsString::from))
    }

    const MODEL: &str = "vit_base_patch16_224.augreg_in21k";
    const COMMIT: &str = "5d6b0bb4c1a8b2e1f0ac3f5b9f2f0d6c1e7a9b3c";

    /// Writes `bytes` into `cache` as the hub does: the blob under its digest, the snapshot's
    /// file a relative link to it, and `refs/main` (without a newline) when `main`.
    pub(crate) fn cache_model(
        cache: &Path,
        model: &str,
        commit: &str,
        bytes: &[u8],
        main: bool,
    ) -> PathBuf {
        let repo = cache.join(format!("models--timm--{model}"));
        let blob: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("blobs").join(&blob), bytes).unwrap();
        let snapshot = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snapshot).unwrap();
        let file = snapshot.join(WEIGHTS_FILE);
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&blob), &file).unwrap();
        if main {
            std::fs::create_dir_all(repo.join("refs")).unwrap();
            std::fs::write(repo.join("refs").join("main"), commit).unwrap();
        }
        file
    }

    fn name(value: &str) -> HubName {
        HubName::parse(value).unwrap().unwrap()
    }

    #[test]
    fn the_cache_directory_follows_huggingface_hubs_precedence() {
        let all = [
            ("HF_HUB_CACHE", "/a/hub-cache"),
            ("HUGGINGFACE_HUB_CACHE", "/b/legacy"),
            ("HF_HOME", "/c/hf-home"),
            ("XDG_CACHE_HOME", "/d/xdg"),
            ("HOME", "/e/home"),
        ];
        let expected = [
            "/a/hub-cache",
            "/b/legacy",
            "/c/hf-home/hub",
            "/d/xdg/huggingface/hub",
            "/e/home/.cache/huggingface/hub",
        ];
        for (k, want) in expected.iter().enumerate() {
            assert_eq!(env(&all[k..]).cache_dir().unwrap(), Path::new(want), "{k}");
        }
        // Empty is unset; a leading `~` is HOME.
        let e = env(&[("HF_HUB_CACHE", ""), ("HF_HOME", "~/hf"), ("HOME", "/h")]);
        assert_eq!(e.cache_dir().unwrap(), Path::new("/h/hf/hub"));
        let e = env(&[]).cache_dir().unwrap_err();
        assert!(e.contains("HOME") && e.contains("HF_HUB_CACHE"), "{e}");
    }

    #[test]
    fn names_and_paths_are_told_apart() {
        assert_eq!(name(&format!("timm/{MODEL}")).model, MODEL);
        assert_eq!(name(&format!("hf-hub:timm/{MODEL}")).model, MODEL);
        assert!(HubName::parse("checkpoints/vit.safetensors").is_none());
        assert!(HubName::parse("/abs/timm/x.safetensors").is_none());
        // A file that exists at a relative path timm/... stays a path; hf-hub: never is one.
        assert!(HubName::parse_where("timm/x.safetensors", true).is_none());
        assert!(HubName::parse_where("timm/x.safetensors", false).is_some());
        assert!(HubName::parse_where("hf-hub:timm/x", true).is_some());
        for bad in [
            "timm/",
            "hf-hub:timm/",
            "timm/a/b",
            "timm/a@main",
            "timm/.x",
            "timm/a--b",
        ] {
            let e = HubName::parse(bad).unwrap().unwrap_err();
            assert!(
                e.starts_with(&format!("checkpoint = {bad:?}")) && e.contains("timm/<model>"),
                "{e}"
            );
        }
        let e = HubName::parse("hf-hub:facebook/dinov2-base")
            .unwrap()
            .unwrap_err();
        assert!(e.contains("checkpoint") && e.contains("only timm"), "{e}");
    }

    #[test]
    fn a_cached_model_is_its_snapshots_file_through_the_link() {
        let dir = TempDir::new("cached");
        let file = cache_model(&dir.0, MODEL, COMMIT, b"weights", true);
        // An older snapshot beside it does not matter: refs/main says which.
        cache_model(
            &dir.0,
            MODEL,
            "0000000000000000000000000000000000000000",
            b"old",
            false,
        );
        let e = env(&[("HF_HUB_CACHE", dir.0.to_str().unwrap())]);
        let got = name(&format!("timm/{MODEL}")).locate(&e).unwrap();
        assert_eq!(got, file);
        assert_eq!(std::fs::read(&got).unwrap(), b"weights");
        // The same through HF_HOME.
        let home = TempDir::new("home");
        cache_model(&home.0.join("hub"), MODEL, COMMIT, b"weights", true);
        let e = env(&[("HF_HOME", home.0.to_str().unwrap())]);
        let got = name(&format!("hf-hub:timm/{MODEL}")).locate(&e).unwrap();
        assert_eq!(
            got,
            home.0
                .join("hub/models--timm--vit_base_patch16_224.augreg_in21k/snapshots")
                .join(COMMIT)
                .join(WEIGHTS_FILE)
        );
        // HF_HUB_CACHE wins over HF_HOME.
        let e = env(&[
            ("HF_HUB_CACHE", dir.0.to_str().unwrap()),
            ("HF_HOME", home.0.to_str().unwrap()),
        ]);
        assert_eq!(name(&format!("timm/{MODEL}")).locate(&e).unwrap(), file);
    }

    #[test]
    fn without_refs_main_one_snapshot_is_used_and_several_are_named() {
        let dir = TempDir::new("refs");
        let file = cache_model(&dir.0, MODEL, COMMIT, b"weights", false);
        let n = name(&format!("timm/{MODEL}"));
        assert_eq!(n.locate_in(&dir.0).unwrap(), file);
        cache_model(
            &dir.0,
            MODEL,
            "1111111111111111111111111111111111111111",
            b"x",
            false,
        );
        let e = n.locate_in(&dir.0).unwrap_err();
        assert!(
            e.contains(COMMIT) && e.contains("1111111111") && e.contains("refs"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_model_names_where_it_looked_and_the_command_that_fills_it() {
        let dir = TempDir::new("missing");
        let n = name(&format!("timm/{MODEL}"));
        let e = n.locate_in(&dir.0).unwrap_err();
        let repo = dir.0.join(format!("models--timm--{MODEL}"));
        assert!(
            e.starts_with(&format!("checkpoint = \"timm/{MODEL}\"")),
            "{e}"
        );
        assert!(e.contains(&repo.display().to_string()), "{e}");
        assert!(
            e.contains(&format!("timm.create_model(\"{MODEL}\", pretrained=True)")),
            "{e}"
        );
        assert!(e.contains(&format!("hf download timm/{MODEL}")), "{e}");
        assert!(e.contains("README.md"), "{e}");
        // refs/main naming a snapshot without the file, and a link whose blob is gone.
        let file = cache_model(&dir.0, MODEL, COMMIT, b"weights", true);
        std::fs::remove_file(std::fs::canonicalize(&file).unwrap()).unwrap();
        let e = n.locate_in(&dir.0).unwrap_err();
        assert!(
            e.contains("blob is missing") && e.contains("timm.create_model"),
            "{e}"
        );
        std::fs::remove_file(&file).unwrap();
        let e = n.locate_in(&dir.0).unwrap_err();
        assert!(e.contains(COMMIT) && e.contains("no such file"), "{e}");
        std::fs::write(repo.join("refs").join("main"), "../x").unwrap();
        let e = n.locate_in(&dir.0).unwrap_err();
        assert!(e.contains("not a commit hash"), "{e}");
    }
}
