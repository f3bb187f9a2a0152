//! Huawei Push Kit (HMS Core), the Android server API: pushes for phones
//! without Google services.
//!
//! Credentials are the app's id and secret from AppGallery Connect, exchanged
//! (OAuth 2.0 client credentials) for an access token that the dispatcher
//! caches under [`Prepared::token_key`], as for FCM. Messages are data
//! messages: `message.data` is a JSON *string* holding the fields FCM's
//! `data` carries, and the app builds its own notification from it.
//!
//! Outcomes come from Huawei's result code (the answer's `code`), not only
//! from the HTTP status. The rules, and the Huawei pages they rest on, are
//! docs/design.md §16.

use std::fmt;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::fcm;
use super::style::{Style, Urgency};
use super::{AnswerBody, MintedToken, OutRequest, Outcome, Prepared, ProviderResponse, provider_text, Refusal, Secrets, UnixSecs, Verdict};
use crate::config::HmsConfig;
use crate::fingerprint::{fingerprint, hex};
use crate::notify::{Device, Notification};

const DEFAULT_ORIGIN: &str = "https://push-api.cloud.huawei.com";
/// Huawei's OAuth 2.0 token endpoint (Account Kit), client credentials mode.
pub const DEFAULT_TOKEN_URL: &str = "https://oauth-login.cloud.huawei.com/oauth2/v3/token";

/// "The message body cannot exceed 4096 bytes (excluding token)".
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// An access token is dropped this long before Huawei says it expires (its
/// tokens live an hour), so a send never races the expiry...
const TOKEN_EXPIRY_MARGIN_SECS: u64 = 300;
/// ...but is kept at least this long, so a short `expires_in` does not make
/// every send fetch a new one.
const TOKEN_MIN_LIFETIME_SECS: u64 = 60;

/// `category` is one of Huawei's upper-case scenario names (`IM`, `VOIP`, …).
const MAX_CATEGORY_BYTES: usize = 32;
/// `android.collapse_key`: -1 (cache every message) or a group 0 to 100.
const COLLAPSE_KEY_RANGE: std::ops::RangeInclusive<i64> = -1..=100;

/// An `hms` app with its secret loaded.
pub struct HmsApp {
    pub config: HmsConfig,
    secret: String,
    token_url: String,
    token_key: String,
}

impl fmt::Debug for HmsApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HmsApp")
            .field("hms_app_id", &self.config.hms_app_id)
            .field("token_url", &self.token_url)
            .field("app_secret", &"<redacted>")
            .finish()
    }
}

impl HmsApp {
    /// Check the entry and read the app secret named by `app_secret_secret`.
    /// Errors name the field and never quote the secret.
    pub fn new(config: HmsConfig, secrets: &dyn Secrets) -> Result<Self, String> {
        check_app_id(&config.hms_app_id)?;
        if let Some(category) = &config.category {
            check_category(category)?;
        }
        if let Some(key) = config.collapse_key.filter(|k| !COLLAPSE_KEY_RANGE.contains(k)) {
            return Err(format!("collapse_key: {key} is not -1 or a group from 0 to 100"));
        }
        let token_url = match &config.token_url {
            None => DEFAULT_TOKEN_URL.to_string(),
            Some(url) => check_url(url).map_err(|e| format!("token_url: {e}"))?,
        };
        let secret = super::require_secret(secrets, "app_secret_secret", &config.app_secret_secret)?.trim().to_string();
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "app_secret_secret: the secret {:?} holds spaces or non-ASCII characters: it must hold the app secret alone",
                config.app_secret_secret
            ));
        }
        // The token belongs to the app id; the secret's fingerprint in the
        // key keeps an entry with a wrong secret from sharing (and spoiling)
        // the token of the right one, and a new secret gets a new token.
        let token_key = format!("hms:{}:{}", config.hms_app_id, hex(&fingerprint(&[secret.as_bytes()]), 8));
        Ok(Self { config, secret, token_url, token_key })
    }

    /// `POST {url}/v1/{hms_app_id}/messages:send` for one device: one token.
    pub fn prepare(&self, n: &Notification, d: &Device, _now: UnixSecs) -> Result<Prepared, Verdict> {
        let body = self.message_body(n, d)?;
        let body = serde_json::to_vec(&body).map_err(|_| Verdict::failed("could not encode the HMS message"))?;
        let origin = self.config.url.as_ref().map_or(DEFAULT_ORIGIN, |u| u.as_str());
        Ok(Prepared {
            request: OutRequest {
                url: format!("{origin}/v1/{}/messages:send", self.config.hms_app_id),
                headers: vec![("content-type".into(), "application/json".into())],
                body,
                // The result code is in the body.
                answer_body: AnswerBody::Read,
            },
            token_key: Some(self.token_key.clone()),
        })
    }

    /// Devices of every entry with this app id and secret share one token.
    pub fn token_key(&self) -> &str {
        &self.token_key
    }

    /// `{"validate_only": false, "message": {"data": "<JSON>", "android":
    /// {"urgency", "category", "collapse_key"}, "token": [pushkey]}}`, the
    /// message within [`MAX_MESSAGE_BYTES`] without its token. `data` holds
    /// FCM's data fields, with the counts the device may get (none when the
    /// app's `send_badge_counts` or the pusher turns them off).
    pub fn message_body(&self, n: &Notification, d: &Device) -> Result<Value, Verdict> {
        let android = self.android(n);
        let envelope = |data: &str, token: &[&str]| {
            json!({
                "validate_only": false,
                "message": {"data": data, "android": android, "token": token},
            })
        };
        // What the message takes besides `data` ("" counts in `data_size`).
        let rest = serialized_len(&envelope("", &[])).saturating_sub(2);
        // Per-room collapsing has no HMS form: `collapse_key` is one of 101
        // cache groups, not a key of our choosing.
        let counts = Style::new(d, self.config.send_badge_counts, false).counts(n);
        let data = fcm::data_within(n, d, counts, data_size, MAX_MESSAGE_BYTES.saturating_sub(rest))?;
        let data = Value::Object(data).to_string();
        let size = serialized_len(&envelope(&data, &[]));
        if size > MAX_MESSAGE_BYTES {
            return Err(Verdict::failed(format!("the HMS message has {size} bytes, over Huawei's {MAX_MESSAGE_BYTES}")));
        }
        Ok(envelope(&data, &[d.pushkey.as_str()]))
    }

    /// `urgency` HIGH only for a high-priority push with an event (as FCM's
    /// priority), and only with a `category`: Huawei delivers a
    /// high-priority data message only for an app that classified it (e.g.
    /// `IM`).
    fn android(&self, n: &Notification) -> Value {
        let high = Urgency::of(n) == Urgency::Now;
        let mut android = Map::new();
        match self.config.category.as_deref().filter(|_| high) {
            Some(category) => {
                android.insert("urgency".into(), "HIGH".into());
                android.insert("category".into(), category.into());
            }
            None => {
                android.insert("urgency".into(), "NORMAL".into());
            }
        }
        if let Some(key) = self.config.collapse_key {
            android.insert("collapse_key".into(), key.into());
        }
        Value::Object(android)
    }

    /// The OAuth 2.0 client-credentials request: the app id is the client id.
    pub fn token_request(&self) -> OutRequest {
        OutRequest {
            url: self.token_url.clone(),
            headers: vec![("content-type".into(), "application/x-www-form-urlencoded".into())],
            body: format!(
                "grant_type=client_credentials&client_id={}&client_secret={}",
                form_encode(&self.config.hms_app_id),
                form_encode(&self.secret)
            )
            .into_bytes(),
            answer_body: AnswerBody::Read,
        }
    }
}

/// Bytes `data` takes in the request: its entries as a JSON object, that
/// JSON as a JSON string (quotes included).
fn data_size(entries: &[(&str, &str)]) -> usize {
    let object: Map<String, Value> =
        entries.iter().map(|(k, v)| ((*k).to_string(), Value::String((*v).to_string()))).collect();
    serialized_len(&Value::String(Value::Object(object).to_string()))
}

fn serialized_len(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |bytes| bytes.len())
}

/// `application/x-www-form-urlencoded`: everything but unreserved characters
/// percent-encoded.
fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Huawei app ids are digits; letters, `.`, `-` and `_` are let through, and
/// nothing that would change the path of the send URL.
fn check_app_id(app_id: &str) -> Result<(), String> {
    let valid = !app_id.is_empty()
        && app_id.len() <= 64
        && app_id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if valid {
        Ok(())
    } else {
        Err(format!("hms_app_id: {app_id:?} is not an AppGallery Connect app id (its digits)"))
    }
}

fn check_category(category: &str) -> Result<(), String> {
    let valid = !category.is_empty()
        && category.len() <= MAX_CATEGORY_BYTES
        && category.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!("category: {category:?} is not a Huawei message category (upper case, e.g. \"IM\" or \"VOIP\")"))
    }
}

fn check_url(url: &str) -> Result<String, String> {
    let valid = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() > "http://".len()
        && url.bytes().all(|b| b.is_ascii_graphic());
    if valid {
        Ok(url.to_string())
    } else {
        Err(format!("{url:?} is not an http(s) URL"))
    }
}

// --- the token endpoint ---

/// Read the token endpoint's answer. One that is down or throttling is
/// `Transient`; one that refuses the app id and secret is `Failed`.
pub fn read_token_response(response: &ProviderResponse, now: UnixSecs) -> Result<MintedToken, Verdict> {
    let status = response.status;
    if status == 429 || (500..=599).contains(&status) {
        return Err(Verdict::new(
            Outcome::Transient { retry_after: response.retry_after() },
            format!("hms token endpoint answered {status}"),
        ));
    }
    let grant = serde_json::from_slice::<TokenAnswer>(&response.body).unwrap_or_default();
    let token = match (status, grant.access_token.clone()) {
        (200, Some(token)) => token,
        _ => {
            return Err(Verdict::failed(format!(
                "hms token endpoint refused the app id and secret ({status} {})",
                grant.describe()
            )))
        }
    };
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Verdict::failed("hms token endpoint answered an access_token that is not a bearer token"));
    }
    let expires_in = grant.expires_in.filter(|&secs| secs > 0).ok_or_else(|| {
        Verdict::failed("hms token endpoint answered an access_token without a positive expires_in")
    })?;
    let lifetime =
        expires_in.saturating_sub(TOKEN_EXPIRY_MARGIN_SECS).max(TOKEN_MIN_LIFETIME_SECS.min(expires_in));
    // Renewed ahead, as FCM's: one caller fetches the next token while the
    // others keep using this one.
    let renew_at = now.saturating_add(lifetime - (lifetime / 2).min(TOKEN_EXPIRY_MARGIN_SECS));
    Ok(MintedToken { value: token, renew_at, valid_until: now.saturating_add(lifetime) })
}

/// `{"access_token", "expires_in", "token_type"}`, or a refusal such as
/// `{"error": 1101, "sub_error": 20152, "error_description": "invalid client"}`
/// (Huawei's codes are numbers; strings are read too).
#[derive(Deserialize, Default)]
struct TokenAnswer {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    sub_error: Option<Value>,
    #[serde(default)]
    error_description: Option<String>,
}

impl TokenAnswer {
    /// Huawei's codes and explanation, never the secret (its answer does not
    /// echo it).
    fn describe(&self) -> String {
        let code = |name: &str, v: &Option<Value>| match v {
            Some(Value::Number(n)) => Some(format!("{name} {n}")),
            Some(Value::String(s)) => Some(format!("{name} {}", provider_text(s))),
            _ => None,
        };
        let parts: Vec<String> = [code("error", &self.error), code("sub_error", &self.sub_error)]
            .into_iter()
            .flatten()
            .chain(self.error_description.as_deref().map(|d| provider_text(d).to_string()))
            .collect();
        if parts.is_empty() {
            "no error code".to_string()
        } else {
            parts.join(", ")
        }
    }
}

// --- messages:send answers ---

/// What one of Huawei's result codes means for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// 80000000: Huawei took the message.
    Success,
    /// 80100000: some tokens were sent to, some not; `msg` says which.
    SomeTokensFailed,
    /// 80300007: every token of the request (ours is the only one) is invalid.
    TokensInvalid,
    /// Our access token was refused: mint a new one once.
    OAuth,
    /// Our request is wrong (parameters, size, permission): not the device's.
    OurRequest,
    /// Flow control or Huawei's own failure: retry shortly.
    Busy,
}

/// Huawei's result codes that edgepush handles, what each says, and why.
pub const RESULT_CODES: &[(&str, Meaning, &str)] = &[
    ("80000000", Meaning::Success, "success"),
    ("80100000", Meaning::SomeTokensFailed, "some tokens failed"),
    ("80100001", Meaning::OurRequest, "bad request parameters"),
    ("80100003", Meaning::OurRequest, "incorrect message structure"),
    ("80100004", Meaning::OurRequest, "message expiry in the past"),
    ("80100013", Meaning::OurRequest, "invalid collapse_key"),
    ("80100016", Meaning::OurRequest, "the message holds sensitive words"),
    ("80100017", Meaning::Busy, "flow control"),
    ("80200001", Meaning::OAuth, "OAuth authentication error"),
    ("80200003", Meaning::OAuth, "OAuth token expired"),
    ("80300002", Meaning::OurRequest, "the app may not send messages"),
    ("80300007", Meaning::TokensInvalid, "all tokens invalid"),
    ("80300008", Meaning::OurRequest, "message body too large"),
    ("80300009", Meaning::Busy, "flow control"),
    ("80300010", Meaning::OurRequest, "too many tokens"),
    ("80300011", Meaning::OurRequest, "the app may not send high-priority messages"),
    ("80600003", Meaning::Busy, "Huawei's OAuth service failed"),
    ("81000001", Meaning::Busy, "Huawei internal error"),
];

/// 80300007, or 80100000 naming the token, without a reason: the token is
/// not valid for this app id. Every device gets it when `hms_app_id` and the
/// secret are those of another app, so it needs evidence (`Refused`).
pub const TOKEN_INVALID: Refusal = Refusal { cause: "80300007 token invalid", check: CHECK_APP_ID };
/// `noRight`: the token was issued to another app than `hms_app_id`.
pub const TOKEN_OF_ANOTHER_APP: Refusal = Refusal { cause: "noRight", check: CHECK_APP_ID };
/// What the operator checks when every device of an app is refused so.
const CHECK_APP_ID: &str = "hms_app_id (the App ID of the app the pushers belong to) and its secret";

/// Per-token reasons (HarmonyOS-style `illegalTokens`) about the token
/// itself, whatever the app: evidence about the device alone.
const MALFORMED_TOKEN_REASONS: &[&str] = &["tokenFormatError"];
/// Reasons that the token is not the app's: what a wrong app id also causes.
const NOT_OURS_REASONS: &[&str] = &["noRight"];
/// The Android API's list of failed tokens, without a reason.
const UNEXPLAINED: &str = "illegal_tokens";

fn meaning(code: &str) -> Option<(Meaning, &'static str)> {
    RESULT_CODES.iter().find(|(c, _, _)| *c == code).map(|(_, m, what)| (*m, *what))
}

/// `{"code": "80000000", "msg": "Success", "requestId": "…"}`; `msg` may
/// itself be JSON, naming the tokens that failed and why.
#[derive(Debug, Default)]
struct SendAnswer {
    code: Option<String>,
    msg: Option<String>,
}

impl SendAnswer {
    fn parse(body: &[u8]) -> Self {
        let Ok(Value::Object(root)) = serde_json::from_slice::<Value>(body) else {
            return Self::default();
        };
        let code = match root.get("code") {
            Some(Value::String(s)) => Some(s.trim().to_string()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let msg = root.get("msg").and_then(Value::as_str).map(str::to_string);
        Self { code, msg }
    }

    /// What `msg` says of the tokens: how many succeeded, and the reasons
    /// the failed ones are filed under (never the tokens themselves).
    fn tokens(&self) -> TokenReport {
        let Some(Ok(Value::Object(msg))) = self.msg.as_deref().map(serde_json::from_str::<Value>) else {
            return TokenReport::default();
        };
        let count = |key: &str| msg.get(key).and_then(Value::as_u64);
        let mut reasons = Vec::new();
        // Android API: {"success": 0, "failure": 1, "illegal_tokens": ["…"]}.
        if msg.get("illegal_tokens").and_then(Value::as_array).is_some_and(|t| !t.is_empty()) {
            reasons.push("illegal_tokens".to_string());
        }
        // HarmonyOS API: {"illegalTokens": {"tokenFormatError": ["…"]}, …}.
        if let Some(Value::Object(by_reason)) = msg.get("illegalTokens") {
            let listed = by_reason.iter().filter(|(_, t)| t.as_array().is_some_and(|t| !t.is_empty()));
            reasons.extend(listed.map(|(reason, _)| provider_text(reason).to_string()));
        }
        TokenReport { success: count("success"), reasons }
    }

    /// `msg` for a log line: short, with anything token-like cut out.
    fn scrubbed_msg(&self) -> String {
        self.msg.as_deref().map(scrub).unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct TokenReport {
    success: Option<u64>,
    reasons: Vec<String>,
}

impl TokenReport {
    /// What the reasons Huawei gave for the (only) token say about it.
    fn outcome(&self) -> Outcome {
        let is = |list: &[&str], r: &String| list.contains(&r.as_str());
        let known = |r: &String| is(MALFORMED_TOKEN_REASONS, r) || is(NOT_OURS_REASONS, r) || r == UNEXPLAINED;
        if !self.reasons.iter().all(known) {
            // A reason edgepush does not know (`countryNotSupport`,
            // `appinfoError`, …): never a rejection.
            Outcome::Failed
        } else if self.reasons.iter().any(|r| is(NOT_OURS_REASONS, r)) {
            Outcome::Refused(TOKEN_OF_ANOTHER_APP)
        } else if !self.reasons.is_empty() && self.reasons.iter().all(|r| is(MALFORMED_TOKEN_REASONS, r)) {
            Outcome::Rejected
        } else {
            Outcome::Refused(TOKEN_INVALID)
        }
    }
}

/// Huawei's answer to `messages:send`, by its result code first: Huawei
/// answers most refusals with a code (some with HTTP 200), and the code says
/// whose fault it is.
pub fn classify(response: &ProviderResponse) -> Verdict {
    let status = response.status;
    let answer = SendAnswer::parse(&response.body);
    let transient = |reason: String| Verdict::new(Outcome::Transient { retry_after: response.retry_after() }, reason);
    let code = answer.code.as_deref();
    let label = format!("hms {status} {}", code.unwrap_or("(no result code)"));

    // Throttled or down, whatever the code: retrying later loses nothing,
    // and no code beside a 5xx is evidence about the device.
    if status == 429 || (500..=599).contains(&status) {
        let what = code.and_then(meaning).map_or("", |(_, what)| what);
        return transient(format!("{label} {what}").trim_end().to_string());
    }
    let Some(code) = code else {
        return match status {
            401 => Verdict::new(Outcome::StaleCredentials, label),
            _ => Verdict::failed(format!("{label}: no answer edgepush can read")),
        };
    };
    let Some((meaning, what)) = meaning(code) else {
        // Unknown: Huawei's 81xxxxxx family is its own failures; any other
        // new code is far likelier about our request than about the device.
        return if code.starts_with("81") {
            transient(format!("{label} unknown result code"))
        } else {
            Verdict::failed(format!("{label} unknown result code: {}", answer.scrubbed_msg()))
        };
    };
    let label = format!("{label} {what}");
    match meaning {
        Meaning::Success if (200..=299).contains(&status) => Verdict::delivered(),
        Meaning::Success => Verdict::failed(format!("{label}, but with HTTP {status}")),
        Meaning::SomeTokensFailed => {
            let tokens = answer.tokens();
            if tokens.success.is_some_and(|n| n > 0) {
                // One token was sent: it is the one that succeeded.
                Verdict::delivered()
            } else if tokens.reasons.is_empty() {
                Verdict::failed(format!("{label}, without saying which"))
            } else {
                dead_or_ours(&label, &tokens)
            }
        }
        Meaning::TokensInvalid => dead_or_ours(&label, &answer.tokens()),
        Meaning::OAuth => Verdict::new(Outcome::StaleCredentials, label),
        Meaning::OurRequest => Verdict::failed(format!("{label}: {}", answer.scrubbed_msg())),
        Meaning::Busy => transient(label),
    }
}

/// The device's only token was refused: `Rejected` when the reason is
/// about the token alone (malformed), `Refused` (rejected only once the app
/// is seen delivering) when a wrong `hms_app_id` would say the same of every
/// device, `Failed` for a reason edgepush does not know.
fn dead_or_ours(label: &str, tokens: &TokenReport) -> Verdict {
    let because = if tokens.reasons.is_empty() { String::new() } else { format!(" ({})", tokens.reasons.join(", ")) };
    Verdict::new(tokens.outcome(), format!("{label}{because}"))
}


/// A run of this many token-like characters (base64, hex, ids) may be a
/// push token or an access token: it is cut from a log line.
const TOKEN_LIKE_RUN: usize = 20;

/// `text` for a log line: short, and with every token-like run replaced by
/// "…", so a `msg` that echoes a token never puts it in the log.
fn scrub(text: &str) -> String {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '_' | '-' | '.' | ':');
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().count() >= TOKEN_LIKE_RUN {
            out.push('…');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in provider_text(text).chars() {
        if is_token_char(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::notify::parse_notify;

    const NOW: UnixSecs = 1_795_564_953;
    const SECRET_NAME: &str = "HMS_APP_SECRET";
    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn config(extra: Value) -> HmsConfig {
        let mut base = json!({"hms_app_id": "104123456", "app_secret_secret": SECRET_NAME, "category": "IM"});
        if let (Value::Object(base), Value::Object(extra)) = (&mut base, extra) {
            base.extend(extra);
        }
        serde_json::from_value(base).unwrap()
    }

    fn load_with(config: HmsConfig, secret: Option<&str>) -> Result<HmsApp, String> {
        let secret = secret.map(str::to_string);
        let secrets = move |name: &str| if name == SECRET_NAME { secret.clone() } else { None };
        HmsApp::new(config, &secrets)
    }

    fn app_with(extra: Value) -> HmsApp {
        load_with(config(extra), Some(SECRET)).unwrap()
    }

    fn app() -> HmsApp {
        app_with(json!({}))
    }

    fn notification(body: Value) -> Notification {
        parse_notify(&serde_json::to_vec(&json!({ "notification": body })).unwrap(), 20).unwrap()
    }

    fn device(data: Value) -> Value {
        json!({"app_id": "com.example.app.huawei", "pushkey": "IQAAAACy0kYkAAB-hmstoken", "data": data})
    }

    fn message(app: &HmsApp, n: &Notification) -> Value {
        let prepared = app.prepare(n, &n.devices[0], NOW).unwrap();
        let body: Value = serde_json::from_slice(&prepared.request.body).unwrap();
        assert_eq!(body["validate_only"], false);
        body["message"].clone()
    }

    /// The data string, parsed.
    fn data_of(message: &Value) -> Map<String, Value> {
        let text = message["data"].as_str().expect("data is a string");
        serde_json::from_str::<Value>(text).unwrap().as_object().unwrap().clone()
    }

    /// Huawei's measure: the message without its token.
    fn size_without_token(message: &Value) -> usize {
        let mut m = message.clone();
        m.as_object_mut().unwrap().remove("token");
        serde_json::to_vec(&m).unwrap().len()
    }

    // --- the message ---

    #[test]
    fn message_carries_fcm_data_as_a_json_string() {
        let n = notification(json!({
            "event_id": "$e", "room_id": "!r:x", "type": "m.room.message", "sender": "@a:x",
            "sender_display_name": "Alice", "room_name": "Room", "content": {"msgtype": "m.text", "body": "Hi"},
            "counts": {"unread": 2, "missed_calls": 1}, "prio": "high",
            "devices": [device(json!({"default_payload": {"cs": "secret", "n": 5}}))]
        }));
        let m = message(&app(), &n);
        assert_eq!(m["token"], json!(["IQAAAACy0kYkAAB-hmstoken"]));
        assert_eq!(m["android"], json!({"urgency": "HIGH", "category": "IM"}));
        // The same fields FCM's data carries, from the same builder.
        let fcm_data = fcm::data_for(&n, &n.devices[0], None).unwrap();
        assert_eq!(data_of(&m), fcm_data);
        assert_eq!(data_of(&m)["unread"], "2");
        assert_eq!(data_of(&m)["cs"], "secret");
        assert_eq!(data_of(&m)["n"], "5");
        assert_eq!(data_of(&m)["content_body"], "Hi");
    }

    #[test]
    fn urgency_is_high_only_for_high_pushes_with_an_event_and_a_category() {
        let with = |body: Value| notification(body);
        let event_high = with(json!({"event_id": "$e", "prio": "high", "devices": [device(json!({}))]}));
        let event_low = with(json!({"event_id": "$e", "prio": "low", "devices": [device(json!({}))]}));
        let badge_only = with(json!({"counts": {"unread": 1}, "devices": [device(json!({}))]}));
        assert_eq!(message(&app(), &event_high)["android"], json!({"urgency": "HIGH", "category": "IM"}));
        assert_eq!(message(&app(), &event_low)["android"], json!({"urgency": "NORMAL"}));
        assert_eq!(message(&app(), &badge_only)["android"], json!({"urgency": "NORMAL"}));
        let uncategorized = load_with(config(json!({"category": null})), Some(SECRET)).unwrap();
        assert_eq!(message(&uncategorized, &event_high)["android"], json!({"urgency": "NORMAL"}));
        let grouped = app_with(json!({"category": "VOIP", "collapse_key": 7}));
        assert_eq!(
            message(&grouped, &event_high)["android"],
            json!({"urgency": "HIGH", "category": "VOIP", "collapse_key": 7})
        );
        assert_eq!(message(&grouped, &event_low)["android"], json!({"urgency": "NORMAL", "collapse_key": 7}));
    }

    #[test]
    fn badge_only_and_event_id_only_follow_fcm() {
        let badge = notification(json!({"counts": {"unread": 3}, "devices": [device(json!({"default_payload": {"cs": "x"}}))]}));
        assert_eq!(data_of(&message(&app(), &badge)), json!({"unread": "3", "prio": "high"}).as_object().unwrap().clone());
        let ids = notification(json!({
            "event_id": "$e", "room_id": "!r", "sender": "@a:x", "content": {"body": "secret text"},
            "devices": [device(json!({"format": "event_id_only"}))]
        }));
        let data = data_of(&message(&app(), &ids));
        assert_eq!(data, json!({"event_id": "$e", "room_id": "!r", "prio": "high"}).as_object().unwrap().clone());
    }

    #[test]
    fn counts_are_left_out_when_the_app_or_the_pusher_turns_them_off() {
        let n = |data: Value| notification(json!({"event_id": "$e", "counts": {"unread": 2, "missed_calls": 1}, "devices": [device(data)]}));
        let with_counts = data_of(&message(&app(), &n(json!({}))));
        assert_eq!((with_counts["unread"].as_str(), with_counts["missed_calls"].as_str()), (Some("2"), Some("1")));
        for (app, data) in [
            (app_with(json!({"send_badge_counts": false})), json!({})),
            (app(), json!({"org.matrix.msc4076.disable_badge_count": true})),
        ] {
            let data = data_of(&message(&app, &n(data)));
            assert!(!data.contains_key("unread") && !data.contains_key("missed_calls"), "{data:?}");
            assert_eq!(data["event_id"], "$e");
        }
    }

    #[test]
    fn request_goes_to_the_app_ids_send_url_with_the_token_key() {
        let n = notification(json!({"event_id": "$e", "devices": [device(json!({}))]}));
        let prepared = app().prepare(&n, &n.devices[0], NOW).unwrap();
        assert_eq!(prepared.request.url, "https://push-api.cloud.huawei.com/v1/104123456/messages:send");
        assert_eq!(prepared.request.header("content-type"), Some("application/json"));
        let key = prepared.token_key.unwrap();
        assert!(key.starts_with("hms:104123456:") && !key.contains(SECRET), "{key}");
        let local = app_with(json!({"url": "http://127.0.0.1:9000"}));
        assert_eq!(local.prepare(&n, &n.devices[0], NOW).unwrap().request.url, "http://127.0.0.1:9000/v1/104123456/messages:send");
        let other_secret = load_with(config(json!({})), Some("another-secret")).unwrap();
        assert_ne!(other_secret.token_key(), app().token_key(), "a wrong secret never shares the right one's token");
    }

    #[test]
    fn a_long_message_fits_4096_bytes_without_its_token() {
        let text = "\"quoted\" \\ and \u{1} control, ünïcödé 😀 ".repeat(300);
        let n = notification(json!({
            "event_id": "$e", "room_id": "!r", "room_name": text, "sender_display_name": text,
            "content": {"body": text, "formatted_body": text}, "devices": [device(json!({}))]
        }));
        let m = message(&app(), &n);
        let size = size_without_token(&m);
        assert!(size <= MAX_MESSAGE_BYTES, "{size} bytes");
        assert!(size > MAX_MESSAGE_BYTES - 200, "the budget is used, not wasted: {size}");
        let data = data_of(&m);
        assert_eq!(data["event_id"], "$e", "ids are kept");
        for (key, value) in &data {
            assert!(!value.as_str().unwrap().contains('\u{FFFD}'), "data.{key}: a character was split");
        }
    }

    #[test]
    fn a_default_payload_that_cannot_fit_is_rejected() {
        let payload: Map<String, Value> = (0..6).map(|i| (format!("k{i}"), json!("x".repeat(1000)))).collect();
        let n = notification(json!({"event_id": "$e", "devices": [device(json!({"default_payload": payload}))]}));
        assert_eq!(app().prepare(&n, &n.devices[0], NOW).unwrap_err().outcome, Outcome::Rejected);
        let n = notification(json!({"event_id": "$e", "devices": [device(json!({"default_payload": "nope"}))]}));
        assert_eq!(app().prepare(&n, &n.devices[0], NOW).unwrap_err().outcome, Outcome::Rejected);
    }

    proptest! {
        #[test]
        fn every_message_fits_and_data_is_a_json_object_of_strings(
            body in "\\PC{0,3000}",
            name in "[\"\\\\\\x00-\\x1f a-z]{0,2000}",
            extra in proptest::collection::btree_map("[a-z_]{1,12}", "\\PC{0,700}", 0..6),
            unread in proptest::option::of(0u64..u64::MAX),
            high in any::<bool>(),
        ) {
            let content: Map<String, Value> = extra.into_iter().map(|(k, v)| (k, Value::String(v))).chain([("body".to_string(), Value::String(body))]).collect();
            let n = notification(json!({
                "event_id": "$e", "room_id": "!r", "room_name": name, "content": content,
                "counts": {"unread": unread}, "prio": if high { "high" } else { "low" }, "devices": [device(json!({}))]
            }));
            let m = message(&app(), &n);
            prop_assert!(size_without_token(&m) <= MAX_MESSAGE_BYTES);
            let data = data_of(&m);
            prop_assert!(data.values().all(Value::is_string));
            prop_assert_eq!(data["event_id"].as_str(), Some("$e"));
        }
    }

    // --- configuration ---

    #[test]
    fn config_errors_name_the_field_and_never_quote_the_secret() {
        let cases = [
            (json!({"hms_app_id": "10/4"}), Some(SECRET), "hms_app_id"),
            (json!({"hms_app_id": ""}), Some(SECRET), "hms_app_id"),
            (json!({"category": "im"}), Some(SECRET), "category"),
            (json!({"category": ""}), Some(SECRET), "category"),
            (json!({"collapse_key": 101}), Some(SECRET), "collapse_key"),
            (json!({"collapse_key": -2}), Some(SECRET), "collapse_key"),
            (json!({"token_url": "ftp://x"}), Some(SECRET), "token_url"),
            (json!({"token_url": "https://a b"}), Some(SECRET), "token_url"),
            (json!({}), None, "HMS_APP_SECRET"),
            (json!({}), Some("  "), "HMS_APP_SECRET"),
            (json!({}), Some("secret with\nlines"), "app_secret_secret"),
        ];
        for (extra, secret, needle) in cases {
            let error = load_with(config(extra.clone()), secret).unwrap_err();
            assert!(error.contains(needle), "{extra}: {error:?} should name {needle}");
            assert!(!error.contains(SECRET) && !error.contains("with\nlines"), "{error:?} quotes the secret");
        }
    }

    #[test]
    fn app_id_may_be_a_number_and_debug_redacts_the_secret() {
        let app = load_with(config(json!({"hms_app_id": 104123456})), Some(SECRET)).unwrap();
        assert_eq!(app.config.hms_app_id, "104123456");
        let shown = format!("{app:?}");
        assert!(shown.contains("<redacted>") && shown.contains("104123456"));
        assert!(!shown.contains(SECRET));
    }

    // --- OAuth ---

    fn form_field(body: &str, name: &str) -> String {
        body.split('&').find_map(|pair| pair.strip_prefix(&format!("{name}="))).unwrap().to_string()
    }

    #[test]
    fn token_request_is_a_form_encoded_client_credentials_grant() {
        let request = app().token_request();
        assert_eq!(request.url, DEFAULT_TOKEN_URL);
        assert_eq!(request.header("content-type"), Some("application/x-www-form-urlencoded"));
        let body = String::from_utf8(request.body).unwrap();
        assert_eq!(form_field(&body, "grant_type"), "client_credentials");
        assert_eq!(form_field(&body, "client_id"), "104123456");
        assert_eq!(form_field(&body, "client_secret"), SECRET);
        let odd = load_with(config(json!({"token_url": "http://127.0.0.1:1/oauth2/v3/token"})), Some("a+b/c=d&e%")).unwrap();
        let request = odd.token_request();
        assert_eq!(request.url, "http://127.0.0.1:1/oauth2/v3/token");
        assert_eq!(form_field(&String::from_utf8(request.body).unwrap(), "client_secret"), "a%2Bb%2Fc%3Dd%26e%25");
    }

    fn response(status: u16, body: &str) -> ProviderResponse {
        ProviderResponse { status, headers: vec![], body: body.as_bytes().to_vec() }
    }

    #[test]
    fn token_responses() {
        let ok = read_token_response(
            &response(200, r#"{"access_token":"CF3Xl2XV6jMK\/ZgqYSZFws9IPlg==","expires_in":3600,"token_type":"Bearer"}"#),
            NOW,
        )
        .unwrap();
        assert_eq!(ok.value, "CF3Xl2XV6jMK/ZgqYSZFws9IPlg==", "Huawei's escaped slashes are read");
        assert_eq!(ok.valid_until, NOW + 3600 - 300);
        assert_eq!(ok.renew_at, NOW + 3600 - 600, "renewed ahead, while it is still good");
        let short_lived = read_token_response(&response(200, r#"{"access_token":"t","expires_in":100}"#), NOW).unwrap();
        assert_eq!(short_lived.valid_until, NOW + 60);
        assert_eq!(short_lived.renew_at, NOW + 30);

        let transient = Outcome::Transient { retry_after: None };
        let cases: &[(u16, &str, Outcome, &str)] = &[
            (400, r#"{"error":1101,"sub_error":20152,"error_description":"invalid client"}"#, Outcome::Failed, "error 1101, sub_error 20152, invalid client"),
            (401, r#"{"error":"invalid_client"}"#, Outcome::Failed, "error invalid_client"),
            (200, r#"{"error":1102,"error_description":"invalid client_secret"}"#, Outcome::Failed, "1102"),
            (403, "<html>", Outcome::Failed, "no error code"),
            (429, "", transient, "429"),
            (500, "garbage", transient, "500"),
            (503, "{}", transient, "503"),
            (200, "{}", Outcome::Failed, "refused"),
            (200, r#"{"access_token":"a b","expires_in":10}"#, Outcome::Failed, "bearer"),
            (200, r#"{"access_token":"","expires_in":10}"#, Outcome::Failed, "bearer"),
            (200, r#"{"access_token":"t"}"#, Outcome::Failed, "expires_in"),
            (200, r#"{"access_token":"t","expires_in":0}"#, Outcome::Failed, "expires_in"),
        ];
        for (status, body, outcome, needle) in cases {
            let verdict = read_token_response(&response(*status, body), NOW).unwrap_err();
            assert_eq!(verdict.outcome, *outcome, "{status} {body}");
            assert!(verdict.reason.contains(needle), "{status} {body}: {}", verdict.reason);
        }
        let with_retry_after = ProviderResponse { status: 503, headers: vec![("retry-after".into(), "2".into())], body: vec![] };
        assert_eq!(
            read_token_response(&with_retry_after, NOW).unwrap_err().outcome,
            Outcome::Transient { retry_after: Some(Duration::from_secs(2)) }
        );
    }

    // --- outcomes ---

    fn answer(code: &str, msg: &str) -> String {
        json!({"code": code, "msg": msg, "requestId": "160209653167346065000206"}).to_string()
    }

    #[test]
    fn classify_table() {
        let transient = Outcome::Transient { retry_after: None };
        let invalid = Outcome::Refused(TOKEN_INVALID);
        let not_ours = Outcome::Refused(TOKEN_OF_ANOTHER_APP);
        let one_ok = json!({"success": 1, "failure": 0, "illegal_tokens": []}).to_string();
        let one_dead = json!({"success": 0, "failure": 1, "illegal_tokens": ["IQAAAACy0kYk"]}).to_string();
        let format_error = json!({"illegalTokens": {"tokenFormatError": ["IQAAAACy0kYk"]}, "failure": 1}).to_string();
        let no_right = json!({"illegalTokens": {"noRight": ["IQAAAACy0kYk"]}, "failure": 1}).to_string();
        let cases: Vec<(u16, String, Outcome)> = vec![
            (200, answer("80000000", "Success"), Outcome::Delivered),
            (200, json!({"code": 80000000, "msg": "Success"}).to_string(), Outcome::Delivered),
            (400, answer("80000000", "Success"), Outcome::Failed),
            (200, answer("80100000", &one_ok), Outcome::Delivered),
            (200, answer("80100000", &one_dead), invalid),
            (200, answer("80100000", &format_error), Outcome::Rejected),
            (200, answer("80100000", &no_right), not_ours),
            (200, answer("80100000", "Some tokens are invalid"), Outcome::Failed),
            (400, answer("80300007", "All the tokens are invalid"), invalid),
            (200, answer("80300007", &one_dead), invalid),
            (400, answer("80300007", &format_error), Outcome::Rejected),
            (400, answer("80300007", &no_right), not_ours),
            (400, answer("80300007", &json!({"illegalTokens": {"somethingNew": ["t"]}}).to_string()), Outcome::Failed),
            (400, answer("80300007", &json!({"illegalTokens": {"noRight": ["t"], "countryNotSupport": ["u"]}}).to_string()), Outcome::Failed),
            (400, answer("80300007", &json!({"illegalTokens": {"tokenFormatError": ["t"], "noRight": ["u"]}}).to_string()), not_ours),
            (400, answer("80100001", "Some request parameters are incorrect"), Outcome::Failed),
            (400, answer("80100003", "Incorrect message structure"), Outcome::Failed),
            (400, answer("80100004", "expired"), Outcome::Failed),
            (400, answer("80100013", "collapse_key"), Outcome::Failed),
            (400, answer("80100016", "sensitive"), Outcome::Failed),
            (403, answer("80300002", "No permission to send message to these tokens"), Outcome::Failed),
            (413, answer("80300008", "The message body size exceeds the default value"), Outcome::Failed),
            (400, answer("80300010", "The number of tokens in the message body exceeds the default value"), Outcome::Failed),
            (403, answer("80300011", "no permission for high-level messages"), Outcome::Failed),
            (401, answer("80200001", "Oauth authentication error"), Outcome::StaleCredentials),
            (401, answer("80200003", "Oauth Token expired"), Outcome::StaleCredentials),
            (200, answer("80200003", "Oauth Token expired"), Outcome::StaleCredentials),
            (401, String::new(), Outcome::StaleCredentials),
            (200, answer("80100017", "flow control"), transient),
            (400, answer("80300009", "flow control"), transient),
            (500, answer("80600003", "Request OAuth service failed"), transient),
            (500, answer("81000001", "System inner error"), transient),
            (200, answer("81000001", "System inner error"), transient),
            (503, String::new(), transient),
            (502, "<html>".to_string(), transient),
            (429, answer("80300007", "All the tokens are invalid"), transient),
            (400, answer("81234567", "new"), transient),
            (400, answer("80399999", "new"), Outcome::Failed),
            (200, answer("80999999", "new"), Outcome::Failed),
            (200, String::new(), Outcome::Failed),
            (200, "{}".to_string(), Outcome::Failed),
            (404, "not found".to_string(), Outcome::Failed),
            (403, String::new(), Outcome::Failed),
        ];
        for (status, body, outcome) in cases {
            assert_eq!(classify(&response(status, &body)).outcome, outcome, "{status} {body}");
        }
    }

    #[test]
    fn every_listed_code_is_classified_as_listed_and_only_80300007_refuses() {
        for (code, meaning, what) in RESULT_CODES {
            let verdict = classify(&response(200, &answer(code, "x")));
            let expected = match meaning {
                Meaning::Success => Outcome::Delivered,
                Meaning::SomeTokensFailed | Meaning::OurRequest => Outcome::Failed,
                Meaning::TokensInvalid => Outcome::Refused(TOKEN_INVALID),
                Meaning::OAuth => Outcome::StaleCredentials,
                Meaning::Busy => Outcome::Transient { retry_after: None },
            };
            assert_eq!(verdict.outcome, expected, "{code}");
            if expected != Outcome::Delivered {
                assert!(verdict.reason.contains(code) && verdict.reason.contains(what), "{code}: {}", verdict.reason);
            }
        }
    }

    #[test]
    fn reasons_name_the_code_and_never_a_token() {
        let token = "IQAAAACy0kYkAACNf2N4mS8iZ0xJX1dlbXz6XvZ7uFRu3e2a";
        let msg = json!({"success": 0, "failure": 1, "illegal_tokens": [token]}).to_string();
        let reason = classify(&response(200, &answer("80300007", &msg))).reason;
        assert!(reason.contains("80300007") && reason.contains("illegal_tokens") && !reason.contains(token), "{reason}");
        let echoed = format!("Illegal token {token} in message, badge addNum value ranges from 1 to 99");
        let reason = classify(&response(400, &answer("80100001", &echoed))).reason;
        assert!(reason.contains("badge addNum value ranges from 1 to 99") && !reason.contains("IQAAAACy0kYk"), "{reason}");
        let reason = classify(&response(400, &answer("80555555", token))).reason;
        assert!(reason.contains("unknown") && !reason.contains("IQAAAACy0kYk"), "{reason}");
    }

    #[test]
    fn classify_honours_retry_after() {
        let r = ProviderResponse {
            status: 503,
            headers: vec![("retry-after".into(), "1".into())],
            body: answer("80100017", "flow control").into_bytes(),
        };
        assert_eq!(classify(&r).outcome, Outcome::Transient { retry_after: Some(Duration::from_secs(1)) });
    }

    proptest! {
        #[test]
        fn garbage_never_panics(status in 0u16..1000, body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let r = ProviderResponse { status, headers: vec![], body };
            let _ = classify(&r);
            let _ = read_token_response(&r, NOW);
        }

        #[test]
        fn json_shaped_garbage_never_panics_nor_refuses_without_a_code(
            status in 0u16..1000,
            body in "\\{(\"(code|msg|requestId|access_token|expires_in|error|sub_error)\":(\"[0-9a-zA-Z{}\\[\\]\":,\\\\]{0,30}\"|[0-9-]{1,12}|null|\\[\\]|\\{\\}),?){0,4}\\}"
        ) {
            let r = response(status, &body);
            let verdict = classify(&r);
            if matches!(verdict.outcome, Outcome::Rejected | Outcome::Refused(_)) {
                let code = SendAnswer::parse(body.as_bytes()).code;
                prop_assert!(matches!(code.as_deref(), Some("80300007" | "80100000")), "{} refused the device", body);
            }
            let _ = read_token_response(&r, NOW);
        }
    }
}
