//! The parsed configuration: the types of an `APPS` entry (one per
//! provider), what its glob keys mean, and the worker-wide knobs. Nothing
//! here loads a credential or knows a provider at work: `apps.rs` turns the
//! entries into the apps devices are sent through.
//!
//! `APPS` is a JSON object keyed by app id or glob. Each entry is parsed on
//! its own: a broken entry is reported by name and field, and every other app
//! keeps working.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::origin::Refusal;

/// Worker-wide knobs, all optional `[vars]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub max_body_bytes: usize,
    pub max_devices: usize,
    pub send_timeout_ms: u64,
    pub retry_base_ms: u64,
    pub max_tries: u32,
    /// Provider requests (sends and token fetches) one notify may make: the
    /// Workers Free plan allows 50 subrequests per request.
    pub max_subrequests: u32,
    /// Which notifies get their log line (`LOG_NOTIFIES`, design §14.1).
    pub log_notifies: LogNotifies,
}

/// `LOG_NOTIFIES`: a line for every notify, or only for those with something
/// to look at (design §14.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogNotifies {
    #[default]
    All,
    /// Not a notify answered 200 whose every device was delivered at its
    /// first try: a refusal, a rejection, a retry, a deferral, a rate limit
    /// or an error answer is still logged.
    Problems,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_body_bytes: 65536,
            max_devices: 20,
            send_timeout_ms: 10_000,
            retry_base_ms: 200,
            max_tries: 3,
            max_subrequests: 50,
            log_notifies: LogNotifies::All,
        }
    }
}

/// The longest `SEND_TIMEOUT_MS` honoured: a send waited on longer than a
/// minute is no send a homeserver still waits for (and a mint's worst case,
/// which waiters wait out, is two of them).
pub const MAX_SEND_TIMEOUT_MS: u64 = 60_000;

impl Settings {
    /// Reads each knob by name; a missing or unparsable value keeps its
    /// default, and one over its maximum is capped, both reported in the
    /// returned warnings.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> (Self, Vec<String>) {
        let mut s = Self::default();
        let mut warnings = Vec::new();
        let mut read = |name: &str, slot: &mut u64, min: u64| {
            if let Some(raw) = var(name) {
                match raw.trim().parse::<u64>() {
                    Ok(v) if v >= min => *slot = v,
                    _ => warnings.push(format!("{name}={raw:?} is not an integer >= {min}; using {slot}")),
                }
            }
        };
        let mut body = s.max_body_bytes as u64;
        let mut devices = s.max_devices as u64;
        let mut tries = u64::from(s.max_tries);
        let mut subrequests = u64::from(s.max_subrequests);
        read("MAX_BODY_BYTES", &mut body, 256);
        read("MAX_DEVICES", &mut devices, 1);
        read("SEND_TIMEOUT_MS", &mut s.send_timeout_ms, 1);
        read("RETRY_BASE_MS", &mut s.retry_base_ms, 0);
        read("MAX_TRIES", &mut tries, 1);
        read("MAX_SUBREQUESTS", &mut subrequests, 1);
        s.max_body_bytes = usize::try_from(body).unwrap_or(usize::MAX);
        s.max_devices = usize::try_from(devices).unwrap_or(usize::MAX);
        s.max_tries = u32::try_from(tries.min(10)).unwrap_or(10);
        s.max_subrequests = u32::try_from(subrequests).unwrap_or(u32::MAX);
        if s.send_timeout_ms > MAX_SEND_TIMEOUT_MS {
            warnings.push(format!("SEND_TIMEOUT_MS={} is over {MAX_SEND_TIMEOUT_MS}; using {MAX_SEND_TIMEOUT_MS}", s.send_timeout_ms));
            s.send_timeout_ms = MAX_SEND_TIMEOUT_MS;
        }
        match var("LOG_NOTIFIES").as_deref().map(str::trim) {
            None | Some("all") => {}
            Some("problems") => s.log_notifies = LogNotifies::Problems,
            Some(other) => warnings.push(format!("LOG_NOTIFIES={other:?} is neither \"all\" nor \"problems\"; using \"all\"")),
        }
        (s, warnings)
    }
}

/// The longest `delaySeconds` asked of Queues (its limit is 12 hours or more).
pub const MAX_QUEUE_DELAY_SECS: u64 = 12 * 3600;

/// The knobs of deferred delivery, all optional `[vars]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredSettings {
    /// A deferred push is not sent once this old (counted from the notify),
    /// as the homeserver gives up on its own retries after a day.
    pub max_age_secs: u64,
    /// The first consumer try comes this long after the notify; each later
    /// pause doubles, with jitter.
    pub retry_base_secs: u64,
    /// The longest pause between two tries (a provider's `Retry-After` may
    /// ask for longer): after an outage, every deferred push is tried again
    /// within this long.
    pub retry_max_secs: u64,
    /// The name of the dead-letter queue (`DEFERRED_DLQ_NAME`): a batch
    /// from it is never dead-lettered again, when this worker consumes it.
    pub dead_letter_queue: String,
}

impl Default for DeferredSettings {
    fn default() -> Self {
        Self { max_age_secs: 86_400, retry_base_secs: 10, retry_max_secs: 300, dead_letter_queue: "edgepush-deferred-dead".into() }
    }
}

impl DeferredSettings {
    /// Reads `DEFERRED_MAX_AGE_SECS`, `DEFERRED_RETRY_BASE_SECS`,
    /// `DEFERRED_RETRY_MAX_SECS` and `DEFERRED_DLQ_NAME`; a missing or unusable value keeps its
    /// default and is reported in the warnings.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> (Self, Vec<String>) {
        let mut s = Self::default();
        let mut warnings = Vec::new();
        let mut read = |name: &str, slot: &mut u64, min: u64, max: u64| {
            if let Some(raw) = var(name) {
                match raw.trim().parse::<u64>() {
                    Ok(v) if (min..=max).contains(&v) => *slot = v,
                    _ => warnings.push(format!("{name}={raw:?} is not an integer from {min} to {max}; using {slot}")),
                }
            }
        };
        read("DEFERRED_MAX_AGE_SECS", &mut s.max_age_secs, 1, 14 * 86_400);
        read("DEFERRED_RETRY_BASE_SECS", &mut s.retry_base_secs, 1, MAX_QUEUE_DELAY_SECS);
        read("DEFERRED_RETRY_MAX_SECS", &mut s.retry_max_secs, 1, MAX_QUEUE_DELAY_SECS);
        if let Some(name) = var("DEFERRED_DLQ_NAME").map(|n| n.trim().to_string()).filter(|n| !n.is_empty()) {
            s.dead_letter_queue = name;
        }
        if s.retry_max_secs < s.retry_base_secs {
            warnings.push(format!(
                "DEFERRED_RETRY_MAX_SECS ({}) is below DEFERRED_RETRY_BASE_SECS ({}); using {0} for both",
                s.retry_max_secs, s.retry_base_secs
            ));
            s.retry_base_secs = s.retry_max_secs;
        }
        (s, warnings)
    }

    /// The pause before consumer try `round` (1 for the first): the base
    /// doubled per round, capped, its upper half jittered; whole seconds, at
    /// least one.
    pub fn backoff_secs(&self, round: u32, random: f64) -> u64 {
        let exp = self.retry_base_secs.saturating_mul(1u64 << round.saturating_sub(1).min(30)).min(self.retry_max_secs);
        let half = exp as f64 / 2.0;
        ((half + half * random.clamp(0.0, 1.0)).ceil() as u64).clamp(1, exp.max(1))
    }
}

/// `url`: an origin (`scheme://host[:port]`) that replaces a provider's real
/// one; the provider's path is appended to it. Read as the operator wrote it
/// ([`crate::origin::operator_origin`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin(String);

impl Origin {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match crate::origin::operator_origin(raw) {
            Ok(origin) => Ok(Self(origin.to_string())),
            Err(Refusal::NotAbsolute) => Err(format!("{raw:?} is not an origin (scheme://host[:port])")),
            Err(Refusal::Scheme) => Err(format!("{raw:?}: the scheme must be https or http")),
            Err(_) => Err(format!("{raw:?} is not an origin (scheme://host[:port], no path)")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Origin::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// APNs environment: where the app's device tokens are valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ApnsPlatform {
    /// App Store and TestFlight builds.
    #[default]
    Production,
    /// Builds run from Xcode.
    Sandbox,
    /// Per device: production first, then once the sandbox on
    /// `BadDeviceToken`; the environment that worked is remembered.
    Auto,
}

/// `"type": "apns"` (token auth).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    #[serde(default)]
    pub platform: ApnsPlatform,
    /// The app's bundle id: `apns-topic`.
    pub topic: String,
    pub team_id: String,
    pub key_id: String,
    /// Name of the secret holding the `.p8` PEM.
    pub key_secret: String,
    /// `apns-push-type`; `alert` when absent.
    #[serde(default)]
    pub push_type: Option<String>,
    #[serde(default = "yes")]
    pub convert_device_token_to_hex: bool,
    /// Seconds until APNs may drop an undelivered push (`apns-expiration`).
    #[serde(default)]
    pub ttl: Option<u64>,
    #[serde(default)]
    pub url: Option<Origin>,
    /// An origin replacing the sandbox's (`url` replaces both when this is
    /// absent).
    #[serde(default)]
    pub sandbox_url: Option<Origin>,
    /// `false`: no badge counts in any push (Sygnal 0.17's name).
    #[serde(default = "yes")]
    pub send_badge_counts: bool,
    /// `true`: a room's newer push replaces its older one (`apns-collapse-id`).
    #[serde(default)]
    pub collapse_per_room: bool,
}

/// `"type": "fcm"` (HTTP v1).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    pub project_id: String,
    /// Name of the secret holding the service-account JSON.
    pub service_account_secret: String,
    /// The base of every message; our fields win.
    #[serde(default)]
    pub fcm_options: Map<String, Value>,
    #[serde(default)]
    pub url: Option<Origin>,
    /// `false`: no badge counts in any push (Sygnal 0.17's name).
    #[serde(default = "yes")]
    pub send_badge_counts: bool,
    /// `true`: a room's newer push replaces its older one (`android.collapse_key`).
    #[serde(default)]
    pub collapse_per_room: bool,
    /// `true`: messages also carry a `notification` the system shows by
    /// itself, for apps that cannot handle data messages.
    #[serde(default)]
    pub fcm_notification: bool,
}

/// `"type": "hms"` (Huawei Push Kit, the Android server API).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmsConfig {
    /// Huawei's app id from AppGallery Connect, which is also the OAuth
    /// client id (not the Matrix `app_id` that keys `APPS`). A JSON number
    /// is accepted too.
    #[serde(deserialize_with = "hms_app_id")]
    pub hms_app_id: String,
    /// Name of the secret holding the app secret (the OAuth client secret).
    pub app_secret_secret: String,
    /// Huawei's self-classification of the app's high-priority data
    /// messages (`IM`, `VOIP`, …); without it every message goes at
    /// `NORMAL` urgency.
    #[serde(default)]
    pub category: Option<String>,
    /// `android.collapse_key`: Huawei's cache group for a device that is
    /// offline (-1 to 100); absent: Huawei's default.
    #[serde(default, deserialize_with = "collapse_key")]
    pub collapse_key: Option<i64>,
    #[serde(default)]
    pub url: Option<Origin>,
    /// The OAuth token endpoint, replacing Huawei's (e.g. a test server).
    #[serde(default)]
    pub token_url: Option<String>,
    /// `false`: no badge counts in any push (Sygnal 0.17's name).
    #[serde(default = "yes")]
    pub send_badge_counts: bool,
}

/// `hms_app_id`: a string, or an integer read as its decimal string
/// (AppGallery Connect shows the id as a number).
fn hms_app_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) if n.is_u64() => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!("hms_app_id: expected a string or a positive integer, not {other}"))),
    }
}

/// `collapse_key`: an integer (its range is checked with the app).
fn collapse_key<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Number(n) if n.is_i64() => Ok(n.as_i64()),
        other => Err(serde::de::Error::custom(format!("collapse_key: expected an integer from -1 to 100, not {other}"))),
    }
}

/// `"type": "webpush"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushConfig {
    /// Name of the secret holding the VAPID private key.
    pub vapid_private_key_secret: String,
    /// `sub` of the VAPID JWT: `mailto:` or `https:` contact.
    pub vapid_contact: String,
    #[serde(default)]
    pub allowed_endpoints: Option<Vec<String>>,
    /// `TTL` header in seconds; 900 when absent.
    #[serde(default)]
    pub ttl: Option<u64>,
    /// `false`: no badge counts in any push (Sygnal 0.17's name).
    #[serde(default = "yes")]
    pub send_badge_counts: bool,
    /// `true`: a room's newer push replaces its older one (`Topic`).
    #[serde(default)]
    pub collapse_per_room: bool,
}

/// `"type": "unifiedpush"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnifiedPushConfig {
    #[serde(default)]
    pub allowed_endpoints: Option<Vec<String>>,
    /// `false`: no badge counts in any push.
    #[serde(default = "yes")]
    pub send_badge_counts: bool,
}

fn yes() -> bool {
    true
}

/// One entry of `APPS`, before its secrets are read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum AppConfig {
    Apns(ApnsConfig),
    Fcm(FcmConfig),
    Webpush(WebPushConfig),
    Unifiedpush(UnifiedPushConfig),
    Hms(HmsConfig),
}

impl AppConfig {
    /// Parse one entry; the error names the field at fault.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let obj = value.as_object().ok_or("the entry must be a JSON object")?;
        match obj.get("type") {
            None => return Err("missing field `type` (one of apns, fcm, webpush, unifiedpush, hms)".into()),
            Some(Value::String(t)) if !["apns", "fcm", "webpush", "unifiedpush", "hms"].contains(&t.as_str()) => {
                return Err(format!("unknown type {t:?} (expected one of apns, fcm, webpush, unifiedpush, hms)"))
            }
            Some(Value::String(_)) => {}
            Some(_) => return Err("field `type` must be a string".into()),
        }
        AppConfig::deserialize(value).map_err(|e| e.to_string())
    }

    /// The names of the secrets this entry reads.
    pub fn secret_names(&self) -> Vec<&str> {
        match self {
            AppConfig::Apns(c) => vec![c.key_secret.as_str()],
            AppConfig::Fcm(c) => vec![c.service_account_secret.as_str()],
            AppConfig::Webpush(c) => vec![c.vapid_private_key_secret.as_str()],
            AppConfig::Unifiedpush(_) => vec![],
            AppConfig::Hms(c) => vec![c.app_secret_secret.as_str()],
        }
    }
}

/// Two globs that one app id can match both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobOverlap {
    pub first: String,
    pub second: String,
    /// An app id matching both.
    pub example: String,
}

impl std::fmt::Display for GlobOverlap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "globs {:?} and {:?} overlap: an app id matching both (e.g. {:?}) is answered 502 until it has an \
             entry of its own or the globs no longer overlap",
            self.first, self.second, self.example
        )
    }
}

/// Whether an `APPS` key is a glob rather than one app id.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

/// Every pair of globs among `patterns` that some app id matches both.
pub fn glob_overlaps(patterns: &[&str]) -> Vec<GlobOverlap> {
    let globs: Vec<&str> = patterns.iter().copied().filter(|p| is_glob(p)).collect();
    let mut overlaps = Vec::new();
    for (i, first) in globs.iter().enumerate() {
        for second in globs.iter().skip(i + 1) {
            if let Some(example) = glob_overlap(first, second) {
                overlaps.push(GlobOverlap { first: first.to_string(), second: second.to_string(), example });
            }
        }
    }
    overlaps
}

/// An id both globs match, if there is one: a search over pairs of
/// positions (linear in their product), building the id on the way.
pub fn glob_overlap(a: &str, b: &str) -> Option<String> {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // What a pattern character gives the id when the other side's `*`
    // absorbs it: a literal itself, `?` any character, `*` nothing.
    let absorbed = |c: char| match c {
        '*' => None,
        '?' => Some('x'),
        c => Some(c),
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![(0usize, 0usize, String::new())];
    while let Some((i, j, id)) = todo.pop() {
        if !seen.insert((i, j)) {
            continue;
        }
        let extended = |c: Option<char>| {
            let mut id = id.clone();
            id.extend(c);
            id
        };
        match (a.get(i).copied(), b.get(j).copied()) {
            (None, None) => return Some(id),
            (Some('*'), next) => {
                todo.push((i + 1, j, id.clone()));
                if let Some(c) = next {
                    todo.push((i, j + 1, extended(absorbed(c))));
                }
            }
            (next, Some('*')) => {
                todo.push((i, j + 1, id.clone()));
                if let Some(c) = next {
                    todo.push((i + 1, j, extended(absorbed(c))));
                }
            }
            (Some(x), Some(y)) if x == y || x == '?' || y == '?' => {
                let c = if x == '?' { absorbed(y) } else { Some(x) };
                todo.push((i + 1, j + 1, extended(c)));
            }
            _ => {}
        }
    }
    None
}

/// Case-sensitive glob over the whole id: `*` any run, `?` one character.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with backtracking to the last `*`: linear in practice,
    // never exponential.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn glob_rules() {
        assert!(glob_matches("chat.fluffy.fluffychat.*", "chat.fluffy.fluffychat.dev1"));
        assert!(glob_matches("*.up", "im.app.up"));
        assert!(glob_matches("a?c", "abc"));
        assert!(!glob_matches("a?c", "abbc"));
        assert!(!glob_matches("com.Example.*", "com.example.x"), "case-sensitive");
        assert!(!glob_matches("com.example", "com.example.ios"), "whole id");
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
    }

    #[test]
    fn glob_overlaps_name_both_globs_and_an_id_matching_both() {
        let cases = [
            ("chat.fluffy.*", "*.fluffychat.*", true),
            ("*.up", "im.*", true),
            ("a?c", "*c", true),
            ("*", "*", true),
            ("a*", "*b?", true),
            ("*.ios", "*.android", false),
            ("com.a.*", "com.b.*", false),
            ("a?", "abc", false),
            ("a?c", "a?d", false),
        ];
        for (a, b, overlap) in cases {
            let found = glob_overlap(a, b);
            assert_eq!(found.is_some(), overlap, "{a} {b}");
            if let Some(id) = found {
                assert!(glob_matches(a, &id) && glob_matches(b, &id), "{a} {b}: {id:?}");
            }
        }
        let overlaps = glob_overlaps(&["*.up", "com.example.app", "im.*"]);
        assert_eq!(overlaps.len(), 1);
        let text = overlaps[0].to_string();
        assert!(text.contains(r#"globs "*.up" and "im.*" overlap"#), "{text}");
        assert!(glob_matches("*.up", &overlaps[0].example) && glob_matches("im.*", &overlaps[0].example));
        assert!(text.contains(&format!("e.g. {:?}", overlaps[0].example)), "{text}");
    }

    #[test]
    fn settings_defaults_and_overrides() {
        let (s, w) = Settings::from_vars(|_| None);
        assert_eq!(s, Settings::default());
        assert!(w.is_empty());
        let (s, w) = Settings::from_vars(|k| match k {
            "MAX_DEVICES" => Some("5".into()),
            "RETRY_BASE_MS" => Some("0".into()),
            "MAX_TRIES" => Some("lots".into()),
            _ => None,
        });
        assert_eq!(s.max_devices, 5);
        assert_eq!(s.retry_base_ms, 0);
        assert_eq!(s.max_tries, 3);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("MAX_TRIES"));
        for (raw, expected, warned) in [("all", LogNotifies::All, false), (" problems ", LogNotifies::Problems, false), ("errors", LogNotifies::All, true)] {
            let (s, w) = Settings::from_vars(|k| (k == "LOG_NOTIFIES").then(|| raw.to_string()));
            assert_eq!(s.log_notifies, expected, "{raw}");
            assert_eq!(w.len(), usize::from(warned), "{raw}: {w:?}");
        }
        for (raw, expected, warned) in [("60000", 60_000, false), ("60001", MAX_SEND_TIMEOUT_MS, true), ("18446744073709551615", MAX_SEND_TIMEOUT_MS, true)] {
            let (s, w) = Settings::from_vars(|k| (k == "SEND_TIMEOUT_MS").then(|| raw.to_string()));
            assert_eq!(s.send_timeout_ms, expected, "{raw}");
            assert_eq!(w.len(), usize::from(warned), "{raw}: {w:?}");
            assert!(w.iter().all(|w| w.contains("SEND_TIMEOUT_MS") && w.contains("60000")), "{w:?}");
        }
    }

    #[test]
    fn origin_parsing() {
        assert_eq!(Origin::parse("http://127.0.0.1:9000/").unwrap().as_str(), "http://127.0.0.1:9000");
        assert!(Origin::parse("https://api.push.apple.com").is_ok());
        assert!(Origin::parse("api.push.apple.com").is_err());
        assert!(Origin::parse("https://host/path").is_err());
        assert!(Origin::parse("ftp://host").is_err());
    }

    #[test]
    fn app_config_errors_name_the_field() {
        let cases = [
            (json!(1), "object"),
            (json!({}), "type"),
            (json!({"type": "gcm"}), "gcm"),
            (json!({"type": 3}), "type"),
            (json!({"type": "apns", "team_id": "T", "key_id": "K", "key_secret": "S"}), "topic"),
            (json!({"type": "apns", "topic": "t", "team_id": "T", "key_id": "K", "key_secret": "S", "platform": "prod"}), "prod"),
            (json!({"type": "apns", "topic": "t", "team_id": "T", "key_id": "K", "key_secret": "S", "sandbox_url": "not-an-origin"}), "not-an-origin"),
            (json!({"type": "fcm", "project_id": "p"}), "service_account_secret"),
            (json!({"type": "fcm", "project_id": "p", "service_account_secret": "S", "url": "nope"}), "nope"),
            (json!({"type": "unifiedpush", "allowed_endpoint": []}), "allowed_endpoint"),
            (json!({"type": "unifiedpush", "send_badge_counts": "no"}), "boolean"),
            (json!({"type": "unifiedpush", "collapse_per_room": true}), "collapse_per_room"),
            (json!({"type": "webpush", "vapid_private_key_secret": "K", "vapid_contact": "mailto:a@b", "fcm_notification": true}), "fcm_notification"),
            (json!({"type": "hms", "app_secret_secret": "S"}), "hms_app_id"),
            (json!({"type": "hms", "hms_app_id": "1", "app_secret_secret": "S", "project_id": "p"}), "project_id"),
            (json!({"type": "hms", "hms_app_id": -1, "app_secret_secret": "S"}), "hms_app_id"),
            (json!({"type": "hms", "hms_app_id": "1", "app_secret_secret": "S", "collapse_key": "room"}), "collapse_key"),
        ];
        for (value, needle) in cases {
            let err = AppConfig::parse(&value).unwrap_err();
            assert!(err.contains(needle), "{value}: {err}");
        }
    }

    #[test]
    fn counts_collapsing_and_visible_notifications_default_to_todays_behaviour() {
        let apns = json!({"type": "apns", "topic": "t", "team_id": "T", "key_id": "K", "key_secret": "S"});
        let fcm = json!({"type": "fcm", "project_id": "p", "service_account_secret": "S"});
        let webpush = json!({"type": "webpush", "vapid_private_key_secret": "K", "vapid_contact": "mailto:a@b"});
        let unifiedpush = json!({"type": "unifiedpush"});
        match AppConfig::parse(&apns).unwrap() {
            AppConfig::Apns(c) => assert!(c.send_badge_counts && !c.collapse_per_room),
            other => panic!("{other:?}"),
        }
        match AppConfig::parse(&fcm).unwrap() {
            AppConfig::Fcm(c) => assert!(c.send_badge_counts && !c.collapse_per_room && !c.fcm_notification),
            other => panic!("{other:?}"),
        }
        match AppConfig::parse(&webpush).unwrap() {
            AppConfig::Webpush(c) => assert!(c.send_badge_counts && !c.collapse_per_room),
            other => panic!("{other:?}"),
        }
        match AppConfig::parse(&unifiedpush).unwrap() {
            AppConfig::Unifiedpush(c) => assert!(c.send_badge_counts),
            other => panic!("{other:?}"),
        }
        let mut fcm = fcm;
        fcm["send_badge_counts"] = json!(false);
        fcm["collapse_per_room"] = json!(true);
        fcm["fcm_notification"] = json!(true);
        match AppConfig::parse(&fcm).unwrap() {
            AppConfig::Fcm(c) => assert!(!c.send_badge_counts && c.collapse_per_room && c.fcm_notification),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn design_example_parses() {
        let apps = json!({
          "com.example.app.ios": {
            "type": "apns", "platform": "production", "topic": "com.example.app",
            "team_id": "TEAM123456", "key_id": "KEY1234567", "key_secret": "APNS_KEY",
            "push_type": "alert", "convert_device_token_to_hex": true, "ttl": 86400
          },
          "com.example.app.android": {
            "type": "fcm", "project_id": "example-123",
            "service_account_secret": "FCM_SERVICE_ACCOUNT", "fcm_options": {}
          },
          "com.example.web": {
            "type": "webpush", "vapid_private_key_secret": "VAPID_KEY",
            "vapid_contact": "mailto:ops@example.com", "allowed_endpoints": ["*.push.example.net"]
          },
          "*.up": { "type": "unifiedpush", "allowed_endpoints": ["ntfy.example.net"] },
          "com.example.app.huawei": {
            "type": "hms", "hms_app_id": "104123456", "app_secret_secret": "HMS_APP_SECRET", "category": "IM"
          }
        });
        for (id, v) in apps.as_object().unwrap() {
            AppConfig::parse(v).unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    }

    #[test]
    fn deferred_settings_defaults_overrides_and_warnings() {
        let (s, w) = DeferredSettings::from_vars(|_| None);
        assert_eq!(s, DeferredSettings::default());
        assert_eq!((s.max_age_secs, s.retry_base_secs, s.retry_max_secs), (86_400, 10, 300));
        assert!(w.is_empty());
        let (s, w) = DeferredSettings::from_vars(|k| match k {
            "DEFERRED_MAX_AGE_SECS" => Some("30".into()),
            "DEFERRED_RETRY_BASE_SECS" => Some("0".into()),
            "DEFERRED_RETRY_MAX_SECS" => Some("5".into()),
            _ => None,
        });
        assert_eq!((s.max_age_secs, s.retry_base_secs, s.retry_max_secs), (30, 5, 5));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("DEFERRED_RETRY_BASE_SECS") && w[1].contains("below"), "{w:?}");
        let (s, w) = DeferredSettings::from_vars(|k| (k == "DEFERRED_MAX_AGE_SECS").then(|| "99999999".into()));
        assert_eq!(s.max_age_secs, 86_400);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn deferred_backoff_doubles_with_jitter_and_is_capped() {
        let s = DeferredSettings { max_age_secs: 86_400, retry_base_secs: 10, retry_max_secs: 300, ..DeferredSettings::default() };
        assert_eq!([1, 2, 3, 4, 5, 6, 7, 40].map(|r| s.backoff_secs(r, 1.0)), [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(s.backoff_secs(1, 0.0), 5, "half the pause is jitter");
        assert_eq!(s.backoff_secs(6, 0.5), 225);
        let one = DeferredSettings { max_age_secs: 10, retry_base_secs: 1, retry_max_secs: 1, ..DeferredSettings::default() };
        assert_eq!([0.0, 0.5, 1.0].map(|r| one.backoff_secs(3, r)), [1, 1, 1], "never under a second");
    }
}
