//! JSON shaping shared by the providers.

use serde_json::Value;

/// `over` laid on `base`: objects merge key by key, anywhere else `over`
/// wins. So an operator's or a device's base keeps what we do not set
/// (APNs `default_payload`'s `aps.mutable-content` beside our `aps.alert`,
/// FCM `fcm_options.android.ttl` beside our `android.priority`).
pub fn deep_merge(base: Value, over: Value) -> Value {
    match (base, over) {
        (Value::Object(mut base), Value::Object(over)) => {
            for (key, value) in over {
                let merged = match base.remove(&key) {
                    Some(old) => deep_merge(old, value),
                    None => value,
                };
                base.insert(key, merged);
            }
            Value::Object(base)
        }
        (_, over) => over,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deep_merge_merges_objects_and_replaces_the_rest() {
        let merged = deep_merge(json!({"a": {"b": 1, "c": 2}, "d": [1], "e": "x"}), json!({"a": {"b": 3}, "d": [2], "f": 1}));
        assert_eq!(merged, json!({"a": {"b": 3, "c": 2}, "d": [2], "e": "x", "f": 1}));
        assert_eq!(deep_merge(json!({"a": "x"}), json!({"a": {"b": 1}})), json!({"a": {"b": 1}}));
    }
}
