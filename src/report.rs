//! What became of one device of a notify: the report the answer, the log
//! line and the metrics are made of. The dispatcher fills it; deferred
//! delivery, `reply`, the log and the metrics read it.

use serde::Serialize;

use crate::notify::Device;
use crate::tokens::TokenSource;

/// Where a device ended, and how, for the answer and the log.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    pub app_id: String,
    /// Shortened: a log never carries a whole pushkey.
    pub pushkey: String,
    pub provider: &'static str,
    pub outcome: FinalOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub tries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenSource>,
    pub ms: u64,
    /// Not sent: over the per-pushkey rate limit (`PUSH_LIMITER`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rate_limited: bool,
    /// The last answer's `Retry-After` in seconds, as the provider said it
    /// (a try inside the request waits at most 3 s; the queue waits it out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
}

impl DeviceReport {
    /// The report of a device not yet sent to. Its outcome is `Failed`
    /// until a verdict replaces it: a report that somehow escaped one must
    /// never reject a pushkey.
    pub fn new(d: &Device) -> Self {
        Self::for_device(d.app_id.clone(), d.pushkey.short())
    }

    /// The same, from the app id and the already shortened pushkey.
    pub fn for_device(app_id: String, short_pushkey: String) -> Self {
        Self {
            app_id,
            pushkey: short_pushkey,
            provider: "none",
            outcome: FinalOutcome::Failed,
            status: None,
            reason: String::new(),
            tries: 0,
            token: None,
            ms: 0,
            rate_limited: false,
            retry_after_s: None,
        }
    }
}

/// A device's final outcome, after retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalOutcome {
    Delivered,
    Rejected,
    Transient,
    Failed,
    /// Transient, then handed to the deferred-delivery queue: settled for
    /// the homeserver, delivered later by the queue's consumer.
    Deferred,
}
