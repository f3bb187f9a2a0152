//! Apple Push Notification service with token auth (docs/design.md §7
//! "APNs"). Pure: the dispatcher sends what `prepare` builds, with the token
//! `mint` signs, and hands the answer to `classify`.

use std::fmt;
use std::rc::Rc;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::fit::{fit_blaming_default_payload, Fit};
use super::json::deep_merge;
use super::jwt::{JwtKey, JwtToSign};
use super::style::{collapse_id, Style};
use super::{
    AnswerBody, MintedToken, OutRequest, Outcome, Prepared, ProviderResponse, Refusal, Secrets, UnixSecs, Verdict,
};
use crate::config::{ApnsConfig, ApnsPlatform};
use crate::notify::{Counts, Device, Kind, Notification, Prio};

const PRODUCTION_ORIGIN: &str = "https://api.push.apple.com";
const SANDBOX_ORIGIN: &str = "https://api.sandbox.push.apple.com";

/// "The maximum size of a notification payload is 4 KB (4096 bytes)."
pub const MAX_PAYLOAD_BYTES: usize = 4096;

/// Provider tokens are shared by every isolate for one window of this length.
pub const TOKEN_WINDOW_SECS: u64 = 1800;

/// The oldest a provider token is used: past its window only while one
/// caller renews it. Apple refuses tokens older than an hour; ten minutes
/// are left for clocks that disagree.
pub const TOKEN_MAX_AGE_SECS: u64 = 3000;

/// `apns-push-type` of pushes the user sees: the default.
const ALERT: &str = "alert";
/// `apns-push-type` of pushes that wake the app and show nothing.
const BACKGROUND: &str = "background";

/// Standard base64 as Sygnal decodes it: padding optional, and (like
/// Python's `b64decode`) non-zero trailing bits tolerated.
const PUSHKEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// An APNs app with its signing key loaded.
pub struct ApnsApp {
    pub config: ApnsConfig,
    /// The `.p8` signing key; its `Debug` never shows it.
    key: Rc<JwtKey>,
}

impl fmt::Debug for ApnsApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApnsApp").field("config", &self.config).field("key", &self.key).finish()
    }
}

impl ApnsApp {
    /// Load the `.p8` key named by `key_secret`. Errors name the field and
    /// never carry key material.
    pub fn new(config: ApnsConfig, secrets: &dyn Secrets) -> Result<Self, String> {
        for (field, value) in [("topic", &config.topic), ("team_id", &config.team_id), ("key_id", &config.key_id)] {
            if value.trim().is_empty() {
                return Err(format!("{field}: must not be empty"));
            }
        }
        let pem = super::normalize_pem(&super::require_secret(secrets, "key_secret", &config.key_secret)?);
        let key = JwtKey::es256_from_pkcs8_pem(&pem).map_err(|e| {
            format!(
                "key_secret: the secret {:?} is not a PKCS#8 P-256 private key (an APNs .p8 PEM): {e}",
                config.key_secret
            )
        })?;
        Ok(Self { config, key: Rc::new(key) })
    }

    /// The request for one device, or a verdict reached without sending.
    pub fn prepare(&self, n: &Notification, d: &Device, now: UnixSecs) -> Result<Prepared, Verdict> {
        let token = device_token(d, self.config.convert_device_token_to_hex)?;
        let style = Style::new(d, self.config.send_badge_counts, self.config.collapse_per_room);
        let body = payload(n, d, style, self.push_type())?;
        let mut headers = vec![
            ("apns-topic".to_string(), self.config.topic.clone()),
            ("apns-push-type".to_string(), body.push_type.to_string()),
            ("apns-priority".to_string(), priority(n.prio, body.push_type, body.shows).to_string()),
        ];
        if let Some(room_id) = style.collapse_room(n).filter(|_| body.push_type == ALERT) {
            headers.push(("apns-collapse-id".to_string(), collapse_id(room_id)));
        }
        if let Some(ttl) = self.config.ttl {
            headers.push(("apns-expiration".to_string(), now.saturating_add(ttl).to_string()));
        }
        headers.push(("content-type".to_string(), "application/json".to_string()));
        Ok(Prepared {
            request: OutRequest {
                url: self.url(self.first_environment(), &token),
                headers,
                body: body.bytes,
                answer_body: AnswerBody::Read,
            },
            // The key's fingerprint too: two apps may name the same key id
            // with different keys (a typo, a rotation), never sharing a token.
            token_key: Some(format!("apns:{}:{}:{}", self.config.team_id, self.config.key_id, self.key.id())),
        })
    }

    /// The provider token for the window `now` falls in: ES256, `kid` =
    /// key_id, `iss` = team_id, `iat` = the window's start. APNs ignores
    /// `exp`, so there is none; `valid_until` ends the token's use instead.
    /// Signed in process (jwt-compact): what the tests verify tokens with;
    /// the dispatcher goes through `App::mint` and the transport's signer.
    #[cfg(test)]
    pub fn mint(&self, now: UnixSecs) -> Result<MintedToken, Verdict> {
        Ok(self.token_from(self.provider_token(now)?.sign_in_process()?, now))
    }

    /// The provider token of `mint`, to be signed by the transport's signer.
    pub fn provider_token(&self, now: UnixSecs) -> Result<JwtToSign, Verdict> {
        let claims = ProviderClaims { iss: &self.config.team_id, iat: TokenWindow::containing(now).start };
        JwtToSign::new(self.key.clone(), Some(&self.config.key_id), None, &claims)
    }

    /// A signed provider token, renewed at the end of its window and used
    /// meanwhile (while one caller renews it) for at most `TOKEN_MAX_AGE_SECS`.
    pub fn token_from(&self, jwt: String, now: UnixSecs) -> MintedToken {
        let window = TokenWindow::containing(now);
        MintedToken { value: jwt, renew_at: window.end, valid_until: window.start.saturating_add(TOKEN_MAX_AGE_SECS) }
    }

    /// Whether each device's environment is found by trying (`platform: "auto"`).
    pub fn is_auto(&self) -> bool {
        self.config.platform == ApnsPlatform::Auto
    }

    /// The environment `prepare`'s request goes to.
    pub fn first_environment(&self) -> Environment {
        match self.config.platform {
            ApnsPlatform::Production | ApnsPlatform::Auto => Environment::Production,
            ApnsPlatform::Sandbox => Environment::Sandbox,
        }
    }

    /// `url` replaces both origins, `sandbox_url` the sandbox's.
    pub fn origin_of(&self, environment: Environment) -> &str {
        let url = self.config.url.as_ref().map(|o| o.as_str());
        match environment {
            Environment::Production => url.unwrap_or(PRODUCTION_ORIGIN),
            Environment::Sandbox => self.config.sandbox_url.as_ref().map(|o| o.as_str()).or(url).unwrap_or(SANDBOX_ORIGIN),
        }
    }

    /// Where a device token is sent in `environment`.
    fn url(&self, environment: Environment, token: &str) -> String {
        format!("{}/3/device/{token}", self.origin_of(environment))
    }

    /// A request `prepare` built for `d`, sent to `environment` instead: the
    /// URL built anew from that environment's origin and the device's token,
    /// the same headers and body.
    pub fn in_environment(&self, request: &OutRequest, environment: Environment, d: &Device) -> Result<OutRequest, Verdict> {
        let token = device_token(d, self.config.convert_device_token_to_hex)?;
        Ok(OutRequest { url: self.url(environment, &token), ..request.clone() })
    }

    /// Settings that load but probably do not do what the operator means.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let (ApnsPlatform::Auto, Some(url), None) = (self.config.platform, &self.config.url, &self.config.sandbox_url) {
            warnings.push(format!(
                "url: with platform \"auto\" and no sandbox_url, both environments are {}: a device is tried twice at \
                 the same host; set sandbox_url",
                url.as_str()
            ));
        }
        warnings
    }

    fn push_type(&self) -> &str {
        self.config.push_type.as_deref().unwrap_or(ALERT)
    }
}

/// Where a device token is valid: Apple keeps two separate services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Production,
    Sandbox,
}

impl Environment {
    pub fn other(self) -> Self {
        match self {
            Self::Production => Self::Sandbox,
            Self::Sandbox => Self::Production,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Production => "production",
            Self::Sandbox => "sandbox",
        }
    }
}

/// APNs: "The specified device token is invalid. Verify that the request
/// contains a valid token and that the token matches the environment." A
/// wrong `platform` gets it for every device, and so does a wrong
/// `convert_device_token_to_hex`.
pub const BAD_DEVICE_TOKEN: Refusal =
    Refusal { cause: "BadDeviceToken", check: "platform (production, sandbox or auto) and convert_device_token_to_hex" };

/// APNs: "The device token doesn't match the specified topic." A wrong
/// `topic` gets it for every device.
pub const DEVICE_TOKEN_NOT_FOR_TOPIC: Refusal = Refusal { cause: "DeviceTokenNotForTopic", check: "topic" };

/// Without `convert_device_token_to_hex`, a pushkey that cannot be a hex
/// token: what every device of an app registering base64 tokens looks like
/// when the setting is wrongly off.
pub const PUSHKEY_NOT_A_TOKEN: Refusal =
    Refusal { cause: "pushkey not a device token", check: "convert_device_token_to_hex" };

/// The provider token's own claims (the standard `iat` is set here as an
/// integer so no clock type is needed).
#[derive(Serialize)]
struct ProviderClaims<'a> {
    iss: &'a str,
    iat: UnixSecs,
}

/// The span one provider token is used for.
///
/// docs/design.md §7.1 "Provider token": `iat` is floored to the last
/// 30-minute mark and the token renewed at the next mark, so Apple sees one
/// token per key per 30 minutes. Every isolate computes the same window, so
/// they sign the same `iat` and share one token, which keeps APNs from
/// answering `TooManyProviderTokenUpdates`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenWindow {
    /// The `iat` claim: the last 30-minute mark at or before `now`.
    pub start: UnixSecs,
    /// The next mark: the token is used until then (exclusive).
    pub end: UnixSecs,
}

impl TokenWindow {
    pub fn containing(now: UnixSecs) -> Self {
        let start = now - now % TOKEN_WINDOW_SECS;
        Self { start, end: start.saturating_add(TOKEN_WINDOW_SECS) }
    }
}

/// `apns-priority`: 10 only for a high-priority push the user sees. Apple:
/// priority 10 notifications "must trigger an alert, sound, or badge on the
/// target device", and background pushes must be sent at 5. Other push types
/// (`voip`, …) keep 10 for high-priority pushes: a ring shows no alert.
fn priority(prio: Prio, push_type: &str, shows: bool) -> u8 {
    let urgent = prio == Prio::High
        && match push_type {
            BACKGROUND => false,
            ALERT => shows,
            _ => true,
        };
    if urgent {
        10
    } else {
        5
    }
}

/// The token in the URL path.
///
/// docs/design.md §7.2 "Request" (device token): with
/// `convert_device_token_to_hex` (default true, as Sygnal), the pushkey is
/// standard base64 (padding optional) and is sent as lowercase hex; a pushkey
/// that does not decode, or decodes to nothing, is `Rejected` without a send.
/// Without it, the pushkey is sent as is: an empty one is `Rejected`; one
/// that could change the URL (not only letters, digits, `-`, `.`, `_`, `~`,
/// or `.` or `..`) is `Refused` (base64 pushkeys under a wrongly unset flag
/// look so).
fn device_token(d: &Device, convert_to_hex: bool) -> Result<String, Verdict> {
    let pushkey = d.pushkey.as_str();
    if convert_to_hex {
        let bytes = PUSHKEY_BASE64
            .decode(pushkey)
            .map_err(|_| Verdict::rejected(format!("pushkey {} is not base64", d.pushkey.short())))?;
        if bytes.is_empty() {
            return Err(Verdict::rejected("pushkey is empty"));
        }
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    } else {
        let path_safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~');
        if pushkey.is_empty() {
            return Err(Verdict::rejected("pushkey is empty"));
        }
        if pushkey == "." || pushkey == ".." || !pushkey.chars().all(path_safe) {
            return Err(Verdict::new(
                Outcome::Refused(PUSHKEY_NOT_A_TOKEN),
                format!("pushkey {} is not usable as an APNs device token", d.pushkey.short()),
            ));
        }
        Ok(pushkey.to_string())
    }
}

/// A payload and what the headers say of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body<'a> {
    /// The JSON, at most [`MAX_PAYLOAD_BYTES`].
    pub bytes: Vec<u8>,
    /// `apns-push-type`: the app's, or `background` for a wake.
    pub push_type: &'a str,
    /// `aps` holds an alert, a sound or a badge: something the user sees.
    pub shows: bool,
}

/// The JSON body for one device, at most [`MAX_PAYLOAD_BYTES`] serialized.
///
/// - badge-only: `{"aps": {"badge": N}}` alone; merging `default_payload` would
///   show a ghost alert.
/// - no event and counts off: a background wake, `{"aps": {"content-available":
///   1}}` alone (Apple: a background push's `aps` holds nothing that shows).
/// - event_id_only: the device's `default_payload` verbatim at the root, plus
///   `room_id`, `event_id`, `unread_count` and `missed_calls`.
/// - full: Sygnal's `aps.alert` `loc-key`/`loc-args`, `badge`, `sound`, deep-merged
///   over `default_payload`, plus `room_id` and `event_id`.
///
/// With counts off no count goes anywhere. An app whose `push_type` is
/// `background` sends background pushes only: their `aps` is
/// `{"content-available": 1}` and counts go as `unread_count` / `missed_calls`.
///
/// A `default_payload` that is not an object, or too big for any payload, is
/// the device's own unusable data: `Rejected` (the first whatever the kind, as
/// Sygnal). A push that would have nothing to carry needs no send: `Err` with
/// `Delivered`.
pub fn payload<'a>(n: &Notification, d: &Device, style: Style, app_push_type: &'a str) -> Result<Body<'a>, Verdict> {
    let default_payload = d.default_payload().map_err(Verdict::from)?;
    let counts = style.counts(n);
    let background_app = app_push_type == BACKGROUND;
    let shape = match n.kind_for(d) {
        // Only an app's own topic takes background pushes; a `voip` or other
        // push without a call or a count would only be refused or penalised.
        Kind::BadgeOnly if !style.counts && (background_app || app_push_type == ALERT) => Shape::Wake,
        Kind::BadgeOnly if !style.counts => {
            return Err(Verdict::new(Outcome::Delivered, "nothing to send: no event, and counts are off"))
        }
        Kind::BadgeOnly if background_app => Shape::CountsOnly,
        Kind::BadgeOnly => Shape::BadgeOnly,
        Kind::EventIdOnly => Shape::EventIdOnly,
        // Sygnal: a notification that says nothing about its event (no
        // `type`, as in clients' own test pushes) gets the event_id_only body.
        Kind::Full if n.event_type.is_none() => Shape::EventIdOnly,
        Kind::Full => Shape::Full(full_fields(n, d, counts).ok_or_else(|| {
            Verdict::new(Outcome::Delivered, "nothing to show: no alert and no counts")
        })?),
    };
    let push_type = if matches!(shape, Shape::Wake) { BACKGROUND } else { app_push_type };
    let build = |default_payload: Option<&Map<String, Value>>| {
        let mut payload = shape.payload(n, counts, default_payload);
        if push_type == BACKGROUND {
            if let Value::Object(root) = &mut payload {
                root.insert("aps".into(), json!({ "content-available": 1 }));
            }
        }
        payload
    };
    let unbounded = build(default_payload);
    let shows = push_type != BACKGROUND && shows_something(&unbounded);
    // The first fit is of the payload just built (with `default_payload`);
    // only a payload too big for it is built again without.
    let first = std::cell::Cell::new(Some(unbounded));
    let bytes = fit_blaming_default_payload(
        default_payload,
        |default_payload| {
            let unbounded = first.take().unwrap_or_else(|| build(default_payload));
            Fit { max_bytes: MAX_PAYLOAD_BYTES, texts: alert_texts(&unbounded), droppable: &[] }.apply(unbounded)
        },
        "an APNs payload (4096 bytes)",
    )?;
    Ok(Body { bytes, push_type, shows })
}

/// Which payload a device gets; the full one with our own fields ready.
enum Shape {
    BadgeOnly,
    /// A background app's badge-only push: the counts as custom keys.
    CountsOnly,
    /// No event and counts off: `aps` alone, set with the push type.
    Wake,
    EventIdOnly,
    /// `aps`, `room_id` and `event_id`, to merge over `default_payload`.
    Full(Map<String, Value>),
}

impl Shape {
    fn payload(&self, n: &Notification, counts: Counts, default_payload: Option<&Map<String, Value>>) -> Value {
        match self {
            Self::BadgeOnly => json!({ "aps": { "badge": counts.badge() } }),
            Self::CountsOnly => Value::Object(count_keys(Map::new(), counts)),
            Self::Wake => json!({}),
            Self::EventIdOnly => event_id_only_payload(n, counts, default_payload),
            Self::Full(ours) => {
                deep_merge(Value::Object(default_payload.cloned().unwrap_or_default()), Value::Object(ours.clone()))
            }
        }
    }
}

/// Apple's test for priority 10: the push triggers "an alert, sound, or badge".
fn shows_something(payload: &Value) -> bool {
    payload
        .get("aps")
        .and_then(Value::as_object)
        .is_some_and(|aps| ["alert", "sound", "badge"].iter().any(|key| aps.contains_key(*key)))
}

fn event_id_only_payload(n: &Notification, counts: Counts, default_payload: Option<&Map<String, Value>>) -> Value {
    let mut payload = default_payload.cloned().unwrap_or_default();
    if let Some(room_id) = &n.room_id {
        payload.insert("room_id".into(), room_id.as_str().into());
    }
    if let Some(event_id) = &n.event_id {
        payload.insert("event_id".into(), event_id.as_str().into());
    }
    Value::Object(count_keys(payload, counts))
}

/// `unread_count` and `missed_calls`, as integers, for those sent.
fn count_keys(mut payload: Map<String, Value>, counts: Counts) -> Map<String, Value> {
    if let Some(unread) = counts.unread {
        payload.insert("unread_count".into(), unread.into());
    }
    if let Some(missed_calls) = counts.missed_calls {
        payload.insert("missed_calls".into(), missed_calls.into());
    }
    payload
}

/// Our fields of a full push, or `None` when it has nothing to show.
fn full_fields(n: &Notification, d: &Device, counts: Counts) -> Option<Map<String, Value>> {
    let alert = Alert::for_notification(n);
    // As Sygnal: no badge when the homeserver sent no counts at all.
    let badge = (counts.unread.is_some() || counts.missed_calls.is_some()).then(|| counts.badge());
    if alert.is_none() && badge.is_none() {
        return None;
    }
    let mut aps = Map::new();
    if let Some(alert) = alert {
        aps.insert("alert".into(), json!({ "loc-key": alert.loc_key, "loc-args": alert.loc_args }));
        if let Some(sound) = &d.tweaks.sound {
            aps.insert("sound".into(), sound.as_str().into());
        }
    }
    if let Some(badge) = badge {
        aps.insert("badge".into(), badge.into());
    }
    let mut ours = Map::new();
    ours.insert("aps".into(), Value::Object(aps));
    if let Some(room_id) = &n.room_id {
        ours.insert("room_id".into(), room_id.as_str().into());
    }
    if let Some(event_id) = &n.event_id {
        ours.insert("event_id".into(), event_id.as_str().into());
    }
    Some(ours)
}

/// A localized alert: the key names a string in the app, filled with the args.
#[derive(Debug, PartialEq, Eq)]
struct Alert {
    loc_key: &'static str,
    loc_args: Vec<String>,
}

impl Alert {
    /// Sygnal's `_get_payload_full`: the keys and argument orders Element iOS
    /// (and other Sygnal clients) localize.
    fn for_notification(n: &Notification) -> Option<Self> {
        let from = n
            .sender_display_name
            .as_deref()
            .or(n.sender.as_deref())
            .unwrap_or(" ")
            .to_string();
        let alert = |loc_key, loc_args| Some(Self { loc_key, loc_args });
        match n.event_type.as_deref()? {
            "m.room.message" | "m.room.encrypted" => {
                let room = n.room_name.as_deref().or(n.room_alias.as_deref()).map(str::to_string);
                let (text, is_emote, is_image) = message_text(n.content.as_ref());
                match (room, text) {
                    (Some(room), Some(text)) if is_image => alert("IMAGE_FROM_USER_IN_ROOM", vec![from, text, room]),
                    (Some(room), Some(text)) if is_emote => alert("ACTION_FROM_USER_IN_ROOM", vec![room, from, text]),
                    (Some(room), Some(text)) => alert("MSG_FROM_USER_IN_ROOM_WITH_CONTENT", vec![from, room, text]),
                    (Some(room), None) => alert("MSG_FROM_USER_IN_ROOM", vec![from, room]),
                    (None, Some(text)) if is_image => alert("IMAGE_FROM_USER", vec![from, text]),
                    (None, Some(text)) if is_emote => alert("ACTION_FROM_USER", vec![from, text]),
                    (None, Some(text)) => alert("MSG_FROM_USER_WITH_CONTENT", vec![from, text]),
                    (None, None) => alert("MSG_FROM_USER", vec![from]),
                }
            }
            "m.call.invite" if is_video_call(n.content.as_ref()) => alert("VIDEO_CALL_FROM_USER", vec![from]),
            "m.call.invite" => alert("VOICE_CALL_FROM_USER", vec![from]),
            "m.room.member" => {
                if n.user_is_target != Some(true) || n.membership.as_deref() != Some("invite") {
                    return None;
                }
                match n.room_name.as_deref().or(n.room_alias.as_deref()) {
                    Some(room) => alert("USER_INVITE_TO_NAMED_ROOM", vec![from, room.to_string()]),
                    None => alert("USER_INVITE_TO_CHAT", vec![from]),
                }
            }
            // Unknown, but important enough for the homeserver to push.
            _ => alert("MSG_FROM_USER", vec![from]),
        }
    }
}

/// A message's user-visible text (`body`, when it and `msgtype` are strings),
/// and whether it is an emote or an image.
fn message_text(content: Option<&Map<String, Value>>) -> (Option<String>, bool, bool) {
    let field = |key| content.and_then(|c| c.get(key)).and_then(Value::as_str);
    match (field("msgtype"), field("body")) {
        (Some(msgtype), Some(body)) => (Some(body.to_string()), msgtype == "m.emote", msgtype == "m.image"),
        _ => (None, false, false),
    }
}

/// Sygnal's WebRTC heuristic: the offer's SDP has a video track.
fn is_video_call(content: Option<&Map<String, Value>>) -> bool {
    content
        .and_then(|c| c.get("offer"))
        .and_then(|offer| offer.get("sdp"))
        .and_then(Value::as_str)
        .is_some_and(|sdp| sdp.contains("m=video"))
}

/// docs/design.md §7.3 "Payload": at most 4096 bytes, the alert's texts cut
/// as in §13.2 "Fitting a payload" (the longest first, never splitting a
/// character). The texts that may be cut are those Sygnal's `apnstruncate`
/// cuts: `aps.alert` when it is a string, else `aps.alert.body` and
/// `aps.alert.loc-args` (never a `loc-key`, which names a string in the app).
fn alert_texts(payload: &Value) -> &'static [&'static str] {
    match payload.pointer("/aps/alert") {
        Some(Value::String(_)) => &["/aps/alert"],
        _ => &["/aps/alert/body", "/aps/alert/loc-args"],
    }
}

/// The `reason` of an APNs error body, from Apple's "Handling notification
/// responses from APNs". Only the ones that decide an outcome are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum Reason {
    /// The device token is invalid (e.g. a sandbox token sent to production).
    BadDeviceToken,
    /// The token belongs to another app.
    DeviceTokenNotForTopic,
    /// Pushing to this topic is not allowed (our topic, not the device).
    TopicDisallowed,
    /// 410: the token is no longer active for the topic.
    Unregistered,
    /// 410: the token has expired.
    ExpiredToken,
    /// 403: our provider token is older than an hour.
    ExpiredProviderToken,
    /// 403: our provider token does not verify.
    InvalidProviderToken,
    /// 429: provider tokens were replaced too often; keep the current one.
    TooManyProviderTokenUpdates,
    /// Any other reason, or no readable body.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct ErrorBody {
    reason: Option<String>,
}

/// The most of a provider's reason string that goes into a log line.
const MAX_REASON_CHARS: usize = 64;

/// What APNs's answer means for the device (docs/design.md §7.4 "Answers",
/// §4 "Outcomes and the rule for rejection"). Bodies may be
/// empty, truncated or not JSON: the reason is then `Other`.
pub fn classify(response: &ProviderResponse) -> Verdict {
    use Reason::*;
    let reason_text: Option<String> = serde_json::from_slice::<ErrorBody>(&response.body)
        .ok()
        .and_then(|body| body.reason)
        .map(|r| r.chars().filter(|c| c.is_ascii_graphic()).take(MAX_REASON_CHARS).collect());
    let reason = reason_text
        .as_deref()
        .and_then(|r| serde_json::from_value::<Reason>(Value::String(r.to_string())).ok())
        .unwrap_or(Other);
    let outcome = match (response.status, reason) {
        (200, _) => Outcome::Delivered,
        // Only a token APNs knew for this topic can have become inactive.
        // A 410 without one of these reasons says nothing readable about
        // the device (a proxy's answer, a cut body): ours to look at.
        (410, Unregistered | ExpiredToken) => Outcome::Rejected,
        (400, BadDeviceToken) => Outcome::Refused(BAD_DEVICE_TOKEN),
        (400, DeviceTokenNotForTopic) => Outcome::Refused(DEVICE_TOKEN_NOT_FOR_TOPIC),
        // About our topic, never the device.
        (400, TopicDisallowed) => Outcome::Failed,
        (403, ExpiredProviderToken | InvalidProviderToken) => Outcome::StaleCredentials,
        // TooManyProviderTokenUpdates lands here: the cached token is kept.
        (429 | 500..=599, _) => Outcome::Transient { retry_after: response.retry_after() },
        _ => Outcome::Failed,
    };
    let status = response.status;
    let text = match (outcome, reason_text) {
        (Outcome::Delivered, _) => String::new(),
        (_, Some(r)) if !r.is_empty() => format!("{status} {r}"),
        _ => status.to_string(),
    };
    Verdict::new(outcome, text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use jwt_compact::alg::Es256;
    use jwt_compact::AlgorithmExt as _;
    use std::time::Duration;

    use jwt_compact::UntrustedToken;
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::{EncodePrivateKey as _, LineEnding};

    use super::*;
    use crate::notify::parse_notify;
    use crate::providers::fit::{samples, ELLIPSIS};

    const NOW: UnixSecs = 1_795_564_953;

    fn notification(fixture: &str) -> Notification {
        crate::testing::synapse_notification(fixture, None)
    }

    fn golden(name: &str) -> Value {
        let path = format!("{}/tests/golden/apns/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    /// What Element iOS registers.
    fn element_default_payload() -> Value {
        json!({"aps": {"mutable-content": 1, "alert": {"loc-key": "SINGLE_UNREAD", "loc-args": []}}, "cs": "secret"})
    }

    fn with_data(mut n: Notification, data: Value) -> Notification {
        n.devices[0].data = data.as_object().unwrap().clone();
        n
    }

    fn payload_of(n: &Notification) -> Result<Value, Verdict> {
        let style = Style::new(&n.devices[0], true, false);
        payload(n, &n.devices[0], style, ALERT).map(|body| serde_json::from_slice(&body.bytes).unwrap())
    }

    fn test_key() -> SigningKey {
        SigningKey::from_slice(&[7u8; 32]).unwrap()
    }

    fn base_config() -> Value {
        json!({"topic": "com.example.app", "team_id": "TEAM123456", "key_id": "KEY1234567", "key_secret": "APNS_KEY"})
    }

    fn load(config: Value, pem: Option<String>) -> Result<ApnsApp, String> {
        let secrets = move |name: &str| if name == "APNS_KEY" { pem.clone() } else { None };
        ApnsApp::new(serde_json::from_value(config).unwrap(), &secrets)
    }

    fn app(config: Value) -> ApnsApp {
        let pem = test_key().to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        load(config, Some(pem)).unwrap()
    }

    fn app_with(extra: Value) -> ApnsApp {
        let mut config = base_config();
        config.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        app(config)
    }

    // --- payloads ---------------------------------------------------------

    #[test]
    fn golden_message_ios() {
        assert_eq!(payload_of(&notification("message-ios.json")).unwrap(), golden("message-ios.json"));
    }

    #[test]
    fn golden_member_invite_ios() {
        assert_eq!(payload_of(&notification("member-ios.json")).unwrap(), golden("member-ios.json"));
    }

    #[test]
    fn full_push_deep_merges_default_payload() {
        let n = with_data(notification("message-ios.json"), json!({"default_payload": element_default_payload()}));
        assert_eq!(payload_of(&n).unwrap(), golden("message-ios-with-default_payload.json"));
    }

    #[test]
    fn event_id_only_carries_default_payload_verbatim_and_nothing_about_the_message() {
        let n = with_data(
            notification("message-ios.json"),
            json!({"format": "event_id_only", "default_payload": element_default_payload()}),
        );
        let p = payload_of(&n).unwrap();
        assert_eq!(p, golden("event_id_only-element.json"));
        assert!(p["unread_count"].is_u64());
        assert!(!serde_json::to_string(&p).unwrap().contains("Hello Bob"));
    }

    #[test]
    fn event_id_only_adds_missed_calls_when_sent() {
        let mut n = with_data(notification("message-ios.json"), json!({"format": "event_id_only"}));
        n.counts.missed_calls = Some(2);
        let p = payload_of(&n).unwrap();
        assert_eq!(p["missed_calls"], json!(2));
        assert_eq!(p["unread_count"], json!(1));
        assert!(p.get("aps").is_none());
    }

    #[test]
    fn badge_only_is_the_badge_alone() {
        let mut n = with_data(
            notification("message-ios.json"),
            json!({"format": "event_id_only", "default_payload": element_default_payload()}),
        );
        n.event_id = None;
        n.counts.unread = Some(2);
        n.counts.missed_calls = Some(1);
        assert_eq!(payload_of(&n).unwrap(), golden("badge_only.json"));

        n.counts = Default::default();
        assert_eq!(payload_of(&n).unwrap(), json!({"aps": {"badge": 0}}));
    }

    #[test]
    fn default_payload_that_is_not_an_object_is_rejected() {
        for bad in [json!("x"), json!([1]), json!(3)] {
            for format in ["event_id_only", "full"] {
                let n = with_data(notification("message-ios.json"), json!({"format": format, "default_payload": bad}));
                assert_eq!(payload_of(&n).unwrap_err().outcome, Outcome::Rejected, "{bad} {format}");
            }
        }
        let n = with_data(notification("message-ios.json"), json!({"default_payload": null}));
        assert_eq!(payload_of(&n).unwrap(), golden("message-ios.json"));
    }

    #[test]
    fn untyped_full_push_gets_the_event_id_only_body() {
        let n = parse_notify(
            br#"{"notification":{"event_id":"$e","room_id":"!r","counts":{"unread":3},
                "devices":[{"app_id":"a","pushkey":"AAEC","data":{"default_payload":{"k":"v"}}}]}}"#,
            20,
        )
        .unwrap();
        assert_eq!(payload_of(&n).unwrap(), json!({"k": "v", "room_id": "!r", "event_id": "$e", "unread_count": 3}));
    }

    #[test]
    fn nothing_to_show_is_delivered_without_a_send() {
        let mut n = notification("member-ios.json");
        n.user_is_target = Some(false);
        n.counts = Default::default();
        let verdict = app(base_config()).prepare(&n, &n.devices[0], NOW).unwrap_err();
        assert_eq!(verdict.outcome, Outcome::Delivered);
    }

    #[test]
    fn loc_keys_follow_sygnal() {
        let base = notification("message-ios.json");
        let alert_of = |edit: &dyn Fn(&mut Notification)| {
            let mut n = base.clone();
            edit(&mut n);
            payload_of(&n).unwrap()["aps"]["alert"].clone()
        };
        fn content(v: Value) -> Option<Map<String, Value>> {
            Some(v.as_object().unwrap().clone())
        }
        type Edit = Box<dyn Fn(&mut Notification)>;
        let cases: Vec<(&str, Edit, Value)> = vec![
            ("emote in room", Box::new(|n| n.content = content(json!({"msgtype": "m.emote", "body": "waves"}))),
             json!({"loc-key": "ACTION_FROM_USER_IN_ROOM", "loc-args": ["Push test room", "alices1", "waves"]})),
            ("image in room", Box::new(|n| n.content = content(json!({"msgtype": "m.image", "body": "cat.png"}))),
             json!({"loc-key": "IMAGE_FROM_USER_IN_ROOM", "loc-args": ["alices1", "cat.png", "Push test room"]})),
            ("text, no room name", Box::new(|n| n.room_name = None),
             json!({"loc-key": "MSG_FROM_USER_WITH_CONTENT", "loc-args": ["alices1", "Hello Bob, message 0"]})),
            ("alias as room", Box::new(|n| { n.room_name = None; n.room_alias = Some("#r:hs".into()) }),
             json!({"loc-key": "MSG_FROM_USER_IN_ROOM_WITH_CONTENT", "loc-args": ["alices1", "#r:hs", "Hello Bob, message 0"]})),
            ("encrypted", Box::new(|n| { n.event_type = Some("m.room.encrypted".into()); n.content = content(json!({"ciphertext": "x"})) }),
             json!({"loc-key": "MSG_FROM_USER_IN_ROOM", "loc-args": ["alices1", "Push test room"]})),
            ("encrypted, no room, sender only", Box::new(|n| {
                n.event_type = Some("m.room.encrypted".into()); n.content = None; n.room_name = None; n.sender_display_name = None }),
             json!({"loc-key": "MSG_FROM_USER", "loc-args": ["@alices1:localhost"]})),
            ("non-string body", Box::new(|n| n.content = content(json!({"msgtype": "m.text", "body": 5}))),
             json!({"loc-key": "MSG_FROM_USER_IN_ROOM", "loc-args": ["alices1", "Push test room"]})),
            ("video call", Box::new(|n| { n.event_type = Some("m.call.invite".into()); n.content = content(json!({"offer": {"sdp": "v=0\r\nm=audio 9\r\nm=video 9"}})) }),
             json!({"loc-key": "VIDEO_CALL_FROM_USER", "loc-args": ["alices1"]})),
            ("voice call", Box::new(|n| { n.event_type = Some("m.call.invite".into()); n.content = content(json!({"offer": {"sdp": "m=audio 9"}})) }),
             json!({"loc-key": "VOICE_CALL_FROM_USER", "loc-args": ["alices1"]})),
            ("invite to unnamed room", Box::new(|n| {
                n.event_type = Some("m.room.member".into()); n.user_is_target = Some(true); n.membership = Some("invite".into()); n.room_name = None }),
             json!({"loc-key": "USER_INVITE_TO_CHAT", "loc-args": ["alices1"]})),
            ("unknown type, no sender", Box::new(|n| { n.event_type = Some("org.example.poke".into()); n.sender = None; n.sender_display_name = None }),
             json!({"loc-key": "MSG_FROM_USER", "loc-args": [" "]})),
        ];
        for (name, edit, expected) in cases {
            assert_eq!(alert_of(&*edit), expected, "{name}");
        }
    }

    #[test]
    fn oversized_body_is_cut_on_a_character_boundary() {
        let mut n = notification("message-ios.json");
        // 3-byte and 4-byte characters, so a byte cut would land mid-character.
        let long = "€😀".repeat(2000);
        n.content = Some(json!({"msgtype": "m.text", "body": long}).as_object().unwrap().clone());
        let p = payload_of(&n).unwrap();
        let bytes = serde_json::to_vec(&p).unwrap();
        assert!(bytes.len() <= MAX_PAYLOAD_BYTES, "{}", bytes.len());
        assert!(bytes.len() > MAX_PAYLOAD_BYTES - 8, "cut more than needed: {}", bytes.len());
        assert!(std::str::from_utf8(&bytes).is_ok());
        let args = p["aps"]["alert"]["loc-args"].as_array().unwrap();
        assert_eq!(args[0], json!("alices1"));
        assert_eq!(args[1], json!("Push test room"));
        let body = args[2].as_str().unwrap();
        assert!(body.ends_with(ELLIPSIS));
        assert!(long.starts_with(body.trim_end_matches(ELLIPSIS)));
    }

    #[test]
    fn the_longest_texts_are_cut_first() {
        let mut n = notification("message-ios.json");
        n.room_name = Some("r".repeat(3000));
        n.content = Some(json!({"msgtype": "m.text", "body": "b".repeat(5000)}).as_object().unwrap().clone());
        let p = payload_of(&n).unwrap();
        assert!(serde_json::to_vec(&p).unwrap().len() <= MAX_PAYLOAD_BYTES);
        let args = p["aps"]["alert"]["loc-args"].as_array().unwrap();
        let (room, body) = (args[1].as_str().unwrap(), args[2].as_str().unwrap());
        assert_eq!(args[0], json!("alices1"));
        assert!(room.ends_with(ELLIPSIS) && body.ends_with(ELLIPSIS));
        assert!(room.len().abs_diff(body.len()) <= 1, "{} vs {}", room.len(), body.len());
    }

    #[test]
    fn a_string_alert_in_default_payload_is_cut_too() {
        let n = with_data(
            notification("message-ios.json"),
            json!({"format": "event_id_only", "default_payload": {"aps": {"alert": "é".repeat(3000)}}}),
        );
        let p = payload_of(&n).unwrap();
        assert!(serde_json::to_vec(&p).unwrap().len() <= MAX_PAYLOAD_BYTES);
        assert!(p["aps"]["alert"].as_str().unwrap().ends_with(ELLIPSIS));
        assert_eq!(p["event_id"], "$c_S3Dbae4d34xgwTHsXztzA9NxxLqspUJNES7lttZhU");
    }

    #[test]
    fn an_edit_of_a_long_message_fits() {
        let mut n = notification("message-ios.json");
        n.content = Some(samples::long_edit());
        let p = payload_of(&n).unwrap();
        assert!(serde_json::to_vec(&p).unwrap().len() <= MAX_PAYLOAD_BYTES);
        assert_eq!(p["aps"]["alert"]["loc-key"], "MSG_FROM_USER_IN_ROOM_WITH_CONTENT");
        let text = p["aps"]["alert"]["loc-args"][2].as_str().unwrap();
        assert!(text.starts_with("* éé") && text.ends_with(ELLIPSIS), "{text}");
    }

    #[test]
    fn a_poll_with_long_answers_fits() {
        let mut n = notification("message-ios.json");
        n.event_type = Some("org.matrix.msc3381.poll.start".into());
        n.content = Some(samples::long_poll());
        let p = payload_of(&n).unwrap();
        assert!(serde_json::to_vec(&p).unwrap().len() <= MAX_PAYLOAD_BYTES);
        assert_eq!(p["aps"]["alert"]["loc-key"], "MSG_FROM_USER");
    }

    #[test]
    fn a_default_payload_that_can_never_fit_is_rejected() {
        let big = samples::huge_default_payload();
        for data in [
            json!({"format": "event_id_only", "default_payload": big}),
            json!({"default_payload": big}),
            json!({"default_payload": {"aps": {"mutable-content": 1, "category": "c".repeat(5000)}}}),
        ] {
            let n = with_data(notification("message-ios.json"), data.clone());
            let verdict = payload_of(&n).unwrap_err();
            assert_eq!(verdict.outcome, Outcome::Rejected, "{data}");
            assert!(verdict.reason.contains("default_payload"), "{}", verdict.reason);
            assert!(!verdict.reason.contains("xxxx"));
        }
        // Badge-only pushes carry no default_payload, so it cannot spoil them.
        let mut badge_only = with_data(notification("message-ios.json"), json!({"default_payload": big}));
        badge_only.event_id = None;
        assert_eq!(payload_of(&badge_only).unwrap(), json!({"aps": {"badge": 1}}));
    }

    #[test]
    fn a_notification_that_cannot_fit_without_default_payload_is_failed() {
        let mut n = with_data(notification("message-ios.json"), json!({"format": "event_id_only"}));
        n.room_id = Some(format!("!{}", "r".repeat(5000)));
        assert_eq!(payload_of(&n).unwrap_err().outcome, Outcome::Failed);
        let n = with_data(n, json!({"format": "event_id_only", "default_payload": {"cs": "secret"}}));
        assert_eq!(payload_of(&n).unwrap_err().outcome, Outcome::Failed, "not the device's fault");
    }

    // --- pushkey ----------------------------------------------------------

    fn token_for(pushkey: &str, convert: bool) -> Result<String, Verdict> {
        let mut n = notification("message-ios.json");
        n.devices[0].pushkey = crate::notify::Pushkey(pushkey.into());
        device_token(&n.devices[0], convert)
    }

    #[test]
    fn pushkey_is_base64_sent_as_lowercase_hex() {
        assert_eq!(token_for("AAECAw+/", true).unwrap(), "00010203 0fbf".replace(' ', ""));
        assert_eq!(token_for("AAECAw==", true).unwrap(), "00010203");
        assert_eq!(token_for("AAECAw", true).unwrap(), "00010203", "padding is optional");
        // Python's b64decode accepts non-zero trailing bits; so do we.
        assert!(token_for("abc123", true).is_ok());
    }

    #[test]
    fn undecodable_pushkey_is_rejected_without_naming_it() {
        for bad in ["not base64!", "AAECAw-_", "", "A"] {
            let verdict = token_for(bad, true).unwrap_err();
            assert_eq!(verdict.outcome, Outcome::Rejected, "{bad:?}");
            if bad.len() > 6 {
                assert!(!verdict.reason.contains(bad));
            }
        }
        let mut n = notification("message-ios.json");
        n.devices[0].pushkey = crate::notify::Pushkey("%%%".into());
        assert_eq!(app(base_config()).prepare(&n, &n.devices[0], NOW).unwrap_err().outcome, Outcome::Rejected);
    }

    #[test]
    fn without_conversion_the_pushkey_is_sent_as_is_if_path_safe() {
        assert_eq!(token_for("0fbfA1_-.~", false).unwrap(), "0fbfA1_-.~");
        assert_eq!(token_for("", false).unwrap_err().outcome, Outcome::Rejected);
        // Base64 pushkeys look like this when the flag is wrongly off: only
        // an app shown to deliver may have them rejected.
        for bad in ["q83vEjRWeJA=", "a/b", "..", "a b", "a?b", "a%2Fb", "é"] {
            assert_eq!(token_for(bad, false).unwrap_err().outcome, Outcome::Refused(PUSHKEY_NOT_A_TOKEN), "{bad:?}");
        }
    }

    // --- request ----------------------------------------------------------

    #[test]
    fn request_url_headers_and_token_key() {
        let n = notification("message-ios.json");
        let prepared = app(base_config()).prepare(&n, &n.devices[0], NOW).unwrap();
        let r = &prepared.request;
        let hex: String = PUSHKEY_BASE64.decode("abc123").unwrap().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(r.url, format!("https://api.push.apple.com/3/device/{hex}"));
        assert_eq!(r.header("apns-topic"), Some("com.example.app"));
        assert_eq!(r.header("apns-push-type"), Some("alert"));
        assert_eq!(r.header("apns-priority"), Some("10"));
        assert_eq!(r.header("apns-expiration"), None);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.headers.iter().all(|(k, _)| *k == k.to_ascii_lowercase()));
        assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap(), golden("message-ios.json"));
        let token_key = prepared.token_key.unwrap();
        assert!(token_key.starts_with("apns:TEAM123456:KEY1234567:es256:"), "{token_key}");
    }

    #[test]
    fn sandbox_and_url_override_change_the_origin() {
        let n = notification("message-ios.json");
        let url = |extra| app_with(extra).prepare(&n, &n.devices[0], NOW).unwrap().request.url;
        assert!(url(json!({"platform": "sandbox"})).starts_with("https://api.sandbox.push.apple.com/3/device/"));
        assert!(url(json!({"platform": "auto"})).starts_with("https://api.push.apple.com/3/device/"), "auto starts in production");
        assert!(url(json!({"url": "http://127.0.0.1:9000/"})).starts_with("http://127.0.0.1:9000/3/device/"));
        let sandbox_via_url = json!({"platform": "sandbox", "url": "http://127.0.0.1:9000"});
        assert!(url(sandbox_via_url).starts_with("http://127.0.0.1:9000/3/device/"), "url alone replaces the sandbox too");
        let both = json!({"platform": "sandbox", "url": "http://127.0.0.1:9000", "sandbox_url": "http://127.0.0.1:9001"});
        assert!(url(both).starts_with("http://127.0.0.1:9001/3/device/"));
    }

    #[test]
    fn auto_moves_a_request_between_environments_unchanged_but_for_the_origin() {
        let n = notification("message-ios.json");
        for extra in [json!({"platform": "auto"}), json!({"platform": "auto", "url": "http://p:1", "sandbox_url": "http://s:2"})] {
            let a = app_with(extra.clone());
            assert!(a.is_auto());
            assert_eq!(a.first_environment(), Environment::Production);
            let d = &n.devices[0];
            let request = a.prepare(&n, d, NOW).unwrap().request;
            let sandbox = a.in_environment(&request, Environment::Sandbox, d).unwrap();
            assert!(sandbox.url.starts_with(a.origin_of(Environment::Sandbox)), "{extra}: {}", sandbox.url);
            assert_ne!(sandbox.url, request.url);
            assert!(sandbox.url.ends_with(request.url.rsplit_once("/3/device/").unwrap().1));
            assert_eq!((&sandbox.headers, &sandbox.body), (&request.headers, &request.body));
            assert_eq!(a.in_environment(&request, Environment::Production, d).unwrap(), request);
            // From any request of the device, whichever host it was for.
            assert_eq!(a.in_environment(&sandbox, Environment::Production, d).unwrap(), request);
            assert_eq!(a.in_environment(&sandbox, Environment::Sandbox, d).unwrap(), sandbox);
        }
        assert_eq!(Environment::Sandbox.other(), Environment::Production);
        assert!(!app_with(json!({"platform": "sandbox"})).is_auto());
    }

    #[test]
    fn auto_with_url_and_no_sandbox_url_is_warned_about() {
        let warned = |extra| app_with(extra).warnings();
        let both_hosts = warned(json!({"platform": "auto", "url": "http://127.0.0.1:9000"}));
        assert_eq!(both_hosts.len(), 1);
        assert!(both_hosts[0].starts_with("url:") && both_hosts[0].contains("sandbox_url"), "{both_hosts:?}");
        assert!(both_hosts[0].contains("http://127.0.0.1:9000"), "{both_hosts:?}");
        for fine in [
            json!({"platform": "auto"}),
            json!({"platform": "auto", "url": "http://p:1", "sandbox_url": "http://s:2"}),
            json!({"platform": "production", "url": "http://127.0.0.1:9000"}),
            json!({"platform": "sandbox", "url": "http://127.0.0.1:9000"}),
        ] {
            assert_eq!(warned(fine.clone()), Vec::<String>::new(), "{fine}");
        }
    }

    #[test]
    fn priority_is_5_for_low_prio_and_background_pushes() {
        let mut n = notification("message-ios.json");
        let prio = |a: &ApnsApp, n: &Notification| {
            a.prepare(n, &n.devices[0], NOW).unwrap().request.header("apns-priority").unwrap().to_string()
        };
        let background = app_with(json!({"push_type": "background"}));
        assert_eq!(prio(&background, &n), "5");
        assert_eq!(background.prepare(&n, &n.devices[0], NOW).unwrap().request.header("apns-push-type"), Some("background"));
        n.prio = Prio::Low;
        assert_eq!(prio(&app(base_config()), &n), "5");
    }

    #[test]
    fn expiration_is_now_plus_ttl_when_set() {
        let n = notification("message-ios.json");
        let prepared = app_with(json!({"ttl": 86400})).prepare(&n, &n.devices[0], NOW).unwrap();
        assert_eq!(prepared.request.header("apns-expiration"), Some((NOW + 86400).to_string().as_str()));
    }

    // --- badge counts, quiet pushes, priority, collapsing -------------------

    /// The request `app` sends for `n`, with its body parsed.
    fn sent(app: &ApnsApp, n: &Notification) -> (OutRequest, Value) {
        let request = app.prepare(n, &n.devices[0], NOW).unwrap().request;
        let body = serde_json::from_slice(&request.body).unwrap();
        (request, body)
    }

    fn badge_only(data: Value) -> Notification {
        let mut n = with_data(notification("message-ios.json"), data);
        n.event_id = None;
        n.counts.unread = Some(2);
        n.counts.missed_calls = Some(1);
        n
    }

    const COUNTS_OFF: &[&str] = &["org.matrix.msc4076.disable_badge_count", "disable_badge_count"];

    #[test]
    fn counts_off_leave_every_count_out() {
        let counts_off_apps = COUNTS_OFF
            .iter()
            .map(|key| {
                let mut data = json!({});
                data[*key] = json!(true);
                (app(base_config()), data)
            })
            .chain([(app_with(json!({"send_badge_counts": false})), json!({}))]);
        for (app, data) in counts_off_apps {
            let mut full = with_data(notification("message-ios.json"), data.clone());
            full.counts.missed_calls = Some(3);
            let (r, p) = sent(&app, &full);
            assert!(p["aps"].get("badge").is_none(), "{data}: {p}");
            assert_eq!(p["aps"]["alert"]["loc-key"], "MSG_FROM_USER_IN_ROOM_WITH_CONTENT");
            assert_eq!(r.header("apns-priority"), Some("10"), "the alert still shows");

            let mut data = data.clone();
            data["format"] = json!("event_id_only");
            data["default_payload"] = element_default_payload();
            let (_, p) = sent(&app, &with_data(full.clone(), data.clone()));
            assert!(p.get("unread_count").is_none() && p.get("missed_calls").is_none(), "{data}: {p}");
            assert_eq!(p["event_id"], full.event_id.clone().unwrap());
            assert_eq!(p["cs"], "secret");
        }
        // A message with nothing to show and no counts to carry is not sent.
        let mut n = with_data(notification("member-ios.json"), json!({"disable_badge_count": true}));
        n.user_is_target = Some(false);
        assert_eq!(app(base_config()).prepare(&n, &n.devices[0], NOW).unwrap_err().outcome, Outcome::Delivered);
    }

    #[test]
    fn counts_on_keep_todays_payloads() {
        let n = with_data(notification("message-ios.json"), json!({"disable_badge_count": false}));
        assert_eq!(sent(&app(base_config()), &n).1, golden("message-ios.json"));
        let n = with_data(notification("message-ios.json"), json!({"format": "event_id_only", "default_payload": element_default_payload()}));
        assert_eq!(sent(&app_with(json!({"send_badge_counts": true})), &n).1, golden("event_id_only-element.json"));
        let (r, p) = sent(&app(base_config()), &badge_only(json!({"default_payload": element_default_payload()})));
        assert_eq!(p, json!({"aps": {"badge": 3}}), "a badge update, as today");
        assert_eq!((r.header("apns-push-type"), r.header("apns-priority")), (Some("alert"), Some("10")));
    }

    #[test]
    fn no_event_and_counts_off_is_a_background_wake_without_default_payload() {
        for (app, data) in [
            (app(base_config()), json!({"org.matrix.msc4076.disable_badge_count": true, "default_payload": element_default_payload()})),
            (app_with(json!({"send_badge_counts": false})), json!({"format": "event_id_only", "default_payload": {"aps": {"sound": "x"}, "k": 1}})),
            (app_with(json!({"push_type": "background"})), json!({"disable_badge_count": true})),
        ] {
            let (r, p) = sent(&app, &badge_only(data.clone()));
            assert_eq!(p, json!({"aps": {"content-available": 1}}), "{data}");
            assert_eq!(r.header("apns-push-type"), Some("background"));
            assert_eq!(r.header("apns-priority"), Some("5"), "Apple: background pushes go at priority 5");
            assert_eq!(r.header("apns-collapse-id"), None);
        }
        // A wake still refuses a default_payload that is not an object, as every kind does.
        let n = badge_only(json!({"disable_badge_count": true, "default_payload": "x"}));
        assert_eq!(app(base_config()).prepare(&n, &n.devices[0], NOW).unwrap_err().outcome, Outcome::Rejected);
        // A VoIP topic takes no background push: nothing is sent.
        let voip = app_with(json!({"push_type": "voip"}));
        let n = badge_only(json!({"disable_badge_count": true}));
        assert_eq!(voip.prepare(&n, &n.devices[0], NOW).unwrap_err().outcome, Outcome::Delivered);
    }

    #[test]
    fn a_background_app_sends_background_pushes_only() {
        let background = app_with(json!({"push_type": "background"}));
        let n = with_data(notification("message-ios.json"), json!({"default_payload": element_default_payload()}));
        let (r, p) = sent(&background, &n);
        assert_eq!(p["aps"], json!({"content-available": 1}), "no alert, sound or badge in a background push");
        assert_eq!((p["cs"].as_str(), p["event_id"].as_str()), (Some("secret"), n.event_id.as_deref()));
        assert_eq!((r.header("apns-push-type"), r.header("apns-priority")), (Some("background"), Some("5")));
        let (_, p) = sent(&background, &badge_only(json!({})));
        assert_eq!(p, json!({"aps": {"content-available": 1}, "unread_count": 2, "missed_calls": 1}));
    }

    #[test]
    fn priority_10_only_for_a_high_priority_push_that_shows_something() {
        let prio = |app: &ApnsApp, n: &Notification| sent(app, n).0.header("apns-priority").unwrap().to_string();
        let alert = app(base_config());
        let mut n = notification("message-ios.json");
        assert_eq!(prio(&alert, &n), "10");
        n.prio = Prio::Low;
        assert_eq!(prio(&alert, &n), "5");
        // event_id_only: what shows is the device's default_payload.
        let shows = with_data(notification("message-ios.json"), json!({"format": "event_id_only", "default_payload": element_default_payload()}));
        assert_eq!(prio(&alert, &shows), "10");
        let hidden = with_data(notification("message-ios.json"), json!({"format": "event_id_only", "default_payload": {"cs": "x"}}));
        assert_eq!(prio(&alert, &hidden), "5", "Apple: priority 10 must trigger an alert, sound or badge");
        // A ring on a VoIP topic shows no alert and still goes at once.
        let mut ring = notification("message-ios.json");
        ring.event_type = Some("m.call.invite".into());
        assert_eq!(prio(&app_with(json!({"push_type": "voip"})), &ring), "10");
    }

    #[test]
    fn collapse_per_room_sets_a_collapse_id_of_at_most_64_bytes() {
        let collapsing = app_with(json!({"collapse_per_room": true}));
        let mut n = notification("message-ios.json");
        let room = n.room_id.clone().unwrap();
        let collapse = |app: &ApnsApp, n: &Notification| sent(app, n).0.header("apns-collapse-id").map(str::to_string);
        assert_eq!(collapse(&collapsing, &n), Some(room.clone()));
        assert_eq!(collapse(&app(base_config()), &n), None, "off by default");
        let asked = with_data(n.clone(), json!({"only_last_per_room": true}));
        assert_eq!(collapse(&app(base_config()), &asked), Some(room.clone()), "the pusher can ask for it");
        let eio = with_data(n.clone(), json!({"format": "event_id_only"}));
        assert_eq!(collapse(&collapsing, &eio), Some(room), "event_id_only pushes collapse too");

        n.room_id = Some(format!("!{}:example.org", "r".repeat(200)));
        let hashed = collapse(&collapsing, &n).unwrap();
        assert!(hashed.len() <= 64 && !hashed.contains("rrrr"), "{hashed}");
        for call in ["m.call.invite", "m.rtc.notification"] {
            n.event_type = Some(call.into());
            assert_eq!(collapse(&collapsing, &n), None, "{call}: a ring neither replaces nor is replaced");
        }
        assert_eq!(collapse(&collapsing, &badge_only(json!({}))), None, "a badge update replaces nothing");
        let background = app_with(json!({"push_type": "background", "collapse_per_room": true}));
        assert_eq!(collapse(&background, &notification("message-ios.json")), None);
    }

    // --- classify ---------------------------------------------------------

    fn response(status: u16, body: &str) -> ProviderResponse {
        ProviderResponse { status, headers: vec![], body: body.as_bytes().to_vec() }
    }

    fn reason_body(reason: &str) -> String {
        format!(r#"{{"reason":"{reason}"}}"#)
    }

    #[test]
    fn classify_table() {
        let transient = Outcome::Transient { retry_after: None };
        let cases: &[(u16, &str, Outcome, &str)] = &[
            (200, "", Outcome::Delivered, ""),
            (410, &reason_body("Unregistered"), Outcome::Rejected, "410 Unregistered"),
            (410, &reason_body("ExpiredToken"), Outcome::Rejected, "410 ExpiredToken"),
            (410, "", Outcome::Failed, "410"),
            (410, r#"{"reason":"Unregist"#, Outcome::Failed, "410"),
            (410, "<html>Gone</html>", Outcome::Failed, "410"),
            (410, &reason_body("BadDeviceToken"), Outcome::Failed, "410 BadDeviceToken"),
            (410, &reason_body("SomethingNew"), Outcome::Failed, "410 SomethingNew"),
            (400, &reason_body("BadDeviceToken"), Outcome::Refused(BAD_DEVICE_TOKEN), "400 BadDeviceToken"),
            (400, &reason_body("DeviceTokenNotForTopic"), Outcome::Refused(DEVICE_TOKEN_NOT_FOR_TOPIC), "400 DeviceTokenNotForTopic"),
            (400, &reason_body("TopicDisallowed"), Outcome::Failed, "400 TopicDisallowed"),
            (403, &reason_body("ExpiredProviderToken"), Outcome::StaleCredentials, "403 ExpiredProviderToken"),
            (403, &reason_body("InvalidProviderToken"), Outcome::StaleCredentials, "403 InvalidProviderToken"),
            (429, &reason_body("TooManyProviderTokenUpdates"), transient, "429 TooManyProviderTokenUpdates"),
            (429, &reason_body("TooManyRequests"), transient, "429 TooManyRequests"),
            (500, &reason_body("InternalServerError"), transient, "500 InternalServerError"),
            (503, &reason_body("ServiceUnavailable"), transient, "503 ServiceUnavailable"),
            (400, &reason_body("PayloadTooLarge"), Outcome::Failed, "400 PayloadTooLarge"),
            (400, &reason_body("BadTopic"), Outcome::Failed, "400 BadTopic"),
            (403, &reason_body("MissingProviderToken"), Outcome::Failed, "403 MissingProviderToken"),
            (403, &reason_body("BadCertificate"), Outcome::Failed, "403 BadCertificate"),
            (404, &reason_body("BadPath"), Outcome::Failed, "404 BadPath"),
            (413, &reason_body("PayloadTooLarge"), Outcome::Failed, "413 PayloadTooLarge"),
            // Empty, truncated and non-JSON bodies.
            (400, "", Outcome::Failed, "400"),
            (403, "", Outcome::Failed, "403"),
            (403, r#"{"reason":"ExpiredProv"#, Outcome::Failed, "403"),
            (503, "<html>oops</html>", transient, "503"),
            (502, "\u{0}\u{ff}", transient, "502"),
            (400, r#"{"reason":5}"#, Outcome::Failed, "400"),
            (400, r#"[]"#, Outcome::Failed, "400"),
            (400, r#"{"reason":""}"#, Outcome::Failed, "400"),
            (302, "", Outcome::Failed, "302"),
        ];
        for (status, body, outcome, reason) in cases {
            let verdict = classify(&response(*status, body));
            assert_eq!(verdict, Verdict::new(*outcome, *reason), "{status} {body:?}");
        }
    }

    #[test]
    fn classify_carries_retry_after_and_tolerates_binary_bodies() {
        let mut r = response(429, &reason_body("TooManyProviderTokenUpdates"));
        r.headers.push(("retry-after".into(), "2".into()));
        assert_eq!(classify(&r).outcome, Outcome::Transient { retry_after: Some(Duration::from_secs(2)) });
        let garbage = ProviderResponse { status: 400, headers: vec![], body: vec![0xff, 0xfe, b'{'] };
        assert_eq!(classify(&garbage).outcome, Outcome::Failed);
        let long_reason = reason_body(&"X".repeat(10_000));
        assert!(classify(&response(400, &long_reason)).reason.len() < 100);
    }

    // --- token --------------------------------------------------------------

    #[derive(Deserialize)]
    struct Issuer {
        iss: String,
    }

    #[test]
    fn window_floors_to_the_last_half_hour() {
        assert_eq!(TokenWindow::containing(1800 * 1000), TokenWindow { start: 1800 * 1000, end: 1800 * 1001 });
        assert_eq!(TokenWindow::containing(1800 * 1000 + 1799), TokenWindow { start: 1800 * 1000, end: 1800 * 1001 });
        assert_eq!(TokenWindow::containing(0), TokenWindow { start: 0, end: 1800 });
    }

    #[test]
    fn minted_token_verifies_with_the_public_key() {
        let a = app(base_config());
        let minted = a.mint(NOW).unwrap();
        let mark = NOW - NOW % 1800;
        assert_eq!(minted.renew_at, mark + 1800, "renewed at the next mark");
        assert_eq!(minted.valid_until, mark + 3000, "used past it only while one caller renews, well within Apple's hour");

        let untrusted = UntrustedToken::new(&minted.value).unwrap();
        assert_eq!(untrusted.algorithm(), "ES256");
        assert_eq!(untrusted.header().key_id.as_deref(), Some("KEY1234567"));
        let token = Es256.validator::<Issuer>(test_key().verifying_key()).validate(&untrusted).unwrap();
        let claims = token.claims();
        assert_eq!(claims.custom.iss, "TEAM123456");
        assert_eq!(claims.issued_at.map(|t| t.timestamp()), Some(i64::try_from(mark).unwrap()));
        assert!(claims.expiration.is_none());

        // Every isolate in the same window signs the same token.
        assert_eq!(a.mint(mark + 1799).unwrap(), minted);
        assert_ne!(a.mint(mark + 1800).unwrap().value, minted.value);
    }

    #[test]
    fn a_token_from_another_key_does_not_verify() {
        let minted = app(base_config()).mint(NOW).unwrap();
        let other = SigningKey::from_slice(&[9u8; 32]).unwrap();
        let untrusted = UntrustedToken::new(&minted.value).unwrap();
        assert!(Es256.validator::<Issuer>(other.verifying_key()).validate(&untrusted).is_err());
    }

    // --- loading ------------------------------------------------------------

    #[test]
    fn key_loads_from_one_line_pem_and_debug_redacts_it() {
        let pem = test_key().to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let one_line = pem.trim().replace('\n', "\\n");
        let a = load(base_config(), Some(one_line)).unwrap();
        let debug = format!("{a:?}");
        assert!(debug.contains("<redacted>"));
        let body_line = pem.lines().nth(1).unwrap();
        assert!(!debug.contains(body_line) && !debug.contains("PRIVATE"));
    }

    #[test]
    fn load_errors_name_the_field_and_hide_the_secret() {
        let missing = load(base_config(), None).unwrap_err();
        assert!(missing.starts_with("key_secret:"), "{missing}");

        let garbage = "-----BEGIN PRIVATE KEY-----\nTOPSECRETmaterial\n-----END PRIVATE KEY-----";
        let bad = load(base_config(), Some(garbage.into())).unwrap_err();
        assert!(bad.starts_with("key_secret:"), "{bad}");
        assert!(!bad.contains("TOPSECRET"), "{bad}");

        let rsa_like = load(base_config(), Some("not a pem".into())).unwrap_err();
        assert!(rsa_like.starts_with("key_secret:"));

        let mut empty_team = base_config();
        empty_team["team_id"] = json!(" ");
        assert!(app_try(empty_team).unwrap_err().starts_with("team_id:"));
    }

    fn app_try(config: Value) -> Result<ApnsApp, String> {
        let pem = test_key().to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        load(config, Some(pem))
    }
}
