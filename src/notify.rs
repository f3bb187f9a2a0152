//! The push gateway request of the Matrix spec
//! (`POST /_matrix/push/v1/notify`), validated field by field so that every
//! rejection names the field at fault.

use std::fmt;

use serde_json::{Map, Value};

use crate::error::ApiError;

/// "The priority of the notification. If omitted, `high` is assumed."
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prio {
    #[default]
    High,
    Low,
}

impl Prio {
    pub fn as_str(self) -> &'static str {
        match self {
            Prio::High => "high",
            Prio::Low => "low",
        }
    }
}

/// "This is a dictionary of the current number of unacknowledged
/// communications for the recipient user. Counts whose value is zero should be
/// omitted."
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub unread: Option<u64>,
    pub missed_calls: Option<u64>,
}

impl Counts {
    /// The badge a device shows: unread messages plus missed calls.
    pub fn badge(&self) -> u64 {
        self.unread.unwrap_or(0).saturating_add(self.missed_calls.unwrap_or(0))
    }
}

/// A device's push key. Its `Debug` and `Display` show only a short prefix, so
/// a log line never carries a whole key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pushkey(pub String);

impl Pushkey {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A prefix for logs: at most 6 characters, and never more than half
    /// the key, so a short key is not logged whole either.
    pub fn short(&self) -> String {
        let shown = (self.0.chars().count() / 2).min(6);
        let prefix: String = self.0.chars().take(shown).collect();
        format!("{prefix}…")
    }
}

impl fmt::Debug for Pushkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pushkey({})", self.short())
    }
}

impl fmt::Display for Pushkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

/// "A dictionary of customisations made to the way this notification is to be
/// presented."
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tweaks {
    pub sound: Option<String>,
    pub highlight: Option<bool>,
    /// The whole object as sent.
    pub raw: Map<String, Value>,
}

/// "This is an array of devices that the notification should be sent to."
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// "The app_id given when the pusher was created."
    pub app_id: String,
    /// "This is the pushkey that was given when the pusher was created."
    pub pushkey: Pushkey,
    pub pushkey_ts: Option<i64>,
    /// "A dictionary of additional pusher-specific data." (`format`,
    /// `default_payload`, and provider fields such as WebPush's `endpoint`.)
    pub data: Map<String, Value>,
    pub tweaks: Tweaks,
}

impl Device {
    /// `data.format == "event_id_only"`: the client fetches the event itself.
    pub fn wants_event_id_only(&self) -> bool {
        self.data.get("format").and_then(Value::as_str) == Some("event_id_only")
    }

    /// `data.default_payload`: `Ok(None)` when absent or null, an error when it
    /// is present but not an object (the device's own data is unusable).
    pub fn default_payload(&self) -> Result<Option<&Map<String, Value>>, DefaultPayloadNotAnObject> {
        match self.data.get("default_payload") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(_) => Err(DefaultPayloadNotAnObject),
        }
    }
}

/// A device's `data.default_payload` that is not a JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("data.default_payload is not a JSON object")]
pub struct DefaultPayloadNotAnObject;

/// Which payload a device receives, decided in the order of docs/design.md
/// §3 "Kinds of notification".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No `event_id`: only the counts changed (e.g. after a read receipt).
    BadgeOnly,
    /// The device asked for `format: "event_id_only"`.
    EventIdOnly,
    /// Everything the provider's payload carries.
    Full,
}

/// A validated notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub event_id: Option<String>,
    pub room_id: Option<String>,
    /// The event's `type`.
    pub event_type: Option<String>,
    pub sender: Option<String>,
    pub sender_display_name: Option<String>,
    pub room_name: Option<String>,
    pub room_alias: Option<String>,
    pub membership: Option<String>,
    pub user_is_target: Option<bool>,
    pub prio: Prio,
    pub content: Option<Map<String, Value>>,
    pub counts: Counts,
    pub devices: Vec<Device>,
    /// The `notification` object as sent, without `devices`: what UnifiedPush
    /// forwards.
    pub raw_without_devices: Map<String, Value>,
}

impl Notification {
    pub fn kind_for(&self, device: &Device) -> Kind {
        if self.event_id.is_none() {
            Kind::BadgeOnly
        } else if device.wants_event_id_only() {
            Kind::EventIdOnly
        } else {
            Kind::Full
        }
    }
}

/// Parse and validate a `/notify` body.
///
/// `max_devices` bounds the `devices` array: more is `M_TOO_LARGE`.
pub fn parse_notify(body: &[u8], max_devices: usize) -> Result<Notification, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::NotJson("body is not UTF-8".into()))?;
    let mut value: Value = serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::NotJson(e.to_string())
        } else {
            ApiError::BadJson(e.to_string())
        }
    })?;
    let root = value
        .as_object_mut()
        .ok_or_else(|| ApiError::BadJson("the body must be a JSON object".into()))?;
    // Taken apart rather than copied: what is left of `notification` once
    // `devices` is taken out is `raw_without_devices`.
    let mut n = match root.remove("notification") {
        Some(Value::Object(n)) => n,
        Some(_) => return Err(bad("notification", "must be an object")),
        None => return Err(bad("notification", "is required")),
    };

    let devices_raw = match n.remove("devices") {
        Some(Value::Array(d)) if d.is_empty() => return Err(bad("notification.devices", "must not be empty")),
        Some(Value::Array(d)) => d,
        Some(_) => return Err(bad("notification.devices", "must be an array")),
        None => return Err(bad("notification.devices", "is required")),
    };
    if devices_raw.len() > max_devices {
        return Err(ApiError::TooLarge(format!(
            "notification.devices has {} entries; this gateway accepts at most {max_devices}",
            devices_raw.len()
        )));
    }
    let devices = devices_raw
        .into_iter()
        .enumerate()
        .map(|(i, d)| parse_device(i, d))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Notification {
        event_id: opt_id(&n, "event_id", "notification.event_id")?,
        room_id: opt_id(&n, "room_id", "notification.room_id")?,
        event_type: opt_id(&n, "type", "notification.type")?,
        sender: opt_id(&n, "sender", "notification.sender")?,
        sender_display_name: opt_string(&n, "sender_display_name", "notification.sender_display_name")?,
        room_name: opt_string(&n, "room_name", "notification.room_name")?,
        room_alias: opt_id(&n, "room_alias", "notification.room_alias")?,
        membership: opt_string(&n, "membership", "notification.membership")?,
        user_is_target: opt_bool(&n, "user_is_target", "notification.user_is_target")?,
        prio: parse_prio(n.get("prio"))?,
        content: opt_object(&n, "content", "notification.content")?.cloned(),
        counts: parse_counts(n.get("counts"))?,
        devices,
        raw_without_devices: n,
    })
}

fn bad(field: &str, problem: &str) -> ApiError {
    ApiError::BadJson(format!("{field} {problem}"))
}

fn opt_string(obj: &Map<String, Value>, key: &str, field: &str) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(field, "must be a string")),
    }
}

/// The Matrix spec caps event ids, room ids and aliases, user ids and event
/// types at 255 bytes; a longer one is no valid notification.
pub const MAX_ID_BYTES: usize = 255;

fn opt_id(obj: &Map<String, Value>, key: &str, field: &str) -> Result<Option<String>, ApiError> {
    let value = opt_string(obj, key, field)?;
    if value.as_ref().is_some_and(|v| v.len() > MAX_ID_BYTES) {
        return Err(bad(field, &format!("is longer than the spec's {MAX_ID_BYTES} bytes")));
    }
    Ok(value)
}

fn opt_bool(obj: &Map<String, Value>, key: &str, field: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(field, "must be a boolean")),
    }
}

fn opt_object<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a Map<String, Value>>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(bad(field, "must be an object")),
    }
}

/// `opt_object`, moved out of `obj`; absent or null is empty.
fn take_object(obj: &mut Map<String, Value>, key: &str, field: &str) -> Result<Map<String, Value>, ApiError> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(bad(field, "must be an object")),
    }
}

fn parse_prio(v: Option<&Value>) -> Result<Prio, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Prio::High),
        Some(Value::String(s)) if s == "low" => Ok(Prio::Low),
        // The spec defines `high` and `low`; anything else is treated as the default.
        Some(Value::String(_)) => Ok(Prio::High),
        Some(_) => Err(bad("notification.prio", "must be a string (\"high\" or \"low\")")),
    }
}

fn parse_counts(v: Option<&Value>) -> Result<Counts, ApiError> {
    let counts = match v {
        None | Some(Value::Null) => return Ok(Counts::default()),
        Some(Value::Object(c)) => c,
        Some(_) => return Err(bad("notification.counts", "must be an object")),
    };
    let count = |key: &str| -> Result<Option<u64>, ApiError> {
        match counts.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| bad(&format!("notification.counts.{key}"), "must be a non-negative integer")),
            Some(_) => Err(bad(&format!("notification.counts.{key}"), "must be a non-negative integer")),
        }
    };
    Ok(Counts { unread: count("unread")?, missed_calls: count("missed_calls")? })
}

/// One device, taken apart (its strings and maps move into the `Device`).
fn parse_device(index: usize, v: Value) -> Result<Device, ApiError> {
    let field = |name: &str| format!("notification.devices[{index}].{name}");
    let Value::Object(mut d) = v else {
        return Err(bad(&format!("notification.devices[{index}]"), "must be an object"));
    };
    let app_id = match d.remove("app_id") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(bad(&field("app_id"), "must be a string")),
        None => return Err(bad(&field("app_id"), "is required")),
    };
    let pushkey = match d.remove("pushkey") {
        Some(Value::String(s)) => Pushkey(s),
        Some(_) => return Err(bad(&field("pushkey"), "must be a string")),
        None => return Err(bad(&field("pushkey"), "is required")),
    };
    let pushkey_ts = match d.get("pushkey_ts") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_i64()
                .ok_or_else(|| bad(&field("pushkey_ts"), "must be an integer"))?,
        ),
        Some(_) => return Err(bad(&field("pushkey_ts"), "must be an integer")),
    };
    let data = take_object(&mut d, "data", &field("data"))?;
    let tweaks_raw = take_object(&mut d, "tweaks", &field("tweaks"))?;
    let tweaks = Tweaks {
        sound: opt_string(&tweaks_raw, "sound", &field("tweaks.sound"))?,
        highlight: opt_bool(&tweaks_raw, "highlight", &field("tweaks.highlight"))?,
        raw: tweaks_raw,
    };
    Ok(Device { app_id, pushkey, pushkey_ts, data, tweaks })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        serde_json::to_vec(&crate::testing::synapse_body(name)).unwrap()
    }

    fn err(body: &str) -> ApiError {
        parse_notify(body.as_bytes(), 20).unwrap_err()
    }

    #[test]
    fn parses_synapse_message() {
        let n = parse_notify(&fixture("message-ios.json"), 20).unwrap();
        assert_eq!(n.event_type.as_deref(), Some("m.room.message"));
        assert_eq!(n.counts.unread, Some(1));
        assert_eq!(n.devices.len(), 1);
        assert_eq!(n.devices[0].pushkey.as_str(), "abc123");
        assert_eq!(n.devices[0].tweaks.sound.as_deref(), Some("default"));
        assert_eq!(n.kind_for(&n.devices[0]), Kind::Full);
        assert!(!n.raw_without_devices.contains_key("devices"));
    }

    #[test]
    fn event_id_only_and_badge_only_kinds() {
        let n = parse_notify(&fixture("event_id_only-android.json"), 20).unwrap();
        assert_eq!(n.kind_for(&n.devices[0]), Kind::EventIdOnly);
        let badge = parse_notify(
            br#"{"notification":{"counts":{"unread":2},"devices":[{"app_id":"a","pushkey":"k","data":{"format":"event_id_only"}}]}}"#,
            20,
        )
        .unwrap();
        assert_eq!(badge.kind_for(&badge.devices[0]), Kind::BadgeOnly);
    }

    #[test]
    fn minimal_client_test_push_is_accepted() {
        let n = parse_notify(br#"{"notification":{"devices":[{"app_id":"a","pushkey":"k"}]}}"#, 20).unwrap();
        assert_eq!(n.prio, Prio::High);
        assert_eq!(n.counts, Counts::default());
    }

    #[test]
    fn not_json_is_m_not_json() {
        assert!(matches!(err("{nope"), ApiError::NotJson(_)));
        assert!(matches!(err(""), ApiError::NotJson(_)));
        assert!(matches!(parse_notify(&[0xff, 0xfe], 20), Err(ApiError::NotJson(_))));
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (r#"[]"#, "body"),
            (r#"{}"#, "notification"),
            (r#"{"notification":1}"#, "notification"),
            (r#"{"notification":{}}"#, "notification.devices"),
            (r#"{"notification":{"devices":{}}}"#, "notification.devices"),
            (r#"{"notification":{"devices":[]}}"#, "notification.devices"),
            (r#"{"notification":{"devices":[1]}}"#, "notification.devices[0]"),
            (r#"{"notification":{"devices":[{"pushkey":"k"}]}}"#, "notification.devices[0].app_id"),
            (r#"{"notification":{"devices":[{"app_id":"a","pushkey":5}]}}"#, "notification.devices[0].pushkey"),
            (r#"{"notification":{"devices":[{"app_id":"a","pushkey":"k","data":[]}]}}"#, "notification.devices[0].data"),
            (r#"{"notification":{"devices":[{"app_id":"a","pushkey":"k","tweaks":"x"}]}}"#, "notification.devices[0].tweaks"),
            (r#"{"notification":{"devices":[{"app_id":"a","pushkey":"k","tweaks":{"sound":1}}]}}"#, "notification.devices[0].tweaks.sound"),
            (r#"{"notification":{"counts":[],"devices":[{"app_id":"a","pushkey":"k"}]}}"#, "notification.counts"),
            (r#"{"notification":{"counts":{"unread":"1"},"devices":[{"app_id":"a","pushkey":"k"}]}}"#, "notification.counts.unread"),
            (r#"{"notification":{"counts":{"missed_calls":-1},"devices":[{"app_id":"a","pushkey":"k"}]}}"#, "notification.counts.missed_calls"),
            (r#"{"notification":{"prio":1,"devices":[{"app_id":"a","pushkey":"k"}]}}"#, "notification.prio"),
            (r#"{"notification":{"event_id":1,"devices":[{"app_id":"a","pushkey":"k"}]}}"#, "notification.event_id"),
        ];
        for (body, field) in cases {
            match err(body) {
                ApiError::BadJson(msg) => assert!(msg.contains(field), "{body}: {msg}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn too_many_devices_is_too_large() {
        let devices: Vec<Value> = (0..21).map(|i| serde_json::json!({"app_id":"a","pushkey":format!("k{i}")})).collect();
        let body = serde_json::to_vec(&serde_json::json!({"notification":{"devices":devices}})).unwrap();
        assert!(matches!(parse_notify(&body, 20), Err(ApiError::TooLarge(_))));
        assert!(parse_notify(&body, 21).is_ok());
    }

    #[test]
    fn pushkey_debug_is_shortened() {
        let k = Pushkey("abcdefghijklmnop".into());
        assert_eq!(format!("{k:?}"), "Pushkey(abcdef…)");
        assert!(!format!("{k}").contains("ghij"));
        assert_eq!(Pushkey("abc123".into()).short(), "abc…");
        assert_eq!(Pushkey("k".into()).short(), "…");
    }

    #[test]
    fn ids_over_255_bytes_are_bad_json() {
        let long = "x".repeat(256);
        for field in ["event_id", "room_id", "sender", "type", "room_alias"] {
            let body = format!(r#"{{"notification":{{"{field}":"{long}","devices":[{{"app_id":"a","pushkey":"k"}}]}}}}"#);
            match err(&body) {
                ApiError::BadJson(msg) => assert!(msg.contains(field), "{msg}"),
                other => panic!("{field}: {other:?}"),
            }
        }
        let ok = "x".repeat(255);
        assert!(parse_notify(format!(r#"{{"notification":{{"event_id":"{ok}","devices":[{{"app_id":"a","pushkey":"k"}}]}}}}"#).as_bytes(), 20).is_ok());
    }
}
