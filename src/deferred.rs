//! Deferred delivery: pushes that are still transient after a notify's own
//! tries go to a Cloudflare Queue (binding `DEFERRED_QUEUE`) instead of
//! making the answer 502, and the same worker's queue consumer
//! (`consumer.rs`) sends them again with backoff until they are delivered,
//! rejected, or too old. This module holds what a notify hands over: the
//! queue's message and the hand-off itself.
//!
//! Everything here is plain Rust over [`Transport`]; the shell only moves
//! message texts between these modules and the queue.
//!
//! - A queued push carries the prepared request (URL, headers, body) and the
//!   cache key of its credential, never a credential: the token is fetched
//!   again at send time through the same `TokenCache`.
//! - Queues deliver at least once, so every deferred push has a stable
//!   identity ([`stamp_identity`]) that lets the device show it once.
//!
//! Its tests cover the consumer too: one fake transport and queue for both
//! halves of deferred delivery.

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::MAX_QUEUE_DELAY_SECS;
use crate::notify::{Device, Notification, Pushkey, Tweaks};
use crate::providers::{AnswerBody, App, OutRequest, Prepared};
use crate::report::{DeviceReport, FinalOutcome};
use crate::transport::Transport;

/// The version of the message format; a message of another version is not
/// sent (it is dead-lettered as unreadable).
pub const FORMAT_VERSION: u32 = 1;

/// Characters of a push's identity: 16 bytes of SHA-256 in base64url, within
/// WebPush's 32-character `Topic` and APNs' 64-byte `apns-collapse-id`.
const IDENTITY_LEN: usize = 22;

/// A push waiting on the queue: what is needed to send it again, and no
/// credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeferredPush {
    pub v: u32,
    pub app_id: String,
    /// The provider the request was built for (the app is looked up again).
    pub provider: String,
    /// The device's pushkey shortened, for logs.
    #[serde(default)]
    pub pushkey_short: String,
    /// APNs only, the whole pushkey (the request's URL carries the device
    /// token made from it): a `platform: "auto"` app remembers each
    /// device's environment by it and builds the other environment's URL
    /// from it. Other providers need only the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushkey: Option<String>,
    /// When the notify arrived (ms since the epoch): the age limit counts from here.
    pub created_ms: u64,
    /// Consumer tries so far.
    pub round: u32,
    pub url: String,
    /// Without `authorization`: the credential is attached at send time.
    pub headers: Vec<(String, String)>,
    /// The body, base64.
    pub body: String,
    /// The provider's answer is cancelled unread (WebPush, UnifiedPush).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub answer_unread: bool,
    /// The cache key of the credential the request needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_key: Option<String>,
    /// Why the push was given up, when it is sent to the dead-letter queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_up: Option<String>,
}

impl DeferredPush {
    pub fn new(device: &Device, provider: &str, prepared: &Prepared, created_ms: u64) -> Self {
        let mut headers = prepared.request.headers.clone();
        headers.retain(|(name, _)| !name.eq_ignore_ascii_case("authorization"));
        Self {
            v: FORMAT_VERSION,
            app_id: device.app_id.clone(),
            provider: provider.to_string(),
            pushkey_short: device.pushkey.short(),
            pushkey: (provider == "apns").then(|| device.pushkey.as_str().to_string()),
            created_ms,
            round: 0,
            url: prepared.request.url.clone(),
            headers,
            body: STANDARD.encode(&prepared.request.body),
            answer_unread: prepared.request.answer_body == AnswerBody::Cancel,
            token_key: prepared.token_key.clone(),
            given_up: None,
        }
    }

    /// The message text put on the queue.
    pub fn to_text(&self) -> Result<String, String> {
        serde_json::to_string(self).map_err(|e| format!("the push could not be written as a queue message: {e}"))
    }

    pub fn from_text(text: &str) -> Result<Self, String> {
        // serde's message may quote the text's values: only where it broke.
        let push: Self = serde_json::from_str(text)
            .map_err(|e| format!("not a deferred push ({:?} at line {}, column {})", e.classify(), e.line(), e.column()))?;
        if push.v != FORMAT_VERSION {
            return Err(format!("format version {} (this worker reads {FORMAT_VERSION})", push.v));
        }
        Ok(push)
    }

    /// The request as it was prepared, without its credential.
    pub fn prepared(&self) -> Result<Prepared, String> {
        let body = STANDARD.decode(&self.body).map_err(|e| format!("the body is not base64: {e}"))?;
        let answer_body = if self.answer_unread { AnswerBody::Cancel } else { AnswerBody::Read };
        let request = OutRequest { url: self.url.clone(), headers: self.headers.clone(), body, answer_body };
        Ok(Prepared { request, token_key: self.token_key.clone() })
    }

    /// The device, as far as sending needs it (its app id and pushkey).
    pub fn device(&self) -> Device {
        Device {
            app_id: self.app_id.clone(),
            pushkey: Pushkey(self.pushkey.clone().unwrap_or_else(|| self.pushkey_short.clone())),
            pushkey_ts: None,
            data: serde_json::Map::new(),
            tweaks: Tweaks::default(),
        }
    }
}

/// The text of a message given up, for the dead-letter queue: marked with
/// `given_up` so that a worker consuming its own dead-letter queue drops
/// it instead of dead-lettering it again. A JSON object gets the field; any
/// other text is wrapped as `{"given_up": why, "text": text}`.
pub fn mark_given_up(text: &str, why: &str) -> String {
    let why = Value::String(why.to_string());
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(mut object)) => {
            object.insert("given_up".into(), why);
            Value::Object(object).to_string()
        }
        _ => serde_json::json!({ "given_up": why, "text": text }).to_string(),
    }
}

/// Why a message was given up, if it says so: any JSON object with a
/// string `given_up`, whatever else it holds.
pub fn given_up(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Marked {
        given_up: String,
    }
    serde_json::from_str::<Marked>(text).ok().map(|m| m.given_up)
}

/// A push to put on the queue, delivered after `delay_secs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueue {
    pub push: DeferredPush,
    pub delay_secs: u64,
}

/// The identity of one push to one device: the same on every try of it, in
/// the notify and from the queue, and different for every other event or
/// device. Hashed, so it reveals neither.
pub fn identity(app_id: &str, pushkey: &str, event_id: &str) -> String {
    let mut hash = Sha256::new();
    for part in [app_id, pushkey, event_id] {
        hash.update(part.as_bytes());
        hash.update([0u8]);
    }
    URL_SAFE_NO_PAD.encode(hash.finalize()).chars().take(IDENTITY_LEN).collect()
}

/// Marks a push so that a second copy of it replaces the first instead of
/// showing twice: APNs `apns-collapse-id`, WebPush `Topic`, and for FCM
/// messages the system shows `android.notification.tag` (and
/// `apns.headers.apns-collapse-id` when the message has an `apns` block).
/// An identity already set (e.g. one per room) is kept: it collapses copies
/// too. Pushes without an event (badge updates) show nothing twice and are
/// left as they are.
///
/// FCM data messages, HMS and UnifiedPush get nothing: the app builds the
/// notification and recognises a copy by the `event_id` it carries. FCM's
/// `collapse_key` only merges copies still waiting in FCM (at most four keys
/// per device, the others may be dropped), never one already delivered.
pub fn stamp_identity(app: &App, request: &mut OutRequest, n: &Notification, d: &Device) {
    let Some(event_id) = &n.event_id else { return };
    let id = identity(&d.app_id, d.pushkey.as_str(), event_id);
    match app {
        App::Apns(_) if request.header("apns-collapse-id").is_none() => request.set_header("apns-collapse-id", id),
        App::WebPush(_) if request.header("topic").is_none() => request.set_header("topic", id),
        App::Fcm(_) => tag_fcm_message(&mut request.body, &id),
        _ => {}
    }
}

fn tag_fcm_message(body: &mut Vec<u8>, id: &str) {
    let Ok(mut whole) = serde_json::from_slice::<Value>(body) else { return };
    let Some(message) = whole.get_mut("message").and_then(Value::as_object_mut) else { return };
    let shown = message.contains_key("notification") || message.get("android").is_some_and(|a| a.get("notification").is_some());
    let mut changed = false;
    let mut set = |object: Option<&mut Value>, key: &str| {
        if let Some(object) = object.and_then(Value::as_object_mut) {
            if !object.contains_key(key) {
                object.insert(key.to_string(), Value::String(id.to_string()));
                changed = true;
            }
        }
    };
    if shown {
        let android = message.entry("android").or_insert_with(|| Value::Object(serde_json::Map::new()));
        let notification = android.as_object_mut().map(|a| a.entry("notification").or_insert_with(|| Value::Object(serde_json::Map::new())));
        set(notification, "tag");
    }
    if let Some(apns) = message.get_mut("apns").and_then(Value::as_object_mut) {
        let headers = apns.entry("headers").or_insert_with(|| Value::Object(serde_json::Map::new()));
        set(Some(headers), "apns-collapse-id");
    }
    if changed {
        if let Ok(bytes) = serde_json::to_vec(&whole) {
            *body = bytes;
        }
    }
}

/// Hands the devices of a notify that ended transient to the queue. On
/// success they become `Deferred` (settled for the homeserver); if the queue
/// refuses, they stay `Transient` and the answer is 502, as without a queue.
///
/// Nothing is queued when the answer would be 502 anyway (another device
/// failed on our side, or could not be queued): the homeserver retries the
/// whole notify, and each retry would add another copy to the queue.
pub async fn hand_off<T: Transport>(
    transport: &T,
    deferrable: Vec<(usize, Prepared, Option<Duration>)>,
    devices: &[Device],
    reports: &mut [DeviceReport],
    created_ms: u64,
) {
    let Some(settings) = transport.deferral() else { return };
    let handed: Vec<&(usize, Prepared, Option<Duration>)> = deferrable
        .iter()
        .filter(|(index, _, _)| reports.get(*index).is_some_and(|r| r.outcome == FinalOutcome::Transient))
        .collect();
    let settled = reports.iter().enumerate().all(|(i, r)| {
        handed.iter().any(|(index, _, _)| *index == i) || matches!(r.outcome, FinalOutcome::Delivered | FinalOutcome::Rejected)
    });
    if !settled {
        return;
    }
    let mut indices = Vec::new();
    let mut pushes = Vec::new();
    for (index, prepared, retry_after) in handed {
        let (Some(report), Some(device)) = (reports.get(*index), devices.get(*index)) else { continue };
        indices.push(*index);
        let push = DeferredPush::new(device, report.provider, prepared, created_ms);
        // A provider's `Retry-After` holds for the first queued try too, in
        // full: the verdict's is capped for waiting inside the request.
        let asked = report.retry_after_s.max(retry_after.map(|d| d.as_secs())).unwrap_or(0).min(MAX_QUEUE_DELAY_SECS);
        pushes.push(Enqueue { push, delay_secs: settings.backoff_secs(1, transport.random()).max(asked) });
    }
    if pushes.is_empty() {
        return;
    }
    // A push that cannot be written fails the hand-off, as a refused enqueue does.
    let messages: Result<Vec<(String, u64)>, String> = pushes.iter().map(|p| Ok((p.push.to_text()?, p.delay_secs))).collect();
    let result = match messages {
        Ok(messages) => transport.defer(&messages).await,
        Err(e) => Err(e),
    };
    for index in indices {
        let Some(report) = reports.get_mut(index) else { continue };
        match &result {
            Ok(()) => report.outcome = FinalOutcome::Deferred,
            Err(e) => {
                let e: String = e.chars().take(300).collect();
                report.reason = format!("{}; not deferred: {e}", report.reason);
            }
        }
    }
}

/// Splits message sizes into runs that one `sendBatch` takes: at most 100
/// messages and `max_bytes` in all. A message over `max_bytes` goes alone
/// (and the queue refuses it).
pub fn batches(sizes: &[usize], max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    const MAX_MESSAGES: usize = 100;
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, size) in sizes.iter().enumerate() {
        if i > start && (i - start >= MAX_MESSAGES || bytes + size > max_bytes) {
            runs.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < sizes.len() {
        runs.push(start..sizes.len());
    }
    runs
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use futures_executor::block_on;
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    use serde_json::json;

    use super::*;
    use crate::apps::{Apps, Lookup};
    use crate::config::{DeferredSettings, Settings};
    use crate::consumer::{consume, Action, Fate, Handled};
    use crate::transport::Budgeted;
    use crate::dispatch::{reply, Dispatcher};
    use crate::notify::parse_notify;
    use crate::providers::ProviderResponse;
    use crate::tokens::{TokenCache, TokenSource};
    use crate::transport::Signal;

    const NOW_MS: u64 = 1_800_000_000_000;

    /// A status (0: connection reset), headers, body.
    type Answer = (u16, Vec<(String, String)>, String);

    /// Answers per device token (the URL's last segment) or FCM `message.token`:
    /// a list whose last entry repeats; a queue that can be made to refuse.
    #[derive(Default)]
    struct Fake {
        answers: RefCell<HashMap<String, Vec<Answer>>>,
        sent: RefCell<Vec<OutRequest>>,
        clock_ms: Cell<u64>,
        deferral: Option<DeferredSettings>,
        queued: RefCell<Vec<Enqueue>>,
        queue_refuses: bool,
        over_rate_limit: bool,
        signals: Cell<u32>,
    }

    impl Fake {
        fn new(deferral: Option<DeferredSettings>) -> Self {
            let t = Self { deferral, ..Self::default() };
            t.clock_ms.set(NOW_MS);
            t
        }
        fn answer(&self, key: &str, answers: &[(u16, &str)]) {
            let list = answers.iter().map(|(s, b)| (*s, vec![], b.to_string())).collect();
            self.answers.borrow_mut().insert(key.to_string(), list);
        }
        fn answer_with(&self, key: &str, status: u16, headers: &[(&str, &str)]) {
            let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            self.answers.borrow_mut().insert(key.to_string(), vec![(status, headers, String::new())]);
        }
        fn sent_to(&self, key: &str) -> Vec<OutRequest> {
            self.sent.borrow().iter().filter(|r| key_of(r) == key).cloned().collect()
        }
    }

    fn key_of(request: &OutRequest) -> String {
        if request.url.ends_with(":send") {
            let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
            return body["message"]["token"].as_str().unwrap_or_default().to_string();
        }
        request.url.rsplit('/').next().unwrap_or_default().to_string()
    }

    impl Transport for Fake {
        async fn send(&self, request: &OutRequest) -> Result<ProviderResponse, String> {
            self.sent.borrow_mut().push(request.clone());
            let mut answers = self.answers.borrow_mut();
            let list = answers.entry(key_of(request)).or_default();
            let (status, headers, body) = if list.len() > 1 { list.remove(0) } else { list.first().cloned().unwrap_or((200, vec![], String::new())) };
            if status == 0 {
                return Err("connection reset".into());
            }
            Ok(ProviderResponse { status, headers, body: body.into_bytes() })
        }
        async fn sleep(&self, ms: u64) {
            self.clock_ms.set(self.clock_ms.get() + ms);
        }
        fn now_ms(&self) -> u64 {
            self.clock_ms.get()
        }
        fn random(&self) -> f64 {
            0.5
        }
        async fn kv_get(&self, _key: &str) -> Option<String> {
            None
        }
        async fn kv_put(&self, _key: &str, _value: &str, _ttl: u64) {}
        async fn over_rate_limit(&self, _key: &str) -> bool {
            self.over_rate_limit
        }
        fn signal(&self) -> Signal {
            self.signals.set(self.signals.get() + 1);
            crate::transport::local_signal()
        }
        fn deferral(&self) -> Option<&DeferredSettings> {
            self.deferral.as_ref()
        }
        async fn defer(&self, messages: &[(String, u64)]) -> Result<(), String> {
            if self.queue_refuses {
                return Err("queue is full".into());
            }
            let pushes = messages.iter().map(|(text, delay_secs)| Enqueue { push: DeferredPush::from_text(text).unwrap(), delay_secs: *delay_secs });
            self.queued.borrow_mut().extend(pushes);
            Ok(())
        }
    }

    thread_local! {
        /// Loading the RSA service account takes a while in a debug build: once per thread.
        static APPS: std::rc::Rc<Apps> = std::rc::Rc::new(load_apps());
    }

    fn apps() -> std::rc::Rc<Apps> {
        APPS.with(std::rc::Rc::clone)
    }

    fn load_apps() -> Apps {
        let pem = p256::SecretKey::from_slice(&[7u8; 32]).unwrap().to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let account = include_str!("../tests/keys/test-only-fcm-service-account.json").to_string();
        let vapid = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let secrets = move |name: &str| match name {
            "APNS_KEY" => Some(pem.clone()),
            "FCM" => Some(account.clone()),
            "VAPID" => Some(vapid.clone()),
            _ => None,
        };
        Apps::load(
            Some(&json!({
                "ios": {"type": "apns", "topic": "com.example", "team_id": "TEAM", "key_id": "KEY",
                        "key_secret": "APNS_KEY", "convert_device_token_to_hex": false},
                "ios.room": {"type": "apns", "topic": "com.example", "team_id": "TEAM", "key_id": "KEY",
                             "key_secret": "APNS_KEY", "convert_device_token_to_hex": false, "collapse_per_room": true},
                "ios.auto": {"type": "apns", "platform": "auto", "topic": "com.example", "team_id": "TEAM",
                             "key_id": "KEY", "key_secret": "APNS_KEY", "convert_device_token_to_hex": false},
                "android": {"type": "fcm", "project_id": "p", "service_account_secret": "FCM"},
                "android.visible": {"type": "fcm", "project_id": "p", "service_account_secret": "FCM", "fcm_notification": true},
                "android.styled": {"type": "fcm", "project_id": "p", "service_account_secret": "FCM",
                                   "fcm_options": {"android": {"notification": {"color": "#00ff00"}}}},
                "web": {"type": "webpush", "vapid_private_key_secret": "VAPID", "vapid_contact": "mailto:a@b.c"},
                "up": {"type": "unifiedpush"}
            })),
            &secrets,
        )
    }

    fn notification(event_id: Option<&str>, devices: &[(&str, &str)]) -> Notification {
        let devices: Vec<_> = devices.iter().map(|(app, key)| json!({"app_id": app, "pushkey": key})).collect();
        let mut n = json!({"room_id": "!r", "counts": {"unread": 1}, "devices": devices});
        if let Some(e) = event_id {
            n["event_id"] = json!(e);
        }
        parse_notify(&serde_json::to_vec(&json!({ "notification": n })).unwrap(), 100).unwrap()
    }

    fn dispatch(t: &Fake, n: &Notification) -> (Reply_, Vec<DeviceReport>) {
        let (apps, settings, tokens) = (apps(), Settings::default(), TokenCache::default());
        let results = block_on(Dispatcher::new(t, &apps, &settings, &tokens).dispatch(n));
        let answer = reply(&results);
        ((answer.status, answer.body), results.into_iter().map(|(_, r)| r).collect())
    }

    type Reply_ = (u16, Value);

    fn settings() -> DeferredSettings {
        DeferredSettings { max_age_secs: 600, retry_base_secs: 10, retry_max_secs: 60, ..DeferredSettings::default() }
    }

    fn find<'a>(apps: &'a Apps, id: &str) -> &'a App {
        match apps.find(id) {
            Lookup::Found { app, .. } => app,
            _ => panic!("no app {id}"),
        }
    }

    #[test]
    fn identity_is_stable_short_and_distinct() {
        let a = identity("app", "key", "$e");
        assert_eq!(a, identity("app", "key", "$e"));
        assert_eq!(a.len(), IDENTITY_LEN);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{a}");
        assert_ne!(a, identity("app", "key", "$f"));
        assert_ne!(a, identity("app", "other", "$e"));
        assert_ne!(a, identity("app2", "key", "$e"));
        assert_ne!(identity("ab", "c", "$e"), identity("a", "bc", "$e"), "parts are separated");
    }

    #[test]
    fn identity_goes_where_each_provider_collapses_copies() {
        let apps = apps();
        let n = notification(Some("$e"), &[("ios", "aabb"), ("android", "tok"), ("android.visible", "tok"), ("up", "https://up.example.net/x")]);
        assert_ne!(n.devices[1].app_id, n.devices[2].app_id);
        let prepare = |id: &str, i: usize| find(&apps, id).prepare(&n, &n.devices[i], 0).unwrap().request;
        let id_of = |i: usize| identity(&n.devices[i].app_id, n.devices[i].pushkey.as_str(), "$e");

        let mut r = prepare("ios", 0);
        stamp_identity(find(&apps, "ios"), &mut r, &n, &n.devices[0]);
        assert_eq!(r.header("apns-collapse-id"), Some(id_of(0).as_str()));
        let mut kept = prepare("ios.room", 0);
        assert_eq!(kept.header("apns-collapse-id"), Some("!r"), "the room's, from collapse_per_room");
        stamp_identity(find(&apps, "ios.room"), &mut kept, &n, &n.devices[0]);
        assert_eq!(kept.header("apns-collapse-id"), Some("!r"), "an identity already set is kept: it collapses copies too");

        let data_only = prepare("android", 1);
        let mut r = data_only.clone();
        stamp_identity(find(&apps, "android"), &mut r, &n, &n.devices[1]);
        assert_eq!(r, data_only, "FCM data messages: no collapse_key (the app dedupes by event_id)");

        let mut r = prepare("android.visible", 2);
        stamp_identity(find(&apps, "android.visible"), &mut r, &n, &n.devices[2]);
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(body["message"]["notification"].is_object(), "a notification the system shows");
        assert_eq!(body["message"]["android"]["notification"]["tag"], json!(id_of(2)), "replaces a shown copy on Android");
        assert_eq!(body["message"]["apns"]["headers"]["apns-collapse-id"], json!(id_of(2)), "and on iOS");
        assert_eq!(body["message"]["android"]["priority"], "high", "the rest is as built");
        assert!(body["message"]["android"].get("collapse_key").is_none());

        let mut r = prepare("android.styled", 2);
        stamp_identity(find(&apps, "android.styled"), &mut r, &n, &n.devices[2]);
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["message"]["android"]["notification"], json!({"color": "#00ff00", "tag": id_of(2)}));

        let before = prepare("up", 3);
        let mut r = before.clone();
        stamp_identity(find(&apps, "up"), &mut r, &n, &n.devices[3]);
        assert_eq!(r, before);

        let badge = notification(None, &[("ios", "aabb")]);
        let mut r = find(&apps, "ios").prepare(&badge, &badge.devices[0], 0).unwrap().request;
        stamp_identity(find(&apps, "ios"), &mut r, &badge, &badge.devices[0]);
        assert_eq!(r.header("apns-collapse-id"), None, "a badge update shows nothing twice");
    }

    #[test]
    fn webpush_keeps_its_room_topic_and_gets_one_without_a_room() {
        let apps = apps();
        let web = find(&apps, "web");
        let n = notification(Some("$e"), &[("web", "k")]);
        let mut r = OutRequest {
            url: "https://push.example/x".into(),
            headers: vec![("topic".into(), "roomtopic".into())],
            body: vec![],
            answer_body: AnswerBody::Cancel,
        };
        stamp_identity(web, &mut r, &n, &n.devices[0]);
        assert_eq!(r.header("topic"), Some("roomtopic"));
        r.headers.clear();
        stamp_identity(web, &mut r, &n, &n.devices[0]);
        assert_eq!(r.header("topic").map(str::len), Some(IDENTITY_LEN), "within RFC 8030's 32 characters");
    }

    #[test]
    fn message_text_round_trips_without_credentials() {
        let device = notification(Some("$e"), &[("ios", "aabb")]).devices.remove(0);
        let mut request = OutRequest {
            url: "https://api.push.apple.com/3/device/aabb".into(),
            headers: vec![],
            body: vec![0, 159, 255],
            answer_body: AnswerBody::Cancel,
        };
        request.set_header("authorization", "bearer SECRET".into());
        request.set_header("apns-topic", "com.example".into());
        let prepared = Prepared { request, token_key: Some("apns:TEAM:KEY:x".into()) };
        let push = DeferredPush::new(&device, "apns", &prepared, NOW_MS);
        let text = push.to_text().unwrap();
        assert!(!text.contains("SECRET") && !text.contains("authorization"), "{text}");
        let back = DeferredPush::from_text(&text).unwrap();
        assert_eq!(back, push);
        assert_eq!(back.prepared().unwrap().request.body, vec![0, 159, 255]);
        assert_eq!(back.prepared().unwrap().request.answer_body, AnswerBody::Cancel);
        assert_eq!(back.prepared().unwrap().token_key.as_deref(), Some("apns:TEAM:KEY:x"));
        let newer = text.replace("\"v\":1", "\"v\":2");
        assert!(DeferredPush::from_text(&newer).unwrap_err().contains("version 2"));
        assert!(DeferredPush::from_text("{}").is_err());
        let odd = DeferredPush::from_text(r#"{"v": "a-whole-pushkey"}"#).unwrap_err();
        assert!(!odd.contains("a-whole-pushkey"), "the reason is logged: no value of the text in it ({odd})");
    }

    #[test]
    fn a_transient_device_is_deferred_and_settled_for_the_homeserver() {
        let t = Fake::new(Some(settings()));
        t.answer("down", &[(503, r#"{"reason":"ServiceUnavailable"}"#)]);
        t.answer("dead", &[(410, r#"{"reason":"Unregistered"}"#)]);
        let n = notification(Some("$e"), &[("ios", "good"), ("ios", "down"), ("ios", "dead")]);
        let (answer, reports) = dispatch(&t, &n);
        assert_eq!(answer, (200, json!({"rejected": ["dead"]})));
        let outcomes: Vec<_> = reports.iter().map(|r| r.outcome).collect();
        assert_eq!(outcomes, [FinalOutcome::Delivered, FinalOutcome::Deferred, FinalOutcome::Rejected]);
        assert!(reports[1].reason.contains("503"), "the reason it was deferred: {}", reports[1].reason);

        let queued = t.queued.borrow();
        assert_eq!(queued.len(), 1);
        let Enqueue { push, delay_secs } = &queued[0];
        assert_eq!(*delay_secs, settings().backoff_secs(1, 0.5));
        assert_eq!((push.app_id.as_str(), push.provider.as_str(), push.round, push.created_ms), ("ios", "apns", 0, NOW_MS));
        assert_eq!(push.pushkey.as_deref(), Some("down"), "APNs: an auto app's per-device memory is keyed by it");
        assert_eq!(push.pushkey_short, "do…");
        assert!(push.url.ends_with("/3/device/down"));
        assert!(push.token_key.as_deref().unwrap().starts_with("apns:TEAM:KEY:"));
        assert!(!push.headers.iter().any(|(k, _)| k == "authorization"));
        let tries = t.sent_to("down");
        assert_eq!(tries.len(), Settings::default().max_tries as usize, "deferred only after the request's own tries");
        let id = identity("ios", "down", "$e");
        assert!(tries.iter().all(|r| r.header("apns-collapse-id") == Some(id.as_str())), "every try carries the identity");
        assert!(push.headers.contains(&("apns-collapse-id".into(), id)));
        assert_eq!(STANDARD.decode(&push.body).unwrap(), tries[0].body, "the same bytes as the tries");
    }

    #[test]
    fn a_refused_enqueue_and_our_own_failures_stay_502() {
        let t = Fake { queue_refuses: true, ..Fake::new(Some(settings())) };
        t.answer("down", &[(503, "")]);
        let (answer, reports) = dispatch(&t, &notification(Some("$e"), &[("ios", "down")]));
        assert_eq!(answer.0, 502);
        assert_eq!(reports[0].outcome, FinalOutcome::Transient);
        assert!(reports[0].reason.contains("not deferred: queue is full"), "{}", reports[0].reason);

        let t = Fake::new(Some(settings()));
        t.answer("ours", &[(400, r#"{"reason":"BadTopic"}"#)]);
        let (answer, reports) = dispatch(&t, &notification(Some("$e"), &[("ios", "ours"), ("nobody", "x")]));
        assert_eq!(answer.0, 502);
        assert_eq!(reports[0].outcome, FinalOutcome::Failed);
        assert!(t.queued.borrow().is_empty(), "retrying later cannot fix our configuration");
    }

    #[test]
    fn a_retry_after_beyond_the_request_holds_for_the_first_queued_try() {
        let t = Fake::new(Some(settings()));
        t.answer_with("slow", 429, &[("retry-after", "120")]);
        let (answer, reports) = dispatch(&t, &notification(Some("$e"), &[("ios", "slow")]));
        assert_eq!((answer.0, reports[0].outcome, reports[0].retry_after_s), (200, FinalOutcome::Deferred, Some(120)));
        assert_eq!(t.queued.borrow()[0].delay_secs, 120, "the provider's Retry-After, not the 3 s a request waits");
    }

    #[test]
    fn nothing_is_queued_when_the_answer_is_502_anyway() {
        let t = Fake::new(Some(settings()));
        t.answer("down", &[(503, "")]);
        t.answer("ours", &[(400, r#"{"reason":"BadTopic"}"#)]);
        let n = notification(Some("$e"), &[("ios", "good"), ("ios", "down"), ("ios", "ours")]);
        let (answer, reports) = dispatch(&t, &n);
        assert_eq!(answer.0, 502, "our own failure: the homeserver retries the notify");
        assert_eq!(reports[1].outcome, FinalOutcome::Transient);
        assert!(t.queued.borrow().is_empty(), "each retry of the notify would queue another copy");
    }

    #[test]
    fn a_device_over_the_rate_limit_is_not_deferred() {
        let t = Fake { over_rate_limit: true, ..Fake::new(Some(settings())) };
        let (answer, reports) = dispatch(&t, &notification(Some("$e"), &[("ios", "flood")]));
        assert_eq!(answer.0, 429, "the homeserver is told to slow down");
        assert_eq!(reports[0].outcome, FinalOutcome::Transient);
        assert!(t.queued.borrow().is_empty() && t.sent.borrow().is_empty());
    }

    #[test]
    fn a_unifiedpush_endpoint_that_asked_to_be_left_alone_is() {
        let endpoint = "https://up.example.net/held-1";
        let t = Fake::new(Some(settings()));
        t.answer_with("held-1", 429, &[("retry-after", "120")]);
        let (answer, reports) = dispatch(&t, &notification(Some("$e"), &[("up", endpoint)]));
        assert_eq!((answer.0, reports[0].outcome), (200, FinalOutcome::Deferred));
        assert_eq!(t.queued.borrow()[0].delay_secs, 120, "the first queued try waits for the endpoint's Retry-After");
        assert_eq!(t.sent_to("held-1").len(), 1, "not retried inside the request either");

        // Another copy comes back early: the endpoint is still held.
        let push = t.queued.borrow()[0].push.clone();
        let early = Fake::new(Some(settings()));
        early.clock_ms.set(NOW_MS + 20_000);
        let handled = consume_at(&early, &[push], &settings());
        let Action::Requeue(again) = &handled[0].action else { panic!("{:?}", handled[0].action) };
        assert_eq!(again.delay_secs, 100);
        assert!(early.sent.borrow().is_empty(), "not sent while the endpoint is held");
        assert!(handled[0].log.reason.contains("left alone"), "{}", handled[0].log.reason);
    }

    #[test]
    fn without_a_queue_nothing_changes() {
        let t = Fake::new(None);
        t.answer("down", &[(503, "")]);
        let (answer, reports) = dispatch(&t, &notification(Some("$e"), &[("ios", "down")]));
        assert_eq!(answer.0, 502);
        assert_eq!(reports[0].outcome, FinalOutcome::Transient);
        assert!(t.sent.borrow().iter().all(|r| r.header("apns-collapse-id").is_none()), "requests as before");
    }

    /// The pushes of `devices` as the notify queues them (event `$e`).
    fn queued(devices: &[(&str, &str)]) -> Vec<DeferredPush> {
        let (apps, n) = (apps(), notification(Some("$e"), devices));
        n.devices
            .iter()
            .map(|d| {
                let app = find(&apps, &d.app_id);
                let mut prepared = app.prepare(&n, d, NOW_MS / 1000).unwrap();
                stamp_identity(app, &mut prepared.request, &n, d);
                DeferredPush::new(d, app.provider(), &prepared, NOW_MS)
            })
            .collect()
    }

    fn consume_at(t: &Fake, pushes: &[DeferredPush], deferred: &DeferredSettings) -> Vec<Handled> {
        let (apps, settings, tokens) = (apps(), Settings::default(), TokenCache::default());
        let texts: Vec<Option<String>> = pushes.iter().map(|p| Some(p.to_text().unwrap())).collect();
        block_on(consume(t, &apps, &settings, deferred, &tokens, &texts, false))
    }

    #[test]
    fn the_consumer_delivers_requeues_with_backoff_and_stops_on_rejection() {
        let pushes = queued(&[("ios", "back"), ("ios", "still"), ("ios", "gone")]);
        let t = Fake::new(Some(settings()));
        t.clock_ms.set(NOW_MS + 12_000);
        t.answer("still", &[(503, r#"{"reason":"ServiceUnavailable"}"#)]);
        t.answer("gone", &[(410, r#"{"reason":"Unregistered"}"#)]);
        let handled = consume_at(&t, &pushes, &settings());

        assert_eq!(handled[0].action, Action::Ack);
        assert_eq!((handled[0].log.result, handled[0].log.round, handled[0].log.age_s), (Fate::Delivered, 1, 12));
        assert_eq!(handled[0].log.token, Some(TokenSource::Minted), "the credential is made again at send time");
        let sent = t.sent_to("back");
        assert_eq!(sent.len(), 1, "one try per round");
        assert!(sent[0].header("authorization").unwrap().starts_with("bearer "));
        assert_eq!(sent[0].header("apns-collapse-id"), Some(identity("ios", "back", "$e").as_str()));

        let Action::Requeue(again) = &handled[1].action else { panic!("{:?}", handled[1].action) };
        assert_eq!(again.push.round, 1);
        assert_eq!(again.delay_secs, settings().backoff_secs(2, 0.5));
        assert_eq!(handled[1].log.next_in_s, Some(again.delay_secs));
        assert_eq!((handled[1].log.result, handled[1].log.status), (Fate::Retrying, Some(503)));
        assert_eq!(again.push.headers, pushes[1].headers, "the same request, round by round");

        assert_eq!(handled[2].action, Action::Ack, "a dead device is not retried");
        assert_eq!((handled[2].log.result, handled[2].log.status), (Fate::Rejected, Some(410)));
    }

    #[test]
    fn a_deferred_push_to_an_auto_app_finds_its_environment() {
        let pushes = queued(&[("ios.auto", "dev")]);
        let t = Fake::new(Some(settings()));
        t.answer("dev", &[(400, r#"{"reason":"BadDeviceToken"}"#), (200, "")]);
        let handled = consume_at(&t, &pushes, &settings());
        assert_eq!(handled[0].log.result, Fate::Delivered);
        let urls: Vec<String> = t.sent_to("dev").iter().map(|r| r.url.clone()).collect();
        assert_eq!(urls, ["https://api.push.apple.com/3/device/dev", "https://api.sandbox.push.apple.com/3/device/dev"]);
        let apps = apps();
        let Lookup::Found { entry, .. } = apps.find("ios.auto") else { panic!() };
        assert!(entry.record.in_sandbox("dev"), "remembered for the device's next push");
        assert_eq!(handled[0].log.pushkey, "d…", "logs show the pushkey shortened");
    }

    #[test]
    fn retry_after_is_honoured_beyond_the_in_request_cap() {
        let pushes = queued(&[("ios", "busy")]);
        let t = Fake::new(Some(settings()));
        t.answer_with("busy", 429, &[("retry-after", "120")]);
        let handled = consume_at(&t, &pushes, &settings());
        let Action::Requeue(again) = &handled[0].action else { panic!("{:?}", handled[0].action) };
        assert_eq!(again.delay_secs, 120, "longer than DEFERRED_RETRY_MAX_SECS: the provider asked");

        t.clock_ms.set(NOW_MS + 550_000);
        let handled = consume_at(&t, &pushes, &settings());
        assert_eq!(handled[0].log.result, Fate::Expired, "a Retry-After past the age limit gives up now");
        assert!(handled[0].log.reason.contains("Retry-After 120"), "{}", handled[0].log.reason);
    }

    #[test]
    fn nothing_is_sent_at_or_after_the_age_limit() {
        let pushes = queued(&[("ios", "late")]);
        let t = Fake::new(Some(settings()));
        // The last pause is shortened so the try comes before the limit.
        t.clock_ms.set(NOW_MS + 590_000);
        t.answer("late", &[(503, "")]);
        let handled = consume_at(&t, &pushes, &settings());
        let Action::Requeue(again) = &handled[0].action else { panic!("{:?}", handled[0].action) };
        assert_eq!(settings().backoff_secs(2, 0.5), 15);
        assert_eq!(again.delay_secs, 9, "10 s left, one kept for the queue");

        t.clock_ms.set(NOW_MS + 599_500);
        let handled = consume_at(&t, &pushes, &settings());
        assert_eq!(handled[0].log.result, Fate::Expired, "under a second left: given up after this try");

        let sends = t.sent.borrow().len();
        t.clock_ms.set(NOW_MS + 600_000);
        let handled = consume_at(&t, &pushes, &settings());
        assert_eq!(t.sent.borrow().len(), sends, "at the limit nothing is sent");
        assert_eq!(handled[0].log.result, Fate::Expired);
        assert!(handled[0].log.is_error());
        let Action::DeadLetter(text) = &handled[0].action else { panic!("{:?}", handled[0].action) };
        let letter = DeferredPush::from_text(text).unwrap();
        assert!(letter.given_up.unwrap().contains("DEFERRED_MAX_AGE_SECS"));

        // A worker that also consumes its dead-letter queue does not loop.
        let t = Fake::new(Some(settings()));
        let handled = consume_at(&t, &[DeferredPush::from_text(text).unwrap()], &settings());
        assert_eq!((handled[0].action.clone(), handled[0].log.result), (Action::Ack, Fate::GivenUp));
        assert!(t.sent.borrow().is_empty());
    }

    #[test]
    fn our_own_failures_are_retried_until_the_age_limit() {
        let pushes = queued(&[("ios", "k"), ("android", "f")]);
        let t = Fake::new(Some(settings()));
        let no_apps = Apps::load(None, &|_: &str| None);
        let texts: Vec<Option<String>> = pushes.iter().map(|p| Some(p.to_text().unwrap())).collect();
        let (settings_, tokens) = (Settings::default(), TokenCache::default());
        let handled = block_on(consume(&t, &no_apps, &settings_, &settings(), &tokens, &texts, false));
        for h in &handled {
            assert!(matches!(h.action, Action::Requeue(_)), "{:?}", h.action);
            assert!(h.log.reason.contains("APPS is broken"), "{}", h.log.reason);
        }
        assert!(t.sent.borrow().is_empty());

        let mut moved = pushes[0].clone();
        moved.provider = "fcm".into();
        let handled = consume_at(&t, &[moved], &settings());
        assert!(handled[0].log.reason.contains("the app is now apns"), "{}", handled[0].log.reason);
    }

    #[test]
    fn unreadable_messages_go_to_the_dead_letter_queue_marked() {
        let t = Fake::new(Some(settings()));
        let (apps, settings_, tokens) = (apps(), Settings::default(), TokenCache::default());
        let mut newer: Value = serde_json::from_str(&queued(&[("ios", "k")])[0].to_text().unwrap()).unwrap();
        newer["v"] = json!(2);
        let mut broken = queued(&[("ios", "k")]).remove(0);
        broken.body = "%%%".into();
        let texts = [Some("not json".to_string()), None, Some(newer.to_string()), Some(broken.to_text().unwrap())];
        let handled = block_on(consume(&t, &apps, &settings_, &settings(), &tokens, &texts, false));
        assert!(handled.iter().all(|h| h.log.result == Fate::Unreadable && h.log.is_error()), "{handled:?}");
        let letters: Vec<String> = handled
            .iter()
            .map(|h| match &h.action {
                Action::DeadLetter(text) => text.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        let wrapped: Value = serde_json::from_str(&letters[0]).unwrap();
        assert_eq!(wrapped["text"], "not json", "kept as it came");
        assert!(wrapped["given_up"].as_str().unwrap().contains("not a deferred push"));
        let marked: Value = serde_json::from_str(&letters[2]).unwrap();
        assert_eq!((marked["v"].clone(), marked["app_id"].clone()), (json!(2), json!("ios")), "another version's push, whole");
        assert!(marked["given_up"].as_str().unwrap().contains("version 2"));

        // Read again (this worker consumes its dead-letter queue too): dropped.
        let again: Vec<Option<String>> = letters.into_iter().map(Some).collect();
        let handled = block_on(consume(&t, &apps, &settings_, &settings(), &tokens, &again, false));
        for h in &handled {
            assert_eq!((h.action.clone(), h.log.result), (Action::Ack, Fate::GivenUp), "{:?}", h.log);
        }
        assert!(t.sent.borrow().is_empty());
    }

    #[test]
    fn a_message_from_the_dead_letter_queue_is_never_dead_lettered_again() {
        let t = Fake::new(Some(settings()));
        let (apps, settings_, tokens) = (apps(), Settings::default(), TokenCache::default());
        // Put there by Queues (a handler that failed), unmarked.
        let late = queued(&[("ios", "k")]).remove(0);
        t.clock_ms.set(NOW_MS + 600_000);
        let texts = [Some("not json".to_string()), Some(late.to_text().unwrap())];
        let handled = block_on(consume(&t, &apps, &settings_, &settings(), &tokens, &texts, true));
        for h in &handled {
            assert_eq!(h.action, Action::Ack, "{:?}", h.log);
            assert_eq!(h.log.dead_letter, Some(false));
            assert!(h.log.reason.contains("dead-letter queue"), "{}", h.log.reason);
        }
        assert_eq!((handled[0].log.result, handled[1].log.result), (Fate::Unreadable, Fate::Expired));
    }

    #[test]
    fn only_an_apns_push_carries_the_whole_pushkey() {
        let pushes = queued(&[("android", "fcm-token-secret"), ("up", "https://up.example.net/k")]);
        for push in &pushes {
            assert_eq!(push.pushkey, None, "{}", push.provider);
            let text = push.to_text().unwrap();
            assert!(!text.contains("\"pushkey\""), "{text}");
        }
        assert_eq!(pushes[0].pushkey_short, "fcm-to…");
    }

    #[test]
    fn a_batch_shares_one_token_fetch_and_one_subrequest_budget() {
        let devices: Vec<(&str, String)> = (0..60).map(|i| ("android", format!("f{i}"))).collect();
        let refs: Vec<(&str, &str)> = devices.iter().map(|(a, k)| (*a, k.as_str())).collect();
        let pushes = queued(&refs);
        let t = Fake::new(Some(settings()));
        t.answer("token", &[(200, r#"{"access_token":"ya29.t","expires_in":3599,"token_type":"Bearer"}"#)]);
        let handled = consume_at(&t, &pushes, &settings());
        let tokens = t.sent.borrow().iter().filter(|r| !r.url.ends_with(":send")).count();
        assert_eq!(tokens, 1, "one token fetch for the batch");
        let budget = Settings::default().max_subrequests as usize;
        assert_eq!(t.sent.borrow().len(), budget, "MAX_SUBREQUESTS per batch");
        let delivered = handled.iter().filter(|h| h.log.result == Fate::Delivered).count();
        assert_eq!(delivered, budget - 1);
        assert!(handled.iter().filter(|h| h.log.result != Fate::Delivered).all(|h| matches!(h.action, Action::Requeue(_))));
        assert!(t.sent.borrow().iter().filter(|r| r.url.ends_with(":send")).all(|r| r.header("authorization") == Some("Bearer ya29.t")));
    }

    #[test]
    fn a_queued_push_uses_the_workers_own_transport_hooks() {
        let t = Fake { over_rate_limit: true, ..Fake::new(Some(settings())) };
        let budget = Cell::new(1);
        let metered = Budgeted::sharing(&t, &budget);
        let _signal = metered.signal();
        assert_eq!(t.signals.get(), 1, "a waiter on a mint resumes in its own request's context");
        assert!(block_on(metered.over_rate_limit("k")));
        assert_eq!(metered.deferral(), Some(&settings()));
        block_on(metered.defer(&[])).unwrap();
        assert!(!metered.is_spent());
        budget.set(0);
        assert!(metered.is_spent());
    }

    #[test]
    fn batches_respect_count_and_bytes() {
        assert_eq!(batches(&[], 100), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(batches(&[10; 250], 10_000), vec![0..100, 100..200, 200..250]);
        assert_eq!(batches(&[40, 40, 40, 40], 100), vec![0..2, 2..4]);
        assert_eq!(batches(&[500, 10, 10], 100), vec![0..1, 1..3], "an oversized message goes alone");
    }
}
