//! SIGHUP: which configuration changes apply while the agent runs.
//!
//! The configuration is read again (file, drop-ins, environment; flags still win) and
//! compared key by key with the one the agent runs with. What can change live does:
//! `capacity` and `label` (the session closes and reconnects at once, so a fresh
//! `Hello` tells the coordinator; running jobs go on across it) and `log-level`.
//! What is only read at enrolment (`join-token-file`, `name`) changes nothing once
//! enrolled. Everything else (`coordinator`, `data-dir`, `builder`, `platform`,
//! `insecure-registry`, ...) is logged as taking effect after a restart, and stays as
//! it was until then.

use serde_json::Value;

/// When a changed key takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Now.
    Live,
    /// Only when enrolling, which this agent has done.
    EnrolmentOnly,
    /// After a restart.
    Restart,
}

/// When a change of `key` takes effect.
pub(crate) fn effect(key: &str) -> Effect {
    match key {
        "capacity" | "label" | "log-level" => Effect::Live,
        "join-token-file" | "name" => Effect::EnrolmentOnly,
        _ => Effect::Restart,
    }
}

/// One key whose value changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) key: String,
    pub(crate) effect: Effect,
    /// The values for people.
    pub(crate) old: String,
    pub(crate) new: String,
}

/// The keys whose value differs between two `helix_config::effective` maps, in key
/// order. Only values count, not where they came from.
pub(crate) fn diff(old: &Value, new: &Value) -> Vec<Change> {
    let (Value::Object(old), Value::Object(new)) = (old, new) else {
        return Vec::new();
    };
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let before = old.get(key).map(|v| &v["value"]).unwrap_or(&Value::Null);
            let after = new.get(key).map(|v| &v["value"]).unwrap_or(&Value::Null);
            (before != after).then(|| Change {
                key: key.clone(),
                effect: effect(key),
                old: shown(before),
                new: shown(after),
            })
        })
        .collect()
}

/// The configuration the agent runs with once `new` was applied: the new values of
/// the keys that apply live or only at enrolment, the old ones of those waiting for a
/// restart (so a later SIGHUP still reports them).
pub(crate) fn applied(old: &Value, new: &Value) -> Value {
    let (Value::Object(old_map), Value::Object(new_map)) = (old, new) else {
        return new.clone();
    };
    let mut out = new_map.clone();
    for (key, value) in old_map {
        if effect(key) == Effect::Restart {
            out.insert(key.clone(), value.clone());
        }
    }
    Value::Object(out)
}

fn shown(v: &Value) -> String {
    match v {
        Value::Null => "(unset)".into(),
        Value::String(s) if s.is_empty() => "\"\"".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(shown).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn which_keys_apply_live() {
        for (key, want) in [
            ("capacity", Effect::Live),
            ("label", Effect::Live),
            ("log-level", Effect::Live),
            ("join-token-file", Effect::EnrolmentOnly),
            ("name", Effect::EnrolmentOnly),
            ("coordinator", Effect::Restart),
            ("data-dir", Effect::Restart),
            ("builder", Effect::Restart),
            ("platform", Effect::Restart),
            ("insecure-registry", Effect::Restart),
            ("idle-timeout", Effect::Restart),
            ("cancel-grace", Effect::Restart),
            ("drain-deadline", Effect::Restart),
            ("metrics-listen", Effect::Restart),
            ("log-format", Effect::Restart),
        ] {
            assert_eq!(effect(key), want, "{key}");
        }
    }

    fn config(capacity: &str, labels: &[&str], coordinator: &str, level: &str) -> Value {
        json!({
            "capacity": { "value": capacity, "source": "a.toml:1" },
            "label": { "value": labels, "source": "default" },
            "coordinator": { "value": coordinator, "source": "a.toml:2" },
            "log-level": { "value": level, "source": "default" },
            "name": { "value": null, "source": "default" },
        })
    }

    #[test]
    fn changes_are_found_and_sorted_by_effect() {
        let old = config("1", &[], "c1:7443", "info");
        assert!(diff(&old, &old).is_empty());
        // Another source with the same value is no change.
        let mut moved = old.clone();
        moved["capacity"]["source"] = json!("environment");
        assert!(diff(&old, &moved).is_empty());

        let mut new = config("3", &["zone=eu"], "c2:7443", "debug");
        new["name"]["value"] = json!("node-9");
        let changes = diff(&old, &new);
        let got: Vec<(&str, Effect, &str, &str)> = changes
            .iter()
            .map(|c| (c.key.as_str(), c.effect, c.old.as_str(), c.new.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("capacity", Effect::Live, "1", "3"),
                ("coordinator", Effect::Restart, "c1:7443", "c2:7443"),
                ("label", Effect::Live, "[]", "[zone=eu]"),
                ("log-level", Effect::Live, "info", "debug"),
                ("name", Effect::EnrolmentOnly, "(unset)", "node-9"),
            ]
        );

        // What runs now: the live changes, but still the old coordinator, which a
        // second SIGHUP reports again.
        let now = applied(&old, &new);
        assert_eq!(now["capacity"]["value"], "3");
        assert_eq!(now["label"]["value"], json!(["zone=eu"]));
        assert_eq!(now["coordinator"]["value"], "c1:7443");
        let again = diff(&now, &new);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].key, "coordinator");
    }
}
