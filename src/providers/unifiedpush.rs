//! UnifiedPush: the pushkey is the endpoint URL the device's distributor
//! (ntfy, NextPush, …) handed out; the notification is POSTed there as JSON.
//!
//! The UnifiedPush server specification's rules for an application server:
//! an endpoint is an http(s) URL of at most 1000 bytes; redirects are not
//! followed (no request is); the answer's body and headers may be ignored
//! (the worker cancels the body unread); after a 429 the endpoint is left
//! alone for its `Retry-After`, remembered per endpoint, not per host.

use std::cell::RefCell;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::fit::Fit;
use super::style::Style;
use super::{AnswerBody, OutRequest, Outcome, Prepared, ProviderResponse, UnixSecs, Verdict};
use crate::bounded::BoundedMap;
use crate::config::UnifiedPushConfig;
use crate::endpoints::AllowedEndpoints;
use crate::fingerprint::fingerprint;
use crate::notify::{Device, Kind, Notification};

/// UnifiedPush distributors, like WebPush services, take 4096 bytes.
pub const MAX_BODY: usize = 4096;

/// The specification: "An endpoint's length MUST be less than or equal to
/// 1000 bytes."
pub const MAX_ENDPOINT_BYTES: usize = 1000;

/// Endpoints remembered as asking to be left alone (a 429). Beyond this the
/// least recently used is forgotten (and may be sent to before its time).
pub const MAX_HELD_ENDPOINTS: usize = 1024;
/// How long a 429 without a usable `Retry-After` holds its endpoint.
pub const DEFAULT_HOLD_SECS: u64 = 10;
/// The longest `Retry-After` honoured: a bogus one cannot silence a device for days.
pub const MAX_HOLD_SECS: u64 = 3600;

/// `{"notification": …}` in at most `MAX_BODY` bytes: the texts of
/// `content`, at any depth, and the room and sender names are cut, the
/// longest first; `content`'s largest entries go when that is not enough.
const FIT: Fit<'static> = Fit {
    max_bytes: MAX_BODY,
    texts: &["/notification/content", "/notification/room_name", "/notification/sender_display_name"],
    droppable: &["/notification/content"],
};

/// What event_id_only devices receive: "ids, counts and `prio`".
const EVENT_ID_ONLY_KEYS: &[&str] = &["event_id", "room_id", "counts", "prio"];

/// A `unifiedpush` app: an endpoint policy, and the endpoints that asked
/// to be left alone (isolate memory).
#[derive(Debug)]
pub struct UnifiedPushApp {
    endpoints: AllowedEndpoints,
    send_badge_counts: bool,
    /// Endpoint (hashed) → until when it is not sent to.
    held: RefCell<BoundedMap<[u8; 16], UnixSecs>>,
}

/// An endpoint's key in `held`: its fingerprint, so a held entry is small
/// whatever the URL, and no endpoint can collide with another on purpose.
fn endpoint_key(url: &str) -> [u8; 16] {
    fingerprint(&[url.as_bytes()])
}

impl UnifiedPushApp {
    pub fn new(config: UnifiedPushConfig) -> Result<Self, String> {
        Ok(Self {
            endpoints: AllowedEndpoints::from_config(config.allowed_endpoints.as_deref())?,
            send_badge_counts: config.send_badge_counts,
            held: RefCell::new(BoundedMap::new(MAX_HELD_ENDPOINTS)),
        })
    }

    /// Seconds the endpoint `url` still asked to be left alone for (a 429),
    /// if any: a deferred push to it waits that long (`crate::deferred`).
    pub fn held_for(&self, url: &str, now: UnixSecs) -> Option<u64> {
        let until = self.held.borrow_mut().get_mut(&endpoint_key(url)).map(|until| *until)?;
        (now < until).then(|| until - now)
    }

    /// How many endpoints are held now (for tests of the bound).
    pub fn held_endpoints(&self) -> usize {
        self.held.borrow().len()
    }

    /// The verdict for the endpoint's answer; a 429 holds the endpoint for
    /// its `Retry-After` (at most `MAX_HOLD_SECS`, `DEFAULT_HOLD_SECS` when
    /// absent or a date).
    pub fn classify(&self, request: &OutRequest, response: &ProviderResponse, now: UnixSecs) -> Verdict {
        if response.status != 429 {
            return classify(response);
        }
        let secs = response.retry_after_secs().unwrap_or(DEFAULT_HOLD_SECS).min(MAX_HOLD_SECS);
        if secs > 0 {
            self.held.borrow_mut().insert(endpoint_key(&request.url), now.saturating_add(secs));
        }
        Verdict::new(
            Outcome::Transient { retry_after: Some(Duration::from_secs(secs)) },
            format!("endpoint: 429, left alone for {secs} s"),
        )
    }

    /// docs/design.md §10 "UnifiedPush": POST `{"notification": {...}}` there,
    /// the notification without `devices`, fitted to 4096 bytes. `devices` stays out because
    /// it would hand one device's distributor every other device's pushkey;
    /// `counts` stays out when the device's counts are off.
    pub fn prepare(&self, n: &Notification, d: &Device, now: UnixSecs) -> Result<Prepared, Verdict> {
        let url = d.pushkey.as_str();
        if url.len() > MAX_ENDPOINT_BYTES {
            return Err(Verdict::rejected(format!("pushkey: an endpoint is at most {MAX_ENDPOINT_BYTES} bytes")));
        }
        self.endpoints.check(url).map_err(|e| Verdict::rejected(format!("pushkey: {e}")))?;
        if !self.held.borrow().is_empty() {
            let key = endpoint_key(url);
            let mut held = self.held.borrow_mut();
            match held.get_mut(&key).map(|until| *until) {
                Some(until) if now < until => {
                    return Err(Verdict::transient(format!(
                        "endpoint: asked to be left alone for {} s more (429 Retry-After); not sent",
                        until - now
                    )));
                }
                Some(_) => {
                    held.remove(&key);
                }
                None => {}
            }
        }
        let mut notification: Map<String, Value> = match n.kind_for(d) {
            Kind::EventIdOnly => n
                .raw_without_devices
                .iter()
                .filter(|(k, _)| EVENT_ID_ONLY_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            Kind::Full | Kind::BadgeOnly => n.raw_without_devices.clone(),
        };
        if !Style::new(d, self.send_badge_counts, false).counts {
            notification.remove("counts");
        }
        // No device data is sent, so a notification that cannot fit is ours.
        let body = FIT
            .apply(json!({ "notification": notification }))
            .ok_or_else(|| Verdict::failed("the notification does not fit 4096 bytes even trimmed"))?;
        Ok(Prepared {
            request: OutRequest {
                url: url.to_string(),
                headers: vec![("content-type".to_string(), "application/json".to_string())],
                body,
                // "The body and headers of a push response can be ignored."
                answer_body: AnswerBody::Cancel,
            },
            token_key: None,
        })
    }
}

/// docs/design.md §10 "UnifiedPush": `Rejected` on 401–404 and 410 (as the
/// reference UnifiedPush gateway does); 429 and 5xx `Transient` (network
/// errors are `Transient` too, §4 "Outcomes and the rule for rejection").
pub fn classify(response: &ProviderResponse) -> Verdict {
    let status = response.status;
    match status {
        200..=299 => Verdict::delivered(),
        401..=404 | 410 => Verdict::rejected(format!("endpoint: {status} (gone or not ours)")),
        429 | 500..=599 => Verdict::new(
            Outcome::Transient { retry_after: response.retry_after() },
            format!("endpoint: {status}"),
        ),
        _ => Verdict::failed(format!("endpoint: unexpected {status}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::providers::fit::samples;

    const ENDPOINT: &str = "https://ntfy.example.net/upAbCdEf123?up=1";

    fn app(allowed: Value) -> UnifiedPushApp {
        UnifiedPushApp::new(serde_json::from_value(json!({ "allowed_endpoints": allowed })).unwrap()).unwrap()
    }

    fn fixture(name: &str, pushkey: &str, data: Value) -> Notification {
        crate::testing::synapse_notification(name, Some(vec![json!({"app_id": "im.app.up", "pushkey": pushkey, "data": data})]))
    }

    fn sent(app: &UnifiedPushApp, n: &Notification) -> (Prepared, Value) {
        let prepared = app.prepare(n, &n.devices[0], 0).unwrap();
        let body = serde_json::from_slice(&prepared.request.body).unwrap();
        (prepared, body)
    }

    #[test]
    fn full_notification_without_devices() {
        let n = fixture("message-ios.json", ENDPOINT, json!({}));
        let (prepared, body) = sent(&app(json!(["ntfy.example.net"])), &n);
        assert_eq!(prepared.request.url, ENDPOINT);
        assert_eq!(prepared.request.header("content-type"), Some("application/json"));
        assert_eq!(prepared.token_key, None);
        assert_eq!(
            body,
            json!({"notification": {
                "content": {"body": "Hello Bob, message 0", "msgtype": "m.text"},
                "counts": {"unread": 1},
                "event_id": "$c_S3Dbae4d34xgwTHsXztzA9NxxLqspUJNES7lttZhU",
                "id": "$c_S3Dbae4d34xgwTHsXztzA9NxxLqspUJNES7lttZhU",
                "prio": "high",
                "room_id": "!44w6byx0W9j7JETLGnbPOv0d75PH5_ubC1pmU4gJv8E",
                "room_name": "Push test room",
                "sender": "@alices1:localhost",
                "sender_display_name": "alices1",
                "type": "m.room.message",
            }})
        );
    }

    #[test]
    fn event_id_only_keeps_ids_counts_and_prio() {
        let n = fixture("message-ios.json", ENDPOINT, json!({"format": "event_id_only"}));
        let (_, body) = sent(&app(json!(["ntfy.example.net"])), &n);
        assert_eq!(
            body,
            json!({"notification": {
                "counts": {"unread": 1},
                "event_id": "$c_S3Dbae4d34xgwTHsXztzA9NxxLqspUJNES7lttZhU",
                "prio": "high",
                "room_id": "!44w6byx0W9j7JETLGnbPOv0d75PH5_ubC1pmU4gJv8E",
            }})
        );
    }

    #[test]
    fn counts_off_leave_the_counts_out() {
        let up = |send_badge_counts: bool| {
            UnifiedPushApp::new(
                serde_json::from_value(json!({"allowed_endpoints": ["ntfy.example.net"], "send_badge_counts": send_badge_counts}))
                    .unwrap(),
            )
            .unwrap()
        };
        for (app, data) in [
            (up(false), json!({})),
            (up(true), json!({"org.matrix.msc4076.disable_badge_count": true})),
            (up(true), json!({"disable_badge_count": true, "format": "event_id_only"})),
        ] {
            let n = fixture("message-ios.json", ENDPOINT, data.clone());
            let (_, body) = sent(&app, &n);
            assert!(body["notification"].get("counts").is_none(), "{data}: {body}");
            assert_eq!(body["notification"]["event_id"], "$c_S3Dbae4d34xgwTHsXztzA9NxxLqspUJNES7lttZhU");
        }
        let n = fixture("message-ios.json", ENDPOINT, json!({"disable_badge_count": false}));
        assert_eq!(sent(&up(true), &n).1["notification"]["counts"], json!({"unread": 1}));
    }

    #[test]
    fn long_text_is_trimmed_to_4096_bytes() {
        let mut n = fixture("message-ios.json", ENDPOINT, json!({}));
        let long = "ü".repeat(5000);
        n.raw_without_devices["content"]["body"] = long.clone().into();
        let (prepared, body) = sent(&app(json!(["ntfy.example.net"])), &n);
        assert!(prepared.request.body.len() <= MAX_BODY && prepared.request.body.len() > MAX_BODY - 4);
        let text = body["notification"]["content"]["body"].as_str().unwrap();
        assert!(text.ends_with('…') && long.starts_with(text.trim_end_matches('…')));
        assert_eq!(body["notification"]["event_id"], "$c_S3Dbae4d34xgwTHsXztzA9NxxLqspUJNES7lttZhU");
    }

    /// The body sent for `content`, checked to fit.
    fn sent_with_content(content: Map<String, Value>) -> Value {
        let mut n = fixture("message-ios.json", ENDPOINT, json!({}));
        n.raw_without_devices["content"] = Value::Object(content);
        let (prepared, body) = sent(&app(json!(["ntfy.example.net"])), &n);
        assert!(prepared.request.body.len() <= MAX_BODY, "{} bytes", prepared.request.body.len());
        body
    }

    #[test]
    fn an_edit_of_a_long_message_is_trimmed_inside_m_new_content() {
        let body = sent_with_content(samples::long_edit());
        let content = &body["notification"]["content"];
        let new_text = content["m.new_content"]["body"].as_str().unwrap();
        for text in [new_text, content["m.new_content"]["formatted_body"].as_str().unwrap(), content["body"].as_str().unwrap()] {
            assert!(text.ends_with('…') && text.len() > 800, "{} bytes", text.len());
        }
        assert!(samples::long_text().starts_with(new_text.trim_end_matches('…')));
        assert_eq!(content["m.relates_to"]["rel_type"], "m.replace");
        assert_eq!(body["notification"]["event_id"], "$c_S3Dbae4d34xgwTHsXztzA9NxxLqspUJNES7lttZhU");
    }

    #[test]
    fn a_poll_with_long_answers_keeps_every_answer() {
        let body = sent_with_content(samples::long_poll());
        let answers = body["notification"]["content"]["org.matrix.msc3381.poll.start"]["answers"].as_array().unwrap();
        assert_eq!(answers.len(), 20);
        assert!(answers.iter().all(|a| a["org.matrix.msc1767.text"].as_str().unwrap().starts_with("answer ")));
    }

    #[test]
    fn content_too_big_to_cut_loses_its_largest_entries_not_the_push() {
        let numbers: Vec<u64> = (0..2000).map(|i| i * 1_000_003).collect();
        let mut content = samples::long_edit();
        content.insert("org.example.numbers".into(), json!(numbers));
        let body = sent_with_content(content);
        let content = body["notification"]["content"].as_object().unwrap();
        assert!(!content.contains_key("org.example.numbers"));
        assert!(content["m.new_content"]["body"].as_str().unwrap().len() > 800);
    }

    #[test]
    fn default_payload_is_not_forwarded_so_it_cannot_spoil_the_push() {
        let n = fixture("message-ios.json", ENDPOINT, json!({"default_payload": samples::huge_default_payload()}));
        let (prepared, body) = sent(&app(json!(["ntfy.example.net"])), &n);
        assert!(prepared.request.body.len() <= MAX_BODY);
        assert!(body["notification"].get("devices").is_none());
    }

    #[test]
    fn a_notification_that_cannot_fit_is_failed() {
        let mut n = fixture("message-ios.json", ENDPOINT, json!({}));
        n.raw_without_devices["event_id"] = json!(format!("${}", "e".repeat(5000)));
        let verdict = app(json!(["ntfy.example.net"])).prepare(&n, &n.devices[0], 0).unwrap_err();
        assert_eq!(verdict.outcome, Outcome::Failed);
    }

    #[test]
    fn endpoints_outside_the_allow_list_are_rejected_without_a_request() {
        let cases: &[(Value, &str, bool)] = &[
            (json!(["ntfy.example.net"]), ENDPOINT, true),
            (json!(["ntfy.example.net"]), "https://ntfy.example.net:8443/up", false),
            (json!(["ntfy.example.net"]), "http://ntfy.example.net/up", false),
            (json!(["ntfy.example.net"]), "https://evil.example.com/up", false),
            (json!(["ntfy.example.net"]), "not a url", false),
            (json!(["http://127.0.0.1:*"]), "http://127.0.0.1:8080/up", true),
            (json!(null), "https://ntfy.sh/upAbC", true),
            (json!(null), "http://ntfy.sh/upAbC", false),
            (json!(null), "https://192.168.1.2/up", false),
            (json!(null), "https://[fd00::1]/up", false),
            (json!(null), "https://nextcloud.local/up", false),
        ];
        for (allowed, pushkey, ok) in cases {
            let n = fixture("message-ios.json", pushkey, json!({}));
            match app(allowed.clone()).prepare(&n, &n.devices[0], 0) {
                Ok(_) => assert!(ok, "{allowed} {pushkey} was allowed"),
                Err(v) => {
                    assert!(!ok, "{allowed} {pushkey}: {v:?}");
                    assert_eq!(v.outcome, Outcome::Rejected);
                    assert!(!v.reason.contains("/up"), "the reason must not carry the endpoint path: {}", v.reason);
                }
            }
        }
    }

    #[test]
    fn endpoints_over_1000_bytes_are_rejected_and_answers_are_not_read() {
        let a = app(json!(["ntfy.example.net"]));
        let base = format!("{ENDPOINT}&pad=");
        let exact = format!("{base}{}", "p".repeat(1000 - base.len()));
        let n = fixture("message-ios.json", &exact, json!({}));
        let prepared = a.prepare(&n, &n.devices[0], 0).unwrap();
        assert_eq!(prepared.request.answer_body, AnswerBody::Cancel, "the spec lets the answer's body be ignored");
        let over = format!("{exact}p");
        let n = fixture("message-ios.json", &over, json!({}));
        let verdict = a.prepare(&n, &n.devices[0], 0).unwrap_err();
        assert_eq!(verdict.outcome, Outcome::Rejected);
        assert!(verdict.reason.contains("1000 bytes"), "{}", verdict.reason);
    }

    #[test]
    fn after_a_429_the_endpoint_is_left_alone_for_its_retry_after() {
        let a = app(json!(["ntfy.example.net"]));
        let n = fixture("message-ios.json", ENDPOINT, json!({}));
        let other = fixture("message-ios.json", "https://ntfy.example.net/upOther", json!({}));
        let prepared = a.prepare(&n, &n.devices[0], 1000).unwrap();
        let answer = |retry_after: Option<&str>| ProviderResponse {
            status: 429,
            headers: retry_after.map(|v| vec![("retry-after".to_string(), v.to_string())]).unwrap_or_default(),
            body: vec![],
        };
        let verdict = a.classify(&prepared.request, &answer(Some("120")), 1000);
        assert_eq!(verdict.outcome, Outcome::Transient { retry_after: Some(Duration::from_secs(120)) });
        let held = a.prepare(&n, &n.devices[0], 1119).unwrap_err();
        assert_eq!(held.outcome, Outcome::Transient { retry_after: None }, "transient, without a request");
        assert!(a.prepare(&other, &other.devices[0], 1001).is_ok(), "per endpoint, not per host");
        assert!(a.prepare(&n, &n.devices[0], 1120).is_ok(), "its time is up");
        assert_eq!(a.held_endpoints(), 0, "forgotten once over");

        // No Retry-After (or a date): a short default; an absurd one: capped.
        a.classify(&prepared.request, &answer(None), 2000);
        assert!(a.prepare(&n, &n.devices[0], 2000 + DEFAULT_HOLD_SECS - 1).is_err());
        assert!(a.prepare(&n, &n.devices[0], 2000 + DEFAULT_HOLD_SECS).is_ok());
        a.classify(&prepared.request, &answer(Some("999999999")), 3000);
        assert!(a.prepare(&n, &n.devices[0], 3000 + MAX_HOLD_SECS).is_ok());
        // Retry-After: 0 holds nothing.
        let verdict = a.classify(&prepared.request, &answer(Some("0")), 4000);
        assert_eq!(verdict.outcome, Outcome::Transient { retry_after: Some(Duration::ZERO) });
        assert!(a.prepare(&n, &n.devices[0], 4000).is_ok());

        // Memory stays bounded whatever the number of endpoints.
        for i in 0..5000 {
            let request = OutRequest { url: format!("https://ntfy.example.net/up{i}"), ..prepared.request.clone() };
            a.classify(&request, &answer(Some("600")), 5000);
            assert!(a.held_endpoints() <= MAX_HELD_ENDPOINTS);
        }
        assert_eq!(a.held_endpoints(), MAX_HELD_ENDPOINTS);
    }

    #[test]
    fn a_bad_allow_list_is_named_when_the_app_loads() {
        let err = UnifiedPushApp::new(serde_json::from_value(json!({"allowed_endpoints": ["ok.example", "a/b"]})).unwrap())
            .unwrap_err();
        assert!(err.contains("allowed_endpoints[1]"), "{err}");
    }

    #[test]
    fn classify_follows_design() {
        const CASES: &[(u16, Outcome)] = &[
            (200, Outcome::Delivered),
            (201, Outcome::Delivered),
            (202, Outcome::Delivered),
            (401, Outcome::Rejected),
            (402, Outcome::Rejected),
            (403, Outcome::Rejected),
            (404, Outcome::Rejected),
            (410, Outcome::Rejected),
            (400, Outcome::Failed),
            (413, Outcome::Failed),
            (301, Outcome::Failed),
            (429, Outcome::Transient { retry_after: None }),
            (500, Outcome::Transient { retry_after: None }),
            (502, Outcome::Transient { retry_after: None }),
        ];
        for &(status, outcome) in CASES {
            let response = ProviderResponse { status, ..Default::default() };
            assert_eq!(classify(&response).outcome, outcome, "{status}");
        }
    }
}
