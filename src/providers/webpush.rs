//! WebPush: RFC 8030 delivery, RFC 8291 message encryption (`aes128gcm`),
//! RFC 8292 VAPID.
//!
//! The device's pushkey is the browser subscription's `p256dh` key,
//! `data.endpoint` its push service URL and `data.auth` its auth secret.

use std::fmt;
use std::rc::Rc;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, OsRng};
use aes_gcm::{Aes128Gcm, KeyInit, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hkdf::Hkdf;
use p256::ecdsa::SigningKey;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::DecodePrivateKey;
use p256::{PublicKey, SecretKey};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::fit::{fit_blaming_default_payload, Fit};
use super::jwt::{JwtKey, JwtToSign};
use super::style::{topic, Style, Urgency};
use super::{
    normalize_pem, require_secret, AnswerBody, MintedToken, OutRequest, Outcome, Prepared, ProviderResponse, Secrets, UnixSecs,
    Verdict,
};
use crate::config::WebPushConfig;
use crate::endpoints::{AllowedEndpoints, Endpoint};
use crate::notify::{Counts, Device, Kind, Notification};

/// RFC 8291: "a push message MUST include only a single record"; RFC 8030
/// push services must accept 4096 octets of payload.
pub const RECORD_SIZE: usize = 4096;
const SALT_LEN: usize = 16;
const PUBLIC_KEY_LEN: usize = 65;
/// RFC 8188 header: salt, record size (4 octets), key id length, key id.
const HEADER_LEN: usize = SALT_LEN + 4 + 1 + PUBLIC_KEY_LEN;
const TAG_LEN: usize = 16;
/// The most plaintext one record holds: 4096 − 86 − 1 (delimiter) − 16 = 3993.
pub const MAX_PLAINTEXT: usize = RECORD_SIZE - HEADER_LEN - 1 - TAG_LEN;
/// RFC 8188: the padding delimiter of the last record.
const LAST_RECORD_DELIMITER: u8 = 2;

/// RFC 8292: `exp` "MUST NOT be more than 24 hours from the time of the
/// request". We renew a token after 12 h (keeping it for half an hour more
/// while one caller renews it) and sign it for an hour beyond that, so the
/// last send that uses it is still covered.
const VAPID_REUSE_SECS: u64 = 12 * 3600;
const VAPID_USE_SECS: u64 = VAPID_REUSE_SECS + 1800;
const VAPID_LIFETIME_SECS: u64 = VAPID_REUSE_SECS + 3600;

const DEFAULT_TTL_SECS: u64 = 900;
/// The app's VAPID key pair. Its `Debug` shows the public half only.
struct VapidKey {
    signing: Rc<JwtKey>,
    /// Uncompressed public key, base64url: the `k=` of the Authorization header.
    public_b64: String,
}

impl fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VapidKey(<redacted>, public={})", self.public_b64)
    }
}

impl VapidKey {
    /// docs/design.md §9.1 "VAPID": a P-256 private key as PEM (PKCS#8 or
    /// SEC1) or as the raw 32-byte scalar in base64url (what web-push tools
    /// print).
    fn parse(raw: &str) -> Option<Self> {
        let secret = if raw.contains("-----BEGIN") {
            let pem = normalize_pem(raw);
            SecretKey::from_pkcs8_pem(&pem).ok().or_else(|| SecretKey::from_sec1_pem(&pem).ok())?
        } else {
            SecretKey::from_slice(&decode_base64url(raw).filter(|b| b.len() == 32)?).ok()?
        };
        let public = secret.public_key().to_sec1_bytes();
        let public_b64 = URL_SAFE_NO_PAD.encode(public);
        let signing = JwtKey::es256(SigningKey::from(&secret)).ok()?;
        Some(Self { signing: Rc::new(signing), public_b64 })
    }

    /// Tells tokens of different keys apart in the shared token cache.
    fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.public_b64.as_bytes());
        URL_SAFE_NO_PAD.encode(digest).chars().take(16).collect()
    }
}

/// A `webpush` app with its VAPID key loaded.
#[derive(Debug)]
pub struct WebPushApp {
    contact: String,
    ttl: u64,
    endpoints: AllowedEndpoints,
    key: VapidKey,
    send_badge_counts: bool,
    collapse_per_room: bool,
}

/// RFC 8292 claims. `exp` is set here in seconds, rather than through
/// jwt-compact's standard claim, because time is passed in, never read
/// from a clock.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct VapidClaims {
    /// The push service's origin.
    pub aud: String,
    pub exp: u64,
    /// `mailto:` or `https:` contact of the operator.
    pub sub: String,
}

impl WebPushApp {
    pub fn new(config: WebPushConfig, secrets: &dyn Secrets) -> Result<Self, String> {
        let field = "vapid_private_key_secret";
        let raw = require_secret(secrets, field, &config.vapid_private_key_secret)?;
        let key = VapidKey::parse(&raw).ok_or_else(|| {
            format!(
                "{field}: the secret {:?} is not a P-256 private key (PEM PKCS#8 or SEC1, or 32 bytes in base64url)",
                config.vapid_private_key_secret
            )
        })?;
        if !(config.vapid_contact.starts_with("mailto:") || config.vapid_contact.starts_with("https:")) {
            return Err("vapid_contact: must be a mailto: or https: URI (RFC 8292)".into());
        }
        let endpoints = AllowedEndpoints::from_config(config.allowed_endpoints.as_deref())?;
        Ok(Self {
            contact: config.vapid_contact,
            ttl: config.ttl.unwrap_or(DEFAULT_TTL_SECS),
            endpoints,
            key,
            send_badge_counts: config.send_badge_counts,
            collapse_per_room: config.collapse_per_room,
        })
    }

    /// The encrypted request for one subscription, or why none is sent.
    pub fn prepare(&self, n: &Notification, d: &Device, _now: UnixSecs) -> Result<Prepared, Verdict> {
        if n.event_id.is_none() && d.data.get("events_only") == Some(&Value::Bool(true)) {
            return Err(Verdict::new(Outcome::Delivered, "skipped: events_only"));
        }
        let subscription = Subscription::from_device(d, &self.endpoints).map_err(Verdict::rejected)?;
        let default_payload = d.default_payload().map_err(Verdict::from)?;
        let kind = n.kind_for(d);
        let style = Style::new(d, self.send_badge_counts, self.collapse_per_room);
        let counts = style.counts(n);
        let plaintext = fit_blaming_default_payload(
            default_payload,
            |default_payload| plaintext_fit(kind).apply(Value::Object(payload(n, kind, counts, default_payload))),
            "one 4096-byte record",
        )?;
        let body = encrypt(&plaintext, &subscription.p256dh, &subscription.auth).map_err(Verdict::failed)?;

        let mut headers = vec![
            ("ttl".to_string(), self.ttl.to_string()),
            ("urgency".to_string(), urgency(Urgency::of(n)).to_string()),
            ("content-encoding".to_string(), "aes128gcm".to_string()),
            ("content-type".to_string(), "application/octet-stream".to_string()),
        ];
        if let Some(room_id) = style.collapse_room(n) {
            headers.push(("topic".to_string(), topic(room_id)));
        }
        let token_key = Some(format!("vapid:{}:{}", self.key.fingerprint(), subscription.endpoint.origin()));
        // RFC 8030 push services answer with an empty body; nothing reads one.
        let request = OutRequest { url: subscription.url, headers, body, answer_body: AnswerBody::Cancel };
        Ok(Prepared { request, token_key })
    }

    /// A VAPID token for the origin of `prepared`'s endpoint.
    /// Signed in process (jwt-compact): what the tests verify tokens with;
    /// the dispatcher goes through `App::mint` and the transport's signer.
    #[cfg(test)]
    pub fn mint(&self, prepared: &Prepared, now: UnixSecs) -> Result<MintedToken, Verdict> {
        Ok(self.token_from(self.vapid_to_sign(prepared, now)?.sign_in_process()?, now))
    }

    /// The VAPID token of `mint`, to be signed by the transport's signer.
    pub fn vapid_to_sign(&self, prepared: &Prepared, now: UnixSecs) -> Result<JwtToSign, Verdict> {
        let endpoint = Endpoint::parse(&prepared.request.url).map_err(Verdict::failed)?;
        let claims = VapidClaims {
            aud: endpoint.origin(),
            exp: now.saturating_add(VAPID_LIFETIME_SECS),
            sub: self.contact.clone(),
        };
        JwtToSign::new(self.key.signing.clone(), None, Some("JWT"), &claims)
    }

    /// A signed VAPID token, reused for [`VAPID_REUSE_SECS`]. It stays in
    /// isolate memory (see `App::shares_tokens_through_kv`).
    pub fn token_from(&self, jwt: String, now: UnixSecs) -> MintedToken {
        MintedToken {
            value: jwt,
            renew_at: now.saturating_add(VAPID_REUSE_SECS),
            valid_until: now.saturating_add(VAPID_USE_SECS),
        }
    }

    /// RFC 8292 section 3: `vapid t=<JWT>, k=<public key>`.
    pub fn authorization(&self, token: &str) -> String {
        format!("vapid t={token}, k={}", self.key.public_b64)
    }

    /// The uncompressed public key, base64url: the `applicationServerKey` a
    /// web client subscribes with.
    pub fn public_key(&self) -> &str {
        &self.key.public_b64
    }
}

/// What the push service answered, by RFC 8030 and what the big services do.
pub fn classify(response: &ProviderResponse) -> Verdict {
    let status = response.status;
    match status {
        200..=202 => Verdict::delivered(),
        // The subscription expired or was unsubscribed.
        404 | 410 => Verdict::rejected(format!("push service: {status} (subscription gone)")),
        401 | 403 => Verdict::failed(format!("push service refused our VAPID key ({status})")),
        413 => Verdict::failed("push service: 413 payload too large"),
        429 | 500..=599 => Verdict::new(
            Outcome::Transient { retry_after: response.retry_after() },
            format!("push service: {status}"),
        ),
        _ => Verdict::failed(format!("push service: unexpected {status}")),
    }
}

/// A device's browser subscription, checked before anything is sent.
struct Subscription {
    url: String,
    endpoint: Endpoint,
    p256dh: PublicKey,
    auth: Vec<u8>,
}

impl Subscription {
    fn from_device(d: &Device, allowed: &AllowedEndpoints) -> Result<Self, String> {
        let url = match d.data.get("endpoint") {
            Some(Value::String(url)) => url.clone(),
            Some(_) => return Err("data.endpoint is not a string".into()),
            None => return Err("data.endpoint is missing".into()),
        };
        let endpoint = allowed.check(&url).map_err(|e| format!("data.endpoint: {e}"))?;
        let auth = match d.data.get("auth") {
            Some(Value::String(auth)) => decode_base64url(auth)
                .filter(|a| a.len() == 16)
                .ok_or("data.auth is not 16 bytes of base64url")?,
            Some(_) => return Err("data.auth is not a string".into()),
            None => return Err("data.auth is missing".into()),
        };
        let p256dh = decode_base64url(d.pushkey.as_str())
            .and_then(|bytes| PublicKey::from_sec1_bytes(&bytes).ok())
            .ok_or("the pushkey is not a P-256 public key in base64url")?;
        Ok(Self { url, endpoint, p256dh, auth })
    }
}

/// base64url with or without padding; standard base64 is accepted too.
fn decode_base64url(raw: &str) -> Option<Vec<u8>> {
    let normalized: String =
        raw.trim().trim_end_matches('=').chars().map(|c| match c { '+' => '-', '/' => '_', c => c }).collect();
    URL_SAFE_NO_PAD.decode(normalized).ok()
}

/// RFC 8030 5.3 `Urgency`, from what the user will see: `high` ("time-sensitive
/// alert") for a high-priority push with an event, `normal` ("chat message")
/// for a low-priority one, `low` for a push without an event (a badge update
/// or a wake), which may wait until the device is on power or Wi-Fi.
fn urgency(urgency: Urgency) -> &'static str {
    match urgency {
        Urgency::Now => "high",
        Urgency::Soon => "normal",
        Urgency::Quiet => "low",
    }
}

/// docs/design.md §9.3 "Payload": top-level `room_id`, `event_id`, `type`,
/// `sender`, `sender_display_name`, `room_name`, `unread`, `missed_calls`
/// (integers), `prio`, the keys of `default_payload`, and `content` as an
/// object; event_id_only keeps ids, counts, `prio` and `default_payload`.
///
/// Badge-only pushes carry the counts, `prio` and `default_payload`: a
/// service worker needs the latter (e.g. Hydrogen's session id) to know
/// whose badge to update. Our fields win over `default_payload`'s. `counts`
/// are those the device may get (none when counts are off).
pub fn payload(
    n: &Notification,
    kind: Kind,
    counts: Counts,
    default_payload: Option<&Map<String, Value>>,
) -> Map<String, Value> {
    let mut out = default_payload.cloned().unwrap_or_default();
    let put_str = |out: &mut Map<String, Value>, key: &str, value: &Option<String>| {
        if let Some(v) = value {
            out.insert(key.to_string(), Value::String(v.clone()));
        }
    };
    if kind != Kind::BadgeOnly {
        put_str(&mut out, "room_id", &n.room_id);
        put_str(&mut out, "event_id", &n.event_id);
    }
    if kind == Kind::Full {
        put_str(&mut out, "type", &n.event_type);
        put_str(&mut out, "sender", &n.sender);
        put_str(&mut out, "sender_display_name", &n.sender_display_name);
        put_str(&mut out, "room_name", &n.room_name);
        if let Some(content) = &n.content {
            out.insert("content".into(), Value::Object(content.clone()));
        }
    }
    if let Some(unread) = counts.unread {
        out.insert("unread".into(), unread.into());
    }
    if let Some(missed_calls) = counts.missed_calls {
        out.insert("missed_calls".into(), missed_calls.into());
    }
    out.insert("prio".into(), n.prio.as_str().into());
    out
}

/// The payload as JSON of at most `MAX_PLAINTEXT` bytes: the texts of
/// `content`, at any depth, and the room and sender names are cut, the
/// longest first; `content`'s largest entries go when that is not enough.
/// Only full pushes carry our texts: in other kinds these keys, if present,
/// are the device's `default_payload`, which is sent verbatim.
fn plaintext_fit(kind: Kind) -> Fit<'static> {
    const FULL: Fit<'static> = Fit {
        max_bytes: MAX_PLAINTEXT,
        texts: &["/content", "/room_name", "/sender_display_name"],
        droppable: &["/content"],
    };
    match kind {
        Kind::Full => FULL,
        Kind::EventIdOnly | Kind::BadgeOnly => Fit { texts: &[], droppable: &[], ..FULL },
    }
}

/// RFC 8291 encryption with a fresh ephemeral key and salt.
fn encrypt(plaintext: &[u8], ua_public: &PublicKey, auth_secret: &[u8]) -> Result<Vec<u8>, String> {
    let ephemeral = SecretKey::random(&mut OsRng);
    let mut salt = [0u8; SALT_LEN];
    OsRng.try_fill_bytes(&mut salt).map_err(|e| format!("no randomness for the salt: {e}"))?;
    encrypt_with(&ephemeral, &salt, plaintext, ua_public, auth_secret)
}

/// RFC 8291 section 3 with the application server's ephemeral key and the
/// salt given (fixed in tests, random in `encrypt`): one `aes128gcm` record
/// of size 4096, unpadded.
pub fn encrypt_with(
    ephemeral: &SecretKey,
    salt: &[u8; SALT_LEN],
    plaintext: &[u8],
    ua_public: &PublicKey,
    auth_secret: &[u8],
) -> Result<Vec<u8>, String> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(format!("plaintext of {} bytes exceeds one record", plaintext.len()));
    }
    let as_public = ephemeral.public_key().to_encoded_point(false);
    let ua_public_bytes = ua_public.to_encoded_point(false);
    let ecdh_secret = p256::ecdh::diffie_hellman(ephemeral.to_nonzero_scalar(), ua_public.as_affine());

    // key_info = "WebPush: info" || 0x00 || ua_public || as_public
    let key_info = [b"WebPush: info\0".as_slice(), ua_public_bytes.as_bytes(), as_public.as_bytes()].concat();
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth_secret), ecdh_secret.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .map_err(|_| "HKDF: IKM length")?;
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek).map_err(|_| "HKDF: CEK length")?;
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce).map_err(|_| "HKDF: nonce length")?;

    let record = [plaintext, &[LAST_RECORD_DELIMITER]].concat();
    let cipher = Aes128Gcm::new_from_slice(&cek).map_err(|_| "AES key length")?;
    let ciphertext = cipher.encrypt(&Nonce::from(nonce), record.as_slice()).map_err(|_| "AES-GCM failed")?;

    let record_size = u32::try_from(RECORD_SIZE).map_err(|_| "record size")?;
    let key_id_len = u8::try_from(as_public.len()).map_err(|_| "key id length")?;
    let mut body = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&record_size.to_be_bytes());
    body.push(key_id_len);
    body.extend_from_slice(as_public.as_bytes());
    body.extend_from_slice(&ciphertext);
    Ok(body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use jwt_compact::alg::Es256;
    use jwt_compact::AlgorithmExt as _;
    use super::*;
    use crate::notify::parse_notify;
    use crate::providers::fit::samples;
    use jwt_compact::UntrustedToken;
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    use serde_json::json;

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    /// RFC 8291 section 5 / appendix A.
    mod rfc8291 {
        pub const PLAINTEXT: &str = "When I grow up, I want to be a watermelon";
        pub const AS_PRIVATE: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
        pub const AS_PUBLIC: &str =
            "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
        pub const UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
        pub const UA_PUBLIC: &str =
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
        pub const SALT: &str = "DGv6ra1nlYgDCS1FRnbzlw";
        pub const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
        pub const BODY: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";
    }

    /// The browser's half of RFC 8291, written with the same primitives only
    /// to check what we send.
    fn decrypt(body: &[u8], ua_private: &SecretKey, auth_secret: &[u8]) -> Vec<u8> {
        let salt = &body[..16];
        assert_eq!(u32::from_be_bytes(body[16..20].try_into().unwrap()), 4096, "record size");
        let id_len = usize::from(body[20]);
        assert_eq!(id_len, 65);
        let as_public = PublicKey::from_sec1_bytes(&body[21..21 + id_len]).unwrap();
        let ciphertext = &body[21 + id_len..];
        let ua_public = ua_private.public_key().to_encoded_point(false);
        let shared = p256::ecdh::diffie_hellman(ua_private.to_nonzero_scalar(), as_public.as_affine());
        let key_info =
            [b"WebPush: info\0".as_slice(), ua_public.as_bytes(), as_public.to_encoded_point(false).as_bytes()].concat();
        let mut ikm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(auth_secret), shared.raw_secret_bytes()).expand(&key_info, &mut ikm).unwrap();
        let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
        let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
        prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek).unwrap();
        prk.expand(b"Content-Encoding: nonce\0", &mut nonce).unwrap();
        let mut record = Aes128Gcm::new_from_slice(&cek).unwrap().decrypt(&Nonce::from(nonce), ciphertext).unwrap();
        assert_eq!(record.pop(), Some(LAST_RECORD_DELIMITER), "one, last record");
        record
    }

    #[test]
    fn rfc8291_test_vector() {
        let ephemeral = SecretKey::from_slice(&b64(rfc8291::AS_PRIVATE)).unwrap();
        assert_eq!(ephemeral.public_key().to_encoded_point(false).as_bytes(), b64(rfc8291::AS_PUBLIC).as_slice());
        let salt: [u8; 16] = b64(rfc8291::SALT).try_into().unwrap();
        let ua_public = PublicKey::from_sec1_bytes(&b64(rfc8291::UA_PUBLIC)).unwrap();
        let body =
            encrypt_with(&ephemeral, &salt, rfc8291::PLAINTEXT.as_bytes(), &ua_public, &b64(rfc8291::AUTH)).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.encode(&body), rfc8291::BODY);
    }

    #[test]
    fn rfc8291_round_trip_with_a_random_ephemeral_key() {
        let ua_private = SecretKey::from_slice(&b64(rfc8291::UA_PRIVATE)).unwrap();
        let auth = b64(rfc8291::AUTH);
        let body = encrypt(rfc8291::PLAINTEXT.as_bytes(), &ua_private.public_key(), &auth).unwrap();
        assert_ne!(URL_SAFE_NO_PAD.encode(&body), rfc8291::BODY, "fresh key and salt");
        assert_eq!(decrypt(&body, &ua_private, &auth), rfc8291::PLAINTEXT.as_bytes());
        assert_eq!(decrypt(&b64(rfc8291::BODY), &ua_private, &auth), rfc8291::PLAINTEXT.as_bytes());
    }

    #[test]
    fn a_full_record_is_exactly_4096_bytes_and_no_more() {
        let ua_private = SecretKey::from_slice(&b64(rfc8291::UA_PRIVATE)).unwrap();
        let auth = b64(rfc8291::AUTH);
        let body = encrypt(&[b'x'; MAX_PLAINTEXT], &ua_private.public_key(), &auth).unwrap();
        assert_eq!(body.len(), RECORD_SIZE);
        assert!(encrypt(&[b'x'; MAX_PLAINTEXT + 1], &ua_private.public_key(), &auth).is_err());
    }

    const VAPID_PRIVATE: [u8; 32] = [7; 32];

    fn app_with(extra: Value) -> WebPushApp {
        let mut config = json!({
            "vapid_private_key_secret": "VAPID_KEY",
            "vapid_contact": "mailto:ops@example.com",
            "allowed_endpoints": ["*.push.example.net", "http://127.0.0.1:*"],
        });
        for (k, v) in extra.as_object().unwrap() {
            config[k] = v.clone();
        }
        let key = URL_SAFE_NO_PAD.encode(VAPID_PRIVATE);
        let secrets = move |name: &str| (name == "VAPID_KEY").then(|| key.clone());
        WebPushApp::new(serde_json::from_value(config).unwrap(), &secrets).unwrap()
    }

    /// A browser subscription with fixed keys.
    struct Browser {
        private: SecretKey,
        auth: Vec<u8>,
    }

    impl Browser {
        fn new() -> Self {
            Self { private: SecretKey::from_slice(&[9; 32]).unwrap(), auth: vec![3; 16] }
        }
        fn pushkey(&self) -> String {
            URL_SAFE_NO_PAD.encode(self.private.public_key().to_encoded_point(false).as_bytes())
        }
        fn device(&self, data: Value) -> Value {
            let mut full = json!({"endpoint": "https://eu.push.example.net/wpush/v2/abc", "auth": URL_SAFE_NO_PAD.encode(&self.auth)});
            for (k, v) in data.as_object().unwrap() {
                full[k] = v.clone();
            }
            json!({"app_id": "com.example.web", "pushkey": self.pushkey(), "data": full})
        }
    }

    fn fixture(name: &str, device: Value) -> Notification {
        crate::testing::synapse_notification(name, Some(vec![device]))
    }

    fn notification(body: Value) -> Notification {
        parse_notify(&serde_json::to_vec(&body).unwrap(), 20).unwrap()
    }

    fn sent_plaintext(app: &WebPushApp, browser: &Browser, n: &Notification) -> Value {
        let prepared = app.prepare(n, &n.devices[0], 1_800_000_000).unwrap();
        serde_json::from_slice(&decrypt(&prepared.request.body, &browser.private, &browser.auth)).unwrap()
    }

    #[test]
    fn full_message_plaintext() {
        let browser = Browser::new();
        let n = fixture("message-ios.json", browser.device(json!({"default_payload": {"session_id": "s1", "prio": "x"}})));
        assert_eq!(
            sent_plaintext(&app_with(json!({})), &browser, &n),
            json!({
                "session_id": "s1",
                "room_id": "!44w6byx0W9j7JETLGnbPOv0d75PH5_ubC1pmU4gJv8E",
                "event_id": "$c_S3Dbae4d34xgwTHsXztzA9NxxLqspUJNES7lttZhU",
                "type": "m.room.message",
                "sender": "@alices1:localhost",
                "sender_display_name": "alices1",
                "room_name": "Push test room",
                "content": {"body": "Hello Bob, message 0", "msgtype": "m.text"},
                "unread": 1,
                "prio": "high",
            })
        );
    }

    #[test]
    fn event_id_only_plaintext() {
        let browser = Browser::new();
        let n = fixture(
            "event_id_only-android.json",
            browser.device(json!({"format": "event_id_only", "default_payload": {"cs": "secret"}})),
        );
        assert_eq!(
            sent_plaintext(&app_with(json!({})), &browser, &n),
            json!({
                "cs": "secret",
                "room_id": "!44w6byx0W9j7JETLGnbPOv0d75PH5_ubC1pmU4gJv8E",
                "event_id": "$MHTGXGy_gbOTQ28qig28b9kYhTZAbrIhjZoq5eaYbjY",
                "unread": 1,
                "prio": "high",
            })
        );
        let message = fixture("message-ios.json", browser.device(json!({"format": "event_id_only"})));
        let sent = sent_plaintext(&app_with(json!({})), &browser, &message);
        assert!(sent.get("content").is_none() && sent.get("sender").is_none(), "{sent}");
    }

    #[test]
    fn badge_only_plaintext_and_events_only_skip() {
        let browser = Browser::new();
        let body = |data: Value| {
            json!({"notification": {"counts": {"unread": 0, "missed_calls": 2}, "prio": "low", "devices": [browser.device(data)]}})
        };
        let n = notification(body(json!({"default_payload": {"session_id": "s1"}})));
        assert_eq!(
            sent_plaintext(&app_with(json!({})), &browser, &n),
            json!({"session_id": "s1", "unread": 0, "missed_calls": 2, "prio": "low"})
        );
        let n = notification(body(json!({"events_only": true})));
        assert_eq!(
            app_with(json!({})).prepare(&n, &n.devices[0], 0).unwrap_err(),
            Verdict::new(Outcome::Delivered, "skipped: events_only")
        );
        let with_event = fixture("message-ios.json", browser.device(json!({"events_only": true})));
        assert!(app_with(json!({})).prepare(&with_event, &with_event.devices[0], 0).is_ok());
    }

    #[test]
    fn long_text_is_trimmed_on_a_character_boundary_to_fit_one_record() {
        let browser = Browser::new();
        let long = format!("a{}", "€".repeat(3000));
        let mut n = fixture("message-ios.json", browser.device(json!({})));
        n.content.as_mut().unwrap().insert("body".into(), long.clone().into());
        let prepared = app_with(json!({})).prepare(&n, &n.devices[0], 0).unwrap();
        assert!(prepared.request.body.len() <= RECORD_SIZE);
        let plaintext = decrypt(&prepared.request.body, &browser.private, &browser.auth);
        assert!(plaintext.len() <= MAX_PLAINTEXT && plaintext.len() > MAX_PLAINTEXT - 8, "{}", plaintext.len());
        let sent: Value = serde_json::from_slice(&plaintext).unwrap();
        let body = sent["content"]["body"].as_str().unwrap();
        assert!(body.ends_with('…') && long.starts_with(body.trim_end_matches('…')));
        assert_eq!(sent["content"]["msgtype"], "m.text", "short fields stay");
        assert_eq!(sent["event_id"], "$c_S3Dbae4d34xgwTHsXztzA9NxxLqspUJNES7lttZhU");
    }

    /// The record's plaintext, checked to fit.
    fn fitted_plaintext(n: &Notification) -> Value {
        let browser = Browser::new();
        let prepared = app_with(json!({})).prepare(n, &n.devices[0], 0).unwrap();
        assert!(prepared.request.body.len() <= RECORD_SIZE);
        let plaintext = decrypt(&prepared.request.body, &browser.private, &browser.auth);
        assert!(plaintext.len() <= MAX_PLAINTEXT);
        serde_json::from_slice(&plaintext).unwrap()
    }

    #[test]
    fn an_edit_of_a_long_message_is_trimmed_inside_m_new_content() {
        let mut n = fixture("message-ios.json", Browser::new().device(json!({})));
        n.content = Some(samples::long_edit());
        let sent = fitted_plaintext(&n);
        let content = &sent["content"];
        let new_text = content["m.new_content"]["body"].as_str().unwrap();
        let formatted = content["m.new_content"]["formatted_body"].as_str().unwrap();
        let fallback = content["body"].as_str().unwrap();
        for text in [new_text, formatted, fallback] {
            assert!(text.ends_with('…') && text.len() > 800, "{} bytes", text.len());
        }
        assert!(samples::long_text().starts_with(new_text.trim_end_matches('…')));
        assert!(fallback.len().abs_diff(new_text.len()) <= 2, "the longest are cut to the same length");
        assert_eq!(content["m.new_content"]["msgtype"], "m.text", "short fields stay");
        assert_eq!(content["m.relates_to"]["event_id"], "$original:example.org");
        assert_eq!(sent["event_id"], "$c_S3Dbae4d34xgwTHsXztzA9NxxLqspUJNES7lttZhU");
    }

    #[test]
    fn a_poll_with_long_answers_keeps_every_answer() {
        let mut n = fixture("message-ios.json", Browser::new().device(json!({})));
        n.content = Some(samples::long_poll());
        let sent = fitted_plaintext(&n);
        let answers = sent["content"]["org.matrix.msc3381.poll.start"]["answers"].as_array().unwrap();
        assert_eq!(answers.len(), 20);
        assert_eq!(answers[19]["id"], "a19");
        assert!(answers.iter().all(|a| a["org.matrix.msc1767.text"].as_str().unwrap().starts_with("answer ")));
        assert_eq!(sent["content"]["body"], "Which?");
    }

    #[test]
    fn a_default_payload_that_can_never_fit_is_rejected() {
        let browser = Browser::new();
        for data in [
            json!({"default_payload": samples::huge_default_payload()}),
            json!({"format": "event_id_only", "default_payload": samples::huge_default_payload()}),
        ] {
            let n = fixture("message-ios.json", browser.device(data.clone()));
            let verdict = app_with(json!({})).prepare(&n, &n.devices[0], 0).unwrap_err();
            assert_eq!(verdict.outcome, Outcome::Rejected, "{data}");
            assert!(verdict.reason.contains("default_payload") && !verdict.reason.contains("xxxx"), "{}", verdict.reason);
        }
    }

    #[test]
    fn a_notification_that_cannot_fit_without_default_payload_is_failed() {
        let browser = Browser::new();
        let mut n = fixture("message-ios.json", browser.device(json!({"default_payload": {"session": "s1"}})));
        n.event_id = Some(format!("${}", "e".repeat(5000)));
        let verdict = app_with(json!({})).prepare(&n, &n.devices[0], 0).unwrap_err();
        assert_eq!(verdict.outcome, Outcome::Failed, "{}", verdict.reason);
    }

    #[test]
    fn headers() {
        let browser = Browser::new();
        let n = fixture("message-ios.json", browser.device(json!({})));
        let prepared = app_with(json!({})).prepare(&n, &n.devices[0], 0).unwrap();
        let r = &prepared.request;
        assert_eq!(r.url, "https://eu.push.example.net/wpush/v2/abc");
        assert_eq!(r.header("ttl"), Some("900"));
        assert_eq!(r.header("urgency"), Some("high"));
        assert_eq!(r.header("content-encoding"), Some("aes128gcm"));
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        assert_eq!(r.header("topic"), None);
        assert_eq!(r.header("authorization"), None, "added by the dispatcher");
        let key = prepared.token_key.unwrap();
        assert!(key.starts_with("vapid:") && key.ends_with(":https://eu.push.example.net"), "{key}");

        let low = notification(json!({"notification": {
            "event_id": "$e", "room_id": "!room:example.org", "prio": "low",
            "devices": [browser.device(json!({"only_last_per_room": true}))]}}));
        let prepared = app_with(json!({"ttl": 60})).prepare(&low, &low.devices[0], 0).unwrap();
        let r = &prepared.request;
        assert_eq!(r.header("ttl"), Some("60"));
        assert_eq!(r.header("urgency"), Some("normal"), "RFC 8030: a chat message the user will see");
        let topic = r.header("topic").unwrap();
        assert_eq!(topic, &URL_SAFE_NO_PAD.encode(Sha256::digest(b"!room:example.org"))[..32]);
        assert!(topic.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    fn header_of(app: &WebPushApp, n: &Notification, name: &str) -> Option<String> {
        app.prepare(n, &n.devices[0], 0).unwrap().request.header(name).map(str::to_string)
    }

    #[test]
    fn urgency_is_low_for_a_push_without_an_event() {
        let browser = Browser::new();
        for data in [json!({}), json!({"disable_badge_count": true})] {
            let n = notification(json!({"notification": {"counts": {"unread": 1}, "prio": "high", "devices": [browser.device(data.clone())]}}));
            assert_eq!(header_of(&app_with(json!({})), &n, "urgency").as_deref(), Some("low"), "{data}");
        }
    }

    #[test]
    fn counts_off_leave_unread_and_missed_calls_out() {
        let browser = Browser::new();
        for (app, data) in [
            (app_with(json!({})), json!({"org.matrix.msc4076.disable_badge_count": true})),
            (app_with(json!({"send_badge_counts": false})), json!({"format": "event_id_only"})),
        ] {
            let mut n = fixture("message-ios.json", browser.device(data.clone()));
            n.counts.missed_calls = Some(4);
            let sent = sent_plaintext(&app, &browser, &n);
            assert!(sent.get("unread").is_none() && sent.get("missed_calls").is_none(), "{data}: {sent}");
            assert_eq!(sent["event_id"], "$c_S3Dbae4d34xgwTHsXztzA9NxxLqspUJNES7lttZhU");
        }
        // No event and counts off: a quiet push with default_payload and prio only.
        let n = notification(json!({"notification": {"counts": {"unread": 3}, "devices": [
            browser.device(json!({"disable_badge_count": true, "default_payload": {"session_id": "s1"}}))]}}));
        assert_eq!(sent_plaintext(&app_with(json!({})), &browser, &n), json!({"session_id": "s1", "prio": "high"}));
    }

    #[test]
    fn collapse_per_room_sets_a_topic_but_never_for_a_ring_or_a_badge_update() {
        let browser = Browser::new();
        let collapsing = app_with(json!({"collapse_per_room": true}));
        let mut n = fixture("message-ios.json", browser.device(json!({})));
        let topic = header_of(&collapsing, &n, "topic").unwrap();
        assert_eq!(topic, &URL_SAFE_NO_PAD.encode(Sha256::digest(n.room_id.clone().unwrap().as_bytes()))[..32]);
        assert_eq!(header_of(&app_with(json!({})), &n, "topic"), None, "off by default");
        for call in ["m.call.invite", "m.rtc.notification"] {
            n.event_type = Some(call.into());
            assert_eq!(header_of(&collapsing, &n, "topic"), None, "{call}");
        }
        let badge = notification(json!({"notification": {"room_id": "!r:x", "counts": {"unread": 1}, "devices": [
            browser.device(json!({"only_last_per_room": true}))]}}));
        assert_eq!(header_of(&app_with(json!({})), &badge, "topic"), None, "a badge update must not replace a message");
    }

    #[test]
    fn apps_with_different_keys_do_not_share_tokens() {
        let browser = Browser::new();
        let n = fixture("message-ios.json", browser.device(json!({})));
        let other_key = URL_SAFE_NO_PAD.encode([8u8; 32]);
        let secrets = move |_: &str| Some(other_key.clone());
        let config = serde_json::from_value(json!({"vapid_private_key_secret": "K", "vapid_contact": "mailto:a@b.c", "allowed_endpoints": ["*.push.example.net"]})).unwrap();
        let other = WebPushApp::new(config, &secrets).unwrap();
        let key = |app: &WebPushApp| app.prepare(&n, &n.devices[0], 0).unwrap().token_key;
        assert_ne!(key(&app_with(json!({}))), key(&other));
    }

    #[test]
    fn unusable_subscriptions_are_rejected_without_a_request() {
        let browser = Browser::new();
        let app = app_with(json!({}));
        let mut bad_pushkey = browser.device(json!({}));
        bad_pushkey["pushkey"] = json!("not-a-key");
        let cases = [
            (browser.device(json!({"endpoint": null})), "data.endpoint"),
            (browser.device(json!({"endpoint": 5})), "data.endpoint"),
            (browser.device(json!({"auth": null})), "data.auth"),
            (browser.device(json!({"auth": "c2hvcnQ"})), "data.auth"),
            (browser.device(json!({"auth": "!!!"})), "data.auth"),
            (bad_pushkey, "pushkey"),
            (browser.device(json!({"endpoint": "https://evil.example.com/x"})), "allowed_endpoints"),
            (browser.device(json!({"endpoint": "http://eu.push.example.net/x"})), "allowed_endpoints"),
            (browser.device(json!({"default_payload": "x"})), "default_payload"),
        ];
        for (device, needle) in cases {
            let mut device = device;
            if device["data"]["endpoint"].is_null() {
                device["data"].as_object_mut().unwrap().remove("endpoint");
            }
            if device["data"]["auth"].is_null() {
                device["data"].as_object_mut().unwrap().remove("auth");
            }
            let n = fixture("message-ios.json", device.clone());
            let verdict = app.prepare(&n, &n.devices[0], 0).unwrap_err();
            assert_eq!(verdict.outcome, Outcome::Rejected, "{device}");
            assert!(verdict.reason.contains(needle), "{device}: {}", verdict.reason);
            assert!(!verdict.reason.contains(&browser.pushkey()));
        }
        // Without a list, only public https hosts.
        let open = app_with(json!({"allowed_endpoints": null}));
        for (endpoint, ok) in [
            ("https://fcm.googleapis.com/fcm/send/x", true),
            ("http://127.0.0.1:9000/x", false),
            ("https://[::1]/x", false),
            ("https://localhost/x", false),
        ] {
            let n = fixture("message-ios.json", browser.device(json!({"endpoint": endpoint})));
            assert_eq!(open.prepare(&n, &n.devices[0], 0).is_ok(), ok, "{endpoint}");
        }
    }

    #[test]
    fn vapid_token_verifies_with_the_public_key() {
        let app = app_with(json!({}));
        let browser = Browser::new();
        let n = fixture("message-ios.json", browser.device(json!({"endpoint": "http://127.0.0.1:9000/push/1"})));
        let prepared = app.prepare(&n, &n.devices[0], 0).unwrap();
        let now = 1_800_000_000;
        let minted = app.mint(&prepared, now).unwrap();
        assert_eq!(minted.renew_at, now + 12 * 3600);
        assert_eq!(minted.valid_until, now + 12 * 3600 + 1800);

        let public = SecretKey::from_slice(&VAPID_PRIVATE).unwrap().public_key();
        let verifying = p256::ecdsa::VerifyingKey::from(&public);
        let token = UntrustedToken::new(&minted.value).unwrap();
        assert_eq!(token.algorithm(), "ES256");
        #[derive(serde::Deserialize)]
        struct AudSub {
            aud: String,
            sub: String,
        }
        let valid = Es256.validator::<AudSub>(&verifying).validate(&token).unwrap();
        let claims = valid.claims();
        assert_eq!(claims.custom.aud, "http://127.0.0.1:9000");
        assert_eq!(claims.custom.sub, "mailto:ops@example.com");
        let exp = u64::try_from(claims.expiration.unwrap().timestamp()).unwrap();
        assert_eq!(exp, now + 13 * 3600);
        assert!(exp - now <= 24 * 3600);
        let other_key = p256::ecdsa::VerifyingKey::from(&SecretKey::from_slice(&[8; 32]).unwrap().public_key());
        assert!(Es256.validator::<AudSub>(&other_key).validate(&token).is_err());

        let header = app.authorization(&minted.value);
        let k = URL_SAFE_NO_PAD.encode(public.to_encoded_point(false).as_bytes());
        assert_eq!(header, format!("vapid t={}, k={k}", minted.value));
        assert_eq!(app.public_key(), k);
    }

    #[test]
    fn vapid_key_formats() {
        let secret = SecretKey::from_slice(&VAPID_PRIVATE).unwrap();
        let pkcs8 = secret.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let sec1 = secret.to_sec1_pem(LineEnding::LF).unwrap().to_string();
        let expected = URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes());
        for raw in [
            pkcs8.clone(),
            pkcs8.replace('\n', "\\n"),
            sec1,
            URL_SAFE_NO_PAD.encode(VAPID_PRIVATE),
            format!("{}=", base64::engine::general_purpose::STANDARD.encode(VAPID_PRIVATE)),
        ] {
            let key = VapidKey::parse(&raw).unwrap_or_else(|| panic!("{raw}"));
            assert_eq!(key.public_b64, expected);
            assert!(!format!("{key:?}").contains(&URL_SAFE_NO_PAD.encode(VAPID_PRIVATE)));
        }
        let load = |value: &str| {
            let value = value.to_string();
            let config = serde_json::from_value(json!({"vapid_private_key_secret": "VAPID_KEY", "vapid_contact": "mailto:a@b.c"})).unwrap();
            WebPushApp::new(config, &move |_: &str| Some(value.clone())).map(|_| ())
        };
        for bad in ["short", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", &URL_SAFE_NO_PAD.encode([0u8; 32])] {
            let err = load(bad).unwrap_err();
            assert!(err.contains("vapid_private_key_secret") && err.contains("VAPID_KEY") && !err.contains(bad), "{err}");
        }
        let config = serde_json::from_value(json!({"vapid_private_key_secret": "VAPID_KEY", "vapid_contact": "mailto:a@b.c"})).unwrap();
        assert!(WebPushApp::new(config, &|_: &str| None).unwrap_err().contains("VAPID_KEY"));
        let config = serde_json::from_value(json!({"vapid_private_key_secret": "K", "vapid_contact": "ops@example.com"})).unwrap();
        let key = URL_SAFE_NO_PAD.encode(VAPID_PRIVATE);
        assert!(WebPushApp::new(config, &move |_: &str| Some(key.clone())).unwrap_err().contains("vapid_contact"));
        let config = serde_json::from_value(json!({"vapid_private_key_secret": "K", "vapid_contact": "mailto:a@b.c", "allowed_endpoints": ["ok.example", "ftp://x"]})).unwrap();
        let key = URL_SAFE_NO_PAD.encode(VAPID_PRIVATE);
        assert!(WebPushApp::new(config, &move |_: &str| Some(key.clone())).unwrap_err().contains("allowed_endpoints[1]"));
    }

    #[test]
    fn app_debug_hides_the_private_key() {
        let debug = format!("{:?}", app_with(json!({})));
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains(&URL_SAFE_NO_PAD.encode(VAPID_PRIVATE)));
        assert!(!debug.contains("signing"));
    }

    #[test]
    fn classify_follows_design() {
        let retry = ProviderResponse { status: 429, headers: vec![("retry-after".into(), "2".into())], body: vec![] };
        assert_eq!(
            classify(&retry).outcome,
            Outcome::Transient { retry_after: Some(std::time::Duration::from_secs(2)) }
        );
        const CASES: &[(u16, Outcome)] = &[
            (200, Outcome::Delivered),
            (201, Outcome::Delivered),
            (202, Outcome::Delivered),
            (404, Outcome::Rejected),
            (410, Outcome::Rejected),
            (401, Outcome::Failed),
            (403, Outcome::Failed),
            (413, Outcome::Failed),
            (400, Outcome::Failed),
            (301, Outcome::Failed),
            (429, Outcome::Transient { retry_after: None }),
            (500, Outcome::Transient { retry_after: None }),
            (503, Outcome::Transient { retry_after: None }),
        ];
        for &(status, outcome) in CASES {
            let response = ProviderResponse { status, ..Default::default() };
            assert_eq!(classify(&response).outcome, outcome, "{status}");
        }
    }
}
