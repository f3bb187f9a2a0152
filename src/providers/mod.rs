//! The push providers, each behind the same small interface.
//!
//! A provider is pure: it builds the request for one device (`prepare`),
//! mints or requests its credential (`mint`, `finish_exchange`), attaches it
//! (`authorize`) and reads the provider's answer (`classify`). The dispatcher
//! (`crate::dispatch`) does all I/O, retries and caching around these.

pub mod apns;
pub mod fcm;
mod fit;
pub mod hms;
mod json;
pub mod jwt;
pub mod style;
pub mod unifiedpush;
pub mod webpush;

use std::fmt;
use std::time::Duration;

use crate::config::AppConfig;
use crate::notify::{Device, Notification};

/// Where an app's credentials come from (`wrangler secret`, `.dev.vars`).
pub trait Secrets {
    fn secret(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> Secrets for F {
    fn secret(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// Read a named secret or say which one is missing.
pub fn require_secret(secrets: &dyn Secrets, field: &str, name: &str) -> Result<String, String> {
    secrets
        .secret(name)
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| format!("{field}: the secret {name:?} is not set (wrangler secret put {name})"))
}

/// Seconds since the Unix epoch: time is passed in, never read here, so the
/// core runs the same on the host and in wasm.
pub type UnixSecs = u64;

/// An HTTP request to a provider, built once and sent as is on every try.
#[derive(Clone, PartialEq, Eq)]
pub struct OutRequest {
    pub url: String,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the answer's body is read (up to the transport's cap).
    pub answer_body: AnswerBody,
}

/// What the sender does with the body of a provider's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerBody {
    /// Read, up to the transport's cap: a token or an error's reason is in it.
    Read,
    /// Cancelled unread: the verdict is in the status (WebPush, UnifiedPush),
    /// so an endpoint cannot make us download anything.
    Cancel,
}

impl OutRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// `text`, a network error's words, fit for a log: workerd's errors may
    /// quote the request's URL (`Fetch API cannot load: <url>`, `Invalid URL:
    /// <url>`), whose path is the whole pushkey for WebPush and UnifiedPush
    /// and holds the device token for APNs. This request's URL, and any other
    /// URL in the text (it may be quoted as the runtime re-serialised it),
    /// is cut to its origin.
    pub fn redact(&self, text: &str) -> String {
        let text = if self.url.is_empty() { text.to_string() } else { text.replace(&self.url, url_origin(&self.url)) };
        urls_cut_to_origins(&text)
    }

    /// Replace or add a header.
    pub fn set_header(&mut self, name: &str, value: String) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_ascii_lowercase(), value));
    }
}

/// The origin of an absolute URL (`scheme://host[:port]`, without
/// userinfo); the whole text when it has no `://`.
pub fn url_origin(url: &str) -> &str {
    let Some(scheme_end) = url.find("://") else { return url };
    let after = scheme_end.saturating_add(3);
    let authority_end = url.get(after..).and_then(|rest| rest.find(['/', '?', '#'])).map_or(url.len(), |i| after + i);
    url.get(..authority_end).unwrap_or(url)
}

/// Every `scheme://…` in `text` cut to its origin: what follows the
/// authority, up to a space or a quote, is left out. Userinfo goes too.
fn urls_cut_to_origins(text: &str) -> String {
    let is_scheme_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.');
    let ends_url = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, from_sep) = rest.split_at(at);
        let scheme_start =
            before.char_indices().rev().take_while(|(_, c)| is_scheme_char(*c)).last().map_or(before.len(), |(i, _)| i);
        let (kept, scheme) = before.split_at(scheme_start);
        out.push_str(kept);
        let after_sep = from_sep.get(3..).unwrap_or_default();
        let url_end = after_sep.find(ends_url).unwrap_or(after_sep.len());
        let (url_rest, tail) = after_sep.split_at(url_end);
        let authority = url_rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        if scheme.is_empty() {
            out.push_str("://");
        } else {
            out.push_str(scheme);
            out.push_str("://");
        }
        out.push_str(host);
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// Requests carry credentials and pushkeys: their `Debug` shows the URL's
/// origin and header names only.
impl fmt::Debug for OutRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("OutRequest")
            .field("origin", &url_origin(&self.url))
            .field("headers", &names)
            .field("body_len", &self.body.len())
            .field("answer_body", &self.answer_body)
            .finish()
    }
}

/// What a provider answered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProviderResponse {
    pub status: u16,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The most a `Retry-After` may make us wait inside one request.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3);

impl ProviderResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// `Retry-After` in seconds (HTTP dates are ignored), capped.
    pub fn retry_after(&self) -> Option<Duration> {
        Some(Duration::from_secs(self.retry_after_secs()?).min(RETRY_AFTER_CAP))
    }

    /// `Retry-After` in seconds as the provider said it (HTTP dates are ignored).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.header("retry-after")?.trim().parse().ok()
    }
}

/// How one send ended, before retries are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The provider took it.
    Delivered,
    /// The pushkey is dead: list it in `rejected`.
    Rejected,
    /// The provider refused the device with an answer that a wrong app
    /// configuration also gets for every device (APNs `BadDeviceToken`,
    /// `DeviceTokenNotForTopic`). The dispatcher makes it `Rejected` only
    /// with evidence that the app's configuration is right, else `Failed`.
    Refused(Refusal),
    /// Our token was refused as stale: mint a new one and retry once.
    StaleCredentials,
    /// 429, 5xx, timeouts, network errors: retry shortly, then 502.
    Transient { retry_after: Option<Duration> },
    /// Our side is wrong (credentials, config, payload): 502 without retry.
    Failed,
}

/// Why a device was `Refused`, and what the operator checks when every
/// device of an app is refused so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The provider's word for it, e.g. `DeviceTokenNotForTopic`.
    pub cause: &'static str,
    /// The settings that produce it for every device, e.g. `topic`.
    pub check: &'static str,
}

/// An outcome and a short reason for the log (never a secret or a whole pushkey).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub reason: String,
}

impl Verdict {
    pub fn new(outcome: Outcome, reason: impl Into<String>) -> Self {
        Self { outcome, reason: reason.into() }
    }
    pub fn delivered() -> Self {
        Self::new(Outcome::Delivered, "")
    }
    pub fn rejected(reason: impl Into<String>) -> Self {
        Self::new(Outcome::Rejected, reason)
    }
    pub fn failed(reason: impl Into<String>) -> Self {
        Self::new(Outcome::Failed, reason)
    }
    pub fn transient(reason: impl Into<String>) -> Self {
        Self::new(Outcome::Transient { retry_after: None }, reason)
    }
}

/// "Rejected: only for evidence about the device ... e.g. a `default_payload`
/// that is not an object."
impl From<crate::notify::DefaultPayloadNotAnObject> for Verdict {
    fn from(e: crate::notify::DefaultPayloadNotAnObject) -> Self {
        Verdict::rejected(e.to_string())
    }
}

/// A device's request, ready but for its credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub request: OutRequest,
    /// The cache key of the credential this request needs (`None`: no auth).
    /// Requests with the same key share one token.
    pub token_key: Option<String>,
}

/// A credential, when to renew it and until when it may be used.
#[derive(Clone, PartialEq, Eq)]
pub struct MintedToken {
    pub value: String,
    /// From this second on, one caller renews the token while the others
    /// keep using it (at most `valid_until`).
    pub renew_at: UnixSecs,
    /// Use until this second (exclusive).
    pub valid_until: UnixSecs,
}

impl fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MintedToken(<redacted>, renew_at={}, valid_until={})", self.renew_at, self.valid_until)
    }
}

/// How a credential is obtained, one step at a time.
#[derive(Debug)]
pub enum Mint {
    /// Done.
    Ready(MintedToken),
    /// A JWT to sign (by the transport's signer); then call `App::signed`.
    Sign(jwt::JwtToSign),
    /// Exchanged over HTTP (FCM and HMS OAuth): send this, then `finish_exchange`.
    Exchange(OutRequest),
}

/// A configured app with its credentials loaded.
pub enum App {
    Apns(apns::ApnsApp),
    Fcm(fcm::FcmApp),
    WebPush(webpush::WebPushApp),
    UnifiedPush(unifiedpush::UnifiedPushApp),
    Hms(hms::HmsApp),
}

impl App {
    /// Build an app from its config entry, reading and parsing its secrets.
    /// The error names the field or secret at fault.
    pub fn load(config: AppConfig, secrets: &dyn Secrets) -> Result<Self, String> {
        Ok(match config {
            AppConfig::Apns(c) => App::Apns(apns::ApnsApp::new(c, secrets)?),
            AppConfig::Fcm(c) => App::Fcm(fcm::FcmApp::new(c, secrets)?),
            AppConfig::Webpush(c) => App::WebPush(webpush::WebPushApp::new(c, secrets)?),
            AppConfig::Unifiedpush(c) => App::UnifiedPush(unifiedpush::UnifiedPushApp::new(c)?),
            AppConfig::Hms(c) => App::Hms(hms::HmsApp::new(c, secrets)?),
        })
    }

    /// Settings that load but probably do not do what the operator means,
    /// naming the field (for `edgepush-config check-config`).
    pub fn warnings(&self) -> Vec<String> {
        match self {
            App::Apns(apns) => apns.warnings(),
            _ => Vec::new(),
        }
    }

    /// The provider's name, for logs and metrics.
    pub fn provider(&self) -> &'static str {
        match self {
            App::Apns(_) => "apns",
            App::Fcm(_) => "fcm",
            App::WebPush(_) => "webpush",
            App::UnifiedPush(_) => "unifiedpush",
            App::Hms(_) => "hms",
        }
    }

    /// The request for one device, or an outcome decided without sending
    /// (e.g. an undecodable pushkey is `Rejected`).
    pub fn prepare(&self, n: &Notification, d: &Device, now: UnixSecs) -> Result<Prepared, Verdict> {
        match self {
            App::Apns(a) => a.prepare(n, d, now),
            App::Fcm(a) => a.prepare(n, d, now),
            App::WebPush(a) => a.prepare(n, d, now),
            App::UnifiedPush(a) => a.prepare(n, d, now),
            App::Hms(a) => a.prepare(n, d, now),
        }
    }

    /// Whether this app's credentials may be shared through the `TOKENS` KV
    /// namespace. APNs keys, FCM service accounts and HMS app ids are named
    /// by `APPS`, so their number is the operator's; VAPID tokens are one per
    /// push service origin, which devices choose, so they stay in isolate
    /// memory and no device can spend KV writes.
    pub fn shares_tokens_through_kv(&self) -> bool {
        matches!(self, App::Apns(_) | App::Fcm(_) | App::Hms(_))
    }

    /// The first step of minting the credential named by `prepared.token_key`:
    /// the JWT to sign, or (HMS) the token request to send.
    pub fn mint(&self, prepared: &Prepared, now: UnixSecs) -> Result<Mint, Verdict> {
        match self {
            App::Apns(a) => a.provider_token(now).map(Mint::Sign),
            App::Fcm(a) => a.assertion_to_sign(now).map(Mint::Sign),
            App::WebPush(a) => a.vapid_to_sign(prepared, now).map(Mint::Sign),
            App::UnifiedPush(_) => Err(Verdict::failed("unifiedpush sends need no credential")),
            App::Hms(a) => Ok(Mint::Exchange(a.token_request())),
        }
    }

    /// The step after the JWT of `mint` was signed.
    pub fn signed(&self, jwt: String, now: UnixSecs) -> Result<Mint, Verdict> {
        match self {
            App::Apns(a) => Ok(Mint::Ready(a.token_from(jwt, now))),
            App::Fcm(a) => Ok(Mint::Exchange(a.token_request_with(&jwt))),
            App::WebPush(a) => Ok(Mint::Ready(a.token_from(jwt, now))),
            App::UnifiedPush(_) => Err(Verdict::failed("unifiedpush sends need no credential")),
            App::Hms(_) => Err(Verdict::failed("hms credentials are not signed")),
        }
    }

    /// Read the answer of a `Mint::Exchange` request.
    pub fn finish_exchange(&self, response: &ProviderResponse, now: UnixSecs) -> Result<MintedToken, Verdict> {
        match self {
            App::Fcm(a) => a.read_token_response(response, now),
            App::Hms(_) => hms::read_token_response(response, now),
            _ => Err(Verdict::failed("this provider has no token exchange")),
        }
    }

    /// The request with its credential attached.
    pub fn authorize(&self, request: &OutRequest, token: &str) -> OutRequest {
        let mut out = request.clone();
        match self {
            App::Apns(_) => out.set_header("authorization", format!("bearer {token}")),
            App::Fcm(_) | App::Hms(_) => out.set_header("authorization", format!("Bearer {token}")),
            App::WebPush(a) => out.set_header("authorization", a.authorization(token)),
            App::UnifiedPush(_) => {}
        }
        out
    }

    /// What the provider's answer to `request` means for this device.
    pub fn classify(&self, request: &OutRequest, response: &ProviderResponse, now: UnixSecs) -> Verdict {
        match self {
            App::Apns(_) => apns::classify(response),
            App::Fcm(_) => fcm::classify(response),
            App::WebPush(_) => webpush::classify(response),
            App::UnifiedPush(a) => a.classify(request, response, now),
            App::Hms(_) => hms::classify(response),
        }
    }
}

/// A PEM as stored in a secret. `.dev.vars` and some CI systems keep a PEM
/// on one line with literal `\n`; both forms are accepted.
pub fn normalize_pem(raw: &str) -> String {
    raw.trim().replace("\\n", "\n")
}

/// The most of a provider's own words (a status, an error code, a
/// description, a message) that a verdict's reason, and so a log line,
/// carries.
pub const MAX_PROVIDER_TEXT_BYTES: usize = 160;

/// A provider's own words for a verdict's reason: at most
/// [`MAX_PROVIDER_TEXT_BYTES`], cut on a character boundary, so an answer
/// cannot make a log line long.
pub fn provider_text(text: &str) -> &str {
    fit::cut_utf8(text, MAX_PROVIDER_TEXT_BYTES)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_capped_and_tolerant() {
        let with = |v: &str| ProviderResponse { status: 429, headers: vec![("retry-after".into(), v.into())], body: vec![] };
        assert_eq!(with("1").retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(with("3600").retry_after(), Some(RETRY_AFTER_CAP));
        assert_eq!(with("Wed, 21 Oct 2015 07:28:00 GMT").retry_after(), None);
        assert_eq!(ProviderResponse::default().retry_after(), None);
    }

    #[test]
    fn out_request_debug_hides_header_values() {
        let mut r = OutRequest { url: "https://x".into(), headers: vec![], body: vec![], answer_body: AnswerBody::Read };
        r.set_header("Authorization", "bearer SECRET".into());
        assert_eq!(r.header("authorization"), Some("bearer SECRET"));
        assert!(!format!("{r:?}").contains("SECRET"));
        r.url = "https://push.example.net/wpush/v2/SECRETPATH".into();
        let shown = format!("{r:?}");
        assert!(shown.contains("https://push.example.net") && !shown.contains("SECRETPATH"), "{shown}");
    }

    #[test]
    fn network_errors_are_redacted_to_the_origin() {
        let request = |url: &str| OutRequest { url: url.into(), headers: vec![], body: vec![], answer_body: AnswerBody::Cancel };
        let up = request("https://ntfy.example.net/upSECRETtopic?up=1");
        assert_eq!(
            up.redact("TypeError: Fetch API cannot load: https://ntfy.example.net/upSECRETtopic?up=1"),
            "TypeError: Fetch API cannot load: https://ntfy.example.net"
        );
        let apns = request("https://api.push.apple.com/3/device/0123abcdSECRET");
        assert_eq!(apns.redact("Invalid URL: https://api.push.apple.com/3/device/0123abcdSECRET."), "Invalid URL: https://api.push.apple.com.");
        // As the runtime re-serialised it, quoted, twice, with userinfo.
        let text = up.redact(r#"cannot load "HTTPS://NTFY.example.net:443/upSECRETtopic" (was https://u:p@ntfy.example.net/upSECRETtopic#x) then"#);
        // (What follows an authority is dropped up to a space or a quote.)
        assert_eq!(text, r#"cannot load "HTTPS://NTFY.example.net:443" (was https://ntfy.example.net then"#);
        // Errors without a URL are left alone, and odd text does not panic.
        assert_eq!(up.redact("Network connection lost."), "Network connection lost.");
        for odd in ["://", "a://", "é://ü/x", "x:///y", "https://", "://x/y z"] {
            assert!(!up.redact(odd).contains("/y"), "{odd}: {}", up.redact(odd));
        }
        assert_eq!(request("").redact("text"), "text");
        assert_eq!(url_origin("http://127.0.0.1:9/x"), "http://127.0.0.1:9");
        assert_eq!(url_origin("no url"), "no url");
    }
}

