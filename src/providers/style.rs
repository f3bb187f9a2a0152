//! What every provider decides the same way, beyond a push's kind: whether
//! it carries badge counts, how urgently it travels, and whether a newer push
//! of the same room replaces it.
//!
//! Each comes from the app's settings and the pusher's `data` together:
//! - counts: app `send_badge_counts` (default true) and pusher data
//!   `disable_badge_count` (MSC4076, also under its unstable name);
//! - collapsing: app `collapse_per_room` or pusher data `only_last_per_room`;
//!   a room's collapse id (APNs, FCM) and `Topic` (WebPush) are made here.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::notify::{Counts, Device, Notification, Prio};

/// Pusher data keys that turn a device's badge counts off (MSC4076): the
/// unstable name Synapse uses today, and the stable one.
pub const DISABLE_BADGE_COUNT_KEYS: &[&str] = &["org.matrix.msc4076.disable_badge_count", "disable_badge_count"];

/// Pusher data key that asks for one notification per room.
pub const ONLY_LAST_PER_ROOM_KEY: &str = "only_last_per_room";

/// Event types that ring: a ring must neither replace nor be replaced, so
/// they never collapse. Legacy VoIP, MatrixRTC's notification event (stable
/// and MSC4075 names) and its older `call.notify` form.
pub const CALL_EVENT_TYPES: &[&str] = &[
    "m.call.invite",
    "m.rtc.notification",
    "org.matrix.msc4075.rtc.notification",
    "m.call.notify",
    "org.matrix.msc4075.call.notify",
];

/// APNs: "The value of this key must not exceed 64 bytes" (`apns-collapse-id`).
pub const MAX_COLLAPSE_ID_BYTES: usize = 64;

/// How one device's pushes are shaped, beyond their kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Badge counts go out.
    pub counts: bool,
    /// A room's newer push may replace its older one.
    pub collapse_per_room: bool,
}

impl Style {
    /// The app's switches and the pusher's data together: either side can
    /// turn counts off, and either can ask for collapsing.
    pub fn new(d: &Device, send_badge_counts: bool, collapse_per_room: bool) -> Self {
        let set = |key: &str| d.data.get(key) == Some(&Value::Bool(true));
        Self {
            counts: send_badge_counts && !DISABLE_BADGE_COUNT_KEYS.iter().any(|key| set(key)),
            collapse_per_room: collapse_per_room || set(ONLY_LAST_PER_ROOM_KEY),
        }
    }

    /// The counts this device's payloads may carry: none when counts are off.
    pub fn counts(&self, n: &Notification) -> Counts {
        if self.counts {
            n.counts
        } else {
            Counts::default()
        }
    }

    /// The room whose pushes replace each other, when this push collapses:
    /// only a push that shows an event, never a ring.
    pub fn collapse_room<'n>(&self, n: &'n Notification) -> Option<&'n str> {
        if !self.collapse_per_room || n.event_id.is_none() || is_call(n) {
            return None;
        }
        n.room_id.as_deref()
    }
}

/// How urgently a push should reach the device, from what the user will see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// A high-priority push about an event: the user sees it now.
    Now,
    /// A low-priority push about an event: shown, but it can wait a little.
    Soon,
    /// No event: a badge update or a background wake, nothing to read.
    Quiet,
}

impl Urgency {
    pub fn of(n: &Notification) -> Self {
        match (n.event_id.is_some(), n.prio) {
            (false, _) => Self::Quiet,
            (true, Prio::High) => Self::Now,
            (true, Prio::Low) => Self::Soon,
        }
    }
}

/// Whether the event rings (see [`CALL_EVENT_TYPES`]).
pub fn is_call(n: &Notification) -> bool {
    n.event_type.as_deref().is_some_and(|t| CALL_EVENT_TYPES.contains(&t))
}

/// A per-room identifier for APNs's `apns-collapse-id` (and FCM's
/// `collapse_key` and notification `tag`): the room id itself when it fits 64
/// bytes of visible ASCII (so an app can find a room's notification by it),
/// else the SHA-256 of the room id in base64url (43 characters).
pub fn collapse_id(room_id: &str) -> String {
    let usable = room_id.len() <= MAX_COLLAPSE_ID_BYTES && !room_id.is_empty() && room_id.bytes().all(|b| b.is_ascii_graphic());
    if usable {
        room_id.to_string()
    } else {
        room_digest(room_id)
    }
}

/// RFC 8030 5.4: a WebPush `Topic` is at most 32 base64url characters.
pub const TOPIC_LEN: usize = 32;

/// The per-room WebPush `Topic`, so the push service keeps only the room's
/// latest push. A room id (up to 255 bytes, any character) never fits the
/// `Topic` alphabet, so it is always hashed: the first [`TOPIC_LEN`]
/// characters of [`collapse_id`]'s hash. The hash also keeps the room from
/// the push service.
pub fn topic(room_id: &str) -> String {
    room_digest(room_id).chars().take(TOPIC_LEN).collect()
}

/// SHA-256 of the room id in base64url without padding (43 characters).
fn room_digest(room_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(room_id.as_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::notify::parse_notify;
    use serde_json::json;

    fn notification(extra: Value, data: Value) -> Notification {
        let mut n = json!({"event_id": "$e", "room_id": "!r:example.org", "type": "m.room.message", "counts": {"unread": 2, "missed_calls": 1}, "devices": [{"app_id": "a", "pushkey": "k", "data": data}]});
        for (k, v) in extra.as_object().unwrap() {
            n[k] = v.clone();
        }
        parse_notify(&serde_json::to_vec(&json!({"notification": n})).unwrap(), 20).unwrap()
    }

    #[test]
    fn counts_are_off_by_the_app_or_by_either_pusher_key() {
        let cases = [
            (true, json!({}), true),
            (false, json!({}), false),
            (true, json!({"org.matrix.msc4076.disable_badge_count": true}), false),
            (true, json!({"disable_badge_count": true}), false),
            (true, json!({"disable_badge_count": false}), true),
            (true, json!({"disable_badge_count": "true"}), true),
        ];
        for (app, data, on) in cases {
            let n = notification(json!({}), data.clone());
            let style = Style::new(&n.devices[0], app, false);
            assert_eq!(style.counts, on, "{app} {data}");
            let expected = if on { n.counts } else { Counts::default() };
            assert_eq!(style.counts(&n), expected);
        }
    }

    #[test]
    fn only_pushes_with_an_event_collapse_and_never_a_ring() {
        let by_app = |extra: Value| {
            let n = notification(extra, json!({}));
            Style::new(&n.devices[0], true, true).collapse_room(&n).map(str::to_string)
        };
        assert_eq!(by_app(json!({})).as_deref(), Some("!r:example.org"));
        assert_eq!(by_app(json!({"event_id": null})), None, "a badge update or wake replaces nothing");
        assert_eq!(by_app(json!({"room_id": null})), None);
        for call in CALL_EVENT_TYPES {
            assert_eq!(by_app(json!({"type": call})), None, "{call}");
        }
        let n = notification(json!({}), json!({"only_last_per_room": true}));
        assert!(Style::new(&n.devices[0], true, false).collapse_room(&n).is_some(), "the pusher can ask for it");
        let n = notification(json!({}), json!({}));
        assert_eq!(Style::new(&n.devices[0], true, false).collapse_room(&n), None, "off unless asked");
    }

    #[test]
    fn urgency_follows_the_event_and_prio() {
        assert_eq!(Urgency::of(&notification(json!({}), json!({}))), Urgency::Now);
        assert_eq!(Urgency::of(&notification(json!({"prio": "low"}), json!({}))), Urgency::Soon);
        assert_eq!(Urgency::of(&notification(json!({"event_id": null}), json!({}))), Urgency::Quiet);
        assert_eq!(Urgency::of(&notification(json!({"event_id": null, "prio": "low"}), json!({}))), Urgency::Quiet);
    }

    #[test]
    fn collapse_ids_fit_64_bytes_of_visible_ascii() {
        assert_eq!(collapse_id("!abc:example.org"), "!abc:example.org");
        let v12 = format!("!{}", "A".repeat(43));
        assert_eq!(collapse_id(&v12), v12, "a room id of 44 characters is kept");
        for odd in [format!("!{}:example.org", "x".repeat(60)), "!ü:example.org".into(), "!a b:x".into(), "!a\n:x".into(), String::new()] {
            let id = collapse_id(&odd);
            assert_eq!(id.len(), 43, "{odd:?}");
            assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{id}");
            assert_ne!(id, collapse_id(&format!("{odd}x")), "distinct rooms, distinct ids");
        }
        let at_limit = format!("!{}", "x".repeat(63));
        assert_eq!(collapse_id(&at_limit), at_limit);
    }

    #[test]
    fn topics_are_32_base64url_characters_of_the_rooms_hash() {
        for room in ["!abc:example.org", "!ü:example.org", ""] {
            let t = topic(room);
            assert_eq!(t.len(), TOPIC_LEN, "{room:?}");
            assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{t}");
        }
        let long = format!("!{}:example.org", "x".repeat(60));
        assert!(collapse_id(&long).starts_with(&topic(&long)), "one hash per room");
        assert_ne!(topic("!a:x"), topic("!b:x"));
    }
}
