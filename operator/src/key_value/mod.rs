//! `KeyValue`: what keys and values a resource wants (pure), how to reach them without overwriting
//! anyone else's change (pure, CAS-based plan), and the controller that carries the plan out.

pub mod controller;

use std::collections::BTreeMap;

use crate::crd::KeyValue;

/// Finalizer that holds a deleted resource until its keys are out of the registry.
pub const FINALIZER: &str = "roster.dev/delete-keys";

/// Key -> value the resource wants, given the ConfigMap or Secret data it points at (if any).
pub fn desired(
    kv: &KeyValue,
    source: Option<&BTreeMap<String, Vec<u8>>>,
) -> Result<BTreeMap<String, Vec<u8>>, Vec<String>> {
    let spec = &kv.spec;
    let mut errors = Vec::new();
    if spec.key.is_empty() {
        errors.push("spec.key: required".to_string());
    }
    if spec.key.starts_with('/') {
        errors.push(format!("spec.key: {:?} must not start with '/'", spec.key));
    }
    let sources = [spec.value.is_some(), spec.values.is_some(), spec.value_from.is_some()];
    if sources.iter().filter(|s| **s).count() != 1 {
        errors.push("spec: give exactly one of value, values or valueFrom".to_string());
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let under = |name: &str| {
        if spec.key.ends_with('/') {
            format!("{}{name}", spec.key)
        } else {
            format!("{}/{name}", spec.key)
        }
    };
    let mut out = BTreeMap::new();
    if let Some(v) = &spec.value {
        out.insert(spec.key.clone(), v.clone().into_bytes());
    }
    if let Some(values) = &spec.values {
        for (k, v) in values {
            out.insert(under(k), v.clone().into_bytes());
        }
    }
    if spec.value_from.is_some() {
        match source {
            Some(data) => {
                for (k, v) in data {
                    out.insert(under(k), v.clone());
                }
            }
            None => return Err(vec!["spec.valueFrom: the ConfigMap or Secret was not found".to_string()]),
        }
    }
    Ok(out)
}

/// What the registry holds for one key: its value and ModifyIndex.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    pub value: Vec<u8>,
    pub modify_index: u64,
}

/// One write, guarded by CAS: `cas` 0 creates only if absent, N replaces only the version we wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub key: String,
    pub value: Vec<u8>,
    pub cas: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// Changed in the registry by someone else since we wrote it: left alone, reported.
    pub drifted: Vec<String>,
    /// Already as wanted: key -> its ModifyIndex (remembered as ours).
    pub in_sync: BTreeMap<String, u64>,
}

/// Decides the writes. `ours` is key -> the ModifyIndex of our last write (kept in status).
pub fn plan(
    desired: &BTreeMap<String, Vec<u8>>,
    current: &BTreeMap<String, Current>,
    ours: &BTreeMap<String, u64>,
) -> Plan {
    let mut p = Plan::default();
    for (key, want) in desired {
        match current.get(key) {
            None => p.writes.push(Write { key: key.clone(), value: want.clone(), cas: 0 }),
            Some(c) if &c.value == want => {
                p.in_sync.insert(key.clone(), c.modify_index);
            }
            Some(c) if ours.get(key) == Some(&c.modify_index) => {
                p.writes.push(Write { key: key.clone(), value: want.clone(), cas: c.modify_index })
            }
            Some(_) => p.drifted.push(key.clone()),
        }
    }
    p
}

/// Keys to delete when the resource goes: only those still holding what we wrote.
pub fn deletions(ours: &BTreeMap<String, u64>, current: &BTreeMap<String, Current>) -> Vec<(String, u64)> {
    ours.iter()
        .filter(|(k, idx)| current.get(*k).is_some_and(|c| c.modify_index == **idx))
        .map(|(k, idx)| (k.clone(), *idx))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(yaml: &str) -> KeyValue {
        serde_yaml::from_str(yaml).expect("yaml")
    }

    fn cur(v: &str, i: u64) -> Current {
        Current { value: v.as_bytes().to_vec(), modify_index: i }
    }

    #[test]
    fn desired_from_value_values_and_a_source() {
        let one = kv(
            "apiVersion: roster.dev/v1alpha1\nkind: KeyValue\nmetadata: {name: a}\nspec: {key: app/mode, value: fast}",
        );
        assert_eq!(desired(&one, None).unwrap(), BTreeMap::from([("app/mode".into(), b"fast".to_vec())]));
        let many = kv("apiVersion: roster.dev/v1alpha1\nkind: KeyValue\nmetadata: {name: a}\nspec: {key: app/, values: {a: '1', b: '2'}}");
        assert_eq!(desired(&many, None).unwrap().keys().cloned().collect::<Vec<_>>(), vec!["app/a", "app/b"]);
        let from = kv("apiVersion: roster.dev/v1alpha1\nkind: KeyValue\nmetadata: {name: a}\nspec: {key: cfg, valueFrom: {configMap: settings}}");
        let data = BTreeMap::from([("x".to_string(), b"y".to_vec())]);
        assert_eq!(desired(&from, Some(&data)).unwrap(), BTreeMap::from([("cfg/x".into(), b"y".to_vec())]));
        assert!(desired(&from, None).unwrap_err()[0].contains("not found"));
        let both = kv("apiVersion: roster.dev/v1alpha1\nkind: KeyValue\nmetadata: {name: a}\nspec: {key: /k, value: v, values: {a: b}}");
        let err = desired(&both, None).unwrap_err().join("\n");
        assert!(err.contains("exactly one") && err.contains("must not start with '/'"), "{err}");
    }

    #[test]
    fn cas_plan_creates_updates_its_own_and_leaves_others_changes() {
        let want = BTreeMap::from([
            ("new".to_string(), b"1".to_vec()),
            ("same".to_string(), b"2".to_vec()),
            ("mine".to_string(), b"3".to_vec()),
            ("theirs".to_string(), b"4".to_vec()),
        ]);
        let current = BTreeMap::from([
            ("same".to_string(), cur("2", 10)),
            ("mine".to_string(), cur("old", 11)),
            ("theirs".to_string(), cur("edited", 15)),
        ]);
        let ours = BTreeMap::from([("mine".to_string(), 11), ("theirs".to_string(), 12)]);
        let p = plan(&want, &current, &ours);
        assert_eq!(
            p.writes,
            vec![
                Write { key: "mine".into(), value: b"3".to_vec(), cas: 11 },
                Write { key: "new".into(), value: b"1".to_vec(), cas: 0 },
            ]
        );
        assert_eq!(p.drifted, vec!["theirs".to_string()]);
        assert_eq!(p.in_sync, BTreeMap::from([("same".to_string(), 10)]));
        // On delete, only keys still as we wrote them go.
        assert_eq!(deletions(&ours, &current), vec![("mine".to_string(), 11)]);
    }
}
