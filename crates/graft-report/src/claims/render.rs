//! The claims as text: a Markdown table for `summary.md`, an HTML table for the page, and
//! `claims.csv` with one line per replicate estimate and one per pooled estimate.

use std::fmt::Write as _;

use super::{ClaimRow, Claims};
use crate::report::esc;

/// Replicates shown as columns of the claims table; with more, the table shows the pooled
/// estimates and the forest plots and `claims.csv` every replicate.
pub const MAX_REPLICATE_COLUMNS: usize = 6;

/// A value in the row's unit: `+3.1` points, `0.42` for ρ, `37 %` of variance.
pub fn fmt_value(unit: &str, v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    match unit {
        "ρ" => format!("{v:.2}"),
        "% of variance" => format!("{v:.0} %"),
        _ => format!("{v:+.1}"),
    }
}

/// `+3.1 [-1.2, 7.4]`, or `+3.1 (no interval)`.
pub fn fmt_estimate(unit: &str, v: f64, ci: Option<(f64, f64)>) -> String {
    match ci {
        Some((lo, hi)) => format!(
            "{} [{}, {}]",
            fmt_value(unit, v),
            fmt_value(unit, lo),
            fmt_value(unit, hi)
        ),
        None => format!("{} (no interval)", fmt_value(unit, v)),
    }
}

fn replicate_cell(r: &ClaimRow, replicate: &str) -> String {
    if let Some(e) = r.estimates.iter().find(|e| e.replicate == replicate) {
        let mark = match e.verdict {
            super::Verdict::Holds => " ✓",
            super::Verdict::DoesNotHold => " ✗",
            super::Verdict::CannotTell => "",
        };
        return format!("{}{mark}", fmt_estimate(r.unit, e.value, e.ci));
    }
    match r.not_measured.iter().find(|(u, _)| u == replicate) {
        Some(_) => "not measured".into(),
        None => "–".into(),
    }
}

/// The pooled estimate; without one, the one estimate that is not a column (C6's one pair of
/// tasks) with its name, else `none`.
fn pooled_cell(r: &ClaimRow, cols: &[String]) -> String {
    match (&r.pooled, r.estimates.as_slice()) {
        (Some(p), _) => fmt_estimate(r.unit, p.estimate, Some((p.lo, p.hi))),
        (None, [e]) if !cols.contains(&e.replicate) => format!(
            "none; {}: {}",
            e.replicate,
            fmt_estimate(r.unit, e.value, e.ci)
        ),
        (None, _) => "none".into(),
    }
}

/// The replicates shown as columns: those of the claims' rows (C6's pairs excepted), when
/// there are few enough.
fn columns(c: &Claims) -> Vec<String> {
    let mut cols: Vec<String> = Vec::new();
    for r in &c.rows {
        for e in &r.estimates {
            if !cols.contains(&e.replicate) && c.replicates.contains(&e.replicate) {
                cols.push(e.replicate.clone());
            }
        }
    }
    if cols.len() > MAX_REPLICATE_COLUMNS {
        return Vec::new();
    }
    cols
}

/// The cells of one row: claim, scope, comparison, the replicates, pooled, agreement,
/// verdict.
fn cells(r: &ClaimRow, cols: &[String]) -> Vec<String> {
    let mut v = vec![
        r.claim.code().to_owned(),
        r.scope.clone(),
        format!("{} ({})", r.comparison, r.unit),
    ];
    v.extend(cols.iter().map(|c| replicate_cell(r, c)));
    v.push(pooled_cell(r, cols));
    v.push(r.agreement());
    v.push(r.verdict.text().to_owned());
    v
}

fn header(cols: &[String]) -> Vec<String> {
    let mut h = vec!["claim".into(), "scope".into(), "comparison".into()];
    h.extend(cols.iter().cloned());
    h.extend([
        "pooled [95 % CI]".into(),
        "agreement".into(),
        "verdict".into(),
    ]);
    h
}

/// The paragraphs under the table: what the verdicts are about, the statements, left-out
/// replicates, rows measured on no replicate.
fn notes(c: &Claims, cols: &[String]) -> Vec<String> {
    let mut out = vec![c.note.clone()];
    for claim in super::Claim::ALL {
        if c.rows.iter().any(|r| r.claim == claim) {
            out.push(format!("{}: {}.", claim.code(), claim.statement()));
        }
    }
    out.push(
        "Each cell is an estimate with its 95 % interval; ✓ marks a replicate whose own \
         interval says the claim holds, ✗ one whose interval says it does not. A verdict is \
         \"cannot tell\" wherever the interval includes the claim's null (0; 0.5 for C6)."
            .into(),
    );
    if cols.is_empty() && !c.rows.is_empty() {
        out.push(format!(
            "With more than {MAX_REPLICATE_COLUMNS} replicates the table shows the pooled \
             estimates; every replicate's is in the forest plots and in claims.csv."
        ));
    }
    if let Some(r) = c
        .rows
        .iter()
        .find(|r| r.pooled.is_none() && r.estimates.len() == 1)
    {
        out.push(format!(
            "Where the pooled column says none and one replicate has an estimate, there is no \
             pooled interval and the verdict is that replicate's alone ({}).",
            r.pooled_basis
        ));
    }
    for (who, why) in &c.left_out {
        out.push(format!("Left out of every claim: {who}: {why}."));
    }
    for r in c.rows.iter().filter(|r| r.estimates.is_empty()) {
        if let Some((_, why)) = r.not_measured.first() {
            out.push(format!(
                "{} {} ({}) was not measured: {why}.",
                r.claim.code(),
                r.comparison,
                r.scope
            ));
        }
    }
    out
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The claims section of `summary.md`.
pub fn markdown(c: &Claims) -> String {
    let cols = columns(c);
    let mut m = String::from("## Claims\n\n");
    if c.rows.is_empty() {
        m.push_str("No claim could be evaluated: no replicate has a finished run.\n\n");
        return m;
    }
    let h = header(&cols);
    let _ = writeln!(m, "| {} |", h.join(" | "));
    let _ = writeln!(m, "|{}", "---|".repeat(h.len()));
    for r in &c.rows {
        let row: Vec<String> = cells(r, &cols).iter().map(|s| md_cell(s)).collect();
        let _ = writeln!(m, "| {} |", row.join(" | "));
    }
    m.push('\n');
    for n in notes(c, &cols) {
        let _ = writeln!(m, "{n}\n");
    }
    m
}

/// The claims section of `report.html`: the table, its notes and the forest plots.
pub fn html(c: &Claims, forests: &[(super::Claim, String)]) -> String {
    let cols = columns(c);
    let mut h = String::from("<section id=\"claims\">\n<h2>Claims</h2>\n");
    if c.rows.is_empty() {
        h.push_str("<p>No claim could be evaluated: no replicate has a finished run.</p>\n");
        h.push_str("</section>\n");
        return h;
    }
    h.push_str("<div class=\"tablewrap\"><table>\n<tr>");
    for name in header(&cols) {
        let _ = write!(h, "<th>{}</th>", esc(&name));
    }
    h.push_str("</tr>\n");
    for r in &c.rows {
        let class = match r.verdict {
            super::Verdict::Holds => "holds",
            super::Verdict::DoesNotHold => "nothold",
            super::Verdict::CannotTell => "cannot",
        };
        h.push_str("<tr>");
        let cs = cells(r, &cols);
        let last = cs.len() - 1;
        for (k, cell) in cs.iter().enumerate() {
            if k == last {
                let _ = write!(h, "<td class=\"{class}\">{}</td>", esc(cell));
            } else {
                let _ = write!(h, "<td>{}</td>", esc(cell));
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table></div>\n");
    for n in notes(c, &cols) {
        let _ = writeln!(h, "<p class=\"note\">{}</p>", esc(&n));
    }
    for (claim, svg) in forests {
        let _ = writeln!(
            h,
            "<figure class=\"forest\"><h3>{}: {}</h3><div class=\"panel\">{svg}</div>\
             <figcaption>Each replicate's estimate with its 95 % interval (squares) and the \
             pooled estimate (diamond); the dashed line is the claim's null. Green: holds, \
             red: does not hold, grey: cannot tell.</figcaption></figure>",
            claim.code(),
            esc(claim.statement())
        );
    }
    h.push_str("</section>\n");
    h
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn csv_num(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map_or(String::new(), |x| format!("{x:.6}"))
}

fn csv_line(r: &ClaimRow, replicate: &str, rest: [String; 5]) -> String {
    let [value, lo, hi, basis, verdict] = rest;
    [
        r.claim.code().to_owned(),
        csv_field(r.claim.statement()),
        csv_field(&r.scope),
        csv_field(&r.comparison),
        csv_field(r.unit),
        csv_field(replicate),
        value,
        lo,
        hi,
        csv_field(&basis),
        verdict,
    ]
    .join(",")
}

/// `claims.csv`: per row, one line per replicate estimate, one per replicate not measured
/// (empty value, the reason as basis) and one `pooled` line.
pub fn csv(c: &Claims) -> String {
    let mut out = String::from(
        "claim,statement,scope,comparison,unit,replicate,estimate,lo,hi,basis,verdict\n",
    );
    for r in &c.rows {
        for e in &r.estimates {
            let line = csv_line(
                r,
                &e.replicate,
                [
                    csv_num(Some(e.value)),
                    csv_num(e.ci.map(|c| c.0)),
                    csv_num(e.ci.map(|c| c.1)),
                    e.basis.clone(),
                    e.verdict.text().into(),
                ],
            );
            let _ = writeln!(out, "{line}");
        }
        for (who, why) in &r.not_measured {
            let line = csv_line(
                r,
                who,
                [
                    String::new(),
                    String::new(),
                    String::new(),
                    why.clone(),
                    "not measured".into(),
                ],
            );
            let _ = writeln!(out, "{line}");
        }
        let p = r.pooled.as_ref();
        let line = csv_line(
            r,
            "pooled",
            [
                csv_num(p.map(|p| p.estimate)),
                csv_num(p.map(|p| p.lo)),
                csv_num(p.map(|p| p.hi)),
                r.pooled_basis.clone(),
                r.verdict.text().into(),
            ],
        );
        let _ = writeln!(out, "{line}");
    }
    out
}
