//! `manual`: the edges listed in the pipeline, `edges = [[0, 1], [4, 2]]`, as one placement.
//! Budget-independent: the budget column is the number of edges. An edge outside the
//! probed graph is an error naming it when the stage runs (the graph is known only then).

use graft_graph::{Edge, GraphError, Placement};
use serde_json::Value;

use super::Entry;
use crate::heuristic::{Context, Description, Fields, Heuristic, ParamError};

pub const ENTRY: Entry = Entry {
    name: "manual",
    about: "the listed edges as one placement",
    build,
    example: r#"{ name = "manual", edges = [[0, 1], [2, 0]] }"#,
};

/// `manual` with its distinct edges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manual {
    pub edges: Vec<Edge>,
}

fn build(f: &mut Fields) -> Result<Box<dyn Heuristic>, ParamError> {
    Ok(Box::new(Manual {
        edges: f.edges("edges")?,
    }))
}

impl Heuristic for Manual {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn describe(&self) -> Description {
        let mut edges = self.edges.clone();
        edges.sort();
        let edges: Vec<Value> = edges.iter().map(|e| Value::from(vec![e.i, e.j])).collect();
        Description::once(ENTRY.name).with("edges", edges)
    }

    fn propose(&self, ctx: &Context<'_>, _budget: usize) -> Result<Vec<Placement>, GraphError> {
        Ok(vec![Placement::new(
            ctx.graph(),
            self.edges.iter().copied(),
        )?])
    }
}

#[cfg(test)]
mod tests {
    use graft_graph::{Edge, Graph};

    use super::*;
    use crate::testing::probe_table;

    #[test]
    fn an_edge_outside_the_graph_is_named() {
        let probe = probe_table(Graph::new(2), |_| 1.0);
        let ctx = Context {
            probe: &probe,
            seed: 0,
        };
        let h = Manual {
            edges: vec![Edge::new(0, 1), Edge::new(0, 9)],
        };
        assert_eq!(
            h.propose(&ctx, 0).unwrap_err().to_string(),
            "edge (0, 9) is outside the graph: nodes are 0..=4 for 2 blocks"
        );
    }
}
