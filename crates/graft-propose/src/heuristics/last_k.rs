//! `last-k`: the k parallel edges (j = i + 1) nearest the head, ..., (2L − 1, 2L).
//! A budget above the 2L parallel edges is skipped.

use graft_graph::{Edge, Graph, GraphError, Placement};

use super::Entry;
use crate::heuristic::{Context, Description, Fields, Heuristic, ParamError};

pub const ENTRY: Entry = Entry {
    name: "last-k",
    about: "the k parallel edges nearest the head",
    build,
    example: r#"{ name = "last-k" }"#,
};

/// `last-k`; no parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastK;

fn build(_: &mut Fields) -> Result<Box<dyn Heuristic>, ParamError> {
    Ok(Box::new(LastK))
}

impl Heuristic for LastK {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn describe(&self) -> Description {
        Description::budgeted(ENTRY.name)
    }

    fn candidates(&self, graph: Graph) -> usize {
        2 * graph.layers
    }

    fn propose(&self, ctx: &Context<'_>, budget: usize) -> Result<Vec<Placement>, GraphError> {
        let parallel = self.candidates(ctx.graph());
        if budget > parallel {
            return Ok(Vec::new());
        }
        let edges = (parallel - budget..parallel).map(|i| Edge::new(i, i + 1));
        Ok(vec![Placement::new(ctx.graph(), edges)?])
    }
}

#[cfg(test)]
mod tests {
    use graft_graph::{Edge, Graph};

    use super::*;
    use crate::testing::{edges_of, probe_table};

    #[test]
    fn last_k_on_two_blocks() {
        let probe = probe_table(Graph::new(2), |_| 1.0);
        let ctx = Context {
            probe: &probe,
            seed: 0,
        };
        assert_eq!(
            edges_of(&LastK.propose(&ctx, 1).unwrap()),
            [vec![Edge::new(3, 4)]]
        );
        assert_eq!(
            edges_of(&LastK.propose(&ctx, 3).unwrap()),
            [vec![Edge::new(1, 2), Edge::new(2, 3), Edge::new(3, 4)]]
        );
        assert_eq!(
            LastK.propose(&ctx, 4).unwrap(),
            vec![Graph::new(2).parallel_all()]
        );
        assert!(LastK.propose(&ctx, 5).unwrap().is_empty());
    }
}
