//! FCM's credentials: a Google service account, whose key signs an RS256
//! assertion that Google's token endpoint (`token_uri`) exchanges for an
//! OAuth access token (design §8.1). The assertion is signed by the
//! transport's signer; the dispatcher caches the token under
//! [`FcmApp::token_key`].

use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::FcmApp;
use crate::providers::jwt::{JwtKey, JwtToSign};
use crate::providers::{
    normalize_pem, provider_text, AnswerBody, MintedToken, OutRequest, Outcome, ProviderResponse, UnixSecs, Verdict,
};

const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The one OAuth scope FCM sends need.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`, form-encoded.
const JWT_BEARER_GRANT: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";

/// Google accepts assertions valid for at most an hour.
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// An access token is dropped this long before Google says it expires, so a
/// send never races its expiry.
const TOKEN_EXPIRY_MARGIN_SECS: u64 = 300;
/// ...but is always kept at least this long, so a short `expires_in` does not
/// make every send fetch a new one.
const TOKEN_MIN_LIFETIME_SECS: u64 = 60;

/// What edgepush uses of a service-account key file.
pub(super) struct ServiceAccount {
    pub(super) client_email: String,
    pub(super) token_uri: String,
    key: Rc<JwtKey>,
}

impl ServiceAccount {
    pub(super) fn parse(raw: &str) -> Result<Self, String> {
        let file: Value = serde_json::from_str(raw.trim())
            .map_err(|_| "is not JSON: it must hold the service-account key file".to_string())?;
        let field = |name: &str| -> Result<Option<&str>, String> {
            match file.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim())),
                Some(_) => Err(format!("has a field `{name}` that is not a non-empty string")),
            }
        };
        if !file.is_object() {
            return Err("is not a JSON object: it must hold the service-account key file".into());
        }
        let client_email = field("client_email")?.ok_or("lacks the field `client_email`")?.to_string();
        let pem = field("private_key")?.ok_or("lacks the field `private_key`")?;
        let token_uri = field("token_uri")?.unwrap_or(DEFAULT_TOKEN_URI).to_string();
        if !(token_uri.starts_with("https://") || token_uri.starts_with("http://")) {
            return Err("has a `token_uri` that is not an http(s) URL".into());
        }
        let pem = normalize_pem(pem);
        let key = JwtKey::rs256_from_pem(&pem).map_err(|e| format!("has a `private_key` that {e}"))?;
        Ok(Self { client_email, token_uri, key: Rc::new(key) })
    }
}

/// The claims of the OAuth assertion, exactly as Google reads them
/// (`iat` / `exp` in Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssertionClaims {
    pub iss: String,
    pub scope: String,
    pub aud: String,
    pub iat: UnixSecs,
    pub exp: UnixSecs,
}

impl FcmApp {
    /// The claims of the assertion minted at `now`: kept apart from signing so
    /// another signer (e.g. WebCrypto in the worker) can sign the same claims.
    pub fn assertion_claims(&self, now: UnixSecs) -> AssertionClaims {
        AssertionClaims {
            iss: self.account.client_email.clone(),
            scope: SCOPE.to_string(),
            aud: self.account.token_uri.clone(),
            iat: now,
            exp: now.saturating_add(ASSERTION_LIFETIME_SECS),
        }
    }

    /// The RS256 assertion (`{"alg":"RS256","typ":"JWT"}`) for `now`.
    #[cfg(test)]
    pub fn assertion(&self, now: UnixSecs) -> Result<String, Verdict> {
        self.assertion_to_sign(now)?.sign_in_process()
    }

    /// The assertion of `assertion`, to be signed by the transport's signer.
    pub fn assertion_to_sign(&self, now: UnixSecs) -> Result<JwtToSign, Verdict> {
        JwtToSign::new(self.account.key.clone(), None, Some("JWT"), &self.assertion_claims(now))
    }

    /// The OAuth exchange: the assertion posted to `token_uri`.
    #[cfg(test)]
    pub fn token_request(&self, now: UnixSecs) -> Result<OutRequest, Verdict> {
        Ok(self.token_request_with(&self.assertion(now)?))
    }

    /// The OAuth exchange for a signed assertion.
    pub fn token_request_with(&self, assertion: &str) -> OutRequest {
        OutRequest {
            url: self.account.token_uri.clone(),
            headers: vec![("content-type".into(), "application/x-www-form-urlencoded".into())],
            // The assertion is base64url and dots: nothing to escape.
            body: format!("grant_type={JWT_BEARER_GRANT}&assertion={assertion}").into_bytes(),
            answer_body: AnswerBody::Read,
        }
    }

    /// Read the token endpoint's answer. "A token endpoint that is down is
    /// `Transient`; one that refuses the assertion (`invalid_grant`) is `Failed`."
    pub fn read_token_response(&self, response: &ProviderResponse, now: UnixSecs) -> Result<MintedToken, Verdict> {
        read_token_response(response, now)
    }
}

pub(super) fn read_token_response(response: &ProviderResponse, now: UnixSecs) -> Result<MintedToken, Verdict> {
    let status = response.status;
    if status == 429 || (500..=599).contains(&status) {
        return Err(Verdict::new(
            Outcome::Transient { retry_after: response.retry_after() },
            format!("token endpoint answered {status}"),
        ));
    }
    if status != 200 {
        let refusal: TokenRefusal = serde_json::from_slice(&response.body).unwrap_or_default();
        return Err(Verdict::failed(format!(
            "token endpoint refused the service account's assertion ({status} {})",
            refusal.describe()
        )));
    }
    let grant: TokenGrant = serde_json::from_slice(&response.body)
        .map_err(|_| Verdict::failed("token endpoint answered 200 without access_token and expires_in"))?;
    let usable = !grant.access_token.is_empty() && grant.access_token.bytes().all(|b| b.is_ascii_graphic());
    if !usable {
        return Err(Verdict::failed("token endpoint answered an access_token that is not a bearer token"));
    }
    if grant.expires_in == 0 {
        return Err(Verdict::failed("token endpoint answered expires_in 0"));
    }
    let lifetime = grant
        .expires_in
        .saturating_sub(TOKEN_EXPIRY_MARGIN_SECS)
        .max(TOKEN_MIN_LIFETIME_SECS.min(grant.expires_in));
    // Renewed ahead: one caller fetches the next token while the others keep
    // using this one.
    let renew_at = now.saturating_add(lifetime - (lifetime / 2).min(TOKEN_EXPIRY_MARGIN_SECS));
    Ok(MintedToken { value: grant.access_token, renew_at, valid_until: now.saturating_add(lifetime) })
}

#[derive(Deserialize)]
struct TokenGrant {
    access_token: String,
    expires_in: u64,
}

/// RFC 6749 §5.2 error body, e.g. `{"error":"invalid_grant","error_description":"Invalid JWT Signature."}`.
#[derive(Deserialize, Default)]
struct TokenRefusal {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

impl TokenRefusal {
    /// The error code and Google's explanation, which names the claim at
    /// fault and never echoes the assertion.
    fn describe(&self) -> String {
        let code = self.error.as_deref().map_or("no error code", provider_text);
        match self.error_description.as_deref() {
            Some(why) => format!("{code}: {}", provider_text(why)),
            None => code.to_string(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use jwt_compact::alg::{Rsa, StrongAlg, StrongKey};
    use jwt_compact::AlgorithmExt as _;
    use jwt_compact::UntrustedToken;
    use rsa::pkcs8::DecodePrivateKey as _;
    use rsa::RsaPrivateKey;
    use serde_json::{json, Map};
    use std::time::Duration;

    use super::*;
    use crate::providers::fcm::tests::{app, config, load_with, response, service_account_json, NOW};

    // --- service account ---

    #[test]
    fn loading_names_the_field_and_never_quotes_the_key() {
        let sa: Value = serde_json::from_str(&service_account_json()).unwrap();
        let without = |field: &str| {
            let mut sa = sa.clone();
            sa.as_object_mut().unwrap().remove(field);
            Some(sa.to_string())
        };
        let with = |field: &str, value: Value| {
            let mut sa = sa.clone();
            sa[field] = value;
            Some(sa.to_string())
        };
        let pem = sa["private_key"].as_str().unwrap();
        let mangled = pem.replace("MII", "XYZ");
        let cases = [
            (None, "FCM_SERVICE_ACCOUNT"),
            (Some("{not json".to_string()), "not JSON"),
            (Some("[1]".to_string()), "not a JSON object"),
            (without("client_email"), "client_email"),
            (without("private_key"), "private_key"),
            (with("private_key", json!(5)), "private_key"),
            (with("private_key", json!(mangled)), "private_key"),
            (with("private_key", json!("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")), "private_key"),
            (with("token_uri", json!("ftp://x")), "token_uri"),
        ];
        for (secret, needle) in cases {
            let error = load_with(config(json!({})), secret).unwrap_err();
            assert!(error.contains(needle), "{error:?} should name {needle}");
            assert!(error.starts_with("service_account_secret"), "{error:?}");
            assert!(!error.contains("MII") && !error.contains("BEGIN"), "{error:?} quotes the key");
        }
    }

    #[test]
    fn one_line_pem_with_literal_newlines_and_default_token_uri() {
        let mut sa: Value = serde_json::from_str(&service_account_json()).unwrap();
        let one_line = sa["private_key"].as_str().unwrap().replace('\n', "\\n");
        sa["private_key"] = json!(one_line);
        sa.as_object_mut().unwrap().remove("token_uri");
        let app = load_with(config(json!({})), Some(sa.to_string())).unwrap();
        assert_eq!(app.token_request(NOW).unwrap().url, DEFAULT_TOKEN_URI);
    }

    // --- OAuth ---

    fn public_key() -> StrongKey<rsa::RsaPublicKey> {
        let sa: Value = serde_json::from_str(&service_account_json()).unwrap();
        let key = RsaPrivateKey::from_pkcs8_pem(sa["private_key"].as_str().unwrap()).unwrap();
        StrongKey::try_from(key.to_public_key()).unwrap()
    }

    fn form_field<'a>(body: &'a str, name: &str) -> &'a str {
        body.split('&').find_map(|pair| pair.strip_prefix(&format!("{name}="))).unwrap()
    }

    #[test]
    fn token_request_posts_a_verifiable_rs256_assertion() {
        let request = app().token_request(NOW).unwrap();
        assert_eq!(request.url, "https://oauth2.googleapis.com/token");
        assert_eq!(request.header("content-type"), Some("application/x-www-form-urlencoded"));
        let body = String::from_utf8(request.body).unwrap();
        assert_eq!(form_field(&body, "grant_type"), "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer");

        let assertion = UntrustedToken::new(form_field(&body, "assertion")).unwrap();
        assert_eq!(assertion.algorithm(), "RS256");
        assert_eq!(assertion.header().token_type.as_deref(), Some("JWT"));
        let key = public_key();
        // jwt-compact reads `iat` / `exp` into its own fields, the rest stays custom.
        let token = StrongAlg(Rsa::rs256()).validator::<Map<String, Value>>(&key).validate(&assertion).unwrap();
        let claims = token.claims();
        assert_eq!(claims.issued_at.map(|t| t.timestamp()), Some(NOW as i64));
        assert_eq!(claims.expiration.map(|t| t.timestamp()), Some(NOW as i64 + 3600));
        assert_eq!(
            Value::Object(claims.custom.clone()),
            json!({
                "iss": "edgepush-test@edgepush-test.iam.gserviceaccount.com",
                "scope": "https://www.googleapis.com/auth/firebase.messaging",
                "aud": "https://oauth2.googleapis.com/token",
            })
        );
    }

    #[test]
    fn an_assertion_signed_by_another_key_does_not_verify() {
        let other = RsaPrivateKey::from_pkcs8_pem(&rsa_test_key_2048()).unwrap();
        let other = StrongKey::try_from(other.to_public_key()).unwrap();
        let jwt = app().assertion(NOW).unwrap();
        let untrusted = UntrustedToken::new(&jwt).unwrap();
        assert!(StrongAlg(Rsa::rs256()).validator::<Map<String, Value>>(&other).validate(&untrusted).is_err());
    }

    /// A second key: the rsa crate's own 2048-bit test key would do, but one
    /// generated here keeps the test self-contained.
    fn rsa_test_key_2048() -> String {
        use rsa::pkcs8::EncodePrivateKey as _;
        let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap().to_string()
    }

    #[test]
    fn token_responses() {
        let app = app();
        let ok = app
            .read_token_response(&response(200, r#"{"access_token":"ya29.abc","expires_in":3599,"token_type":"Bearer"}"#), NOW)
            .unwrap();
        assert_eq!(ok.value, "ya29.abc");
        assert_eq!(ok.valid_until, NOW + 3599 - 300);
        assert_eq!(ok.renew_at, NOW + 3599 - 600, "renewed ahead, while it is still good");
        let short_lived = app.read_token_response(&response(200, r#"{"access_token":"t","expires_in":100}"#), NOW).unwrap();
        assert_eq!(short_lived.valid_until, NOW + 60);
        assert_eq!(short_lived.renew_at, NOW + 30);

        let transient = Outcome::Transient { retry_after: None };
        let cases: &[(u16, &str, Outcome, &str)] = &[
            (400, r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#, Outcome::Failed, "invalid_grant: Invalid JWT Signature."),
            (401, r#"{"error":"unauthorized_client"}"#, Outcome::Failed, "unauthorized_client"),
            (403, "<html>", Outcome::Failed, "no error code"),
            (429, "", transient, "429"),
            (500, "garbage", transient, "500"),
            (503, r#"{"error":"x"}"#, transient, "503"),
            (200, "{}", Outcome::Failed, "access_token"),
            (200, "not json", Outcome::Failed, "access_token"),
            (200, r#"{"access_token":"a b","expires_in":10}"#, Outcome::Failed, "bearer"),
            (200, r#"{"access_token":"","expires_in":10}"#, Outcome::Failed, "bearer"),
            (200, r#"{"access_token":"t","expires_in":0}"#, Outcome::Failed, "expires_in"),
            (200, r#"{"access_token":"t","expires_in":-5}"#, Outcome::Failed, "access_token"),
            (302, "", Outcome::Failed, "302"),
        ];
        for (status, body, outcome, needle) in cases {
            let verdict = app.read_token_response(&response(*status, body), NOW).unwrap_err();
            assert_eq!(verdict.outcome, *outcome, "{status} {body}");
            assert!(verdict.reason.contains(needle), "{status} {body}: {}", verdict.reason);
        }
        let with_retry_after = ProviderResponse { status: 429, headers: vec![("retry-after".into(), "2".into())], body: vec![] };
        assert_eq!(
            app.read_token_response(&with_retry_after, NOW).unwrap_err().outcome,
            Outcome::Transient { retry_after: Some(Duration::from_secs(2)) }
        );
    }
}
