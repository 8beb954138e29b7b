//! The two pages, `report.html` and `summary.md`: findings, figures and tables laid out.

use std::fmt::Write as _;

use super::results::{self, ResultsTable};
use super::tables::{Cell, TableData};
use crate::analysis::Analysis;
use crate::figures::{Figure, Panel};

/// Rows of one table in `summary.md`; the CSV and the HTML page have all.
const MD_ROWS: usize = 60;

pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;\
max-width:1240px;padding:0 1em;color:#222;line-height:1.45}\
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}\
.meta{color:#666}figure{margin:1.5em 0;padding:1em;border:1px solid #e3e3e3;border-radius:6px}\
figure h3{margin-top:0}figcaption{color:#444;font-style:italic;margin-top:.5em}\
.panel svg{max-width:100%;height:auto;display:block}.panel h4{margin:.6em 0 .2em}\
.skipped{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em .8em}\
.tablewrap{overflow-x:auto}table{border-collapse:collapse;font-size:.85em;margin:.5em 0}\
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}\
th{background:#f4f4f4}tr:nth-child(even) td{background:#fafafa}td.num{text-align:right;white-space:nowrap}\
.note{color:#555;font-size:.9em}td.holds{color:#1a9850;font-weight:bold}\
td.nothold{color:#d73027;font-weight:bold}td.cannot{color:#777}";

pub(crate) fn html(
    title: &str,
    a: &Analysis,
    figs: &[Figure],
    tabs: &[TableData],
    finds: &[(Option<String>, String)],
    res: &ResultsTable,
    claims: &str,
) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(title),
        esc(title)
    );
    let _ = writeln!(
        h,
        "<p class=\"meta\">Tasks: {}. Accuracies are top-1 % on the test split, mean ± standard deviation over seeds. Tables are also in the CSV files beside this page.</p>",
        esc(&a
            .tasks
            .iter()
            .map(|t| t.task.as_str())
            .collect::<Vec<_>>()
            .join(", "))
    );
    h.push_str(claims);
    h.push_str("<section id=\"findings\">\n<h2>Findings</h2>\n");
    let mut current: Option<&Option<String>> = None;
    for (task, s) in finds {
        if current != Some(task) {
            if current.is_some() {
                h.push_str("</ul>\n");
            }
            if a.tasks.len() > 1 || task.is_none() {
                let _ = writeln!(
                    h,
                    "<h3>{}</h3>",
                    task.as_ref()
                        .map_or("Across tasks".to_owned(), |t| format!("Task {}", esc(t)))
                );
            }
            h.push_str("<ul>\n");
            current = Some(task);
        }
        let _ = writeln!(h, "<li>{}</li>", esc(s));
    }
    if current.is_some() {
        h.push_str("</ul>\n");
    }
    h.push_str("</section>\n");
    h.push_str(&results::html_section(res));
    h.push_str("<section id=\"figures\">\n<h2>Figures</h2>\n");
    for f in figs {
        let _ = writeln!(
            h,
            "<figure class=\"figure\" id=\"figure-{0}\" data-figure=\"{0}\">\n<h3>Figure {0}. {1}</h3>",
            f.number,
            esc(&f.title)
        );
        for p in &f.panels {
            match p {
                Panel::Svg { heading, svg } => {
                    h.push_str("<div class=\"panel\">\n");
                    if let Some(hd) = heading {
                        let _ = writeln!(h, "<h4>{}</h4>", esc(hd));
                    }
                    h.push_str(svg.trim());
                    h.push_str("\n</div>\n");
                }
                Panel::Skipped { heading, reason } => {
                    h.push_str("<div class=\"panel\">\n");
                    if let Some(hd) = heading {
                        let _ = writeln!(h, "<h4>{}</h4>", esc(hd));
                    }
                    let _ = writeln!(
                        h,
                        "<p class=\"skipped\">Not drawn: {}.</p>\n</div>",
                        esc(reason)
                    );
                }
            }
        }
        let _ = writeln!(h, "<figcaption>{}</figcaption>\n</figure>", esc(&f.caption));
    }
    h.push_str("</section>\n<section id=\"tables\">\n<h2>Tables</h2>\n");
    for t in tabs {
        let _ = writeln!(
            h,
            "<h3 id=\"{}\">{}</h3>\n<p class=\"note\">{} (<code>{}</code>)</p>",
            esc(t.file.trim_end_matches(".csv")),
            esc(&t.title),
            esc(&t.note),
            esc(&t.file)
        );
        if t.rows.is_empty() {
            h.push_str("<p>None.</p>\n");
            continue;
        }
        h.push_str("<div class=\"tablewrap\"><table>\n<tr>");
        for c in &t.columns {
            let name = if c.acc {
                format!("{} (%)", c.name)
            } else {
                c.name.clone()
            };
            let _ = write!(h, "<th>{}</th>", esc(&name.replace('_', " ")));
        }
        h.push_str("</tr>\n");
        for row in t.shown_rows() {
            h.push_str("<tr>");
            for c in row {
                let class = if matches!(c, Cell::Text(_)) {
                    ""
                } else {
                    " class=\"num\""
                };
                let _ = write!(h, "<td{class}>{}</td>", esc(&c.display()));
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table></div>\n");
    }
    h.push_str("</section>\n</body>\n</html>\n");
    h
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub(crate) fn markdown(
    title: &str,
    a: &Analysis,
    figs: &[Figure],
    tabs: &[TableData],
    finds: &[(Option<String>, String)],
    res: &ResultsTable,
    claims: &str,
) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# {title}\n");
    let _ = writeln!(
        m,
        "Tasks: {}. Accuracies are top-1 % on the test split, mean ± standard deviation over seeds. \
         Figures are in `report.html`; every table is also a CSV file.\n",
        a.tasks
            .iter()
            .map(|t| t.task.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    m.push_str(claims);
    m.push_str("## Findings\n");
    let mut current: Option<&Option<String>> = None;
    for (task, s) in finds {
        if current != Some(task) {
            if a.tasks.len() > 1 || task.is_none() {
                let _ = writeln!(
                    m,
                    "\n### {}\n",
                    task.as_ref()
                        .map_or("Across tasks".to_owned(), |t| format!("Task {t}"))
                );
            } else {
                m.push('\n');
            }
            current = Some(task);
        }
        let _ = writeln!(m, "- {s}");
    }
    let _ = write!(
        m,
        "\n## Results table\n\nAlso `results.md`, `results.csv` and `results.tex`.\n\n{}",
        results::markdown(res)
    );
    m.push_str("\n## Figures\n\n");
    for f in figs {
        let mut parts = Vec::new();
        for p in &f.panels {
            match p {
                Panel::Svg { heading, .. } => parts.push(match heading {
                    Some(hd) => format!("{hd}: drawn"),
                    None => "drawn".into(),
                }),
                Panel::Skipped { heading, reason } => parts.push(match heading {
                    Some(hd) => format!("{hd}: not drawn, {reason}"),
                    None => format!("not drawn: {reason}"),
                }),
            }
        }
        let _ = writeln!(
            m,
            "{}. **{}** ({}). {}",
            f.number,
            f.title,
            parts.join("; "),
            f.caption
        );
    }
    for t in tabs {
        let _ = writeln!(m, "\n## {}\n\n{} (`{}`)\n", t.title, t.note, t.file);
        if t.rows.is_empty() {
            m.push_str("None.\n");
            continue;
        }
        let names: Vec<String> = t
            .columns
            .iter()
            .map(|c| {
                md_cell(&if c.acc {
                    format!("{} (%)", c.name)
                } else {
                    c.name.clone()
                })
            })
            .collect();
        let _ = writeln!(m, "| {} |", names.join(" | "));
        let _ = writeln!(
            m,
            "|{}",
            t.columns.iter().map(|_| "---|").collect::<String>()
        );
        let shown = &t.shown_rows()[..t.shown_rows().len().min(MD_ROWS)];
        for row in shown {
            let cells: Vec<String> = row.iter().map(|c| md_cell(&c.display())).collect();
            let _ = writeln!(m, "| {} |", cells.join(" | "));
        }
        if t.rows.len() > shown.len() {
            let _ = writeln!(
                m,
                "\n({} more rows in `{}`.)",
                t.rows.len() - shown.len(),
                t.file
            );
        }
    }
    m
}
