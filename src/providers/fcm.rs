//! Firebase Cloud Messaging, HTTP v1 API: the message for a device and what
//! FCM's answer means (design §8.2, §8.3).
//!
//! Credentials are a Google service account exchanged for an OAuth access
//! token ([`credentials`], §8.1). Messages are data messages: Android
//! clients build their own notification from `data`. Apps that cannot
//! (`fcm_notification`) also get a `notification` the system shows. HMS
//! carries the same `data` fields ([`data_within`]).

mod credentials;

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::{json, Map, Value};

pub use self::credentials::{AssertionClaims, SCOPE};
use self::credentials::ServiceAccount;
pub use super::fit::truncate_utf8;
use super::fit::shortened;
use super::json::deep_merge;
use super::style::{self, collapse_id, Style, Urgency};
use super::{AnswerBody, OutRequest, Outcome, Prepared, ProviderResponse, provider_text, Secrets, UnixSecs, Verdict};
use crate::config::FcmConfig;
use crate::notify::{Counts, Device, Kind, Notification, Prio, MAX_ID_BYTES};

const DEFAULT_ORIGIN: &str = "https://fcm.googleapis.com";
/// "Each value ≤ 1024 bytes (cut on a character boundary, ending "…")".
pub const MAX_DATA_VALUE_BYTES: usize = 1024;
/// "the whole `data` ≤ 4096 bytes": keys and values, as FCM counts them.
pub const MAX_DATA_BYTES: usize = 4096;
/// The operator's `fcm_options.data` stays small, so that it leaves room for
/// the ids and the devices' `default_payload`s.
const MAX_OPERATOR_DATA_BYTES: usize = 1024;

/// An FCM app with its service account loaded and its key parsed.
pub struct FcmApp {
    pub config: FcmConfig,
    account: ServiceAccount,
}

impl fmt::Debug for FcmApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FcmApp")
            .field("project_id", &self.config.project_id)
            .field("client_email", &self.account.client_email)
            .field("token_uri", &self.account.token_uri)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl FcmApp {
    /// Read the service-account JSON named by `service_account_secret` and
    /// parse its key once. Errors name the field and never quote the key.
    pub fn new(config: FcmConfig, secrets: &dyn Secrets) -> Result<Self, String> {
        check_project_id(&config.project_id)?;
        check_fcm_options(&config.fcm_options)?;
        let raw = super::require_secret(secrets, "service_account_secret", &config.service_account_secret)?;
        let account = ServiceAccount::parse(&raw)
            .map_err(|e| format!("service_account_secret: the secret {:?} {e}", config.service_account_secret))?;
        Ok(Self { config, account })
    }

    /// `POST {url}/v1/projects/{project_id}/messages:send` for one device.
    pub fn prepare(&self, n: &Notification, d: &Device, _now: UnixSecs) -> Result<Prepared, Verdict> {
        let body = self.message_body(n, d)?;
        let body = serde_json::to_vec(&body).map_err(|_| Verdict::failed("could not encode the FCM message"))?;
        let origin = self.config.url.as_ref().map_or(DEFAULT_ORIGIN, |u| u.as_str());
        Ok(Prepared {
            request: OutRequest {
                url: format!("{origin}/v1/projects/{}/messages:send", self.config.project_id),
                headers: vec![("content-type".into(), "application/json".into())],
                body,
                answer_body: AnswerBody::Read,
            },
            token_key: Some(self.token_key()),
        })
    }

    /// Devices of every app using this service account share one access token.
    pub fn token_key(&self) -> String {
        format!("fcm:{}", self.account.client_email)
    }

    /// `{"message": deep_merge(fcm_options, ours)}`: `fcm_options` is the base
    /// and our fields win. Ours are `token`, `data` (with `fcm_options.data`
    /// folded in by [`data_entries`], within its limits), `android.priority`
    /// (`high` only for a high-priority push with an event: FCM lowers apps
    /// whose high-priority messages show nothing), `android.collapse_key` when
    /// the room's pushes collapse, and, with `fcm_notification`, a
    /// `notification` and an `apns` block for pushes with an event.
    pub fn message_body(&self, n: &Notification, d: &Device) -> Result<Value, Verdict> {
        let style = Style::new(d, self.config.send_badge_counts, self.config.collapse_per_room);
        let mut data = data_entries(n, d, style.counts(n), operator_data(&self.config.fcm_options))?;
        // What the user reads comes first: the data gives way to it, never
        // the other way round.
        let shown = (self.config.fcm_notification && n.event_id.is_some())
            .then(|| fit_shown(shown_notification(n, d), MAX_DATA_BYTES.saturating_sub(data.size_of(Keep::Always))))
            .filter(|shown| !shown.is_empty());
        data.fit(MAX_DATA_BYTES.saturating_sub(shown.as_ref().map_or(0, map_keys_and_values)))?;

        let collapse = style.collapse_room(n).map(collapse_id);
        let mut android = Map::new();
        let priority = if Urgency::of(n) == Urgency::Now { "high" } else { "normal" };
        android.insert("priority".into(), priority.into());
        if let Some(key) = &collapse {
            android.insert("collapse_key".into(), key.as_str().into());
        }
        let mut ours = Map::new();
        ours.insert("token".into(), d.pushkey.as_str().into());
        ours.insert("data".into(), Value::Object(data.into_map()));
        if let Some(shown) = shown {
            let mut apns_headers = Map::new();
            apns_headers.insert("apns-priority".into(), if n.prio == Prio::High { "10" } else { "5" }.into());
            if let Some(key) = &collapse {
                // The system replaces a room's notification on screen.
                android.insert("notification".into(), json!({ "tag": key }));
                apns_headers.insert("apns-collapse-id".into(), key.as_str().into());
            }
            ours.insert("notification".into(), Value::Object(shown));
            // mutable-content: an iOS notification service extension may
            // rewrite the text (decrypt, fetch the event) before it shows.
            ours.insert(
                "apns".into(),
                json!({ "headers": apns_headers, "payload": { "aps": { "mutable-content": 1 } } }),
            );
        }
        ours.insert("android".into(), Value::Object(android));
        let mut base = self.config.fcm_options.clone();
        base.remove("data");
        Ok(json!({ "message": deep_merge(Value::Object(base), Value::Object(ours)) }))
    }

}

/// Google project ids are lowercase letters, digits and hyphens; anything
/// else would change the path of the send URL.
fn check_project_id(project_id: &str) -> Result<(), String> {
    let valid = !project_id.is_empty()
        && project_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':');
    if valid {
        Ok(())
    } else {
        Err(format!("project_id: {project_id:?} is not a Google Cloud project id"))
    }
}

/// `fcm_options` is the base of every message: it must not name another
/// target than the device, and its `data` must be strings as FCM requires.
fn check_fcm_options(options: &Map<String, Value>) -> Result<(), String> {
    for target in ["token", "topic", "condition"] {
        if options.contains_key(target) {
            return Err(format!("fcm_options.{target}: the target of each message is the device's pushkey"));
        }
    }
    match options.get("data") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(data)) if data.values().all(Value::is_string) => {
            if map_keys_and_values(data) > MAX_OPERATOR_DATA_BYTES {
                Err(format!("fcm_options.data: over {MAX_OPERATOR_DATA_BYTES} bytes, leaving no room for the notification"))
            } else {
                Ok(())
            }
        }
        Some(_) => Err("fcm_options.data: must be an object of strings".into()),
    }
}

fn operator_data(options: &Map<String, Value>) -> Option<&Map<String, Value>> {
    options.get("data").and_then(Value::as_object)
}

/// What gives way first when `data` is over [`MAX_DATA_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Keep {
    /// Ids, counts, `prio`, `default_payload` and the operator's `data`: never dropped.
    Always,
    /// Names and event metadata: dropped after the content.
    Descriptive,
    /// `content_*`: trimmed or dropped first, the largest first.
    Content,
}

/// Keys FCM refuses in `data` ("from", "message_type", or any word starting
/// with "google" or "gcm"): skipped, so one odd `default_payload` key cannot
/// make every message to the device fail.
fn is_reserved_data_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    key.is_empty()
        || ["from", "notification", "message_type", "collapse_key"].contains(&lower.as_str())
        || lower.starts_with("google")
        || lower.starts_with("gcm")
}

/// How a provider counts the bytes of a `data` map, given as its entries,
/// against its limit.
pub type DataSize = fn(&[(&str, &str)]) -> usize;

/// FCM counts the keys and values of `data`.
pub fn keys_and_values(entries: &[(&str, &str)]) -> usize {
    entries.iter().map(|(k, v)| k.len().saturating_add(v.len())).sum()
}

/// [`keys_and_values`] of a map of strings (`fcm_options.data`, a
/// `notification`); a value that is not a string counts its key alone.
fn map_keys_and_values(map: &Map<String, Value>) -> usize {
    let entries: Vec<(&str, &str)> = map.iter().map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default())).collect();
    keys_and_values(&entries)
}

/// FCM's `data` fields for a device that may get `counts`, without operator
/// data, within `budget` bytes as `size` counts them: for a provider that
/// carries the same fields in another envelope (HMS sends them as one JSON
/// string).
pub fn data_within(
    n: &Notification,
    d: &Device,
    counts: Counts,
    size: DataSize,
    budget: usize,
) -> Result<Map<String, Value>, Verdict> {
    let mut data = data_entries(n, d, counts, None)?;
    data.fit_by(size, budget)?;
    Ok(data.into_map())
}

/// The `data` map alone, fitted to [`MAX_DATA_BYTES`], for a device whose
/// counts are on and an app without `fcm_notification`: any operator `data`
/// can be given, so the property tests check FCM's rules through it.
pub fn data_for(
    n: &Notification,
    d: &Device,
    operator: Option<&Map<String, Value>>,
) -> Result<Map<String, Value>, Verdict> {
    let mut data = data_entries(n, d, n.counts, operator)?;
    data.fit(MAX_DATA_BYTES)?;
    Ok(data.into_map())
}

/// The `data` map of docs/design.md §8.2 "Message": strings only, never
/// `null` or `"None"`; each value ≤ 1024 bytes. The caller fits the whole within
/// its budget ([`DataBuilder::fit`]).
///
/// Later sources win: the operator's `fcm_options.data`, then the device's
/// `default_payload`, then the notification's fields. `counts` are those the
/// device may get (none when counts are off).
fn data_entries(
    n: &Notification,
    d: &Device,
    counts: Counts,
    operator: Option<&Map<String, Value>>,
) -> Result<DataBuilder, Verdict> {
    let default_payload = d.default_payload().map_err(Verdict::from)?;
    let kind = n.kind_for(d);
    let mut data = DataBuilder::default();

    for (key, value) in operator.into_iter().flatten() {
        data.put_json(key, value, Keep::Always);
    }
    data.operator_bytes = data.size(keys_and_values);
    // "badge-only — no event_id: only the counts".
    if kind != Kind::BadgeOnly {
        for (key, value) in default_payload.into_iter().flatten() {
            data.put_json(key, value, Keep::Always);
        }
        data.put_opt("event_id", n.event_id.as_deref(), Keep::Always);
    }
    data.worst_case = worst_case_always(kind, default_payload);
    data.put_opt("room_id", n.room_id.as_deref(), Keep::Always);
    if let Some(unread) = counts.unread {
        data.put("unread", unread.to_string(), Keep::Always);
    }
    if let Some(missed_calls) = counts.missed_calls {
        data.put("missed_calls", missed_calls.to_string(), Keep::Always);
    }
    data.put("prio", n.prio.as_str().to_string(), Keep::Always);

    if kind == Kind::Full {
        data.put_opt("type", n.event_type.as_deref(), Keep::Descriptive);
        data.put_opt("sender", n.sender.as_deref(), Keep::Descriptive);
        data.put_opt("sender_display_name", n.sender_display_name.as_deref(), Keep::Descriptive);
        data.put_opt("room_name", n.room_name.as_deref(), Keep::Descriptive);
        data.put_opt("room_alias", n.room_alias.as_deref(), Keep::Descriptive);
        data.put_opt("membership", n.membership.as_deref(), Keep::Descriptive);
        for (key, value) in n.content.iter().flatten() {
            if let Value::String(text) = value {
                data.put(&format!("content_{key}"), text.clone(), Keep::Content);
            }
        }
    }
    Ok(data)
}

/// What `data_entries` always keeps, for a device with this
/// `default_payload` and no operator `data`, when the ids and counts are the
/// longest there can be: a fixed measure of the device's own data.
fn worst_case_always(kind: Kind, default_payload: Option<&Map<String, Value>>) -> WorstCase {
    let longest_id = "x".repeat(MAX_ID_BYTES);
    let mut worst = DataBuilder::default();
    if kind != Kind::BadgeOnly {
        for (key, value) in default_payload.into_iter().flatten() {
            worst.put_json(key, value, Keep::Always);
        }
        worst.put("event_id", longest_id.clone(), Keep::Always);
    }
    worst.put("room_id", longest_id, Keep::Always);
    worst.put("unread", u64::MAX.to_string(), Keep::Always);
    worst.put("missed_calls", u64::MAX.to_string(), Keep::Always);
    worst.put("prio", Prio::High.as_str().to_string(), Keep::Always);
    WorstCase(worst.entries.into_iter().map(|(k, (v, _))| (k, v)).collect())
}

/// The text of a message the pusher's format does not let us show, or that
/// only the device can read (encrypted). English: a client localises it by
/// registering `default_payload.notification` ([`shown_notification`]).
pub const NEUTRAL_BODY: &str = "New message";
/// The text of a ring.
pub const CALL_BODY: &str = "Incoming call";
/// The text of an invitation to a room.
pub const INVITE_BODY: &str = "New invitation";
/// A title longer than this is cut: a notification shows one line of it.
const MAX_TITLE_BYTES: usize = 256;
/// The `notification` fields a pusher's `default_payload.notification` may set.
const SHOWN_FIELDS: &[&str] = &["title", "body", "image"];

/// The `notification` of a visible FCM message (`fcm_notification`): no more
/// than the pusher's format carries. A full push shows the room name (or the
/// sender) as title and the message text as body; an encrypted event, an
/// event_id_only push or an event without text shows a neutral body and, for
/// event_id_only, no title. String `title`, `body` and `image` in the
/// pusher's `default_payload.notification` override ours.
fn shown_notification(n: &Notification, d: &Device) -> Map<String, Value> {
    let mut shown = Map::new();
    let full = n.kind_for(d) == Kind::Full;
    let title = n.room_name.as_deref().or(n.sender_display_name.as_deref()).or(n.sender.as_deref());
    if let Some(title) = title.filter(|_| full) {
        shown.insert("title".into(), truncate_utf8(title, MAX_TITLE_BYTES).into());
    }
    let text = n.content.as_ref().and_then(|c| c.get("body")).and_then(Value::as_str);
    let body = match n.event_type.as_deref() {
        _ if !full => NEUTRAL_BODY,
        _ if style::is_call(n) => CALL_BODY,
        Some("m.room.member") if n.membership.as_deref() == Some("invite") => INVITE_BODY,
        Some("m.room.encrypted") => NEUTRAL_BODY,
        _ => text.filter(|t| !t.trim().is_empty()).unwrap_or(NEUTRAL_BODY),
    };
    shown.insert("body".into(), truncate_utf8(body, MAX_DATA_VALUE_BYTES).into());
    let theirs = d.default_payload().ok().flatten().and_then(|p| p.get("notification")).and_then(Value::as_object);
    for (key, value) in theirs.into_iter().flatten() {
        if let (true, Value::String(text)) = (SHOWN_FIELDS.contains(&key.as_str()), value) {
            let cap = if key == "title" { MAX_TITLE_BYTES } else { MAX_DATA_VALUE_BYTES };
            shown.insert(key.clone(), truncate_utf8(text, cap).into());
        }
    }
    shown
}

/// The notification within `room` bytes: the image goes first (a cut URL is
/// no URL), then the body and the title are cut, each dropped when a cut
/// would leave too little ([`shortened`]).
fn fit_shown(mut shown: Map<String, Value>, room: usize) -> Map<String, Value> {
    for key in ["image", "body", "title"] {
        let excess = map_keys_and_values(&shown).saturating_sub(room);
        if excess == 0 {
            break;
        }
        let cut = match shown.get(key).and_then(Value::as_str) {
            None => continue,
            Some(_) if key == "image" => None,
            Some(text) => shortened(text, excess),
        };
        match (cut, shown.get_mut(key)) {
            (Some(cut), Some(text)) => *text = Value::String(cut),
            _ => {
                shown.remove(key);
            }
        }
    }
    shown
}

#[derive(Default)]
struct DataBuilder {
    entries: BTreeMap<String, (String, Keep)>,
    /// What is always kept, with the device's `default_payload`, no operator
    /// `data` and the longest ids and counts there can be: over the budget,
    /// no push can carry that `default_payload` whatever our configuration
    /// and the notification.
    worst_case: WorstCase,
    /// The bytes of the operator's `fcm_options.data`, as put.
    operator_bytes: usize,
}

/// The entries of [`DataBuilder::worst_case`].
#[derive(Default)]
struct WorstCase(Vec<(String, String)>);

impl WorstCase {
    fn size(&self, size: DataSize) -> usize {
        let entries: Vec<(&str, &str)> = self.0.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        size(&entries)
    }
}

impl DataBuilder {
    fn put(&mut self, key: &str, value: String, keep: Keep) {
        if is_reserved_data_key(key) {
            return;
        }
        let value = if value.len() > MAX_DATA_VALUE_BYTES { truncate_utf8(&value, MAX_DATA_VALUE_BYTES) } else { value };
        self.entries.insert(key.to_string(), (value, keep));
    }

    fn put_opt(&mut self, key: &str, value: Option<&str>, keep: Keep) {
        if let Some(value) = value {
            self.put(key, value.to_string(), keep);
        }
    }

    /// "non-string values JSON-encoded"; `null` means absent.
    fn put_json(&mut self, key: &str, value: &Value, keep: Keep) {
        match value {
            Value::Null => {}
            Value::String(s) => self.put(key, s.clone(), keep),
            other => self.put(key, other.to_string(), keep),
        }
    }

    fn size(&self, size: DataSize) -> usize {
        self.size_kept(size, Keep::Content)
    }

    /// Bytes of the entries kept at least as firmly as `keep`.
    fn size_of(&self, keep: Keep) -> usize {
        self.size_kept(keys_and_values, keep)
    }

    /// Bytes, as `size` counts them, of the entries kept at least as firmly
    /// as `keep` ([`Keep::Content`]: all of them).
    fn size_kept(&self, size: DataSize, keep: Keep) -> usize {
        let entries: Vec<(&str, &str)> =
            self.entries.iter().filter(|(_, (_, k))| *k <= keep).map(|(k, (v, _))| (k.as_str(), v.as_str())).collect();
        size(&entries)
    }

    /// Trim or drop the largest content field, then the largest descriptive
    /// one, until `data` fits. If only what is always kept is left and it
    /// still does not fit, the device's `default_payload` is to blame.
    fn fit(&mut self, budget: usize) -> Result<(), Verdict> {
        self.fit_by(keys_and_values, budget)
    }

    /// [`Self::fit`] with the bytes counted by `size`.
    fn fit_by(&mut self, size: DataSize, budget: usize) -> Result<(), Verdict> {
        loop {
            let excess = self.size(size).saturating_sub(budget);
            if excess == 0 {
                return Ok(());
            }
            let victim = self
                .entries
                .iter()
                .filter(|(_, (_, keep))| *keep != Keep::Always)
                .max_by_key(|(_, (value, keep))| (*keep, value.len()))
                .map(|(key, _)| key.clone());
            let Some(victim) = victim else {
                // Only what is always kept is left. The device is to blame
                // only if its own data leaves no room for the longest ids
                // even without ours; otherwise our `fcm_options.data` is.
                let device_worst_case = self.worst_case.size(size);
                return Err(if self.operator_bytes == 0 || device_worst_case > budget {
                    Verdict::rejected(format!(
                        "data.default_payload is too big: {device_worst_case} bytes with the longest ids and no \
                         fcm_options.data, over {budget}"
                    ))
                } else {
                    Verdict::failed(format!(
                        "data is over {budget} bytes with fcm_options.data ({} bytes) beside the ids, counts and \
                         default_payload: make fcm_options.data smaller",
                        self.operator_bytes
                    ))
                });
            };
            let Some((value, _)) = self.entries.get_mut(&victim) else {
                return Ok(());
            };
            match shortened(value, excess) {
                Some(cut) => *value = cut,
                None => {
                    self.entries.remove(&victim);
                }
            }
        }
    }

    fn into_map(self) -> Map<String, Value> {
        self.entries.into_iter().map(|(k, (v, _))| (k, Value::String(v))).collect()
    }
}

/// FCM's `FcmError.errorCode`
/// (<https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode>).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FcmErrorCode {
    /// No more information is available about this error.
    UnspecifiedError,
    /// Request parameters were invalid (the token, or the message).
    InvalidArgument,
    /// The app instance was unregistered from FCM: the token is dead.
    Unregistered,
    /// The token belongs to another sender (project): our configuration.
    SenderIdMismatch,
    /// Sending limit exceeded.
    QuotaExceeded,
    /// The server is overloaded.
    Unavailable,
    /// An unknown internal error occurred.
    Internal,
    /// The APNs certificate or web push auth key was invalid or missing.
    ThirdPartyAuthError,
    #[serde(other)]
    Other,
}

/// The parts of Google's error body that decide an outcome:
/// `{"error":{"code","message","status","details":[{"@type","errorCode"},
/// {"@type":"…BadRequest","fieldViolations":[{"field"}]}]}}`.
#[derive(Debug, Default, PartialEq, Eq)]
struct FcmErrorBody {
    status: Option<String>,
    error_code: Option<FcmErrorCode>,
    /// The details or the message say the registration token is invalid.
    token_invalid: bool,
}

impl FcmErrorBody {
    fn parse(body: &[u8]) -> Self {
        let Ok(root) = serde_json::from_slice::<Value>(body) else {
            return Self::default();
        };
        let Some(error) = root.get("error") else {
            return Self::default();
        };
        let details = error.get("details").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let error_code = details
            .iter()
            .filter(|d| type_name(d).ends_with("google.firebase.fcm.v1.FcmError"))
            .find_map(|d| d.get("errorCode"))
            .and_then(|c| FcmErrorCode::deserialize(c).ok());
        let violates_token = details
            .iter()
            .filter(|d| type_name(d).ends_with("google.rpc.BadRequest"))
            .filter_map(|d| d.get("fieldViolations").and_then(Value::as_array))
            .flatten()
            .any(|v| v.get("field").and_then(Value::as_str) == Some("message.token"));
        let message = error.get("message").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
        let message_says_token_invalid = message.contains("registration token") && message.contains("not a valid");
        Self {
            status: error.get("status").and_then(Value::as_str).map(|s| provider_text(s).to_string()),
            error_code,
            token_invalid: violates_token || message_says_token_invalid,
        }
    }

    fn describe(&self) -> String {
        let status = self.status.as_deref().unwrap_or("no status");
        match self.error_code {
            Some(code) => format!("{status}, {code:?}"),
            None => status.to_string(),
        }
    }
}

fn type_name(detail: &Value) -> &str {
    detail.get("@type").and_then(Value::as_str).unwrap_or_default()
}

/// docs/design.md §8.3 "Answers".
pub fn classify(response: &ProviderResponse) -> Verdict {
    use FcmErrorCode::*;
    let status = response.status;
    if status == 200 {
        return Verdict::delivered();
    }
    let error = FcmErrorBody::parse(&response.body);
    let reason = format!("fcm {status} ({})", error.describe());
    let outcome = match (status, error.error_code) {
        (404, Some(Unregistered)) => Outcome::Rejected,
        (400, _) if error.token_invalid => Outcome::Rejected,
        (401, _) => Outcome::StaleCredentials,
        // 403 (e.g. SENDER_ID_MISMATCH) is never the device's fault: a wrong
        // project would otherwise delete every pusher.
        (429 | 500..=599, _) => Outcome::Transient { retry_after: response.retry_after() },
        _ => Outcome::Failed,
    };
    Verdict::new(outcome, reason)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::credentials::read_token_response;
    use super::*;
    use crate::notify::parse_notify;
    use proptest::prelude::*;
    use std::time::Duration;

    pub(super) const NOW: UnixSecs = 1_795_564_953;
    pub(super) const SECRET_NAME: &str = "FCM_SERVICE_ACCOUNT";

    fn path(relative: &str) -> String {
        format!("{}/tests/{relative}", env!("CARGO_MANIFEST_DIR"))
    }

    pub(super) fn service_account_json() -> String {
        std::fs::read_to_string(path("keys/test-only-fcm-service-account.json")).unwrap()
    }

    pub(super) fn config(extra: Value) -> FcmConfig {
        let mut base = json!({"project_id": "edgepush-test", "service_account_secret": SECRET_NAME});
        if let (Value::Object(base), Value::Object(extra)) = (&mut base, extra) {
            base.extend(extra);
        }
        serde_json::from_value(base).unwrap()
    }

    pub(super) fn load_with(config: FcmConfig, secret: Option<String>) -> Result<FcmApp, String> {
        let secrets = move |name: &str| if name == SECRET_NAME { secret.clone() } else { None };
        FcmApp::new(config, &secrets)
    }

    fn app_with(extra: Value) -> FcmApp {
        load_with(config(extra), Some(service_account_json())).unwrap()
    }

    pub(super) fn app() -> FcmApp {
        app_with(json!({}))
    }

    /// The `/notify` body of a Synapse fixture, with `device` replacing its devices.
    fn fixture_with_device(name: &str, device: Option<Value>) -> Notification {
        crate::testing::synapse_notification(name, device.map(|d| vec![d]))
    }

    fn notification(body: Value) -> Notification {
        parse_notify(&serde_json::to_vec(&json!({ "notification": body })).unwrap(), 20).unwrap()
    }

    fn android_device(data: Value) -> Value {
        json!({"app_id": "com.example.app.android", "pushkey": "fcmtoken1", "data": data})
    }

    /// Compare with `tests/golden/fcm/<name>`; `UPDATE_GOLDEN=1` rewrites it.
    fn assert_golden(name: &str, actual: &Value) {
        let file = path(&format!("golden/fcm/{name}"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&file, serde_json::to_string_pretty(actual).unwrap() + "\n").unwrap();
        }
        let expected: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(actual, &expected, "golden {name}");
    }

    fn assert_all_strings_within_limits(data: &Value) {
        let data = data.as_object().expect("data is an object");
        let mut total = 0;
        for (key, value) in data {
            let text = value.as_str().unwrap_or_else(|| panic!("data.{key} is not a string: {value}"));
            assert_ne!(text, "None", "data.{key}");
            assert!(text.len() <= MAX_DATA_VALUE_BYTES, "data.{key} has {} bytes", text.len());
            total += key.len() + text.len();
        }
        assert!(total <= MAX_DATA_BYTES, "data has {total} bytes");
    }

    fn body_of(app: &FcmApp, n: &Notification) -> Value {
        let prepared = app.prepare(n, &n.devices[0], NOW).unwrap();
        serde_json::from_slice(&prepared.request.body).unwrap()
    }

    #[test]
    fn golden_event_id_only_android() {
        let n = fixture_with_device("event_id_only-android.json", None);
        let body = body_of(&app(), &n);
        assert_all_strings_within_limits(&body["message"]["data"]);
        assert_golden("event_id_only-android.json", &body);
    }

    #[test]
    fn golden_message_android() {
        let n = fixture_with_device("message-ios.json", Some(android_device(json!({}))));
        let body = body_of(&app(), &n);
        assert_all_strings_within_limits(&body["message"]["data"]);
        assert_golden("message-android.json", &body);
    }

    #[test]
    fn golden_member_android() {
        let n = fixture_with_device("member-ios.json", Some(android_device(json!({}))));
        let body = body_of(&app(), &n);
        assert_all_strings_within_limits(&body["message"]["data"]);
        assert_golden("member-android.json", &body);
    }

    #[test]
    fn golden_event_id_only_with_element_x_default_payload() {
        let device = android_device(json!({
            "format": "event_id_only",
            "default_payload": {"cs": "per-user-secret", "session": {"id": 7}, "badge": 3, "gone": null}
        }));
        let n = fixture_with_device("event_id_only-android.json", Some(device));
        let body = body_of(&app(), &n);
        assert_all_strings_within_limits(&body["message"]["data"]);
        assert_golden("event_id_only-default_payload-android.json", &body);
    }

    #[test]
    fn prepare_posts_to_the_project_with_a_shared_token_key() {
        let n = fixture_with_device("event_id_only-android.json", None);
        let prepared = app().prepare(&n, &n.devices[0], NOW).unwrap();
        assert_eq!(prepared.request.url, "https://fcm.googleapis.com/v1/projects/edgepush-test/messages:send");
        assert_eq!(prepared.request.header("content-type"), Some("application/json"));
        assert_eq!(prepared.token_key.as_deref(), Some("fcm:edgepush-test@edgepush-test.iam.gserviceaccount.com"));

        let local = app_with(json!({"url": "http://127.0.0.1:9999"}));
        let prepared = local.prepare(&n, &n.devices[0], NOW).unwrap();
        assert_eq!(prepared.request.url, "http://127.0.0.1:9999/v1/projects/edgepush-test/messages:send");
    }

    #[test]
    fn badge_only_holds_only_the_counts() {
        let n = notification(json!({
            "room_id": "!r:x", "counts": {"unread": 0, "missed_calls": 2}, "prio": "low",
            "devices": [android_device(json!({"default_payload": {"cs": "s"}}))]
        }));
        let body = body_of(&app(), &n);
        assert_eq!(
            body["message"],
            json!({
                "token": "fcmtoken1",
                "data": {"room_id": "!r:x", "unread": "0", "missed_calls": "2", "prio": "low"},
                "android": {"priority": "normal"}
            })
        );
    }

    #[test]
    fn minimal_client_test_push_has_no_nulls() {
        let n = notification(json!({"event_id": "$e", "devices": [{"app_id": "a", "pushkey": "k"}]}));
        let body = body_of(&app(), &n);
        assert_eq!(body["message"]["data"], json!({"event_id": "$e", "prio": "high"}));
        assert_eq!(body["message"]["android"]["priority"], "high");
    }

    #[test]
    fn pushkey_is_opaque() {
        for pushkey in ["", "not/a token?&x=1", "a:b:c", "🎉"] {
            let n = notification(json!({"event_id": "$e", "devices": [{"app_id": "a", "pushkey": pushkey}]}));
            assert_eq!(body_of(&app(), &n)["message"]["token"], pushkey);
        }
    }

    #[test]
    fn default_payload_flattens_into_data_and_our_fields_win() {
        let device = android_device(json!({
            "default_payload": {
                "event_id": "spoofed", "cs": "secret", "count": 5, "flag": true, "list": [1, "a"],
                "nothing": null, "from": "x", "google.c.a.e": "1", "gcm.notification.title": "t",
                "message_type": "x", "notification": {"title": "t"}
            }
        }));
        let n = notification(json!({"event_id": "$e", "room_id": "!r", "devices": [device]}));
        let data = &body_of(&app(), &n)["message"]["data"];
        assert_eq!(
            data,
            &json!({
                "event_id": "$e", "room_id": "!r", "prio": "high", "cs": "secret",
                "count": "5", "flag": "true", "list": "[1,\"a\"]"
            })
        );
    }

    #[test]
    fn default_payload_that_is_not_an_object_is_rejected() {
        for bad in [json!("x"), json!([1]), json!(3)] {
            let n = notification(json!({"event_id": "$e", "devices": [android_device(json!({"default_payload": bad}))]}));
            let verdict = app().prepare(&n, &n.devices[0], NOW).unwrap_err();
            assert_eq!(verdict.outcome, Outcome::Rejected, "{bad}");
        }
    }

    #[test]
    fn fcm_options_are_the_base_and_our_fields_win() {
        let app = app_with(json!({"fcm_options": {
            "android": {"priority": "normal", "ttl": "60s", "collapse_key": "room"},
            "apns": {"headers": {"apns-priority": "5"}},
            "data": {"app": "edgepush", "prio": "operator"},
            "fcm_options": {"analytics_label": "matrix"}
        }}));
        let n = notification(json!({"event_id": "$e", "prio": "high", "devices": [android_device(json!({}))]}));
        assert_eq!(
            body_of(&app, &n),
            json!({"message": {
                "token": "fcmtoken1",
                "data": {"event_id": "$e", "prio": "high", "app": "edgepush"},
                "android": {"priority": "high", "ttl": "60s", "collapse_key": "room"},
                "apns": {"headers": {"apns-priority": "5"}},
                "fcm_options": {"analytics_label": "matrix"}
            }})
        );
    }

    #[test]
    fn truncate_cuts_on_a_char_boundary_with_an_ellipsis() {
        assert_eq!(truncate_utf8("short", 10), "short");
        let cut = truncate_utf8(&"€".repeat(500), MAX_DATA_VALUE_BYTES);
        assert!(cut.len() <= MAX_DATA_VALUE_BYTES);
        assert!(cut.ends_with('…'));
        assert_eq!(cut.trim_end_matches('…').chars().filter(|c| *c != '€').count(), 0);
        // 1021 bytes of room: 340 three-byte characters (1020 bytes) fit.
        assert_eq!(cut.chars().count(), 341);
    }

    #[test]
    fn long_multibyte_values_are_cut_to_1024_bytes() {
        let body = "🎉é".repeat(600);
        let n = notification(json!({
            "event_id": "$e", "room_name": "ü".repeat(800), "content": {"body": body, "msgtype": "m.text"},
            "devices": [android_device(json!({}))]
        }));
        let data = body_of(&app(), &n)["message"]["data"].clone();
        assert_all_strings_within_limits(&data);
        let content_body = data["content_body"].as_str().unwrap();
        assert!(content_body.ends_with('…'));
        assert!(content_body.len() > MAX_DATA_VALUE_BYTES - 8);
        assert!(body.starts_with(content_body.trim_end_matches('…')));
        assert!(data["room_name"].as_str().unwrap().ends_with('…'));
    }

    #[test]
    fn oversized_data_trims_the_largest_content_first_and_keeps_ids() {
        let n = notification(json!({
            "event_id": "$e", "room_id": "!r", "sender": "@s:x", "room_name": "n".repeat(1000),
            "counts": {"unread": 4},
            "content": {"body": "b".repeat(1000), "formatted_body": "f".repeat(1100), "format": "org.matrix.custom.html",
                        "msgtype": "m.text", "m.relates_to": {"rel_type": "m.thread"}},
            "devices": [android_device(json!({"default_payload": {"cs": "x".repeat(1000)}}))]
        }));
        let data = body_of(&app(), &n)["message"]["data"].clone();
        assert_all_strings_within_limits(&data);
        for kept in ["event_id", "room_id", "unread", "prio", "cs", "sender", "room_name", "content_msgtype"] {
            assert!(data.get(kept).is_some(), "{kept} was dropped: {data}");
        }
        assert!(data.get("content_m.relates_to").is_none(), "non-string content is skipped");
        let formatted = data.get("content_formatted_body").and_then(Value::as_str).unwrap_or_default();
        assert!(formatted.len() < 1024, "the largest content field gives way first");
    }

    // --- badge counts, quiet pushes, priority, collapsing, visible notifications ---

    fn message(app: &FcmApp, n: &Notification) -> Value {
        body_of(app, n)["message"].clone()
    }

    fn with_device_data(name: &str, data: Value) -> Notification {
        fixture_with_device(name, Some(android_device(data)))
    }

    #[test]
    fn counts_off_leave_unread_and_missed_calls_out() {
        for (app, data) in [
            (app(), json!({"org.matrix.msc4076.disable_badge_count": true})),
            (app(), json!({"disable_badge_count": true, "format": "event_id_only"})),
            (app_with(json!({"send_badge_counts": false})), json!({})),
        ] {
            let mut n = with_device_data("message-ios.json", data.clone());
            n.counts.missed_calls = Some(2);
            let data_sent = message(&app, &n)["data"].clone();
            assert!(data_sent.get("unread").is_none() && data_sent.get("missed_calls").is_none(), "{data}: {data_sent}");
            assert_eq!(data_sent["event_id"], "$c_S3Dbae4d34xgwTHsXztzA9NxxLqspUJNES7lttZhU");
        }
        let n = with_device_data("message-ios.json", json!({"disable_badge_count": false}));
        assert_golden("message-android.json", &body_of(&app(), &n));
    }

    #[test]
    fn a_push_without_an_event_goes_at_normal_priority() {
        let n = notification(json!({
            "room_id": "!r:x", "counts": {"unread": 4}, "prio": "high",
            "devices": [android_device(json!({"default_payload": {"cs": "s"}}))]
        }));
        assert_eq!(
            message(&app(), &n),
            json!({"token": "fcmtoken1", "data": {"room_id": "!r:x", "unread": "4", "prio": "high"}, "android": {"priority": "normal"}}),
            "a badge update shows no notification: FCM would deprioritise it at high"
        );
        let n = notification(json!({
            "counts": {"unread": 4}, "devices": [android_device(json!({"disable_badge_count": true, "default_payload": {"cs": "s"}}))]
        }));
        assert_eq!(
            message(&app_with(json!({"fcm_notification": true, "collapse_per_room": true})), &n),
            json!({"token": "fcmtoken1", "data": {"prio": "high"}, "android": {"priority": "normal"}}),
            "counts off: a bare data message wakes the app, and nothing shows"
        );
        let eio = with_device_data("event_id_only-android.json", json!({"format": "event_id_only"}));
        assert_eq!(message(&app(), &eio)["android"]["priority"], "high", "a push with an event is shown");
    }

    #[test]
    fn collapse_per_room_sets_the_collapse_key_but_never_for_a_ring() {
        let collapsing = app_with(json!({"collapse_per_room": true, "fcm_options": {"android": {"collapse_key": "operator", "ttl": "60s"}}}));
        let mut n = with_device_data("message-ios.json", json!({}));
        let room = n.room_id.clone().unwrap();
        let android = message(&collapsing, &n)["android"].clone();
        assert_eq!(android, json!({"priority": "high", "collapse_key": room, "ttl": "60s"}));
        let asked = with_device_data("message-ios.json", json!({"only_last_per_room": true}));
        assert_eq!(message(&app(), &asked)["android"]["collapse_key"], json!(room));
        assert!(message(&app(), &n)["android"].get("collapse_key").is_none(), "off by default");
        for call in ["m.call.invite", "m.rtc.notification", "org.matrix.msc4075.rtc.notification"] {
            n.event_type = Some(call.into());
            assert_eq!(message(&collapsing, &n)["android"]["collapse_key"], "operator", "{call}: only the operator's own key");
        }
        n.event_type = Some("m.room.message".into());
        n.room_id = Some(format!("!{}:example.org", "r".repeat(100)));
        let key = message(&collapsing, &n)["android"]["collapse_key"].as_str().unwrap().to_string();
        assert!(key.len() <= 64 && !key.contains("rrr"), "{key}");
    }

    #[test]
    fn fcm_notification_adds_a_visible_notification_and_leaves_data_as_is() {
        let visible = app_with(json!({"fcm_notification": true}));
        let n = with_device_data("message-ios.json", json!({}));
        let sent = message(&visible, &n);
        assert_eq!(sent["notification"], json!({"title": "Push test room", "body": "Hello Bob, message 0"}));
        assert_eq!(sent["apns"], json!({"headers": {"apns-priority": "10"}, "payload": {"aps": {"mutable-content": 1}}}));
        assert_eq!(sent["android"], json!({"priority": "high"}));
        let golden: Value = serde_json::from_str(&std::fs::read_to_string(path("golden/fcm/message-android.json")).unwrap()).unwrap();
        assert_eq!(sent["data"], golden["message"]["data"], "the data keys stay as they are");
        assert!(message(&app(), &n).get("notification").is_none(), "off by default");
    }

    #[test]
    fn a_visible_notification_shows_no_more_than_the_pushers_format() {
        let visible = app_with(json!({"fcm_notification": true}));
        let shown = |n: &Notification| message(&visible, n)["notification"].clone();

        let eio = with_device_data("message-ios.json", json!({"format": "event_id_only"}));
        assert_eq!(shown(&eio), json!({"body": NEUTRAL_BODY}), "event_id_only: no room, sender or text");
        assert!(!message(&visible, &eio).to_string().contains("Hello Bob"));

        let mut encrypted = with_device_data("message-ios.json", json!({}));
        encrypted.event_type = Some("m.room.encrypted".into());
        encrypted.content = Some(json!({"algorithm": "m.megolm.v1.aes-sha2", "body": "not for us"}).as_object().unwrap().clone());
        assert_eq!(shown(&encrypted), json!({"title": "Push test room", "body": NEUTRAL_BODY}));

        let mut dm = with_device_data("message-ios.json", json!({}));
        dm.room_name = None;
        assert_eq!(shown(&dm)["title"], "alices1", "no room name: the sender");

        let mut ring = with_device_data("message-ios.json", json!({"only_last_per_room": true}));
        ring.event_type = Some("m.call.invite".into());
        assert_eq!(shown(&ring)["body"], CALL_BODY);
        assert!(message(&visible, &ring)["apns"]["headers"].get("apns-collapse-id").is_none());

        let invite = with_device_data("member-ios.json", json!({}));
        assert_eq!(shown(&invite)["body"], INVITE_BODY);
    }

    #[test]
    fn default_payload_notification_overrides_our_texts() {
        let visible = app_with(json!({"fcm_notification": true}));
        let data = json!({"format": "event_id_only", "default_payload": {
            "cs": "s", "notification": {"title": "Element", "body": "Neue Nachricht", "image": "https://x/i.png", "sound": "x", "color": 5}
        }});
        let sent = message(&visible, &with_device_data("message-ios.json", data));
        assert_eq!(sent["notification"], json!({"title": "Element", "body": "Neue Nachricht", "image": "https://x/i.png"}));
        assert_eq!(sent["data"]["cs"], "s");
        assert!(sent["data"].get("notification").is_none(), "reserved in data, as before");
    }

    #[test]
    fn a_visible_notification_follows_priority_and_collapsing() {
        let visible = app_with(json!({"fcm_notification": true, "collapse_per_room": true}));
        let mut n = with_device_data("message-ios.json", json!({}));
        n.prio = Prio::Low;
        let sent = message(&visible, &n);
        let room = n.room_id.clone().unwrap();
        assert_eq!(sent["android"], json!({"priority": "normal", "collapse_key": room, "notification": {"tag": room}}));
        assert_eq!(sent["apns"]["headers"], json!({"apns-priority": "5", "apns-collapse-id": room}));
    }

    #[test]
    fn the_notification_and_data_fit_4096_bytes_together() {
        let visible = app_with(json!({"fcm_notification": true}));
        let long = "é".repeat(3000);
        let mut n = with_device_data("message-ios.json", json!({"default_payload": {"a": "x".repeat(1000), "b": "y".repeat(1000), "c": "z".repeat(900)}}));
        n.room_name = Some(long.clone());
        n.content = Some(json!({"msgtype": "m.text", "body": long}).as_object().unwrap().clone());
        let sent = message(&visible, &n);
        assert_all_strings_within_limits(&sent["data"]);
        let size = |v: &Value| v.as_object().unwrap().iter().map(|(k, v)| k.len() + v.as_str().unwrap().len()).sum::<usize>();
        let shown = &sent["notification"];
        assert!(size(&sent["data"]) + size(shown) <= MAX_DATA_BYTES, "{} + {}", size(&sent["data"]), size(shown));
        let body = shown["body"].as_str().unwrap();
        assert!(body.ends_with('…') && body.len() > 100, "the text is cut, not dropped: {} bytes", body.len());
        assert!(shown["title"].as_str().unwrap().len() <= 256);
        for kept in ["a", "b", "c", "event_id", "room_id", "unread"] {
            assert!(sent["data"].get(kept).is_some(), "{kept}");
        }
    }

    #[test]
    fn a_default_payload_that_fits_without_our_data_is_not_rejected_for_it() {
        // 3448 bytes of the device's own, 1016 of the operator's: together
        // over 4096, but the device's alone leaves room for the longest ids.
        let payload: Map<String, Value> = (0..4).map(|i| (format!("k{i}"), json!("x".repeat(860)))).collect();
        let operator: Map<String, Value> = (0..2).map(|i| (format!("op{i}"), json!("o".repeat(505)))).collect();
        let a = app_with(json!({"fcm_options": {"data": operator}}));
        let n = notification(json!({"event_id": "$e", "room_id": "!r:example.org", "devices": [android_device(json!({"default_payload": payload}))]}));
        let verdict = a.prepare(&n, &n.devices[0], NOW).unwrap_err();
        assert_eq!(verdict.outcome, Outcome::Failed, "{}", verdict.reason);
        assert!(verdict.reason.contains("fcm_options.data"), "{}", verdict.reason);
        // Without the operator's data the same device is delivered.
        assert!(app().prepare(&n, &n.devices[0], NOW).is_ok());
    }

    #[test]
    fn a_default_payload_is_judged_with_the_longest_ids_not_this_notifications() {
        // 3700 bytes: a push with short ids and no operator data carries it...
        let payload: Map<String, Value> = (0..4).map(|i| (format!("k{i}"), json!("x".repeat(923)))).collect();
        let short = notification(json!({"event_id": "$e", "room_id": "!r", "devices": [android_device(json!({"default_payload": payload}))]}));
        assert!(app().prepare(&short, &short.devices[0], NOW).is_ok());
        // ...but with the operator's 1000 bytes it does not fit, and it is
        // rejected only because it leaves no room for the longest ids even
        // without ours.
        let operator: Map<String, Value> = (0..2).map(|i| (format!("op{i}"), json!("o".repeat(490)))).collect();
        let verdict = app_with(json!({"fcm_options": {"data": operator}})).prepare(&short, &short.devices[0], NOW).unwrap_err();
        assert_eq!(verdict.outcome, Outcome::Rejected, "{}", verdict.reason);
        assert!(verdict.reason.contains("default_payload"), "{}", verdict.reason);
    }

    #[test]
    fn default_payload_that_cannot_fit_is_rejected() {
        let payload: Map<String, Value> = (0..6).map(|i| (format!("k{i}"), json!("x".repeat(1000)))).collect();
        let n = notification(json!({"event_id": "$e", "devices": [android_device(json!({"default_payload": payload}))]}));
        let verdict = app().prepare(&n, &n.devices[0], NOW).unwrap_err();
        assert_eq!(verdict.outcome, Outcome::Rejected);
    }

    proptest! {
        #[test]
        fn data_is_always_strings_within_limits(
            body in "\\PC{0,1500}",
            name in "\\PC{0,1500}",
            extra in proptest::collection::btree_map("[a-z_]{1,12}", "\\PC{0,700}", 0..6),
            unread in proptest::option::of(0u64..u64::MAX),
            event_id_only in any::<bool>(),
        ) {
            let mut data = json!({});
            if event_id_only {
                data["format"] = json!("event_id_only");
            }
            let content: Map<String, Value> = extra.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            let mut content = content;
            content.insert("body".into(), Value::String(body));
            let n = notification(json!({
                "event_id": "$e", "room_id": "!r", "room_name": name, "content": content,
                "counts": {"unread": unread}, "devices": [android_device(data)]
            }));
            let data = body_of(&app(), &n)["message"]["data"].clone();
            assert_all_strings_within_limits(&data);
            prop_assert_eq!(data["event_id"].as_str(), Some("$e"));
        }
    }

    // --- service account ---

    #[test]
    fn config_errors_name_the_field() {
        let secret = Some(service_account_json());
        let cases = [
            (json!({"project_id": "a/b"}), "project_id"),
            (json!({"project_id": ""}), "project_id"),
            (json!({"fcm_options": {"topic": "news"}}), "fcm_options.topic"),
            (json!({"fcm_options": {"token": "x"}}), "fcm_options.token"),
            (json!({"fcm_options": {"data": {"n": 1}}}), "fcm_options.data"),
            (json!({"fcm_options": {"data": {"big": "x".repeat(1100)}}}), "fcm_options.data"),
        ];
        for (extra, needle) in cases {
            let error = load_with(config(extra), secret.clone()).unwrap_err();
            assert!(error.contains(needle), "{error:?} should name {needle}");
        }
    }

    #[test]
    fn debug_redacts_the_key() {
        let shown = format!("{:?}", app());
        assert!(shown.contains("<redacted>") && shown.contains("edgepush-test"));
        assert!(!shown.contains("MII") && !shown.contains("BEGIN"));
    }

    pub(super) fn response(status: u16, body: &str) -> ProviderResponse {
        ProviderResponse { status, headers: vec![], body: body.as_bytes().to_vec() }
    }

    // --- outcomes ---

    fn google_error(code: u16, status: &str, message: &str, details: Value) -> String {
        json!({"error": {"code": code, "message": message, "status": status, "details": details}}).to_string()
    }

    fn fcm_error(error_code: &str) -> Value {
        json!({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code})
    }

    #[test]
    fn classify_table() {
        let invalid_token = google_error(
            400,
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
            json!([fcm_error("INVALID_ARGUMENT"), {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]
            }]),
        );
        let invalid_token_message_only =
            google_error(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token", json!([]));
        let invalid_data = google_error(
            400,
            "INVALID_ARGUMENT",
            "Invalid value at 'message.data[0].value' (TYPE_STRING), 5",
            json!([{"@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": "message.data[0].value", "description": "Invalid value"}]}]),
        );
        let unregistered = google_error(404, "NOT_FOUND", "Requested entity was not found.", json!([fcm_error("UNREGISTERED")]));
        let not_found = google_error(404, "NOT_FOUND", "Requested entity was not found.", json!([]));
        let mismatch = google_error(403, "PERMISSION_DENIED", "SenderId mismatch", json!([fcm_error("SENDER_ID_MISMATCH")]));
        let unauthenticated = google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", json!([]));
        let quota = google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded", json!([fcm_error("QUOTA_EXCEEDED")]));
        let unavailable = google_error(503, "UNAVAILABLE", "The service is currently unavailable.", json!([fcm_error("UNAVAILABLE")]));
        let transient = Outcome::Transient { retry_after: None };
        let cases: &[(u16, &str, Outcome)] = &[
            (200, r#"{"name":"projects/p/messages/0:1"}"#, Outcome::Delivered),
            (200, "", Outcome::Delivered),
            (404, &unregistered, Outcome::Rejected),
            (404, &not_found, Outcome::Failed),
            (404, "", Outcome::Failed),
            (400, &invalid_token, Outcome::Rejected),
            (400, &invalid_token_message_only, Outcome::Rejected),
            (400, &invalid_data, Outcome::Failed),
            (400, "", Outcome::Failed),
            (401, &unauthenticated, Outcome::StaleCredentials),
            (401, "", Outcome::StaleCredentials),
            (403, &mismatch, Outcome::Failed),
            (403, "", Outcome::Failed),
            (429, &quota, transient),
            (500, "", transient),
            (503, &unavailable, transient),
            (302, "", Outcome::Failed),
            (413, "", Outcome::Failed),
        ];
        for (status, body, outcome) in cases {
            assert_eq!(classify(&response(*status, body)).outcome, *outcome, "{status} {body}");
        }
    }

    #[test]
    fn classify_honours_retry_after_and_names_the_error_code() {
        let r = ProviderResponse { status: 503, headers: vec![("retry-after".into(), "1".into())], body: vec![] };
        assert_eq!(classify(&r).outcome, Outcome::Transient { retry_after: Some(Duration::from_secs(1)) });
        let mismatch = google_error(403, "PERMISSION_DENIED", "SenderId mismatch", json!([fcm_error("SENDER_ID_MISMATCH")]));
        let reason = classify(&response(403, &mismatch)).reason;
        assert!(reason.contains("403") && reason.contains("PERMISSION_DENIED") && reason.contains("SenderIdMismatch"), "{reason}");
        let unknown = google_error(400, "INVALID_ARGUMENT", "x", json!([fcm_error("SOMETHING_NEW"), 5, null, {"@type": 1}]));
        assert_eq!(classify(&response(400, &unknown)).outcome, Outcome::Failed);
        assert!(classify(&response(400, &unknown)).reason.contains("Other"));
    }

    proptest! {
        #[test]
        fn garbage_bodies_never_panic(status in 0u16..1000, body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let r = ProviderResponse { status, headers: vec![], body };
            let _ = classify(&r);
            let _ = read_token_response(&r, NOW);
        }

        #[test]
        fn json_shaped_garbage_never_panics(
            status in 0u16..1000,
            body in "\\{\"error\":(\\{(\"(details|message|status|code|error_description)\":(\\[\\{\"@type\":\"[a-zA-Z./]{0,60}\",\"(errorCode|fieldViolations)\":.{0,20}\\}\\]|.{0,20}),?){0,4}\\}|.{0,10})\\}"
        ) {
            let r = response(status, &body);
            let _ = classify(&r);
            let _ = read_token_response(&r, NOW);
        }
    }
}
