//! Hostile input on the host: whatever arrives, the parsers and payload
//! builders never panic and never exceed a provider's limits. Bounded by
//! `PROPTEST_CASES` (default 256 per property) so CI stays fast.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use edgepush::config::{AppConfig, Apps};
use edgepush::notify::parse_notify;
use edgepush::providers::{apns, App, ProviderResponse};
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

fn notification_body() -> impl Strategy<Value = Value> {
    (
        (proptest::option::of(text()), proptest::option::of(text()), proptest::option::of(text())),
        (proptest::option::of(text()), proptest::option::of(text()), proptest::option::of(text())),
        (proptest::option::of(0u64..u64::MAX), proptest::option::of(0u64..100)),
        prop_oneof![Just("high"), Just("low"), Just("urgent")],
        prop::collection::btree_map("[a-z_]{1,10}", text(), 0..6),
        prop_oneof![Just(json!({})), Just(json!({"format": "event_id_only"})), json_value().prop_map(|v| json!({"default_payload": v}))],
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

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256), ..ProptestConfig::default() })]

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
    fn apns_payload_fits_and_is_valid(body in notification_body()) {
        let n = parse_notify(&serde_json::to_vec(&body).unwrap(), 20).unwrap();
        let app = apns_app();
        let device = &n.devices[0];
        if let Ok(prepared) = app.prepare(&n, device, 1_800_000_000) {
            prop_assert!(prepared.request.body.len() <= apns::MAX_PAYLOAD_BYTES, "{} bytes", prepared.request.body.len());
            let _: Value = serde_json::from_slice(&prepared.request.body).unwrap();
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
