//! Counters for Workers Analytics Engine (binding `METRICS`, optional): one
//! data point per device, so every count is a `SUM(_sample_interval)` away.
//!
//! Besides, one point per notify (index1 `notify`), refused ones included:
//! blob2 `notify`, blob3 the answer's `errcode` (or `ok`), blob5 its status
//! class; double1 1, double2 its devices, double4 milliseconds, double5 the
//! answer's status.
//!
//! And one point per deferred push the queue consumer handled (index1
//! `deferred`): blob1 app id, blob2 provider, blob3 what became of it
//! (`delivered` / `rejected` / `retrying` / `expired` / `unreadable` /
//! `given_up`), blob4 token source; double1 1, double2 the consumer round,
//! double3 its age in seconds, double4 milliseconds, double5 provider
//! HTTP status (0 when none), double6 the delay before the next round.
//!
//! Device layout (documented in README):
//! - index1: the provider (`apns`, `fcm`, `hms`, `webpush`, `unifiedpush`, `none`)
//! - blob1: app id, blob2: provider, blob3: outcome
//!   (`delivered` / `rejected` / `transient` / `failed` / `deferred`), blob4: token source
//!   (`memory` / `kv` / `minted` / empty), blob5: the answer's status class
//! - double1: 1 (the device), double2: tries, double3: retries,
//!   double4: milliseconds, double5: provider HTTP status (0 when none),
//!   double6: 1 when a token was minted

use crate::consumer::ConsumerLog;
use crate::report::{DeviceReport, FinalOutcome};
use crate::tokens::TokenSource;

/// One Analytics Engine data point.
#[derive(Debug, Clone, PartialEq)]
pub struct DataPoint {
    pub index: &'static str,
    pub blobs: Vec<String>,
    pub doubles: Vec<f64>,
}

pub fn data_point(report: &DeviceReport, answer_status: u16) -> DataPoint {
    let outcome = match report.outcome {
        FinalOutcome::Delivered => "delivered",
        FinalOutcome::Rejected => "rejected",
        FinalOutcome::Transient => "transient",
        FinalOutcome::Failed => "failed",
        FinalOutcome::Deferred => "deferred",
    };
    let token = token_source(report.token);
    DataPoint {
        index: report.provider,
        blobs: vec![
            report.app_id.chars().take(256).collect(),
            report.provider.to_string(),
            outcome.to_string(),
            token.to_string(),
            format!("{}xx", answer_status / 100),
        ],
        doubles: vec![
            1.0,
            f64::from(report.tries),
            f64::from(report.tries.saturating_sub(1)),
            report.ms as f64,
            f64::from(report.status.unwrap_or(0)),
            if report.token == Some(TokenSource::Minted) { 1.0 } else { 0.0 },
        ],
    }
}

fn token_source(token: Option<TokenSource>) -> &'static str {
    match token {
        Some(TokenSource::Memory) => "memory",
        Some(TokenSource::Kv) => "kv",
        Some(TokenSource::Minted) => "minted",
        None => "",
    }
}

/// The point written per queue message the deferred-delivery consumer handled.
pub fn deferred_point(log: &ConsumerLog) -> DataPoint {
    let result = serde_json::to_value(log.result).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    DataPoint {
        index: "deferred",
        blobs: vec![
            log.app_id.chars().take(256).collect(),
            log.provider.clone(),
            result,
            token_source(log.token).to_string(),
            String::new(),
        ],
        doubles: vec![
            1.0,
            f64::from(log.round),
            log.age_s as f64,
            log.ms as f64,
            f64::from(log.status.unwrap_or(0)),
            log.next_in_s.unwrap_or(0) as f64,
        ],
    }
}

/// The point written once per notify, whatever its answer.
pub fn notify_point(answer_status: u16, errcode: Option<&str>, devices: usize, ms: u64) -> DataPoint {
    DataPoint {
        index: "notify",
        blobs: vec![
            String::new(),
            "notify".to_string(),
            errcode.unwrap_or("ok").to_string(),
            String::new(),
            format!("{}xx", answer_status / 100),
        ],
        doubles: vec![1.0, devices as f64, 0.0, ms as f64, f64::from(answer_status), 0.0],
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn data_point_layout() {
        let report = DeviceReport {
            app_id: "com.example.ios".into(),
            pushkey: "abc…".into(),
            provider: "apns",
            outcome: FinalOutcome::Transient,
            status: Some(503),
            reason: "503".into(),
            tries: 3,
            token: Some(TokenSource::Minted),
            ms: 12,
            rate_limited: false,
            retry_after_s: None,
        };
        let p = data_point(&report, 502);
        assert_eq!(p.index, "apns");
        assert_eq!(p.blobs, vec!["com.example.ios", "apns", "transient", "minted", "5xx"]);
        assert_eq!(p.doubles, vec![1.0, 3.0, 2.0, 12.0, 503.0, 1.0]);
    }

    #[test]
    fn notify_point_layout() {
        let p = notify_point(400, Some("M_BAD_JSON"), 0, 3);
        assert_eq!(p.index, "notify");
        assert_eq!(p.blobs, vec!["", "notify", "M_BAD_JSON", "", "4xx"]);
        assert_eq!(p.doubles, vec![1.0, 0.0, 0.0, 3.0, 400.0, 0.0]);
        assert_eq!(notify_point(200, None, 2, 5).blobs[2], "ok");
    }
}
