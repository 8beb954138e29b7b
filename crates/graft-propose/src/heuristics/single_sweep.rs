//! `single-sweep`: one placement per edge, each a single adapter, for a map of what one
//! adapter alone does. `kinds` keeps only some edge kinds (default all four); `stride`
//! keeps every stride-th of those edges in row-major order (by i, then j), starting with
//! the first. Budget-independent: the budget column is 1.

use graft_graph::{EdgeKind, GraphError, Placement};

use super::Entry;
use crate::heuristic::{Context, Description, Fields, Heuristic, ParamError};

pub const ENTRY: Entry = Entry {
    name: "single-sweep",
    about: "one single-adapter placement per edge, optionally some kinds or every stride-th",
    build,
    example: r#"{ name = "single-sweep", kinds = ["parallel", "recurrent"], stride = 1 }"#,
};

/// `single-sweep` over the edges of some kinds, every `stride`-th.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingleSweep {
    pub kinds: Vec<EdgeKind>,
    pub stride: usize,
}

fn build(f: &mut Fields) -> Result<Box<dyn Heuristic>, ParamError> {
    Ok(Box::new(SingleSweep {
        kinds: f.kinds("kinds")?,
        stride: f.count("stride", 1)?,
    }))
}

impl Heuristic for SingleSweep {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn describe(&self) -> Description {
        let kinds: Vec<&str> = self.kinds.iter().map(|k| k.name()).collect();
        Description::once(ENTRY.name)
            .with("kinds", kinds)
            .with("stride", self.stride)
    }

    fn propose(&self, ctx: &Context<'_>, _budget: usize) -> Result<Vec<Placement>, GraphError> {
        ctx.graph()
            .edges()
            .filter(|e| self.kinds.contains(&e.kind()))
            .step_by(self.stride)
            .map(|e| Placement::new(ctx.graph(), [e]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use graft_graph::{Edge, Graph};

    use super::*;
    use crate::testing::{edges_of, probe_table};

    fn singles(edges: &[(usize, usize)]) -> Vec<Vec<Edge>> {
        edges.iter().map(|&(i, j)| vec![Edge::new(i, j)]).collect()
    }

    #[test]
    fn single_sweep_on_two_blocks() {
        let probe = probe_table(Graph::new(2), |_| 1.0);
        let ctx = Context {
            probe: &probe,
            seed: 0,
        };
        let sweep = |kinds: &[EdgeKind], stride| {
            let h = SingleSweep {
                kinds: kinds.to_vec(),
                stride,
            };
            edges_of(&h.propose(&ctx, 0).unwrap())
        };
        let both = [EdgeKind::Parallel, EdgeKind::Recurrent];
        assert_eq!(
            sweep(&both, 1),
            singles(&[
                (0, 1),
                (1, 0),
                (1, 2),
                (2, 0),
                (2, 1),
                (2, 3),
                (3, 0),
                (3, 1),
                (3, 2),
                (3, 4),
                (4, 0),
                (4, 1),
                (4, 2),
                (4, 3),
            ])
        );
        assert_eq!(sweep(&both, 4), singles(&[(0, 1), (2, 1), (3, 2), (4, 2)]));
        assert_eq!(sweep(&EdgeKind::ALL, 1).len(), 25);
        assert_eq!(
            sweep(&[EdgeKind::Sequential], 2),
            singles(&[(0, 0), (2, 2), (4, 4)])
        );
    }
}
