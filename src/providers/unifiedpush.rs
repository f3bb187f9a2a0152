//! UnifiedPush: the pushkey is the endpoint URL the device's distributor
//! (ntfy, NextPush, …) handed out; the notification is POSTed there as JSON.

use serde_json::{json, Map, Value};

use super::fit::Fit;
use super::style::Style;
use super::{OutRequest, Outcome, Prepared, ProviderResponse, UnixSecs, Verdict};
use crate::config::UnifiedPushConfig;
use crate::endpoints::AllowedEndpoints;
use crate::notify::{Device, Kind, Notification};

/// UnifiedPush distributors, like WebPush services, take 4096 bytes.
pub const MAX_BODY: usize = 4096;

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

/// A `unifiedpush` app: only an endpoint policy.
#[derive(Debug)]
pub struct UnifiedPushApp {
    endpoints: AllowedEndpoints,
    send_badge_counts: bool,
}

impl UnifiedPushApp {
    pub fn new(config: UnifiedPushConfig) -> Result<Self, String> {
        Ok(Self {
            endpoints: AllowedEndpoints::from_config(config.allowed_endpoints.as_deref())?,
            send_badge_counts: config.send_badge_counts,
        })
    }

    /// DESIGN.md: "POST `{"notification": {...}}` there — the notification
    /// without `devices`, trimmed to 4096 bytes". `devices` stays out because
    /// it would hand one device's distributor every other device's pushkey;
    /// `counts` stays out when the device's counts are off.
    pub fn prepare(&self, n: &Notification, d: &Device, _now: UnixSecs) -> Result<Prepared, Verdict> {
        let url = d.pushkey.as_str();
        self.endpoints.check(url).map_err(|e| Verdict::rejected(format!("pushkey: {e}")))?;
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
            },
            token_key: None,
        })
    }
}

/// DESIGN.md: "`Rejected` on 401–404 and 410 (as the reference UnifiedPush
/// gateway does); 429 / 5xx / network errors `Transient`."
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
    use crate::notify::parse_notify;
    use crate::providers::fit::samples;

    const ENDPOINT: &str = "https://ntfy.example.net/upAbCdEf123?up=1";

    fn app(allowed: Value) -> UnifiedPushApp {
        UnifiedPushApp::new(serde_json::from_value(json!({ "allowed_endpoints": allowed })).unwrap()).unwrap()
    }

    fn fixture(name: &str, pushkey: &str, data: Value) -> Notification {
        let path = format!("{}/tests/fixtures/synapse/{name}", env!("CARGO_MANIFEST_DIR"));
        let mut raw: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        raw["body"]["notification"]["devices"] = json!([{"app_id": "im.app.up", "pushkey": pushkey, "data": data}]);
        parse_notify(&serde_json::to_vec(&raw["body"]).unwrap(), 20).unwrap()
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
