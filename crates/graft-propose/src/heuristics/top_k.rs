//! `top-k`: the k edges with the highest probe score, in [`better_first`]'s order: ties of
//! the integer `rank` broken by the edge's `effective_rank`, then by the smaller (i, j).

use graft_graph::{GraphError, Placement};

use super::Entry;
use crate::heuristic::{Context, Description, Fields, Heuristic, ParamError};
use crate::probe::{Score, better_first};

pub const ENTRY: Entry = Entry {
    name: "top-k",
    about: "the k edges with the highest probe score",
    build,
    example: r#"{ name = "top-k", score = "rank" }"#,
};

/// `top-k` by one score column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopK {
    pub score: Score,
}

fn build(f: &mut Fields) -> Result<Box<dyn Heuristic>, ParamError> {
    Ok(Box::new(TopK {
        score: f.score("score", "rank")?,
    }))
}

impl Heuristic for TopK {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn score(&self) -> Option<Score> {
        Some(self.score)
    }

    /// `top-k`, or `top-k by <score>` when the score is not `rank`.
    fn describe(&self) -> Description {
        let label = match self.score.name() {
            "rank" => ENTRY.name.to_owned(),
            s => format!("{} by {s}", ENTRY.name),
        };
        Description::budgeted(label).with("score", self.score.name())
    }

    fn propose(&self, ctx: &Context<'_>, budget: usize) -> Result<Vec<Placement>, GraphError> {
        let mut scores = ctx.probe.scores(self.score);
        if budget > scores.len() {
            return Ok(Vec::new());
        }
        scores.sort_by(better_first);
        let edges = scores.into_iter().take(budget).map(|s| s.edge);
        Ok(vec![Placement::new(ctx.graph(), edges)?])
    }
}
