//! The results table written out: Markdown (`results.md`, also in `summary.md`), CSV
//! (`results.csv`, full precision), booktabs LaTeX (`results.tex`) and a section of
//! `report.html`. Every form carries the same cells, bold marks and notes.

use std::fmt::Write as _;

use super::{ResultCell, ResultsColumn, ResultsRow, ResultsTable, fmt_millions};
use crate::report::page::esc;
use crate::report::tables::csv_line;

/// More task columns than this make the LaTeX table page-wide, scaled to the text width and
/// with its headers rotated, as the 19-task tables are printed.
const WIDE: usize = 8;

/// The files the table is written as, named in the notes of the pages.
pub const FILES: [&str; 3] = ["results.md", "results.csv", "results.tex"];

fn params_text(r: &ResultsRow) -> String {
    r.params_millions.map_or("–".into(), fmt_millions)
}

fn adapters_text(r: &ResultsRow) -> String {
    r.adapters.map_or("–".into(), |a| a.to_string())
}

/// `68.9 ± 0.2` (the mean alone in the derived columns and with one run).
fn cell_text(c: &ResultCell) -> String {
    match c.std {
        Some(s) => format!("{:.1} ± {s:.1}", c.mean),
        None => format!("{:.1}", c.mean),
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The table in Markdown with its notes as paragraphs under it.
pub fn markdown(t: &ResultsTable) -> String {
    let mut m = String::new();
    let heads: Vec<String> = t.columns.iter().map(|c| md_cell(&c.title)).collect();
    let _ = writeln!(
        m,
        "| Method | Params (M) | Adapters | {} |",
        heads.join(" | ")
    );
    let _ = writeln!(m, "|:---|---:|---:|{}", "---:|".repeat(t.columns.len()));
    for r in &t.rows {
        let cells: Vec<String> = r
            .cells
            .iter()
            .map(|c| match c {
                Some(c) if c.bold => format!("**{}**", cell_text(c)),
                Some(c) => cell_text(c),
                None => "–".into(),
            })
            .collect();
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} |",
            md_cell(&r.method),
            params_text(r),
            adapters_text(r),
            cells.join(" | ")
        );
    }
    for n in &t.notes {
        let _ = write!(m, "\n{n}\n");
    }
    m
}

fn csv_header(columns: &[ResultsColumn]) -> Vec<String> {
    let mut h: Vec<String> = ["method", "adapters", "params_millions"]
        .map(String::from)
        .to_vec();
    for c in columns {
        if c.derived {
            h.push(c.key.clone());
        } else {
            h.extend(["mean", "std", "runs"].map(|s| format!("{}_{s}", c.key)));
        }
    }
    h
}

/// The table as CSV at full precision: per task `_mean`, `_std` and `_runs` (empty where
/// missing), one value per mean column.
pub fn csv(t: &ResultsTable) -> String {
    let mut out = csv_line(&csv_header(&t.columns));
    let num = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for r in &t.rows {
        let mut f = vec![
            r.method.clone(),
            r.adapters.map(|a| a.to_string()).unwrap_or_default(),
            num(r.params_millions),
        ];
        for (c, cell) in t.columns.iter().zip(&r.cells) {
            f.push(num(cell.as_ref().map(|c| c.mean)));
            if !c.derived {
                f.push(num(cell.as_ref().and_then(|c| c.std)));
                f.push(
                    cell.as_ref()
                        .map_or(String::new(), |c| c.by_seed.len().to_string()),
                );
            }
        }
        out.push_str(&csv_line(&f));
    }
    out
}

/// Text for LaTeX: its special characters escaped, and the Unicode the report writes
/// (γ, ±, en and minus dashes) as LaTeX.
pub fn tex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            '±' => out.push_str("$\\pm$"),
            '–' => out.push_str("--"),
            '−' => out.push_str("$-$"),
            'α' => out.push_str("$\\alpha$"),
            'β' => out.push_str("$\\beta$"),
            'γ' => out.push_str("$\\gamma$"),
            'λ' => out.push_str("$\\lambda$"),
            'ρ' => out.push_str("$\\rho$"),
            'σ' => out.push_str("$\\sigma$"),
            'τ' => out.push_str("$\\tau$"),
            _ => out.push(c),
        }
    }
    out
}

fn tex_cell(c: Option<&ResultCell>) -> String {
    let Some(c) = c else {
        return "--".into();
    };
    let mean = format!("{:.1}", c.mean);
    let mean = if c.bold {
        format!("\\textbf{{{mean}}}")
    } else {
        mean
    };
    match c.std {
        Some(s) => format!("{mean}{{\\scriptsize$\\pm${s:.1}}}"),
        None => mean,
    }
}

/// The header row over the task columns naming their VTAB-1k group, with its rules; empty
/// when no task is one of VTAB-1k's.
fn tex_group_header(columns: &[ResultsColumn]) -> String {
    let mut spans: Vec<(Option<&str>, usize, usize)> = Vec::new();
    for (k, c) in columns.iter().enumerate() {
        let g = c.group.map(|g| g.name());
        match spans.last_mut() {
            Some(last) if g.is_some() && last.0 == g => last.2 = k,
            _ => spans.push((g, k, k)),
        }
    }
    if spans.iter().all(|s| s.0.is_none()) {
        return String::new();
    }
    let mut cells = vec![String::new(); 3];
    let mut rules = String::new();
    for (g, a, b) in spans {
        match g {
            Some(g) => {
                cells.push(format!("\\multicolumn{{{}}}{{c}}{{{g}}}", b - a + 1));
                let _ = write!(rules, "\\cmidrule(lr){{{}-{}}}", a + 4, b + 4);
            }
            None => cells.extend(std::iter::repeat_n(String::new(), b - a + 1)),
        }
    }
    format!("{} \\\\\n{rules}\n", cells.join(" & "))
}

/// The comment naming the packages, the float's opening, caption and label.
fn tex_opening(title: &str, env: &str, wide: bool) -> String {
    let packages = if wide {
        " and \\usepackage{graphicx} (\\resizebox, \\rotatebox)"
    } else {
        ""
    };
    format!(
        "% {title}: the results table of graft's report.\n\
         % Needs \\usepackage{{booktabs}}{packages}.\n\
         \\begin{{{env}}}[t]\n\\centering\n\
         \\caption{{{}: top-1 test accuracy (\\%), mean $\\pm$ standard deviation over seeds.}}\n\
         \\label{{tab:graft-results}}\n",
        tex_escape(title)
    )
}

/// The column headers: task names rotated in a wide table.
fn tex_heads(columns: &[ResultsColumn], wide: bool) -> String {
    let heads: Vec<String> = columns
        .iter()
        .map(|c| match (wide, c.derived) {
            (true, false) => format!("\\rotatebox{{90}}{{{}}}", tex_escape(&c.title)),
            _ => tex_escape(&c.title),
        })
        .collect();
    format!(
        "Method & Params (M) & Adapters & {} \\\\\n\\midrule\n",
        heads.join(" & ")
    )
}

fn tex_row(r: &ResultsRow) -> String {
    let cells: Vec<String> = r.cells.iter().map(|c| tex_cell(c.as_ref())).collect();
    format!(
        "{} & {} & {} & {} \\\\\n",
        tex_escape(&r.method),
        tex_escape(&params_text(r)),
        tex_escape(&adapters_text(r)),
        cells.join(" & ")
    )
}

/// The table as a booktabs `table` (page-wide `table*`, scaled and with rotated headers,
/// beyond [`WIDE`] task columns) with the notes under it.
pub fn latex(t: &ResultsTable, title: &str) -> String {
    let wide = t.columns.iter().filter(|c| !c.derived).count() > WIDE;
    let env = if wide { "table*" } else { "table" };
    let mut s = tex_opening(title, env, wide);
    if wide {
        s.push_str("\\resizebox{\\textwidth}{!}{%\n");
    }
    let _ = writeln!(
        s,
        "\\begin{{tabular}}{{lrr{}}}\n\\toprule",
        "c".repeat(t.columns.len())
    );
    s.push_str(&tex_group_header(&t.columns));
    s.push_str(&tex_heads(&t.columns, wide));
    for r in &t.rows {
        s.push_str(&tex_row(r));
    }
    s.push_str("\\bottomrule\n\\end{tabular}");
    s.push_str(if wide { "}\n" } else { "\n" });
    s.push_str("\\par\\smallskip\n{\\footnotesize\\raggedright\n");
    for n in &t.notes {
        let _ = writeln!(s, "{}\\par", tex_escape(n));
    }
    let _ = writeln!(s, "}}\n\\end{{{env}}}");
    s
}

fn html_group_header(columns: &[ResultsColumn]) -> String {
    if columns.iter().all(|c| c.group.is_none()) {
        return String::new();
    }
    let mut h = String::from("<tr><th colspan=\"3\"></th>");
    let mut k = 0;
    while k < columns.len() {
        let g = columns[k].group;
        let n = columns[k..]
            .iter()
            .take_while(|c| g.is_some() && c.group == g)
            .count()
            .max(1);
        let name = g.map_or("", |g| g.name());
        let _ = write!(h, "<th colspan=\"{n}\">{name}</th>");
        k += n;
    }
    h.push_str("</tr>\n");
    h
}

/// The table as a section of `report.html`: best cells in bold, the notes under it.
pub fn html_section(t: &ResultsTable) -> String {
    let mut h = String::from("<section id=\"results\">\n<h2>Results table</h2>\n");
    let files: Vec<String> = FILES.iter().map(|f| format!("<code>{f}</code>")).collect();
    let _ = writeln!(
        h,
        "<p class=\"note\">The table PETL papers print for VTAB-1k, ready to paste as {}.</p>",
        files.join(", ")
    );
    h.push_str("<div class=\"tablewrap\"><table>\n");
    h.push_str(&html_group_header(&t.columns));
    h.push_str("<tr><th>Method</th><th>Params (M)</th><th>Adapters</th>");
    for c in &t.columns {
        let _ = write!(h, "<th>{}</th>", esc(&c.title));
    }
    h.push_str("</tr>\n");
    for r in &t.rows {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
            esc(&r.method),
            params_text(r),
            adapters_text(r)
        );
        for c in &r.cells {
            let text = match c {
                Some(c) if c.bold => format!("<b>{}</b>", esc(&cell_text(c))),
                Some(c) => esc(&cell_text(c)),
                None => "–".into(),
            };
            let _ = write!(h, "<td class=\"num\">{text}</td>");
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table></div>\n");
    for n in &t.notes {
        let _ = writeln!(h, "<p class=\"note\">{}</p>", esc(n));
    }
    h.push_str("</section>\n");
    h
}
