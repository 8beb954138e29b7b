//! Forest plots, one per claim: for every row of the claim, each replicate's estimate with
//! its 95 % interval and the pooled estimate, on one axis with the claim's null marked.
//! Written as SVG text (a few lines and shapes need no plotting library).

use std::fmt::Write as _;

use super::render::fmt_value;
use super::{Claim, ClaimRow, Claims, Verdict};
use crate::report::esc;

/// Replicates drawn per row; a row with more (pairs of many tasks) draws its pooled
/// estimate only, and says so.
const MAX_DRAWN: usize = 24;
/// C2's rows drawn: the three ranks (claims.csv has every score).
const C2_DRAWN: [&str; 3] = ["rank@1e-2", "rank@1e-3", "rank@1e-4"];

const WIDTH: f64 = 760.0;
const LABEL: f64 = 300.0;
const LINE: f64 = 16.0;
const PAD: f64 = 14.0;

/// One line of a plot.
enum Line<'a> {
    Heading(String),
    Point {
        label: String,
        value: f64,
        ci: Option<(f64, f64)>,
        pooled: bool,
        verdict: Verdict,
        unit: &'a str,
    },
    Note(String),
}

fn colour(v: Verdict) -> &'static str {
    match v {
        Verdict::Holds => "#1a9850",
        Verdict::DoesNotHold => "#d73027",
        Verdict::CannotTell => "#777777",
    }
}

fn lines(rows: &[&ClaimRow]) -> Vec<Line<'static>> {
    let mut out = Vec::new();
    for r in rows {
        let unit: &'static str = match r.unit {
            "ρ" => "ρ",
            "% of variance" => "% of variance",
            _ => "points",
        };
        out.push(Line::Heading(format!("{} — {}", r.scope, r.comparison)));
        if r.estimates.len() > MAX_DRAWN {
            out.push(Line::Note(format!(
                "{} estimates (in claims.csv); pooled only",
                r.estimates.len()
            )));
        } else {
            for e in &r.estimates {
                out.push(Line::Point {
                    label: e.replicate.clone(),
                    value: e.value,
                    ci: e.ci,
                    pooled: false,
                    verdict: e.verdict,
                    unit,
                });
            }
        }
        match &r.pooled {
            Some(p) => out.push(Line::Point {
                label: "pooled".into(),
                value: p.estimate,
                ci: Some((p.lo, p.hi)),
                pooled: true,
                verdict: r.verdict,
                unit,
            }),
            None => out.push(Line::Note(r.pooled_basis.clone())),
        }
    }
    out
}

/// The axis range: every value and interval end, and the null, padded.
fn range(lines: &[Line], null: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (null, null);
    for l in lines {
        if let Line::Point { value, ci, .. } = l {
            for v in [Some(*value), ci.map(|c| c.0), ci.map(|c| c.1)]
                .into_iter()
                .flatten()
                .filter(|v| v.is_finite())
            {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
    }
    let pad = ((hi - lo) * 0.05).max(1e-6);
    (lo - pad, hi + pad)
}

fn draw_point(s: &mut String, y: f64, x: &dyn Fn(f64) -> f64, l: &Line) {
    let Line::Point {
        label,
        value,
        ci,
        pooled,
        verdict,
        unit,
    } = l
    else {
        return;
    };
    let c = colour(*verdict);
    let weight = if *pooled { "bold" } else { "normal" };
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" font-weight=\"{weight}\" \
         text-anchor=\"end\">{}</text>",
        LABEL - 8.0,
        y + 4.0,
        esc(label)
    );
    if let Some((lo, hi)) = ci {
        let _ = write!(
            s,
            "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{c}\" \
             stroke-width=\"1.5\"/>",
            x(*lo),
            x(*hi)
        );
    }
    let cx = x(*value);
    if *pooled {
        let _ = write!(
            s,
            "<polygon points=\"{:.1},{y:.1} {cx:.1},{:.1} {:.1},{y:.1} {cx:.1},{:.1}\" \
             fill=\"{c}\"/>",
            cx - 6.0,
            y - 5.0,
            cx + 6.0,
            y + 5.0
        );
    } else {
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"7\" height=\"7\" fill=\"{c}\"/>",
            cx - 3.5,
            y - 3.5
        );
    }
    let _ = write!(
        s,
        "<title>{}: {}</title>",
        esc(label),
        esc(&super::render::fmt_estimate(unit, *value, *ci))
    );
}

/// The SVG of one claim's rows.
fn forest(claim: Claim, rows: &[&ClaimRow]) -> String {
    let ls = lines(rows);
    let (null, _) = claim.null();
    let (lo, hi) = range(&ls, null);
    let height = PAD * 2.0 + LINE * (ls.len() as f64 + 1.5);
    let plot = WIDTH - LABEL - PAD;
    let x = move |v: f64| LABEL + plot * (v - lo) / (hi - lo);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {WIDTH} {height:.0}\" font-family=\"sans-serif\">"
    );
    let bottom = height - PAD - LINE;
    let _ = write!(
        s,
        "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{PAD}\" y2=\"{bottom:.1}\" stroke=\"#444\" \
         stroke-dasharray=\"4 3\"/>",
        x(null)
    );
    let unit = rows.first().map_or("points", |r| r.unit);
    for v in [lo, null, hi] {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\" \
             fill=\"#444\">{}</text>",
            x(v),
            bottom + 12.0,
            esc(&fmt_value(unit, v))
        );
    }
    for (k, l) in ls.iter().enumerate() {
        let y = PAD + LINE * (k as f64 + 0.5);
        match l {
            Line::Heading(t) => {
                let _ = write!(
                    s,
                    "<text x=\"4\" y=\"{:.1}\" font-size=\"11\" font-style=\"italic\">{}</text>",
                    y + 4.0,
                    esc(t)
                );
            }
            Line::Note(t) => {
                let _ = write!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#666\">{}</text>",
                    LABEL,
                    y + 4.0,
                    esc(t)
                );
            }
            Line::Point { .. } => draw_point(&mut s, y, &x, l),
        }
    }
    s.push_str("</svg>");
    s
}

/// One forest plot per claim that has a row with an estimate.
pub fn forest_svgs(c: &Claims) -> Vec<(Claim, String)> {
    Claim::ALL
        .iter()
        .filter_map(|&claim| {
            let rows: Vec<&ClaimRow> = c
                .rows
                .iter()
                .filter(|r| r.claim == claim && !r.estimates.is_empty())
                .filter(|r| claim != Claim::C2 || C2_DRAWN.contains(&r.comparison.as_str()))
                .collect();
            (!rows.is_empty()).then(|| (claim, forest(claim, &rows)))
        })
        .collect()
}
