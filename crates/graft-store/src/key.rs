//! Stage keys: everything that decides whether a stage's output can be reused.
//!
//! A [`StageKey`] is blake3 over a canonical, length-prefixed encoding of exactly these
//! fields, in this order, and nothing else:
//!
//! | # | field | encoding | why |
//! |---|-------|----------|-----|
//! | 1 | key format version | `u32` LE ([`KEY_FORMAT_VERSION`]) | bumped when this encoding changes |
//! | 2 | stage name | length-prefixed UTF-8 | `prep` and `probe` never share keys |
//! | 3 | stage implementation version | `u32` LE | each stage bumps it when its output would change |
//! | 4 | parameters | count, then per key in sorted order: key, canonical value | defaults filled in, so writing a default explicitly changes nothing |
//! | 5 | inputs | count, then per input name in sorted order: name, 64-hex id | ids of input artifacts, or content fingerprints of external data |
//!
//! Canonical values: a type tag byte, then `null`/`bool`/number (its shortest decimal text)/
//! string (length-prefixed), arrays (count, items), objects (count, sorted key-value pairs).
//! Every variable-length field is prefixed with its byte length as `u64` LE, so no two
//! different field lists encode to the same bytes.
//!
//! Never in a key: modification times, absolute paths, clock time, host names, the store's
//! location. External data (a DTD directory, a script, a checkpoint file) enters through a
//! fingerprint of its content, made with [`Fingerprint`] or [`hash_file`] (re-exported here
//! from `fingerprint.rs`, whose docs list the bytes of each call).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{ArtifactId, StageKey};

pub use crate::fingerprint::{FileHash, Fingerprint, hash_file};

/// Bump when the encoding below changes; every existing key then misses.
pub const KEY_FORMAT_VERSION: u32 = 1;

/// The fields of a stage key. See the module docs for the encoding.
#[derive(Debug, Clone, Copy)]
pub struct KeyInput<'a> {
    pub stage: &'a str,
    pub stage_version: u32,
    /// Canonical parameters (all of them, defaults included).
    pub params: &'a BTreeMap<String, Value>,
    /// Input name to artifact id (or content fingerprint of external data).
    pub inputs: &'a BTreeMap<String, ArtifactId>,
}

impl KeyInput<'_> {
    /// The canonical byte encoding that is hashed.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&KEY_FORMAT_VERSION.to_le_bytes());
        put_str(&mut out, self.stage);
        out.extend_from_slice(&self.stage_version.to_le_bytes());
        put_len(&mut out, self.params.len());
        for (k, v) in self.params {
            put_str(&mut out, k);
            put_value(&mut out, v);
        }
        put_len(&mut out, self.inputs.len());
        for (name, id) in self.inputs {
            put_str(&mut out, name);
            put_str(&mut out, id.as_str());
        }
        out
    }

    pub fn key(&self) -> StageKey {
        StageKey::from_hash(blake3::hash(&self.encode()))
    }
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u64).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(0),
        Value::Bool(b) => {
            out.push(1);
            out.push(*b as u8);
        }
        Value::Number(n) => {
            out.push(2);
            put_str(out, &n.to_string());
        }
        Value::String(s) => {
            out.push(3);
            put_str(out, s);
        }
        Value::Array(items) => {
            out.push(4);
            put_len(out, items.len());
            items.iter().for_each(|item| put_value(out, item));
        }
        Value::Object(map) => {
            out.push(5);
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            put_len(out, sorted.len());
            for (k, v) in sorted {
                put_str(out, k);
                put_value(out, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn id(c: char) -> ArtifactId {
        ArtifactId::parse(&c.to_string().repeat(64)).unwrap()
    }

    fn base() -> (BTreeMap<String, Value>, BTreeMap<String, ArtifactId>) {
        let params = [
            ("image_size", json!(32)),
            ("seed", json!(0)),
            ("mean", json!([0.5, 0.5])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let inputs = [("dataset".to_string(), id('a'))].into_iter().collect();
        (params, inputs)
    }

    fn key_of(
        stage: &str,
        version: u32,
        p: &BTreeMap<String, Value>,
        i: &BTreeMap<String, ArtifactId>,
    ) -> StageKey {
        KeyInput {
            stage,
            stage_version: version,
            params: p,
            inputs: i,
        }
        .key()
    }

    #[test]
    fn each_field_changes_the_key() {
        let (p, i) = base();
        let k0 = key_of("prep", 1, &p, &i);
        assert_eq!(
            k0,
            key_of("prep", 1, &p.clone(), &i.clone()),
            "key is a pure function"
        );
        assert_ne!(k0, key_of("probe", 1, &p, &i), "stage name");
        assert_ne!(k0, key_of("prep", 2, &p, &i), "stage version");
        let mut p2 = p.clone();
        p2.insert("seed".into(), json!(1));
        assert_ne!(k0, key_of("prep", 1, &p2, &i), "param value");
        let mut p3 = p.clone();
        p3.insert("extra".into(), json!(null));
        assert_ne!(k0, key_of("prep", 1, &p3, &i), "added param");
        let mut i2 = i.clone();
        i2.insert("dataset".into(), id('b'));
        assert_ne!(k0, key_of("prep", 1, &p, &i2), "input id");
        let mut i3 = BTreeMap::new();
        i3.insert("data".to_string(), id('a'));
        assert_ne!(k0, key_of("prep", 1, &p, &i3), "input name");
    }

    #[test]
    fn integer_and_float_and_string_differ() {
        let (_, i) = base();
        let one = |v: Value| key_of("s", 1, &[("x".to_string(), v)].into_iter().collect(), &i);
        let keys = [
            one(json!(1)),
            one(json!(1.0)),
            one(json!("1")),
            one(json!([1])),
            one(json!(true)),
        ];
        for a in 0..keys.len() {
            for b in a + 1..keys.len() {
                assert_ne!(keys[a], keys[b]);
            }
        }
    }

    #[test]
    fn length_prefixing_prevents_concatenation_collisions() {
        let i = BTreeMap::new();
        let p1 = [("ab".to_string(), json!("c"))].into_iter().collect();
        let p2 = [("a".to_string(), json!("bc"))].into_iter().collect();
        assert_ne!(key_of("s", 1, &p1, &i), key_of("s", 1, &p2, &i));
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1e6f64..1e6).prop_map(|f| json!(f)),
            "[a-z0-9_]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_params() -> impl Strategy<Value = BTreeMap<String, Value>> {
        prop::collection::btree_map("[a-z_]{1,10}", arb_value(), 0..5)
    }

    fn arb_inputs() -> impl Strategy<Value = BTreeMap<String, ArtifactId>> {
        prop::collection::btree_map(
            "[a-z]{1,8}",
            "[0-9a-f]{64}".prop_map(|s| ArtifactId::parse(&s).unwrap()),
            0..3,
        )
    }

    proptest! {
        /// Any change to any single key input changes the key; rebuilding the same
        /// inputs in another insertion order does not.
        #[test]
        fn key_depends_on_exactly_its_inputs(
            stage in "[a-z-]{1,10}", version in 0u32..5, params in arb_params(), inputs in arb_inputs(),
            new_stage in "[a-z-]{1,10}", new_version in 0u32..5, new_value in arb_value(),
            new_id in "[0-9a-f]{64}", pick in any::<prop::sample::Index>(),
        ) {
            let k = key_of(&stage, version, &params, &inputs);
            // Same content, reversed insertion order: same key.
            let p_rev: BTreeMap<_, _> = params.iter().rev().map(|(a, b)| (a.clone(), b.clone())).collect();
            let i_rev: BTreeMap<_, _> = inputs.iter().rev().map(|(a, b)| (a.clone(), b.clone())).collect();
            prop_assert_eq!(&k, &key_of(&stage, version, &p_rev, &i_rev));

            prop_assert_eq!(new_stage == stage, key_of(&new_stage, version, &params, &inputs) == k);
            prop_assert_eq!(new_version == version, key_of(&stage, new_version, &params, &inputs) == k);
            if !params.is_empty() {
                let name = params.keys().nth(pick.index(params.len())).unwrap().clone();
                let mut p = params.clone();
                let old = p.insert(name, new_value.clone()).unwrap();
                prop_assert_eq!(old == new_value, key_of(&stage, version, &p, &inputs) == k);
            }
            if !inputs.is_empty() {
                let name = inputs.keys().nth(pick.index(inputs.len())).unwrap().clone();
                let mut i = inputs.clone();
                let new_id = ArtifactId::parse(&new_id).unwrap();
                let old = i.insert(name, new_id.clone()).unwrap();
                prop_assert_eq!(old == new_id, key_of(&stage, version, &params, &i) == k);
            }
        }
    }
}
