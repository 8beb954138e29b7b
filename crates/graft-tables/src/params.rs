//! The encoding of the proposals table's `params` column: a heuristic's parameters as
//! canonical JSON text, so equal parameters are equal strings whoever wrote them.

use std::collections::BTreeMap;

use serde_json::Value;

/// `value` as canonical JSON: object keys sorted at every level, no whitespace.
pub fn canonical_json(value: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let m: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sorted(v))).collect();
                Value::Object(m.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sorted_at_every_level() {
        let v: Value = serde_json::from_str(
            r#"{ "score": "rank", "a": {"z": 1, "b": [ {"y": 2, "x": 0.5} ]} }"#,
        )
        .unwrap();
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"b":[{"x":0.5,"y":2}],"z":1},"score":"rank"}"#
        );
        assert_eq!(canonical_json(&Value::Object(Default::default())), "{}");
    }
}
