//! `first-k`: the k parallel edges (j = i + 1) nearest the input, (0, 1), (1, 2), ...
//! A budget above the 2L parallel edges is skipped.

use graft_graph::{Edge, Graph, GraphError, Placement};

use super::Entry;
use crate::heuristic::{Context, Description, Fields, Heuristic, ParamError};

pub const ENTRY: Entry = Entry {
    name: "first-k",
    about: "the k parallel edges nearest the input",
    build,
    example: r#"{ name = "first-k" }"#,
};

/// `first-k`; no parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstK;

fn build(_: &mut Fields) -> Result<Box<dyn Heuristic>, ParamError> {
    Ok(Box::new(FirstK))
}

impl Heuristic for FirstK {
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
        if budget > self.candidates(ctx.graph()) {
            return Ok(Vec::new());
        }
        let edges = (0..budget).map(|i| Edge::new(i, i + 1));
        Ok(vec![Placement::new(ctx.graph(), edges)?])
    }
}

#[cfg(test)]
mod tests {
    use graft_graph::{Edge, Graph};

    use super::*;
    use crate::testing::{edges_of, probe_table};

    #[test]
    fn first_k_on_two_blocks() {
        let probe = probe_table(Graph::new(2), |_| 1.0);
        let ctx = Context {
            probe: &probe,
            seed: 0,
        };
        assert_eq!(
            edges_of(&FirstK.propose(&ctx, 1).unwrap()),
            [vec![Edge::new(0, 1)]]
        );
        assert_eq!(
            edges_of(&FirstK.propose(&ctx, 3).unwrap()),
            [vec![Edge::new(0, 1), Edge::new(1, 2), Edge::new(2, 3)]]
        );
        assert_eq!(
            FirstK.propose(&ctx, 4).unwrap(),
            vec![Graph::new(2).parallel_all()]
        );
        assert!(FirstK.propose(&ctx, 5).unwrap().is_empty());
    }
}
