//! The `proposals` contract: a placement table ([`graft_tables::ProposalRow`]) checked
//! against the graph of the probed model (`model.json` of the `probe` input).
//!
//! Required columns: `heuristic` (a non-empty string) and `edges` (a non-empty list of
//! `{i, j}` inside the graph, no edge twice). Optional: `score`, `draw` (>= 0, default 0),
//! `method` (only `adapters`: baselines belong to the fine-tune stage), and the heuristic's
//! description: `label` (non-empty; default the `heuristic` name), `params` (a JSON object
//! as text, re-written canonically with keys sorted; default `{}`) and `budgeted` (whether
//! the heuristic makes one placement per budget, so its rows form a budget curve; default
//! whether the rows of the same `heuristic` in the table have two or more budgets).
//! Derived, so graft computes them and never trusts them: `placement_id`
//! ([`graft_graph::Placement::id`] of the edges), `adapters` and `budget` (the number of
//! edges, as for every row `graft-propose` writes), `trainable_params` and `forward_flops`
//! (from the model's dims and `bottleneck`). A derived column the program writes must agree
//! with graft's value in every row (a null asks graft to fill it in). The published table
//! is graft's own write of the checked rows, in the program's order.

use std::collections::{BTreeMap, BTreeSet};

use graft_graph::{Edge, Placement};
use graft_tables::{EdgeRow, Method, ModelInfo, ProposalRow, Table};
use serde_json::{Map, Value, json};

use crate::contract::{Check, Contract, ContractError, read_table};

pub const CONTRACT: Contract = Contract {
    name: "proposals",
    about: "a placement table (graft_tables::ProposalRow) on the graph of the probe input's model",
    needs: &["probe"],
    check,
};

/// Columns graft computes or fills in; the program may omit them.
const DERIVED: [&str; 10] = [
    "placement_id",
    "adapters",
    "budget",
    "trainable_params",
    "forward_flops",
    "draw",
    "method",
    "label",
    "params",
    "budgeted",
];

fn check(c: &Check<'_>) -> Result<Value, ContractError> {
    let probe = c.inputs.get("probe").ok_or_else(|| ContractError::Input {
        file: c.label.to_owned(),
        input: "probe".into(),
        message: "missing: the proposals contract reads the probed model's graph from it".into(),
    })?;
    let model =
        ModelInfo::read(&probe.join(ModelInfo::FILE)).map_err(|e| ContractError::Input {
            file: c.label.to_owned(),
            input: "probe".into(),
            message: format!("is not a probe artifact: {e}"),
        })?;
    let table = read_table(c.label, c.src, &ProposalRow::schema(), &DERIVED)?;
    let rows = check_rows(c.label, &model, c.bottleneck, &table.rows)?;
    ProposalRow::write(c.dst, &rows).map_err(|e| ContractError::File {
        file: c.label.to_owned(),
        message: e.to_string(),
    })?;
    let placements: BTreeSet<&str> = rows.iter().map(|r| r.placement_id.as_str()).collect();
    let mut per_heuristic: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rows {
        *per_heuristic.entry(r.heuristic.as_str()).or_default() += 1;
    }
    Ok(json!({
        "rows": rows.len(),
        "placements": placements.len(),
        "per_heuristic": per_heuristic,
    }))
}

/// Checks every row against `model`'s graph and fills in the derived columns.
pub fn check_rows(
    file: &str,
    model: &ModelInfo,
    bottleneck: usize,
    rows: &[Map<String, Value>],
) -> Result<Vec<ProposalRow>, ContractError> {
    let graph = model.graph();
    if graph.layers == 0 {
        return Err(ContractError::Input {
            file: file.to_owned(),
            input: "probe".into(),
            message: "model.json has no blocks (layers = 0)".into(),
        });
    }
    if rows.is_empty() {
        return Err(ContractError::File {
            file: file.to_owned(),
            message: "has no rows: a proposals table proposes at least one placement".into(),
        });
    }
    let max = graph.nodes() - 1;
    // The default of `budgeted`: the heuristic's rows span two or more budgets.
    let mut budgets: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    for r in rows {
        if let (Some(h), Some(edges)) = (
            r.get("heuristic").and_then(Value::as_str),
            r.get("edges").and_then(Value::as_array),
        ) {
            budgets.entry(h).or_default().insert(edges.len());
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    for (row, r) in rows.iter().enumerate() {
        let err = |column: &str, message: String| ContractError::Row {
            file: file.to_owned(),
            row,
            column: column.to_owned(),
            message,
        };
        let present = |column: &str| r.get(column).filter(|v| !v.is_null());
        let int = |column: &str| -> Result<Option<i64>, ContractError> {
            match present(column) {
                None => Ok(None),
                Some(v) => v
                    .as_i64()
                    .map(Some)
                    .ok_or_else(|| err(column, format!("{v} is not a 64-bit integer"))),
            }
        };
        let text = |column: &str| -> Option<String> {
            present(column).and_then(Value::as_str).map(str::to_owned)
        };

        let heuristic = text("heuristic").unwrap_or_default();
        if heuristic.trim().is_empty() {
            return Err(err("heuristic", "is empty; name the heuristic".into()));
        }
        if let Some(m) = text("method")
            && Method::parse(&m) != Some(Method::Adapters)
        {
            return Err(err(
                "method",
                format!(
                    "{m:?} is not a method of a proposal: only \"adapters\" (baselines are the \
                     fine-tune stage's `baselines`)"
                ),
            ));
        }
        let list = present("edges")
            .and_then(Value::as_array)
            .ok_or_else(|| err("edges", "is not a list of {i, j}".into()))?;
        if list.is_empty() {
            return Err(err(
                "edges",
                "is empty: a placement needs at least one edge".into(),
            ));
        }
        let mut edges = Vec::with_capacity(list.len());
        let mut seen = BTreeSet::new();
        for (k, e) in list.iter().enumerate() {
            let end = |name: &str| e.get(name).and_then(Value::as_i64);
            let (Some(i), Some(j)) = (end("i"), end("j")) else {
                return Err(err(
                    "edges",
                    format!("edge {k} ({e}) needs integers i and j"),
                ));
            };
            if i < 0 || j < 0 || i > max as i64 || j > max as i64 {
                return Err(err(
                    "edges",
                    format!(
                        "edge ({i}, {j}) is outside the graph: nodes are 0..={max} for {} blocks \
                         ({})",
                        graph.layers, model.preset
                    ),
                ));
            }
            if !seen.insert((i, j)) {
                return Err(err("edges", format!("edge ({i}, {j}) appears twice")));
            }
            edges.push(Edge::new(i as usize, j as usize));
        }
        let placement = Placement::new(graph, edges).map_err(|e| err("edges", e.to_string()))?;
        let n = placement.len() as i64;
        let dims = &model.dims;
        let derived = [
            ("adapters", n),
            ("budget", n),
            (
                "trainable_params",
                dims.adapter_tuning_params(placement.len(), bottleneck) as i64,
            ),
            (
                "forward_flops",
                graft_graph::forward_flops(dims, &placement, bottleneck) as i64,
            ),
        ];
        for (column, want) in derived {
            if let Some(have) = int(column)?
                && have != want
            {
                return Err(err(
                    column,
                    format!(
                        "{have} does not match its edges: graft computes {want} (leave the \
                         column out or null to have it filled in)"
                    ),
                ));
            }
        }
        let id = placement.id();
        if let Some(have) = present("placement_id")
            && have.as_str() != Some(id.as_str())
        {
            return Err(err(
                "placement_id",
                format!(
                    "{have} does not match its edges: graft computes {id:?} (leave the \
                     column out to have it filled in)"
                ),
            ));
        }
        let draw = int("draw")?.unwrap_or(0);
        if draw < 0 {
            return Err(err("draw", format!("{draw} must be >= 0")));
        }
        let label = match present("label") {
            None => heuristic.clone(),
            Some(v) => match v.as_str() {
                Some(l) if !l.trim().is_empty() => l.to_owned(),
                _ => {
                    return Err(err(
                        "label",
                        format!("{v} is empty; leave it out or null to get the heuristic name"),
                    ));
                }
            },
        };
        let params = match present("params") {
            None => "{}".to_owned(),
            Some(v) => match v.as_str().map(serde_json::from_str::<Value>) {
                Some(Ok(v @ Value::Object(_))) => graft_tables::canonical_json(&v),
                _ => {
                    return Err(err(
                        "params",
                        format!("{v} is not a JSON object as text, e.g. '{{\"score\": \"rank\"}}'"),
                    ));
                }
            },
        };
        let budgeted = match present("budgeted") {
            None => budgets
                .get(heuristic.as_str())
                .is_some_and(|b| b.len() >= 2),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| err("budgeted", format!("{v} is not true or false")))?,
        };
        out.push(ProposalRow {
            placement_id: id,
            heuristic,
            label,
            params,
            budgeted,
            score: text("score"),
            budget: n,
            draw,
            method: Method::Adapters,
            edges: placement
                .edges()
                .iter()
                .map(|&e| EdgeRow::from(e))
                .collect(),
            adapters: n,
            trainable_params: derived[2].1,
            forward_flops: derived[3].1,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use graft_graph::{Dims, Graph};

    fn model() -> ModelInfo {
        ModelInfo {
            preset: "test".into(),
            dims: Dims {
                image_size: 8,
                patch_size: 4,
                channels: 3,
                dim: 16,
                layers: 2,
                mlp_dim: 32,
                classes: 4,
            },
        }
    }

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn refused(v: Value) -> String {
        check_rows(
            "p.parquet",
            &model(),
            8,
            &[
                row(json!({"heuristic": "h", "edges": [{"i": 0, "j": 1}]})),
                row(v),
            ],
        )
        .unwrap_err()
        .to_string()
    }

    #[test]
    fn derived_columns_are_computed_by_graft() {
        let m = model();
        let rows = check_rows(
            "p.parquet",
            &m,
            8,
            &[row(json!({"heuristic": "mine", "score": "effective_rank",
                         "edges": [{"i": 3, "j": 1}, {"i": 0, "j": 1}]}))],
        )
        .unwrap();
        let p = Placement::new(Graph::new(2), [Edge::new(0, 1), Edge::new(3, 1)]).unwrap();
        let r = &rows[0];
        assert_eq!(r.placement_id, p.id());
        assert_eq!((r.adapters, r.budget, r.draw), (2, 2, 0));
        assert_eq!(
            r.edges,
            graft_tables::edge_rows(&p),
            "sorted like every placement"
        );
        assert_eq!(
            r.trainable_params,
            m.dims.adapter_tuning_params(2, 8) as i64
        );
        assert_eq!(
            r.forward_flops,
            graft_graph::forward_flops(&m.dims, &p, 8) as i64
        );
        assert_eq!(r.score.as_deref(), Some("effective_rank"));
        // Written out by the program with the right values, they pass.
        let again =
            check_rows("p.parquet", &m, 8, &[row(serde_json::to_value(r).unwrap())]).unwrap();
        assert_eq!(&again[0], r);
    }

    #[test]
    fn the_description_is_filled_in_or_checked() {
        let m = model();
        let e = |i: i64, j: i64| json!({"i": i, "j": j});
        let rows = check_rows(
            "p.parquet",
            &m,
            8,
            &[
                row(json!({"heuristic": "mine", "edges": [e(0, 1)]})),
                row(json!({"heuristic": "mine", "edges": [e(0, 1), e(2, 1)]})),
                row(json!({"heuristic": "once", "edges": [e(3, 1)]})),
                row(
                    json!({"heuristic": "told", "label": "told (k=3)", "budgeted": true,
                           "params": "{ \"k\": 3, \"by\": {\"z\": 1, \"a\": 2} }",
                           "edges": [e(0, 1)]}),
                ),
            ],
        )
        .unwrap();
        let described: Vec<(&str, &str, bool)> = rows
            .iter()
            .map(|r| (r.label.as_str(), r.params.as_str(), r.budgeted))
            .collect();
        assert_eq!(
            described,
            [
                // Defaults: the name, no parameters, budgeted when its rows span two budgets.
                ("mine", "{}", true),
                ("mine", "{}", true),
                ("once", "{}", false),
                // Given: kept, the params re-written canonically.
                ("told (k=3)", r#"{"by":{"a":2,"z":1},"k":3}"#, true),
            ]
        );
        let e = refused(json!({"heuristic": "h", "params": "[1]", "edges": [{"i": 0, "j": 1}]}));
        assert!(
            e.contains("column \"params\"") && e.contains("JSON object"),
            "{e}"
        );
        let e = refused(json!({"heuristic": "h", "params": "{", "edges": [{"i": 0, "j": 1}]}));
        assert!(e.contains("column \"params\""), "{e}");
        let e = refused(json!({"heuristic": "h", "label": " ", "edges": [{"i": 0, "j": 1}]}));
        assert!(e.contains("column \"label\""), "{e}");
        let e = refused(json!({"heuristic": "h", "budgeted": "yes", "edges": [{"i": 0, "j": 1}]}));
        assert!(e.contains("column \"budgeted\""), "{e}");
    }

    #[test]
    fn refusals_name_the_row_and_column() {
        let e = refused(json!({"heuristic": "h", "edges": [{"i": 0, "j": 5}]}));
        assert!(
            e.starts_with("p.parquet: row 1, column \"edges\"")
                && e.contains("(0, 5) is outside the graph: nodes are 0..=4"),
            "{e}"
        );
        let e = refused(json!({"heuristic": "h", "edges": []}));
        assert!(
            e.contains("row 1") && e.contains("at least one edge"),
            "{e}"
        );
        let e = refused(json!({"heuristic": "h", "edges": [{"i": 0, "j": 1}, {"i": 0, "j": 1}]}));
        assert!(e.contains("appears twice"), "{e}");
        let e = refused(json!({"heuristic": "", "edges": [{"i": 0, "j": 1}]}));
        assert!(e.contains("column \"heuristic\""), "{e}");
        let e = refused(json!({"heuristic": "h", "method": "full", "edges": [{"i": 0, "j": 1}]}));
        assert!(e.contains("column \"method\""), "{e}");
        let e = refused(json!({"heuristic": "h", "budget": 3, "edges": [{"i": 0, "j": 1}]}));
        assert!(
            e.contains("column \"budget\"") && e.contains("graft computes 1"),
            "{e}"
        );
        let e = refused(json!({"heuristic": "h", "adapters": 2, "edges": [{"i": 0, "j": 1}]}));
        assert!(e.contains("column \"adapters\""), "{e}");
        let e =
            refused(json!({"heuristic": "h", "placement_id": "abc", "edges": [{"i": 0, "j": 1}]}));
        assert!(
            e.contains("column \"placement_id\"") && e.contains("\"abc\""),
            "{e}"
        );
        let e = refused(json!({"heuristic": "h", "draw": -1, "edges": [{"i": 0, "j": 1}]}));
        assert!(e.contains("column \"draw\""), "{e}");
        let e = refused(json!({"heuristic": "h", "edges": [{"i": 0}]}));
        assert!(e.contains("needs integers i and j"), "{e}");
        let e = check_rows("p.parquet", &model(), 8, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no rows"), "{e}");
    }
}
