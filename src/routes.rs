//! The HTTP surface: which request goes where, and the answers that need no
//! provider. Pure, so the routing table is tested on the host.

use serde::Serialize;
use serde_json::json;

use crate::apps::Apps;
use crate::config::LogNotifies;
use crate::report::{DeviceReport, FinalOutcome};
use crate::error::{ApiError, Reply};

pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
pub const HEALTH_PATH: &str = "/health";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Notify,
    Discovery,
    Health,
}

/// Method and path to a route, or the Matrix error for it (404 unknown
/// path, 405 known path with the wrong method).
pub fn route(method: &str, path: &str) -> Result<Route, ApiError> {
    match (method, path) {
        ("POST", NOTIFY_PATH) => Ok(Route::Notify),
        ("GET" | "HEAD", NOTIFY_PATH) => Ok(Route::Discovery),
        ("GET" | "HEAD", HEALTH_PATH) => Ok(Route::Health),
        (_, NOTIFY_PATH | HEALTH_PATH) => {
            Err(ApiError::MethodNotAllowed { method: method.to_string(), path: path.to_string() })
        }
        _ => Err(ApiError::Unrecognized(path.chars().take(200).collect())),
    }
}

/// The path of a serialized URL (what `Request.url` gives): from the first
/// `/` after the host to the query or fragment. workerd serializes URLs the
/// WHATWG way, so a path's own `?` and `#` are percent-encoded.
pub fn path_of_url(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(url, |i| url.get(i + 3..).unwrap_or_default());
    let path = after_scheme.find('/').map_or("/", |i| after_scheme.get(i..).unwrap_or("/"));
    path.split(['?', '#']).next().unwrap_or("/")
}

/// UnifiedPush's gateway discovery: "a GET on the notify path answers
/// `{"unifiedpush":{"gateway":"matrix"}}`".
pub fn discovery() -> Reply {
    Reply::ok(json!({ "gateway": "matrix", "unifiedpush": { "gateway": "matrix" } }))
}

/// `GET /health`: 200 when every app loaded, no globs overlap and no app
/// looks misconfigured in this isolate's last minutes; else 503 naming each
/// problem.
pub fn health(apps: &Apps, token_store_bound: bool, now_ms: u64) -> Reply {
    let healthy = apps.is_healthy(now_ms);
    let mut body = json!({
        "status": if healthy { "ok" } else { "degraded" },
        "apps": apps.health(now_ms),
        "token_cache": if token_store_bound { "kv" } else { "memory only: bind a KV namespace as TOKENS to share tokens" },
    });
    if let Some(obj) = body.as_object_mut() {
        if let Some(error) = &apps.global_error {
            obj.insert("error".into(), json!(error));
        }
        if !apps.overlaps.is_empty() {
            let overlaps: Vec<String> = apps.overlaps.iter().map(ToString::to_string).collect();
            obj.insert("glob_overlaps".into(), json!(overlaps));
        }
    }
    Reply::with_status(if healthy { 200 } else { 503 }, body)
}

/// The one log line written per `/notify`.
#[derive(Debug, Serialize)]
pub struct NotifyLog<'a> {
    pub msg: &'static str,
    pub request_id: &'a str,
    pub status: u16,
    pub ms: u64,
    pub devices: &'a [DeviceReport],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl NotifyLog<'_> {
    /// Whether `LOG_NOTIFIES` says to write this line: always with `All`;
    /// with `Problems`, unless the answer was 200 and every device was
    /// delivered at its first try (or settled without a send, e.g. a
    /// WebPush device that wants no pushes without an event).
    pub fn is_wanted(&self, which: LogNotifies) -> bool {
        which == LogNotifies::All
            || self.status != 200
            || self.devices.iter().any(|d| d.outcome != FinalOutcome::Delivered || d.tries > 1 || d.rate_limited)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn log_notifies_problems_skips_only_clean_deliveries() {
        let device = |outcome, tries, rate_limited| DeviceReport {
            outcome,
            tries,
            rate_limited,
            ..DeviceReport::for_device("app".into(), "abc…".into())
        };
        let log = |status, devices: &[DeviceReport]| {
            let line = NotifyLog { msg: "notify", request_id: "r", status, ms: 1, devices, error: None };
            assert!(line.is_wanted(LogNotifies::All), "LOG_NOTIFIES=all writes every line");
            line.is_wanted(LogNotifies::Problems)
        };
        let delivered = device(FinalOutcome::Delivered, 1, false);
        assert!(!log(200, &[delivered.clone(), delivered.clone()]));
        assert!(!log(200, &[delivered.clone(), device(FinalOutcome::Delivered, 0, false)]), "settled without a send");
        assert!(log(200, &[delivered.clone(), device(FinalOutcome::Rejected, 1, false)]), "a rejection");
        assert!(log(200, &[device(FinalOutcome::Delivered, 2, false)]), "a retry");
        assert!(log(200, &[device(FinalOutcome::Deferred, 3, false)]), "a deferral");
        assert!(log(429, &[device(FinalOutcome::Transient, 0, true)]), "a rate limit");
        assert!(log(502, &[delivered.clone(), device(FinalOutcome::Failed, 1, false)]), "an error answer");
        assert!(log(400, &[]), "a bad request");
    }

    #[test]
    fn routing_table() {
        assert_eq!(route("POST", NOTIFY_PATH), Ok(Route::Notify));
        assert_eq!(route("GET", NOTIFY_PATH), Ok(Route::Discovery));
        assert_eq!(route("GET", HEALTH_PATH), Ok(Route::Health));
        assert_eq!(route("PUT", NOTIFY_PATH).unwrap_err().status_errcode(), (405, "M_UNRECOGNIZED"));
        assert_eq!(route("POST", HEALTH_PATH).unwrap_err().status_errcode(), (405, "M_UNRECOGNIZED"));
        assert_eq!(route("GET", "/").unwrap_err().status_errcode(), (404, "M_UNRECOGNIZED"));
        assert_eq!(route("POST", "/_matrix/push/v1/notify/").unwrap_err().status_errcode(), (404, "M_UNRECOGNIZED"));
    }

    #[test]
    fn path_of_urls() {
        assert_eq!(path_of_url("https://push.example.org/_matrix/push/v1/notify"), NOTIFY_PATH);
        assert_eq!(path_of_url("http://127.0.0.1:8787/health?x=1#f"), HEALTH_PATH);
        assert_eq!(path_of_url("https://push.example.org"), "/");
        assert_eq!(path_of_url("https://push.example.org?q"), "/");
        assert_eq!(path_of_url("https://push.example.org/a%3Fb"), "/a%3Fb");
        assert_eq!(path_of_url("/health"), HEALTH_PATH);
    }

    #[test]
    fn discovery_shape() {
        assert_eq!(discovery().body["unifiedpush"]["gateway"], "matrix");
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn health_reports_broken_apps() {
        let secrets = |_: &str| -> Option<String> { None };
        let apps = Apps::load(Some(&json!({"x": {"type": "nope"}})), &secrets);
        let r = health(&apps, true, NOW);
        assert_eq!(r.status, 503);
        assert_eq!(r.body["status"], "degraded");
        assert!(r.body["apps"]["x"].as_str().unwrap().contains("nope"));
        let missing = health(&Apps::load(None, &secrets), false, NOW);
        assert_eq!(missing.status, 503);
        assert!(missing.body["error"].as_str().unwrap().contains("APPS"));
        let ok = health(&Apps::load(Some(&json!({})), &secrets), true, NOW);
        assert_eq!(ok.status, 200);
        assert_eq!(ok.body["status"], "ok");
        assert!(ok.body.get("glob_overlaps").is_none());
    }

    #[test]
    fn health_reports_overlapping_globs_and_suspect_apps() {
        let secrets = |_: &str| -> Option<String> { None };
        let apps = Apps::load(Some(&json!({"*.up": {"type": "unifiedpush"}, "im.*": {"type": "unifiedpush"}})), &secrets);
        let r = health(&apps, true, NOW);
        assert_eq!(r.status, 503);
        let overlap = r.body["glob_overlaps"][0].as_str().unwrap();
        assert!(overlap.contains(r#""*.up""#) && overlap.contains(r#""im.*""#), "{overlap}");
        assert_eq!(r.body["apps"]["*.up"], "ok", "each glob's app itself works");

        let apps = Apps::load(Some(&json!({"a.up": {"type": "unifiedpush"}})), &secrets);
        let refusal = crate::providers::apns::DEVICE_TOKEN_NOT_FOR_TOPIC;
        apps.entries[0].record.judge("a.up", refusal, "400 DeviceTokenNotForTopic", false, NOW);
        let r = health(&apps, true, NOW + 1);
        assert_eq!(r.status, 503);
        let status = r.body["apps"]["a.up"].as_str().unwrap();
        assert!(status.starts_with("suspect: 0 delivered, 1 DeviceTokenNotForTopic") && status.ends_with("check topic"), "{status}");
        apps.entries[0].record.delivered("a.up", NOW + 2);
        assert_eq!(health(&apps, true, NOW + 3).status, 200, "a delivery clears the suspicion");
    }
}
