//! Hostile input on the host: whatever arrives, the parsers and payload
//! builders never panic and never exceed a provider's limits. Bounded by
//! `PROPTEST_CASES` (default 256 per property) so CI stays fast.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use edgepush::apps::Apps;
use edgepush::config::AppConfig;
use edgepush::notify::parse_notify;
use edgepush::notify::Notification;
use edgepush::providers::{apns, fcm, unifiedpush, webpush, App, Outcome, ProviderResponse};
use std::cell::Cell;

use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Text with multibyte characters, sometimes far over any limit.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,30}", "[a-zé€😀]{0,3000}", Just("😀".repeat(3000)), Just("a".repeat(70_000))]
}

/// Matrix ids, up to the spec's 255 bytes (longer ones are refused by the parser).
fn matrix_id() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9$!@:._é😀-]{0,60}", Just("x".repeat(255)), Just("é".repeat(127))]
}

fn notification_body() -> impl Strategy<Value = Value> {
    (
        (proptest::option::of(matrix_id()), proptest::option::of(matrix_id()), proptest::option::of(matrix_id())),
        (proptest::option::of(text()), proptest::option::of(text()), proptest::option::of(text())),
        (proptest::option::of(0u64..u64::MAX), proptest::option::of(0u64..100)),
        prop_oneof![Just("high"), Just("low"), Just("urgent")],
        prop::collection::btree_map("[a-z_]{1,10}", text(), 0..6),
        prop_oneof![
            Just(json!({})),
            Just(json!({"format": "event_id_only"})),
            Just(json!({"disable_badge_count": true, "only_last_per_room": true})),
            json_value().prop_map(|v| json!({"default_payload": v})),
            text().prop_map(|t| json!({"default_payload": {"notification": {"title": t, "body": t, "image": t}}})),
        ],
        prop_oneof![Just("m.room.message"), Just("m.room.encrypted"), Just("m.room.member"), Just("m.call.invite"), Just("x.custom")],
    )
        .prop_map(|((event_id, sender, name), (display, room_name, body), (unread, calls), prio, content, data, ty)| {
            let mut content: Map<String, Value> = content.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            if let Some(body) = body {
                content.insert("body".into(), json!(body));
                content.insert("msgtype".into(), json!("m.text"));
            }
            json!({"notification": {
                "event_id": event_id, "sender": sender, "room_id": name, "sender_display_name": display,
                "room_name": room_name, "type": ty, "prio": prio, "content": content,
                "counts": {"unread": unread, "missed_calls": calls},
                "membership": "invite",
                "devices": [{"app_id": "com.example.ios", "pushkey": "3q2+7w==", "data": data, "tweaks": {"sound": "default"}}]
            }})
        })
}

fn apns_app() -> App {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let pem = p256::SecretKey::from_slice(&[9u8; 32]).unwrap().to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let secrets = move |_: &str| Some(pem.clone());
    let config = AppConfig::parse(&json!({"type": "apns", "topic": "t", "team_id": "T", "key_id": "K", "key_secret": "S"})).unwrap();
    App::load(config, &secrets).unwrap()
}

fn fcm_app() -> App {
    let account = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/test-only-fcm-service-account.json")).unwrap();
    let secrets = move |_: &str| Some(account.clone());
    let config = AppConfig::parse(&json!({"type": "fcm", "project_id": "p", "service_account_secret": "S"})).unwrap();
    App::load(config, &secrets).unwrap()
}

fn fcm_visible_app() -> App {
    let account = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/test-only-fcm-service-account.json")).unwrap();
    let secrets = move |_: &str| Some(account.clone());
    let config = AppConfig::parse(&json!({"type": "fcm", "project_id": "p", "service_account_secret": "S", "fcm_notification": true, "collapse_per_room": true})).unwrap();
    App::load(config, &secrets).unwrap()
}

fn webpush_app() -> App {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([11u8; 32]);
    let secrets = move |_: &str| Some(raw.clone());
    let config = AppConfig::parse(&json!({"type": "webpush", "vapid_private_key_secret": "V", "vapid_contact": "mailto:a@example.com"})).unwrap();
    App::load(config, &secrets).unwrap()
}

fn unifiedpush_app() -> App {
    App::load(AppConfig::parse(&json!({"type": "unifiedpush"})).unwrap(), &|_: &str| None).unwrap()
}

/// The generated notification with its one device turned into a browser
/// subscription (p256dh pushkey, endpoint, auth).
fn as_webpush_device(mut n: Notification) -> Notification {
    use base64::Engine;
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let public = p256::SecretKey::from_slice(&[5u8; 32]).unwrap().public_key().to_encoded_point(false);
    let device = &mut n.devices[0];
    device.pushkey = edgepush::notify::Pushkey(b64.encode(public.as_bytes()));
    device.data.insert("endpoint".into(), json!("https://push.example.net/wpush/v2/abc"));
    device.data.insert("auth".into(), json!(b64.encode([3u8; 16])));
    n
}

/// Notifications as a homeserver sends them: ids within Matrix's 255 bytes,
/// but names and `content` anything an event may hold (text nested in
/// objects, as edits' `m.new_content` and polls carry it).
fn realistic_body() -> impl Strategy<Value = Value> {
    let id = |sigil: &'static str| "[a-zA-Z0-9_.=-]{1,40}".prop_map(move |s| json!(format!("{sigil}{s}:example.org")));
    let nested_text = (text(), "[a-z._]{1,20}").prop_map(|(t, k)| json!({ k: t, "msgtype": "m.text" }));
    let content_value = prop_oneof![text().prop_map(Value::String), json_value(), nested_text];
    (
        (id("$"), id("!"), id("@")),
        (proptest::option::of(text()), proptest::option::of(text())),
        prop::collection::btree_map("[a-z._]{1,16}", content_value, 0..5),
        prop_oneof![Just(json!({})), Just(json!({"format": "event_id_only"}))],
    )
        .prop_map(|((event_id, room_id, sender), (display, room_name), content, data)| {
            json!({"notification": {
                "event_id": event_id, "room_id": room_id, "sender": sender, "type": "m.room.message",
                "sender_display_name": display, "room_name": room_name, "content": content,
                "counts": {"unread": 3}, "prio": "high",
                "devices": [{"app_id": "a", "pushkey": "3q2+7w==", "data": data}]
            }})
        })
}

fn is_device_fault(outcome: &Outcome) -> bool {
    *outcome == Outcome::Rejected
}

/// Cases per property: `PROPTEST_CASES`, else `default`.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(default);
    ProptestConfig { cases, ..ProptestConfig::default() }
}

/// How many generated inputs reached the property's checks. A property
/// whose checks sit behind `if let Ok(prepared)` would pass without
/// checking anything if every input were refused; `assert_reached` fails it.
#[derive(Default)]
struct Reached(Cell<u32>);

impl Reached {
    fn hit(&self) {
        self.0.set(self.0.get() + 1);
    }

    fn assert_reached(&self, what: &str) {
        assert!(self.0.get() > 0, "{what}: no generated input got this far, so nothing was checked");
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn notify_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_notify(&bytes, 20);
    }

    #[test]
    fn notify_parser_never_panics_on_json(value in json_value()) {
        let _ = parse_notify(&serde_json::to_vec(&value).unwrap(), 20);
        let wrapped = json!({"notification": value});
        let _ = parse_notify(&serde_json::to_vec(&wrapped).unwrap(), 20);
    }

    #[test]
    fn apps_parser_never_panics(value in json_value()) {
        let secrets = |_: &str| Some("not a key".to_string());
        let apps = Apps::load(Some(&value), &secrets);
        let _ = apps.find("com.example.ios");
        let _ = Apps::load(Some(&Value::String(value.to_string())), &secrets);
        if let Value::Object(map) = &value {
            for entry in map.values() {
                let _ = AppConfig::parse(entry);
            }
        }
    }

    #[test]
    fn classifiers_never_panic(status in 100u16..600, body in prop::collection::vec(any::<u8>(), 0..200), retry in ".{0,12}") {
        let response = ProviderResponse { status, headers: vec![("retry-after".into(), retry)], body };
        let _ = apns::classify(&response);
        let _ = edgepush::providers::fcm::classify(&response);
        let _ = edgepush::providers::webpush::classify(&response);
        let _ = edgepush::providers::unifiedpush::classify(&response);
    }
}

#[test]
fn apns_payload_fits_and_is_valid() {
    let app = apns_app();
    let prepared = Reached::default();
    proptest!(config(256), |(body in notification_body())| {
        let n = parse_notify(&serde_json::to_vec(&body).unwrap(), 20).unwrap();
        if let Ok(request) = app.prepare(&n, &n.devices[0], 1_800_000_000) {
            prepared.hit();
            prop_assert!(request.request.body.len() <= apns::MAX_PAYLOAD_BYTES, "{} bytes", request.request.body.len());
            let _: Value = serde_json::from_slice(&request.request.body).unwrap();
        }
    });
    prepared.assert_reached("apns prepare");
}

/// docs/design.md §8.2 "Message": FCM's `data` holds strings only, never
/// `null` or `"None"`, each value ≤ 1024 bytes, the whole `data` (without
/// a `notification`) ≤ 4096 bytes; a map that cannot be built is the
/// device's fault.
#[test]
fn fcm_data_is_strings_within_limits() {
    let built = Reached::default();
    let operator_data = prop::collection::btree_map("[a-z_]{1,10}", json_value(), 0..4);
    proptest!(config(256), |(body in notification_body(), operator in operator_data)| {
        let n = parse_notify(&serde_json::to_vec(&body).unwrap(), 20).unwrap();
        let operator: Map<String, Value> = operator.into_iter().collect();
        for device in &n.devices {
            for op in [None, Some(&operator)] {
                match fcm::data_for(&n, device, op) {
                    Ok(data) => {
                        built.hit();
                        let mut total = 0;
                        for (key, value) in &data {
                            let text = value.as_str();
                            prop_assert!(text.is_some(), "data.{key} is not a string: {value}");
                            let text = text.unwrap();
                            prop_assert!(text.len() <= fcm::MAX_DATA_VALUE_BYTES, "data.{key} is {} bytes", text.len());
                            prop_assert!(text != "None", "data.{key} is \"None\"");
                            total += key.len() + text.len();
                        }
                        prop_assert!(total <= fcm::MAX_DATA_BYTES, "data is {total} bytes");
                    }
                    Err(verdict) => prop_assert!(is_device_fault(&verdict.outcome), "{:?}: {}", verdict.outcome, verdict.reason),
                }
            }
        }
    });
    built.assert_reached("fcm data_for");
}

/// With `fcm_notification`, the notification and `data` share FCM's 4096
/// bytes, and only the device's own `default_payload` can make it fail.
#[test]
fn fcm_visible_notification_and_data_fit_together() {
    let app = fcm_visible_app();
    let prepared = Reached::default();
    proptest!(config(256), |(body in notification_body())| {
        let n = parse_notify(&serde_json::to_vec(&body).unwrap(), 20).unwrap();
        for device in &n.devices {
            match app.prepare(&n, device, 1_800_000_000) {
                Ok(request) => {
                    prepared.hit();
                    let message: Value = serde_json::from_slice(&request.request.body).unwrap();
                    let size = |v: &Value| v.as_object().map_or(0, |m| m.iter().map(|(k, v)| k.len() + v.as_str().unwrap().len()).sum::<usize>());
                    let (data, shown) = (&message["message"]["data"], &message["message"]["notification"]);
                    prop_assert!(size(data) + size(shown) <= fcm::MAX_DATA_BYTES, "{} + {} bytes", size(data), size(shown));
                    prop_assert_eq!(shown.is_object(), n.event_id.is_some(), "a notification exactly when there is an event");
                }
                Err(verdict) => prop_assert!(is_device_fault(&verdict.outcome), "{:?}: {}", verdict.outcome, verdict.reason),
            }
        }
    });
    prepared.assert_reached("fcm prepare with fcm_notification");
}

#[test]
fn fcm_message_is_valid_json_with_our_token() {
    let app = fcm_app();
    let prepared = Reached::default();
    proptest!(config(256), |(body in notification_body())| {
        let mut n = parse_notify(&serde_json::to_vec(&body).unwrap(), 20).unwrap();
        n.devices[0].pushkey = edgepush::notify::Pushkey("opaque:token/with+odd=chars".into());
        if let Ok(request) = app.prepare(&n, &n.devices[0], 1_800_000_000) {
            prepared.hit();
            let message: Value = serde_json::from_slice(&request.request.body).unwrap();
            prop_assert_eq!(&message["message"]["token"], &json!("opaque:token/with+odd=chars"));
            prop_assert!(message["message"]["data"].as_object().unwrap().values().all(Value::is_string));
        }
    });
    prepared.assert_reached("fcm prepare");
}

/// docs/design.md §9.2 "Subscription and request" and §9.3 "Payload":
/// one aes128gcm record of at most 4096 bytes.
#[test]
fn webpush_record_fits() {
    let app = webpush_app();
    let prepared = Reached::default();
    proptest!(config(256), |(body in notification_body())| {
        let n = as_webpush_device(parse_notify(&serde_json::to_vec(&body).unwrap(), 20).unwrap());
        // Names far over any limit cannot always be fitted: only what is
        // sent is checked here (realistic notifications always fit, below).
        if let Ok(request) = app.prepare(&n, &n.devices[0], 1_800_000_000) {
            prepared.hit();
            prop_assert!(request.request.body.len() <= webpush::RECORD_SIZE, "{} bytes", request.request.body.len());
        }
    });
    prepared.assert_reached("webpush prepare");
}

/// docs/design.md §10 "UnifiedPush": `{"notification": …}` without
/// `devices`, fitted to 4096 bytes.
#[test]
fn unifiedpush_body_fits() {
    let app = unifiedpush_app();
    let prepared = Reached::default();
    proptest!(config(256), |(body in notification_body())| {
        let mut n = parse_notify(&serde_json::to_vec(&body).unwrap(), 20).unwrap();
        n.devices[0].pushkey = edgepush::notify::Pushkey("https://ntfy.example.net/upAbc?up=1".into());
        if let Ok(request) = app.prepare(&n, &n.devices[0], 1_800_000_000) {
            prepared.hit();
            prop_assert!(request.request.body.len() <= unifiedpush::MAX_BODY, "{} bytes", request.request.body.len());
            let sent: Value = serde_json::from_slice(&request.request.body).unwrap();
            prop_assert!(sent["notification"].is_object());
            prop_assert!(sent["notification"].get("devices").is_none(), "devices are never forwarded");
        }
    });
    prepared.assert_reached("unifiedpush prepare");
}

/// A notification a homeserver really sends always fits: every provider
/// either prepares a request within its limit or refuses the device, and
/// never fails it (a 502 the homeserver would retry for ever).
#[test]
fn realistic_notifications_always_fit() {
    let apps = [("apns", apns_app()), ("fcm", fcm_app()), ("webpush", webpush_app()), ("unifiedpush", unifiedpush_app())];
    let prepared: [Reached; 4] = Default::default();
    proptest!(config(128), |(body in realistic_body())| {
        let n = parse_notify(&serde_json::to_vec(&body).unwrap(), 20).unwrap();
        let mut up = n.clone();
        up.devices[0].pushkey = edgepush::notify::Pushkey("https://ntfy.example.net/upAbc?up=1".into());
        let web = as_webpush_device(n.clone());
        for (((name, app), n), reached) in apps.iter().zip([&n, &n, &web, &up]).zip(&prepared) {
            match app.prepare(n, &n.devices[0], 1_800_000_000) {
                Ok(_) => reached.hit(),
                Err(verdict) => prop_assert!(verdict.outcome != Outcome::Failed, "{name}: {}", verdict.reason),
            }
        }
    });
    for ((name, _), reached) in apps.iter().zip(&prepared) {
        reached.assert_reached(&format!("{name} prepare of realistic notifications"));
    }
}
