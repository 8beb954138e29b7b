//! The program's argument list with placeholders: `{out}` (the directory the program writes
//! its outputs into), `{script}` (the declared script, as an absolute path) and
//! `{input.NAME}` (the directory of input artifact NAME). `{{` and `}}` are literal braces.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One piece of an argument.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Out,
    Script,
    Input(String),
}

/// An argument split into text and placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

/// Where the placeholders point when the program runs.
#[derive(Debug, Clone, Copy)]
pub struct Bindings<'a> {
    pub out: &'a Path,
    pub script: Option<&'a Path>,
    pub inputs: &'a BTreeMap<String, std::path::PathBuf>,
}

impl Template {
    /// Parses one argument; the error says what is wrong with it.
    pub fn parse(arg: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = arg.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("unclosed placeholder {{{name}")),
                        }
                    }
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(match name.as_str() {
                        "out" => Piece::Out,
                        "script" => Piece::Script,
                        n => match n.strip_prefix("input.") {
                            Some(input) if valid_input_name(input) => {
                                Piece::Input(input.to_owned())
                            }
                            _ => {
                                return Err(format!(
                                    "unknown placeholder {{{name}}} (known: {{out}}, {{script}}, \
                                     {{input.NAME}}; write {{{{ for a literal brace)"
                                ));
                            }
                        },
                    });
                }
                '}' => return Err("a lone } (write }} for a literal brace)".into()),
                c => text.push(c),
            }
        }
        if !text.is_empty() || pieces.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template(pieces))
    }

    /// Input names this argument refers to.
    pub fn inputs(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Piece::Input(n) => Some(n.as_str()),
            _ => None,
        })
    }

    pub fn uses_script(&self) -> bool {
        self.0.contains(&Piece::Script)
    }

    /// The argument with every placeholder replaced.
    pub fn render(&self, b: Bindings<'_>) -> std::ffi::OsString {
        let mut s = std::ffi::OsString::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => s.push(t),
                Piece::Out => s.push(b.out),
                Piece::Script => s.push(b.script.unwrap_or(Path::new(""))),
                Piece::Input(n) => {
                    s.push(b.inputs.get(n).map(|p| p.as_os_str()).unwrap_or_default())
                }
            }
        }
        s
    }
}

/// Input names: letters, digits, `-` and `_` (they also name environment variables).
pub fn valid_input_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Parses every argument, naming `args[k]` in errors.
pub fn parse_all(args: &[String]) -> Result<Vec<Template>, String> {
    args.iter()
        .enumerate()
        .map(|(k, a)| Template::parse(a).map_err(|e| format!("args[{k}] = {a:?}: {e}")))
        .collect()
}

/// Every input name the arguments refer to.
pub fn inputs_of(templates: &[Template]) -> BTreeSet<String> {
    templates
        .iter()
        .flat_map(|t| t.inputs().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn placeholders_render_and_braces_escape() {
        let inputs: BTreeMap<String, PathBuf> =
            [("probe".to_string(), PathBuf::from("/s/objects/abc"))].into();
        let b = Bindings {
            out: Path::new("/s/tmp/w-1"),
            script: Some(Path::new("/x/h.py")),
            inputs: &inputs,
        };
        let t = Template::parse("--probe={input.probe}/probe.parquet").unwrap();
        assert_eq!(t.render(b), "--probe=/s/objects/abc/probe.parquet");
        assert_eq!(t.inputs().collect::<Vec<_>>(), ["probe"]);
        assert_eq!(Template::parse("{out}").unwrap().render(b), "/s/tmp/w-1");
        let s = Template::parse("{script}").unwrap();
        assert!(s.uses_script());
        assert_eq!(s.render(b), "/x/h.py");
        assert_eq!(Template::parse("{{'k': 1}}").unwrap().render(b), "{'k': 1}");
        assert_eq!(Template::parse("").unwrap().render(b), "");
    }

    #[test]
    fn bad_placeholders_are_named() {
        let e = parse_all(&["ok".into(), "{inputs.probe}".into()]).unwrap_err();
        assert!(e.contains("args[1]") && e.contains("{inputs.probe}"), "{e}");
        assert!(Template::parse("{out").unwrap_err().contains("unclosed"));
        assert!(Template::parse("a}b").unwrap_err().contains("lone"));
        assert!(Template::parse("{input.}").is_err());
        assert!(Template::parse("{input.a b}").is_err());
    }
}
