use std::collections::{BTreeMap, BTreeSet};

use graft_store::{ArtifactId, SlotRecord, StageKey};
use serde_json::Value;

/// Why a stage runs, compared with the last run recorded in its slot:
/// `no previous run`, `stage version 2 -> 3`, `params.image_size changed 32 -> 48`,
/// `params.seed added`, `input dataset changed`, ...
pub fn rerun_reasons(
    previous: Option<&SlotRecord>,
    stage_version: u32,
    params: &BTreeMap<String, Value>,
    inputs: &BTreeMap<String, ArtifactId>,
    key: &StageKey,
) -> Vec<String> {
    let Some(prev) = previous else {
        return vec!["no previous run".to_owned()];
    };
    let mut out = Vec::new();
    if prev.stage_version != stage_version {
        out.push(format!(
            "stage version {} -> {}",
            prev.stage_version, stage_version
        ));
    }
    let names: BTreeSet<&String> = prev.params.keys().chain(params.keys()).collect();
    for name in names {
        match (prev.params.get(name), params.get(name)) {
            (Some(a), Some(b)) if a != b => {
                out.push(format!("params.{name} changed {} -> {}", show(a), show(b)))
            }
            (None, Some(b)) => out.push(format!("params.{name} added = {}", show(b))),
            (Some(_), None) => out.push(format!("params.{name} removed")),
            _ => {}
        }
    }
    let names: BTreeSet<&String> = prev.inputs.keys().chain(inputs.keys()).collect();
    for name in names {
        match (prev.inputs.get(name), inputs.get(name)) {
            (Some(a), Some(b)) if a != b => out.push(format!("input {name} changed")),
            (None, Some(_)) => out.push(format!("input {name} added")),
            (Some(_), None) => out.push(format!("input {name} removed")),
            _ => {}
        }
    }
    if out.is_empty() {
        out.push(if &prev.key == key {
            "output missing from the store".to_owned()
        } else {
            "key format changed".to_owned()
        });
    }
    out
}

fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(39).map(|(i, _)| i).unwrap_or(s.len())]
        )
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(c: char) -> ArtifactId {
        ArtifactId::parse(&c.to_string().repeat(64)).unwrap()
    }
    fn key(c: char) -> StageKey {
        StageKey::parse(&c.to_string().repeat(64)).unwrap()
    }

    fn record() -> SlotRecord {
        SlotRecord {
            stage: "prep".into(),
            stage_version: 2,
            key: key('1'),
            params: [
                ("image_size".to_string(), json!(32)),
                ("seed".to_string(), json!(0)),
            ]
            .into(),
            inputs: [("dataset".to_string(), id('a'))].into(),
            artifact: id('f'),
        }
    }

    #[test]
    fn names_every_difference() {
        let prev = record();
        assert_eq!(
            rerun_reasons(None, 2, &prev.params, &prev.inputs, &key('2')),
            ["no previous run"]
        );
        let mut params = prev.params.clone();
        params.insert("image_size".into(), json!(48));
        assert_eq!(
            rerun_reasons(Some(&prev), 2, &params, &prev.inputs, &key('2')),
            ["params.image_size changed 32 -> 48"]
        );
        let inputs = [("dataset".to_string(), id('b'))].into();
        assert_eq!(
            rerun_reasons(Some(&prev), 3, &prev.params, &inputs, &key('2')),
            ["stage version 2 -> 3", "input dataset changed"]
        );
        assert_eq!(
            rerun_reasons(Some(&prev), 2, &prev.params, &prev.inputs, &key('1')),
            ["output missing from the store"]
        );
    }
}
