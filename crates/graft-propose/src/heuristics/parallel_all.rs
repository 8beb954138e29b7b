//! `parallel-all`: the 2L parallel edges, "adapters in every block", the usual baseline.
//! Budget-independent: one placement, its budget column 2L.

use graft_graph::{GraphError, Placement};

use super::Entry;
use crate::heuristic::{Context, Description, Fields, Heuristic, ParamError};

pub const ENTRY: Entry = Entry {
    name: "parallel-all",
    about: "the 2L parallel edges: adapters in every block",
    build,
    example: r#"{ name = "parallel-all" }"#,
};

/// `parallel-all`; no parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParallelAll;

fn build(_: &mut Fields) -> Result<Box<dyn Heuristic>, ParamError> {
    Ok(Box::new(ParallelAll))
}

impl Heuristic for ParallelAll {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn describe(&self) -> Description {
        Description::once(ENTRY.name)
    }

    fn propose(&self, ctx: &Context<'_>, _budget: usize) -> Result<Vec<Placement>, GraphError> {
        Ok(vec![ctx.graph().parallel_all()])
    }
}

#[cfg(test)]
mod tests {
    use graft_graph::{Edge, Graph};

    use super::*;
    use crate::testing::{edges_of, probe_table};

    #[test]
    fn parallel_all_on_two_blocks() {
        let probe = probe_table(Graph::new(2), |_| 1.0);
        let ctx = Context {
            probe: &probe,
            seed: 0,
        };
        let want = vec![
            Edge::new(0, 1),
            Edge::new(1, 2),
            Edge::new(2, 3),
            Edge::new(3, 4),
        ];
        assert_eq!(edges_of(&ParallelAll.propose(&ctx, 0).unwrap()), [want]);
    }
}
