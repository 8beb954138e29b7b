//! The registry of placement heuristics: one file per heuristic, one line each in
//! [`REGISTRY`]. A heuristic file holds its struct, its [`Heuristic`] impl and a
//! `pub const ENTRY: Entry` (name, description, constructor, example table); the property
//! test at the bottom of this file runs every registered entry. A registry is a slice of
//! entries, so a test can run the stage with [`REGISTRY`] and an entry of its own
//! ([`build_in`], [`crate::propose_in`]).

use serde_json::Value;

use crate::heuristic::{Fields, Heuristic, HeuristicTable, ParamError};

mod first_k;
mod gga;
mod last_k;
mod manual;
mod parallel_all;
mod random_k;
mod single_sweep;
mod top_k;

pub use gga::Gga;
pub use top_k::TopK;

/// One registered heuristic.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// The `name` of its parameter table and its `heuristic` column.
    pub name: &'static str,
    /// One line for the documentation and `--help`-like listings.
    pub about: &'static str,
    /// Builds it from its parameter table; each field read through [`Fields`].
    pub build: fn(&mut Fields) -> Result<Box<dyn Heuristic>, ParamError>,
    /// A parameter table as a TOML inline table, valid for every graph (L >= 1); the
    /// property test runs it.
    pub example: &'static str,
}

/// Every heuristic, in the order `graft-propose` documents them.
pub static REGISTRY: &[Entry] = &[
    gga::ENTRY,
    top_k::ENTRY,
    first_k::ENTRY,
    last_k::ENTRY,
    random_k::ENTRY,
    parallel_all::ENTRY,
    single_sweep::ENTRY,
    manual::ENTRY,
];

/// The registered names, comma-separated, for error messages.
pub fn known() -> String {
    known_in(REGISTRY)
}

/// The names in `registry`, comma-separated.
pub fn known_in(registry: &[Entry]) -> String {
    registry
        .iter()
        .map(|e| e.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The entry called `name`.
pub fn entry(name: &str) -> Option<&'static Entry> {
    REGISTRY.iter().find(|e| e.name == name)
}

/// Builds the heuristic a parameter table names, and returns it with the table's defaults
/// filled in. Error fields are relative to the table (`gamma`, `name`).
pub fn build(table: &HeuristicTable) -> Result<(Box<dyn Heuristic>, HeuristicTable), ParamError> {
    build_in(REGISTRY, table)
}

/// [`build`] with the heuristics of `registry`.
pub fn build_in(
    registry: &[Entry],
    table: &HeuristicTable,
) -> Result<(Box<dyn Heuristic>, HeuristicTable), ParamError> {
    let known = || known_in(registry);
    let entry = match table.get("name") {
        Some(Value::String(name)) => registry.iter().find(|e| e.name == name).ok_or_else(|| {
            ParamError::new(
                "name",
                format!("= {name:?} is not a heuristic (known: {})", known()),
            )
        })?,
        Some(v) => {
            return Err(ParamError::new(
                "name",
                format!("= {v} is not a heuristic (known: {})", known()),
            ));
        }
        None => {
            return Err(ParamError::new(
                "name",
                format!("is missing (known: {})", known()),
            ));
        }
    };
    let mut fields = Fields::new(entry.name, table.clone());
    let heuristic = (entry.build)(&mut fields)?;
    Ok((heuristic, fields.finish()?))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use graft_graph::Graph;
    use proptest::prelude::*;

    use super::*;
    use crate::heuristic::Context;
    use crate::testing::random_probe;

    /// An entry's example table, parsed from its TOML.
    fn example(entry: &Entry) -> HeuristicTable {
        let doc: toml::Table = toml::from_str(&format!("t = {}", entry.example))
            .unwrap_or_else(|e| panic!("{}: example does not parse: {e}", entry.name));
        match serde_json::to_value(&doc["t"]) {
            Ok(Value::Object(m)) => m.into_iter().collect(),
            other => panic!("{}: example is not a table: {other:?}", entry.name),
        }
    }

    #[test]
    fn names_are_unique_and_examples_build_as_themselves() {
        let names: BTreeSet<&str> = REGISTRY.iter().map(|e| e.name).collect();
        assert_eq!(names.len(), REGISTRY.len());
        for entry in REGISTRY {
            let (h, normal) = build(&example(entry)).unwrap();
            assert_eq!(h.name(), entry.name);
            // Filling in defaults is idempotent: the key does not move on a second pass.
            let (_, again) = build(&normal).unwrap();
            assert_eq!(again, normal, "{}", entry.name);
            // Writing only the name gives a heuristic too, unless a field is required.
            let bare: HeuristicTable = [("name".to_owned(), Value::from(entry.name))].into();
            if let Ok((_, filled)) = build(&bare) {
                assert_eq!(build(&filled).unwrap().1, filled, "{}", entry.name);
            }
        }
    }

    /// A heuristic's own description of its parameters is the table its fields were read
    /// into, less `name`: what the proposals table records is what the stage key holds.
    #[test]
    fn every_heuristic_describes_its_normalised_parameters() {
        for entry in REGISTRY {
            let bare: HeuristicTable = [("name".to_owned(), Value::from(entry.name))].into();
            let tables = [Some(example(entry)), build(&bare).ok().map(|(_, t)| t)];
            for table in tables.into_iter().flatten() {
                let (h, mut normal) = build(&table).unwrap();
                normal.remove("name");
                let d = h.describe();
                assert_eq!(d.params, normal, "{}", entry.name);
                assert!(!d.label.trim().is_empty(), "{}: empty label", entry.name);
                assert!(
                    d.label.starts_with(entry.name),
                    "{}: {}",
                    entry.name,
                    d.label
                );
            }
        }
        let (gga, _) = build(&example(entry("gga").unwrap())).unwrap();
        let d = gga.describe();
        assert_eq!((d.label.as_str(), d.budgeted), ("gga γ=0.6", true));
        assert_eq!(d.params_json(), r#"{"gamma":0.6,"score":"rank"}"#);
        let table: HeuristicTable = [
            ("name".to_owned(), Value::from("top-k")),
            ("score".to_owned(), Value::from("stable_rank")),
        ]
        .into();
        assert_eq!(
            build(&table).unwrap().0.describe().label,
            "top-k by stable_rank"
        );
        let (sweep, _) = build(&example(entry("single-sweep").unwrap())).unwrap();
        let d = sweep.describe();
        assert!(!d.budgeted);
        assert_eq!(
            d.params_json(),
            r#"{"kinds":["parallel","long-range","recurrent"],"per_kind":2,"seed":1}"#
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every registered heuristic, on random probe tables: deterministic for a seed,
        /// exactly `budget` edges per placement (or nothing above its candidates), edges
        /// inside the graph and distinct.
        #[test]
        fn every_registered_heuristic_keeps_its_contract(
            (probe, _) in random_probe(),
            budget in 1usize..=90,
            seed in 0u64..4,
        ) {
            let graph: Graph = probe.graph();
            let ctx = Context { probe: &probe, seed };
            for entry in REGISTRY {
                let (h, _) = build(&example(entry)).unwrap();
                let first = h.propose(&ctx, budget).unwrap();
                let (again, _) = build(&example(entry)).unwrap();
                let second = again.propose(&ctx, budget).unwrap();
                prop_assert_eq!(&first, &second, "{} is not deterministic", entry.name);
                for p in &first {
                    let distinct: BTreeSet<_> = p.edges().iter().collect();
                    prop_assert_eq!(distinct.len(), p.len(), "{}: repeated edge", entry.name);
                    for e in p.edges() {
                        prop_assert!(graph.check(*e).is_ok(), "{}: edge {} outside", entry.name, e);
                    }
                    prop_assert!(!p.is_empty(), "{}: empty placement", entry.name);
                }
                if h.describe().budgeted {
                    if budget <= h.candidates(graph) {
                        prop_assert!(!first.is_empty(), "{}: nothing for budget {}", entry.name, budget);
                    } else {
                        prop_assert!(first.is_empty(), "{}: budget {} above its candidates", entry.name, budget);
                    }
                    for p in &first {
                        prop_assert_eq!(p.len(), budget, "{}: wrong size", entry.name);
                    }
                } else {
                    // Budget-independent: the budget changes nothing.
                    prop_assert_eq!(&h.propose(&ctx, budget + 1).unwrap(), &first, "{}", entry.name);
                    prop_assert!(!first.is_empty(), "{}: no placement", entry.name);
                }
            }
        }
    }
}
