//! Matrix stages: one stage written once, expanded into one stage per combination of its
//! axes' values, before anything else sees the pipeline (keys, checks, status, overrides).
//!
//! ```toml
//! [vars]                                     # values named once, used by ${vars.<name>}
//! tasks = ["dtd", "cifar"]
//!
//! [stages.probe]
//! kind = "probe"
//! matrix = { task = "${vars.tasks}" }        # axes in order: a list, or a var that is one
//! inputs = { dataset = "prep@${item.task}" } # the sibling expansion of `prep`
//! params = { batch = 64 }
//!
//! [stages.report]
//! kind = "report"
//! inputs = { probe = "probe@*" }             # fan-in: probe-dtd = "probe@dtd", probe-cifar = …
//! params = { tasks = "${vars.tasks}" }
//! ```
//!
//! - **Names.** An expansion is `<stage>@<part>[-<part>…]`, one part per axis in the file's
//!   order: a string or integer as written, a table item's `name` field. A stage's `name`
//!   template (`name = "${item.task}-s${item.seed.value}"`) writes the part after `@`
//!   instead. Parts and names hold ASCII letters, digits, `_` and single `-`; a `.` would
//!   collide with `-S stage.param=…`.
//! - **Substitution**, in every string of `params` and `inputs`: `${item.<axis>}`,
//!   `${item.<axis>.<field>}` (table items), `${vars.<name>}`. A string that is exactly one
//!   reference takes the value with its type (a list stays a list); otherwise references are
//!   written into the text, and must be strings, numbers or booleans.
//! - **Fan-in.** An input whose producer is `<stage>@*` becomes one input per expansion of
//!   `<stage>`, in matrix order, named `<input>-<parts>`; `<stage>@*[axis=part,…]` keeps the
//!   expansions with those parts and names the inputs by the parts of the other axes (none
//!   left: the input keeps its name).
//!
//! Keys hold the stage kind, parameters and input names, never a stage's name in the file,
//! so an expansion's key is the key of the same stage written out by hand.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::StageSpec;

/// One stage as the file writes it: `matrix` axes still unexpanded, `${…}` unsubstituted.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    pub name: String,
    pub kind: String,
    pub inputs: BTreeMap<String, String>,
    pub params: Map<String, Value>,
    /// Axes in the file's order, values not yet resolved (a list or a `${vars.…}` string).
    pub matrix: Option<Vec<(String, Value)>>,
    /// The `name` template: the part of expansion names after `@`.
    pub name_template: Option<String>,
}

/// The values a reference can name: the pipeline's `vars`, and the item being expanded.
struct Scope<'a> {
    vars: &'a Map<String, Value>,
    /// Axis name to this expansion's value; `None` for a stage without a matrix.
    item: Option<&'a Map<String, Value>>,
}

/// Every template expanded, fan-ins resolved, names checked for collisions. Errors are one
/// line naming `stages.<stage>[.<field>]` and the axis.
pub(crate) fn expand(
    templates: Vec<Template>,
    vars: &Map<String, Value>,
) -> Result<Vec<StageSpec>, String> {
    let mut specs = Vec::new();
    for t in templates {
        specs.extend(expand_one(t, vars)?);
    }
    let mut names = BTreeSet::new();
    for s in &specs {
        if !names.insert(s.name.as_str()) {
            return Err(format!(
                "stages.{}: two stages are named {:?} (an expansion's name collides; give the \
                 matrix a `name` template)",
                s.base, s.name
            ));
        }
    }
    let resolved = specs
        .iter()
        .map(|s| resolve_fan_ins(s, &specs))
        .collect::<Result<Vec<_>, String>>()?;
    for (spec, inputs) in specs.iter_mut().zip(resolved) {
        spec.inputs = inputs;
    }
    Ok(specs)
}

/// One template's stages: itself when it has no matrix, else one per combination.
fn expand_one(t: Template, vars: &Map<String, Value>) -> Result<Vec<StageSpec>, String> {
    let Some(matrix) = &t.matrix else {
        let scope = Scope { vars, item: None };
        return Ok(vec![instantiate(&t, &scope, t.name.clone(), Vec::new())?]);
    };
    let axes = resolve_axes(&t.name, matrix, vars)?;
    let mut out = Vec::new();
    for combination in combinations(&axes) {
        let item: Map<String, Value> = combination
            .iter()
            .map(|(axis, value)| (axis.clone(), value.clone()))
            .collect();
        let parts: Vec<(String, Option<String>)> = combination
            .iter()
            .map(|(axis, value)| (axis.clone(), part_name(value)))
            .collect();
        let scope = Scope {
            vars,
            item: Some(&item),
        };
        let suffix = match &t.name_template {
            Some(template) => {
                let at = format!("stages.{}.name", t.name);
                match substitute(&Value::String(template.clone()), &scope, &at)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                }
            }
            None => joined_parts(&t.name, &parts)?,
        };
        check_name_part(&suffix)
            .map_err(|why| format!("stages.{}: expansion name {suffix:?} {why}", t.name))?;
        let name = format!("{}@{suffix}", t.name);
        out.push(instantiate(&t, &scope, name, parts)?);
    }
    Ok(out)
}

/// The template's params and inputs with `scope` substituted, under `name`.
fn instantiate(
    t: &Template,
    scope: &Scope,
    name: String,
    item: Vec<(String, Option<String>)>,
) -> Result<StageSpec, String> {
    let at = format!("stages.{}.params", t.name);
    let params = match substitute(&Value::Object(t.params.clone()), scope, &at)? {
        Value::Object(m) => m,
        _ => unreachable!("substituting an object gives an object"),
    };
    let mut inputs = BTreeMap::new();
    for (input, producer) in &t.inputs {
        let at = format!("stages.{}.inputs.{input}", t.name);
        let value = substitute(&Value::String(producer.clone()), scope, &at)?;
        let Value::String(producer) = value else {
            return Err(format!("{at}: must name a stage, got {value}"));
        };
        inputs.insert(input.clone(), producer);
    }
    Ok(StageSpec {
        name,
        base: t.name.clone(),
        kind: t.kind.clone(),
        item,
        inputs,
        params,
    })
}

/// Each axis's values: a non-empty list, written out or named by a `${vars.…}`.
fn resolve_axes(
    stage: &str,
    matrix: &[(String, Value)],
    vars: &Map<String, Value>,
) -> Result<Vec<(String, Vec<Value>)>, String> {
    if matrix.is_empty() {
        return Err(format!("stages.{stage}.matrix: has no axes"));
    }
    let scope = Scope { vars, item: None };
    let mut axes = Vec::new();
    for (axis, value) in matrix {
        let at = format!("stages.{stage}.matrix.{axis}");
        match substitute(value, &scope, &at)? {
            Value::Array(items) if items.is_empty() => {
                return Err(format!("{at}: the axis is empty"));
            }
            Value::Array(items) => axes.push((axis.clone(), items)),
            other => return Err(format!("{at}: must be a list of values, got {other}")),
        }
    }
    Ok(axes)
}

/// Every combination of the axes' values, the first axis outermost (the file's order).
fn combinations(axes: &[(String, Vec<Value>)]) -> Vec<Vec<(String, Value)>> {
    let mut out: Vec<Vec<(String, Value)>> = vec![Vec::new()];
    for (axis, values) in axes {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut c = prefix.clone();
                    c.push((axis.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    out
}

/// The text an item contributes to a name: a string or integer as written, a table's `name`.
fn part_name(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(m) => m.get("name").and_then(part_name),
        _ => None,
    }
}

/// The parts joined by `-`, each checked: the expansion's name without a template.
fn joined_parts(stage: &str, parts: &[(String, Option<String>)]) -> Result<String, String> {
    let mut out = Vec::new();
    for (axis, part) in parts {
        let at = format!("stages.{stage}.matrix.{axis}");
        let Some(part) = part else {
            return Err(format!(
                "{at}: a value that cannot be part of a stage name (a float, a list, or a \
                 table without a `name` field); give each item a `name` or the stage a `name` \
                 template"
            ));
        };
        check_name_part(part).map_err(|why| format!("{at}: value {part:?} {why}"))?;
        out.push(part.as_str());
    }
    Ok(out.join("-"))
}

/// Letters, digits, `_` and single `-` inside: what `-S stage.param`, slot file names and
/// the fan-in's `<input>-<parts>` can carry unambiguously.
fn check_name_part(part: &str) -> Result<(), String> {
    let chars_ok = part
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if part.is_empty() || !chars_ok || part.starts_with('-') || part.ends_with('-') {
        return Err(
            "cannot be part of a stage name (ASCII letters, digits, '_' and '-' inside)".into(),
        );
    }
    if part.contains("--") {
        return Err("cannot be part of a stage name ('--' is the store's slot separator)".into());
    }
    Ok(())
}

/// `value` with every `${…}` reference in its strings replaced; `at` names it in errors.
fn substitute(value: &Value, scope: &Scope, at: &str) -> Result<Value, String> {
    match value {
        Value::String(s) => substitute_str(s, scope, at),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(k, v)| substitute(v, scope, &format!("{at}[{k}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| Ok((k.clone(), substitute(v, scope, &format!("{at}.{k}"))?)))
            .collect::<Result<Map<_, _>, String>>()
            .map(Value::Object),
        other => Ok(other.clone()),
    }
}

/// One string: exactly one reference keeps the referenced value's type; references inside
/// text are written as text.
fn substitute_str(s: &str, scope: &Scope, at: &str) -> Result<Value, String> {
    if !s.contains("${") {
        return Ok(Value::String(s.to_owned()));
    }
    if let Some(inner) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}'))
        && !inner.contains('}')
    {
        return lookup(inner, scope, at).cloned();
    }
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            return Err(format!("{at}: unclosed reference in {s:?}"));
        };
        let reference = &rest[start + 2..start + len];
        match lookup(reference, scope, at)? {
            Value::String(v) => out.push_str(v),
            v @ (Value::Number(_) | Value::Bool(_)) => out.push_str(&v.to_string()),
            v => {
                return Err(format!(
                    "{at}: ${{{reference}}} is {v}, which cannot be written into text"
                ));
            }
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

/// The value of `item.<axis>[.<field>…]` or `vars.<name>[.<field>…]`.
fn lookup<'a>(reference: &str, scope: &'a Scope, at: &str) -> Result<&'a Value, String> {
    let mut path = reference.split('.');
    let (root, names): (&Map<String, Value>, &str) = match path.next() {
        Some("item") => match scope.item {
            Some(item) => (item, "axes"),
            None => {
                return Err(format!(
                    "{at}: ${{{reference}}}: this stage has no matrix, so no item"
                ));
            }
        },
        Some("vars") => (scope.vars, "vars"),
        _ => {
            return Err(format!(
                "{at}: unknown reference ${{{reference}}} (references are ${{item.<axis>}} \
                 and ${{vars.<name>}})"
            ));
        }
    };
    let unknown = |known: &Map<String, Value>| {
        let known: Vec<&str> = known.keys().map(String::as_str).collect();
        format!(
            "{at}: unknown reference ${{{reference}}} ({names}: {})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )
    };
    let first = path.next().ok_or_else(|| unknown(root))?;
    let mut value = root.get(first).ok_or_else(|| unknown(root))?;
    for field in path {
        value = match value {
            Value::Object(m) => m.get(field).ok_or_else(|| unknown(m))?,
            _ => return Err(format!("{at}: ${{{reference}}}: {value} has no fields")),
        };
    }
    Ok(value)
}

/// A fan-in producer: `<stage>@*` or `<stage>@*[axis=part,…]`.
struct FanIn<'a> {
    stage: &'a str,
    only: Vec<(&'a str, &'a str)>,
}

fn parse_fan_in(producer: &str) -> Option<Result<FanIn<'_>, String>> {
    let (stage, rest) = producer.split_once("@*")?;
    if rest.is_empty() {
        return Some(Ok(FanIn {
            stage,
            only: Vec::new(),
        }));
    }
    let Some(list) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) else {
        return Some(Err(format!(
            "{producer:?}: a fan-in is `<stage>@*` or `<stage>@*[axis=value,…]`"
        )));
    };
    let only = list
        .split(',')
        .map(|pair| {
            pair.split_once('=')
                .map(|(a, v)| (a.trim(), v.trim()))
                .ok_or_else(|| format!("{producer:?}: {pair:?} is not `axis=value`"))
        })
        .collect::<Result<Vec<_>, String>>();
    Some(only.map(|only| FanIn { stage, only }))
}

/// `spec`'s inputs with every fan-in replaced by the expansions it names.
fn resolve_fan_ins(
    spec: &StageSpec,
    all: &[StageSpec],
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (input, producer) in &spec.inputs {
        let at = format!("stages.{}.inputs.{input}", spec.base);
        let fan_in = match parse_fan_in(producer) {
            None => {
                out.insert(input.clone(), producer.clone());
                continue;
            }
            Some(parsed) => parsed.map_err(|e| format!("{at}: {e}"))?,
        };
        for (name, source) in
            fan_in_inputs(input, &fan_in, all).map_err(|e| format!("{at}: {e}"))?
        {
            if out.insert(name.clone(), source).is_some() {
                return Err(format!("{at}: the fan-in makes input {name:?} twice"));
            }
        }
    }
    Ok(out)
}

/// The `(input name, producing stage)` pairs one fan-in expands into, in matrix order.
fn fan_in_inputs(
    input: &str,
    fan_in: &FanIn,
    all: &[StageSpec],
) -> Result<Vec<(String, String)>, String> {
    let expansions: Vec<&StageSpec> = all
        .iter()
        .filter(|s| s.base == fan_in.stage && !s.item.is_empty())
        .collect();
    if expansions.is_empty() {
        return Err(format!(
            "{:?} has no expansions: no stage of that name with a matrix",
            fan_in.stage
        ));
    }
    for (axis, _) in &fan_in.only {
        if !expansions[0].item.iter().any(|(a, _)| a == axis) {
            let axes: Vec<&str> = expansions[0].item.iter().map(|(a, _)| a.as_str()).collect();
            return Err(format!(
                "stage {:?} has no axis {axis:?} (axes: {})",
                fan_in.stage,
                axes.join(", ")
            ));
        }
    }
    let mut out = Vec::new();
    for e in expansions {
        let keep = fan_in.only.iter().all(|(axis, value)| {
            e.item
                .iter()
                .any(|(a, part)| a == axis && part.as_deref() == Some(*value))
        });
        if !keep {
            continue;
        }
        let free: Vec<(String, Option<String>)> = e
            .item
            .iter()
            .filter(|(a, _)| !fan_in.only.iter().any(|(axis, _)| axis == a))
            .cloned()
            .collect();
        let name = if free.is_empty() {
            input.to_owned()
        } else {
            format!("{input}-{}", joined_parts(&e.base, &free)?)
        };
        out.push((name, e.name.clone()));
    }
    if out.is_empty() {
        let only: Vec<String> = fan_in
            .only
            .iter()
            .map(|(a, v)| format!("{a}={v}"))
            .collect();
        return Err(format!(
            "no expansion of {:?} has {}",
            fan_in.stage,
            only.join(", ")
        ));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde_json::json;

    use crate::Pipeline;

    fn parse(text: &str) -> Result<Pipeline, String> {
        Pipeline::parse("t", "t.toml", text).map_err(|e| e.to_string())
    }

    fn names(p: &Pipeline) -> Vec<&str> {
        p.stages.iter().map(|s| s.name.as_str()).collect()
    }

    const CHAIN: &str = r#"
        [vars]
        tasks = ["dtd", "cifar"]
        [stages.prep]
        kind = "prep"
        matrix = { task = "${vars.tasks}" }
        params = { task = "${item.task}", image_size = 32, note = "task ${item.task}!" }
        [stages.probe]
        kind = "probe"
        matrix = { task = "${vars.tasks}" }
        inputs = { dataset = "prep@${item.task}" }
        [stages.report]
        kind = "report"
        inputs = { probe = "probe@*" }
        params = { tasks = "${vars.tasks}" }
    "#;

    #[test]
    fn expands_substitutes_and_fans_in_in_matrix_order() {
        let p = parse(CHAIN).unwrap();
        assert_eq!(
            names(&p),
            [
                "prep@dtd",
                "prep@cifar",
                "probe@dtd",
                "probe@cifar",
                "report"
            ]
        );
        let prep = &p.stages[1];
        assert_eq!(prep.base, "prep");
        assert_eq!(prep.params["task"], json!("cifar"));
        assert_eq!(prep.params["note"], json!("task cifar!"));
        assert_eq!(prep.params["image_size"], json!(32));
        assert_eq!(p.stages[3].inputs["dataset"], "prep@cifar");
        let report = &p.stages[4];
        let inputs: Vec<(&str, &str)> = report
            .inputs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            inputs,
            [("probe-cifar", "probe@cifar"), ("probe-dtd", "probe@dtd")]
        );
        // A whole-string reference keeps its type: the list stays a list, in matrix order.
        assert_eq!(report.params["tasks"], json!(["dtd", "cifar"]));
    }

    #[test]
    fn several_axes_tables_templates_and_restricted_fan_ins() {
        let text = r#"
            [stages.pretrain]
            kind = "pretrain"
            matrix = { backbone = [{ name = "b0", seed = 0 }, { name = "b1", seed = 1 }] }
            params = { seed = "${item.backbone.seed}" }
            [stages.finetune]
            kind = "finetune"
            matrix = { backbone = [{ name = "b0", seed = 0 }, { name = "b1", seed = 1 }], task = ["t", "c"] }
            inputs = { base = "pretrain@${item.backbone.name}" }
            params = { seeds = ["${item.backbone.seed}"] }
            [stages.report]
            kind = "report"
            matrix = { backbone = ["b0", "b1"] }
            name = "of-${item.backbone}"
            inputs = { finetune = "finetune@*[backbone=${item.backbone}]" }
        "#;
        let p = parse(text).unwrap();
        assert_eq!(
            names(&p),
            [
                "pretrain@b0",
                "pretrain@b1",
                "finetune@b0-t",
                "finetune@b0-c",
                "finetune@b1-t",
                "finetune@b1-c",
                "report@of-b0",
                "report@of-b1"
            ]
        );
        assert_eq!(p.stages[0].params["seed"], json!(0));
        assert_eq!(p.stages[4].params["seeds"], json!([1]));
        assert_eq!(p.stages[4].inputs["base"], "pretrain@b1");
        let report = &p.stages[7];
        let expected: BTreeMap<String, String> = [
            ("finetune-t".to_owned(), "finetune@b1-t".to_owned()),
            ("finetune-c".to_owned(), "finetune@b1-c".to_owned()),
        ]
        .into_iter()
        .collect();
        assert_eq!(report.inputs, expected);
    }

    #[test]
    fn overrides_set_every_expansion_or_one_and_vars_before_expansion() {
        let mut p = parse(CHAIN).unwrap();
        p.apply_override("prep.image_size=8").unwrap();
        p.apply_override("prep@dtd.image_size=16").unwrap();
        assert_eq!(p.stages[0].params["image_size"], json!(16));
        assert_eq!(p.stages[1].params["image_size"], json!(8));
        let e = p
            .apply_override("prep@svhn.seed=1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("prep@dtd") && e.contains("prep@cifar"), "{e}");
        let sets = [
            "vars.tasks=[\"svhn\"]".to_owned(),
            "probe.batch=4".to_owned(),
        ];
        let mut p = Pipeline::parse_with("t", "t.toml", CHAIN, &sets).unwrap();
        p.apply_overrides(&sets).unwrap();
        assert_eq!(names(&p), ["prep@svhn", "probe@svhn", "report"]);
        assert_eq!(p.stages[1].params["batch"], json!(4));
        assert_eq!(p.stages[2].params["tasks"], json!(["svhn"]));
        let e = Pipeline::parse_with("t", "t.toml", CHAIN, &["vars.taks=[]".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no var \"taks\"") && e.contains("tasks"), "{e}");
    }

    /// Each refusal names the stage and the axis or field.
    #[test]
    fn errors_name_the_stage_and_the_axis() {
        let cases: &[(&str, &[&str])] = &[
            (
                r#"[stages.a]
                kind = "prep"
                matrix = { task = ["x"] }
                params = { task = "${item.tsk}" }"#,
                &["stages.a.params.task", "${item.tsk}", "axes: task"],
            ),
            (
                r#"[stages.a]
                kind = "prep"
                params = { task = "${item.task}" }"#,
                &["stages.a.params.task", "no matrix"],
            ),
            (
                r#"[stages.a]
                kind = "prep"
                matrix = { task = [] }"#,
                &["stages.a.matrix.task", "empty"],
            ),
            (
                r#"[stages.a]
                kind = "prep"
                matrix = { gamma = [0.5] }"#,
                &["stages.a.matrix.gamma", "cannot be part of a stage name"],
            ),
            (
                r#"[stages.a]
                kind = "prep"
                matrix = { task = ["a b"] }"#,
                &["stages.a.matrix.task", "\"a b\"", "cannot be part"],
            ),
            (
                r#"[stages.a]
                kind = "prep"
                matrix = { x = ["p-q", "p"], y = ["r", "q-r"] }"#,
                &["stages.a", "two stages are named \"a@p-q-r\""],
            ),
            (
                r#"[stages.a]
                kind = "prep"
                matrix = { task = ["x"] }
                [stages.r]
                kind = "report"
                inputs = { probe = "b@*" }"#,
                &["stages.r.inputs.probe", "\"b\" has no expansions"],
            ),
            (
                r#"[stages.a]
                kind = "prep"
                matrix = { task = ["x"] }
                [stages.r]
                kind = "report"
                inputs = { probe = "a@*[task=y]" }"#,
                &["stages.r.inputs.probe", "no expansion of \"a\" has task=y"],
            ),
            (
                r#"[stages.a]
                kind = "prep"
                matrix = { task = ["x"] }
                [stages.r]
                kind = "report"
                inputs = { probe = "a@*[seed=1]" }"#,
                &["stages.r.inputs.probe", "no axis \"seed\"", "axes: task"],
            ),
            (
                r#"[stages.a]
                kind = "prep"
                matrix = { task = "${vars.nope}" }"#,
                &["stages.a.matrix.task", "${vars.nope}", "vars: none"],
            ),
            (
                r#"[stages."a@b"]
                kind = "prep""#,
                &["stages.a@b", "must not"],
            ),
        ];
        for (text, needles) in cases {
            let e = parse(text).unwrap_err();
            for n in *needles {
                assert!(e.contains(n), "{n:?} not in {e:?}");
            }
        }
    }

    fn axes_text(axes: &[(String, Vec<u8>)]) -> String {
        let body: Vec<String> = axes
            .iter()
            .map(|(name, values)| {
                let vs: Vec<String> = values.iter().map(|v| format!("\"v{v}\"")).collect();
                format!("{name} = [{}]", vs.join(", "))
            })
            .collect();
        let refs: Vec<String> = axes
            .iter()
            .map(|(name, _)| format!("{name} = \"${{item.{name}}}\""))
            .collect();
        format!(
            "[stages.s]\nkind = \"prep\"\nmatrix = {{ {} }}\nparams = {{ {} }}\n",
            body.join(", "),
            refs.join(", ")
        )
    }

    /// Symbolic keys of a pipeline's stages: the real key encoding over kind, params and
    /// input names, each input's id standing for its producer's key.
    pub(crate) fn symbolic_keys(p: &Pipeline) -> BTreeMap<String, String> {
        let mut keys: BTreeMap<String, String> = BTreeMap::new();
        for s in &p.stages {
            let params: BTreeMap<String, serde_json::Value> = s
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let inputs = s
                .inputs
                .iter()
                .map(|(name, producer)| {
                    let id = graft_store::ArtifactId::parse(&keys[producer]).unwrap();
                    (name.clone(), id)
                })
                .collect();
            let key = graft_store::KeyInput {
                stage: &s.kind,
                stage_version: 0,
                params: &params,
                inputs: &inputs,
            }
            .key();
            keys.insert(s.name.clone(), key.as_str().to_owned());
        }
        keys
    }

    proptest! {
        /// Every combination once, names unique, and the same stages (by key) whatever the
        /// order of the axes.
        #[test]
        fn every_combination_once_whatever_the_axis_order(
            sizes in proptest::collection::vec(1usize..4, 1..4),
            rotate in 0usize..3,
        ) {
            let axes: Vec<(String, Vec<u8>)> = sizes
                .iter()
                .enumerate()
                .map(|(k, n)| (format!("a{k}"), (0..*n as u8).collect()))
                .collect();
            let p = parse(&axes_text(&axes)).unwrap();
            let count: usize = sizes.iter().product();
            prop_assert_eq!(p.stages.len(), count);
            let mut combos = std::collections::BTreeSet::new();
            for s in &p.stages {
                prop_assert!(
                    combos.insert(serde_json::Value::Object(s.params.clone()).to_string()),
                    "a combination twice"
                );
            }
            let mut turned = axes.clone();
            turned.rotate_left(rotate % axes.len());
            let q = parse(&axes_text(&turned)).unwrap();
            let mut a: Vec<String> = symbolic_keys(&p).into_values().collect();
            let mut b: Vec<String> = symbolic_keys(&q).into_values().collect();
            a.sort();
            b.sort();
            prop_assert_eq!(a, b);
        }
    }
}
