//! The crate-graph invariants of ARCHITECTURE.md ("Invariants", the crate-graph list), checked
//! on the workspace's `cargo metadata --no-deps`: each workspace crate's declared
//! dependencies, followed through the workspace crates. Normal and build dependencies count
//! (what a crate's library and binaries are built from), optional ones too; dev-dependencies
//! do not (tests may use more).

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

/// The stage crates: each is one stage binary, and none may build on another.
const STAGES: &[&str] = &[
    "graft-prep",
    "graft-pretrain",
    "graft-probe",
    "graft-propose",
    "graft-finetune",
    "graft-report",
    "graft-command",
];

/// Crates that build without burn: no tensors in them or below them.
const NO_BURN: &[&str] = &[
    "graft-store",
    "graft-graph",
    "graft-tables",
    "graft-stage",
    "graft-runner",
    "graft-propose",
    "graft-report",
    "graft-command",
    "graft-prep",
];

/// Crates that must not depend on any stage crate, with why.
const NO_STAGE: &[(&str, &str)] = &[
    (
        "graft-tables",
        "the contracts between stages build on no stage",
    ),
    ("graft-stage", "the stage protocol builds on no stage"),
    (
        "graft-runner",
        "the runner runs stage binaries, it links none",
    ),
    ("graft-store", "the store knows no stage"),
];

/// burn's backends: a crate `burn-<name>` or a feature `<name>` of `burn`.
const BACKENDS: &[&str] = &[
    "flex", "tch", "cuda", "ndarray", "wgpu", "candle", "metal", "vulkan", "webgpu", "rocm", "cpu",
    "cubecl", "router", "remote",
];

/// The one crate that names backends.
const BACKEND_CRATE: &str = "graft-backend";

/// Features a binary with tensors forwards to [`BACKEND_CRATE`] (the Makefile's `TENSOR_BINS`
/// build with them).
const FORWARDED: &[&str] = &["flex", "tch"];

#[derive(Debug, Clone)]
pub struct Dep {
    pub name: String,
    /// `None` for a normal dependency, else `"dev"` or `"build"`.
    pub kind: Option<String>,
    pub features: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Crate {
    pub name: String,
    pub deps: Vec<Dep>,
    pub features: BTreeMap<String, Vec<String>>,
    pub has_bin: bool,
}

/// The workspace's crates, from `cargo metadata --format-version 1 --no-deps`.
fn workspace() -> Vec<Crate> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .args(["--manifest-path", manifest])
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON");
    parse(&meta)
}

fn parse(meta: &Value) -> Vec<Crate> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| Crate {
            name: p["name"].as_str().expect("name").to_owned(),
            deps: p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .map(|d| Dep {
                    name: d["name"].as_str().expect("dependency name").to_owned(),
                    kind: d["kind"].as_str().map(str::to_owned),
                    features: strings(&d["features"]),
                })
                .collect(),
            features: p["features"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), strings(v)))
                .collect(),
            has_bin: p["targets"].as_array().into_iter().flatten().any(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
            }),
        })
        .collect()
}

fn is_burn(name: &str) -> bool {
    name == "burn" || name.starts_with("burn-")
}

fn is_backend_crate(name: &str) -> bool {
    name.strip_prefix("burn-")
        .is_some_and(|b| BACKENDS.contains(&b))
}

/// Every crate `name` builds on (normal and build dependencies, through workspace crates),
/// each with the path that reaches it: `a -> b -> burn`.
fn closure(crates: &BTreeMap<&str, &Crate>, name: &str) -> BTreeMap<String, String> {
    let mut reached: BTreeMap<String, String> = BTreeMap::new();
    let mut todo = vec![(name.to_owned(), name.to_owned())];
    while let Some((at, path)) = todo.pop() {
        let Some(c) = crates.get(at.as_str()) else {
            continue;
        };
        for d in c.deps.iter().filter(|d| d.kind.as_deref() != Some("dev")) {
            if !reached.contains_key(&d.name) && d.name != name {
                let p = format!("{path} -> {}", d.name);
                reached.insert(d.name.clone(), p.clone());
                todo.push((d.name.clone(), p));
            }
        }
    }
    reached
}

/// Every way `crates` break the invariants, one line each naming the crate and the
/// dependency at fault.
pub fn violations(crates: &[Crate]) -> Vec<String> {
    let by_name: BTreeMap<&str, &Crate> = crates.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut out = Vec::new();
    for c in crates {
        let name = c.name.as_str();
        let reach = closure(&by_name, name);
        if name == "graft-store" {
            for (dep, path) in &reach {
                if dep.starts_with("graft-") {
                    out.push(format!(
                        "graft-store depends on {dep} ({path}): the store knows no other graft crate"
                    ));
                }
            }
        }
        if STAGES.contains(&name) {
            for (dep, path) in &reach {
                if STAGES.contains(&dep.as_str()) {
                    out.push(format!(
                        "{name} depends on {dep} ({path}): stages never import each other"
                    ));
                }
            }
        }
        if let Some((_, why)) = NO_STAGE.iter().find(|(n, _)| *n == name) {
            for (dep, path) in &reach {
                if STAGES.contains(&dep.as_str()) {
                    out.push(format!("{name} depends on {dep} ({path}): {why}"));
                }
            }
        }
        if NO_BURN.contains(&name) {
            for (dep, path) in &reach {
                if is_burn(dep) || dep == BACKEND_CRATE {
                    out.push(format!(
                        "{name} depends on {dep} ({path}): {name} builds without burn"
                    ));
                }
            }
        }
        if name != BACKEND_CRATE {
            for d in &c.deps {
                let feature = d
                    .features
                    .iter()
                    .find(|f| is_burn(&d.name) && BACKENDS.contains(&f.as_str()));
                if is_backend_crate(&d.name) {
                    out.push(format!(
                        "{name} depends on {}: only {BACKEND_CRATE} names a backend",
                        d.name
                    ));
                } else if let Some(f) = feature {
                    out.push(format!(
                        "{name} depends on {} with feature {f:?}: only {BACKEND_CRATE} names a backend",
                        d.name
                    ));
                }
            }
            for (feature, enables) in &c.features {
                for e in enables {
                    let named = e
                        .split_once('/')
                        .filter(|(dep, f)| {
                            is_burn(dep.trim_end_matches('?')) && BACKENDS.contains(f)
                        })
                        .is_some()
                        || e.strip_prefix("dep:").is_some_and(is_backend_crate);
                    if named {
                        out.push(format!(
                            "{name} feature {feature:?} enables {e:?}: only {BACKEND_CRATE} names a backend"
                        ));
                    }
                }
            }
        }
        if c.has_bin && reach.contains_key(BACKEND_CRATE) {
            for f in FORWARDED {
                let want = format!("{BACKEND_CRATE}/{f}");
                let forwards = c.features.get(*f).is_some_and(|e| e.contains(&want));
                if !forwards {
                    out.push(format!(
                        "{name} has a binary with tensors ({}) but no feature {f:?} enabling {want:?}",
                        reach[BACKEND_CRATE]
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn the_crate_graph_keeps_the_invariants_of_architecture_md() {
    let crates = workspace();
    for needed in STAGES.iter().chain(NO_BURN).chain([&BACKEND_CRATE]) {
        assert!(
            crates.iter().any(|c| c.name == *needed),
            "{needed} is named by an invariant but is not in the workspace"
        );
    }
    let v = violations(&crates);
    assert!(
        v.is_empty(),
        "crate-graph invariants broken:\n{}",
        v.join("\n")
    );
}

/// Each invariant, broken on purpose in a copy of the real graph, is reported naming the crate
/// and the dependency.
#[test]
fn each_invariant_names_the_crate_and_dependency_that_break_it() {
    let real = workspace();
    let doctor = |name: &str, change: &dyn Fn(&mut Crate)| -> Vec<String> {
        let mut crates = real.clone();
        change(crates.iter_mut().find(|c| c.name == name).unwrap());
        violations(&crates)
    };
    let dep = |name: &str, kind: Option<&str>, features: &[&str]| Dep {
        name: name.to_owned(),
        kind: kind.map(str::to_owned),
        features: features.iter().map(|s| s.to_string()).collect(),
    };
    let has = |v: &[String], parts: &[&str]| {
        assert!(
            v.iter().any(|l| parts.iter().all(|p| l.contains(p))),
            "no line with {parts:?} in {v:#?}"
        )
    };
    // The store on another graft crate, and (through it) on burn.
    let v = doctor("graft-store", &|c| {
        c.deps.push(dep("graft-model", None, &[]))
    });
    has(
        &v,
        &[
            "graft-store depends on graft-model",
            "knows no other graft crate",
        ],
    );
    has(
        &v,
        &["graft-store depends on burn (graft-store -> graft-model"],
    );
    // A stage on another stage, also through a build dependency; a dev-dependency is allowed.
    let v = doctor("graft-propose", &|c| {
        c.deps.push(dep("graft-probe", None, &[]))
    });
    has(
        &v,
        &[
            "graft-propose depends on graft-probe",
            "never import each other",
        ],
    );
    has(
        &v,
        &["graft-propose depends on burn (graft-propose -> graft-probe -> burn)"],
    );
    let v = doctor("graft-report", &|c| {
        c.deps.push(dep("graft-finetune", Some("build"), &[]))
    });
    has(&v, &["graft-report depends on graft-finetune"]);
    let v = doctor("graft-report", &|c| {
        c.deps.push(dep("graft-finetune", Some("dev"), &[]))
    });
    assert!(v.is_empty(), "{v:?}");
    // The contracts on a stage; the runner linking a stage.
    let v = doctor("graft-tables", &|c| {
        c.deps.push(dep("graft-prep", None, &[]))
    });
    has(
        &v,
        &[
            "graft-tables depends on graft-prep",
            "contracts between stages",
        ],
    );
    let v = doctor("graft-runner", &|c| {
        c.deps.push(dep("graft-command", None, &[]))
    });
    has(&v, &["graft-runner depends on graft-command", "links none"]);
    // Heuristics on burn.
    let v = doctor("graft-graph", &|c| c.deps.push(dep("burn", None, &[])));
    has(&v, &["graft-graph depends on burn", "builds without burn"]);
    has(
        &v,
        &["graft-propose depends on burn (graft-propose -> graft-graph -> burn)"],
    );
    // A backend named outside graft-backend: a crate, a feature of burn, a feature table.
    let v = doctor("graft-model", &|c| {
        c.deps.push(dep("burn-ndarray", None, &[]))
    });
    has(
        &v,
        &["graft-model depends on burn-ndarray", "only graft-backend"],
    );
    let v = doctor("graft-train", &|c| c.deps.push(dep("burn", None, &["tch"])));
    has(&v, &["graft-train depends on burn with feature \"tch\""]);
    let v = doctor("graft-probe", &|c| {
        c.features.insert("gpu".into(), vec!["burn/cuda".into()]);
    });
    has(&v, &["graft-probe feature \"gpu\" enables \"burn/cuda\""]);
    // A tensor binary that does not forward a backend feature.
    let v = doctor("graft-finetune", &|c| {
        c.features
            .get_mut("tch")
            .unwrap()
            .retain(|e| e != "graft-backend/tch")
    });
    has(&v, &["graft-finetune has a binary with tensors", "\"tch\""]);
}
