//! Provider JWTs (APNs provider tokens, the FCM OAuth assertion, VAPID),
//! built in one place and signed by whoever signs fastest.
//!
//! The signing input (`base64url(header).base64url(claims)`) is built here
//! from each provider's claims type. The transport then signs it: in the
//! worker with WebCrypto (an RS256 signature in wasm costs ~8 ms of CPU, in
//! WebCrypto a fraction of that), on the host with jwt-compact, so tests
//! verify tokens from both paths with the same jwt-compact verifier.

use std::fmt;
use std::rc::Rc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_compact::alg::Es256;
#[cfg(not(target_arch = "wasm32"))]
use jwt_compact::alg::{Rsa, StrongAlg, StrongKey};
use jwt_compact::{Algorithm as _, AlgorithmSignature as _};
use p256::ecdsa::SigningKey;
use p256::pkcs8::EncodePrivateKey as _;
#[cfg(not(target_arch = "wasm32"))]
use rsa::traits::PublicKeyParts as _;
#[cfg(not(target_arch = "wasm32"))]
use rsa::RsaPrivateKey;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::Verdict;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlg {
    /// ECDSA P-256 with SHA-256 (APNs, VAPID); the signature is raw `r || s`.
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (Google service accounts).
    Rs256,
}

impl JwtAlg {
    pub fn name(self) -> &'static str {
        match self {
            JwtAlg::Es256 => "ES256",
            JwtAlg::Rs256 => "RS256",
        }
    }
}

enum InProcessKey {
    Es256(SigningKey),
    #[cfg(not(target_arch = "wasm32"))]
    Rs256(Box<StrongKey<RsaPrivateKey>>),
    /// In the worker RS256 is signed by WebCrypto only: the RSA arithmetic
    /// stays out of the wasm bundle.
    #[cfg(target_arch = "wasm32")]
    Rs256,
}

/// A signing key, parsed once per isolate, in both forms a signer needs.
pub struct JwtKey {
    alg: JwtAlg,
    /// Names the key in a signer's cache of imported keys: a hash of the
    /// public half, so it reveals nothing.
    id: String,
    pkcs8_der: Vec<u8>,
    in_process: InProcessKey,
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JwtKey({}, id={}, <redacted>)", self.alg.name(), self.id)
    }
}

impl JwtKey {
    pub fn es256(key: SigningKey) -> Result<Self, String> {
        let secret = p256::SecretKey::from(&key);
        let der = secret.to_pkcs8_der().map_err(|e| format!("the key cannot be encoded as PKCS#8: {e}"))?;
        let public = secret.public_key().to_sec1_bytes();
        Ok(Self {
            alg: JwtAlg::Es256,
            id: key_id("es256", &public),
            pkcs8_der: der.as_bytes().to_vec(),
            in_process: InProcessKey::Es256(key),
        })
    }

    /// An RS256 key from a PEM, PKCS#8 (`PRIVATE KEY`, what Google issues)
    /// or PKCS#1 (`RSA PRIVATE KEY`).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn rs256_from_pem(pem: &str) -> Result<Self, String> {
        use rsa::pkcs1::DecodeRsaPrivateKey as _;
        use rsa::pkcs8::DecodePrivateKey as _;
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| "is not an RSA private key in PEM (PKCS#8 or PKCS#1)".to_string())?;
        let der = key.to_pkcs8_der().map_err(|e| format!("cannot be encoded as PKCS#8: {e}"))?;
        let id = key_id("rs256", &key.n().to_bytes_be());
        let strong = StrongKey::try_from(key).map_err(|_| rsa_size_error())?;
        Ok(Self {
            alg: JwtAlg::Rs256,
            id,
            pkcs8_der: der.as_bytes().to_vec(),
            in_process: InProcessKey::Rs256(Box::new(strong)),
        })
    }

    /// The worker's RS256 key: the PEM's structure is checked (an RSA key of
    /// at least 2048 bits) and kept as PKCS#8 DER for WebCrypto.
    #[cfg(target_arch = "wasm32")]
    pub fn rs256_from_pem(pem: &str) -> Result<Self, String> {
        use rsa::pkcs8::der::{Decode as _, Encode as _};
        use rsa::pkcs8::PrivateKeyInfo;
        let not_rsa = || "is not an RSA private key in PEM (PKCS#8 or PKCS#1)".to_string();
        let (label, der) = rsa::pkcs8::der::pem::decode_vec(pem.as_bytes()).map_err(|_| not_rsa())?;
        let pkcs8_der = match label {
            "PRIVATE KEY" => {
                let info = PrivateKeyInfo::from_der(&der).map_err(|_| not_rsa())?;
                if info.algorithm.oid != rsa::pkcs1::ALGORITHM_OID {
                    return Err(not_rsa());
                }
                der.clone()
            }
            "RSA PRIVATE KEY" => PrivateKeyInfo::new(rsa::pkcs1::ALGORITHM_ID, &der).to_der().map_err(|_| not_rsa())?,
            _ => return Err(not_rsa()),
        };
        let info = PrivateKeyInfo::from_der(&pkcs8_der).map_err(|_| not_rsa())?;
        let key = rsa::pkcs1::RsaPrivateKey::from_der(info.private_key).map_err(|_| not_rsa())?;
        let modulus = key.modulus.as_bytes();
        if modulus.len() * 8 < 2048 {
            return Err(rsa_size_error());
        }
        Ok(Self { alg: JwtAlg::Rs256, id: key_id("rs256", modulus), pkcs8_der, in_process: InProcessKey::Rs256 })
    }

    pub fn alg(&self) -> JwtAlg {
        self.alg
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The private key as PKCS#8 DER, for a signer that imports it.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8_der
    }

    /// Sign with jwt-compact, in this process.
    pub fn sign_in_process(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        match &self.in_process {
            InProcessKey::Es256(key) => Ok(Es256.sign(key, message).as_bytes().to_vec()),
            #[cfg(not(target_arch = "wasm32"))]
            InProcessKey::Rs256(key) => Ok(StrongAlg(Rsa::rs256()).sign(key.as_ref(), message).as_bytes().to_vec()),
            #[cfg(target_arch = "wasm32")]
            InProcessKey::Rs256 => Err("RS256 is signed by WebCrypto in the worker".into()),
        }
    }
}

fn rsa_size_error() -> String {
    "is an RSA key shorter than 2048 bits".into()
}

fn key_id(alg: &str, public: &[u8]) -> String {
    let digest = Sha256::digest(public);
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{alg}:{hex}")
}

/// The JOSE header of every token edgepush signs.
#[derive(Serialize)]
struct JoseHeader<'a> {
    alg: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    typ: Option<&'a str>,
}

/// A JWT awaiting its signature.
#[derive(Debug, Clone)]
pub struct JwtToSign {
    pub key: Rc<JwtKey>,
    /// `base64url(header) . base64url(claims)`.
    pub signing_input: String,
}

impl JwtToSign {
    pub fn new<C: Serialize>(key: Rc<JwtKey>, kid: Option<&str>, typ: Option<&str>, claims: &C) -> Result<Self, Verdict> {
        let header = JoseHeader { alg: key.alg.name(), kid, typ };
        let header = b64_json(&header).map_err(|e| Verdict::failed(format!("JWT header does not serialize: {e}")))?;
        let claims = b64_json(claims).map_err(|e| Verdict::failed(format!("JWT claims do not serialize: {e}")))?;
        Ok(Self { key, signing_input: format!("{header}.{claims}") })
    }

    /// The compact JWT, given the signature of `signing_input`.
    pub fn finish(&self, signature: &[u8]) -> String {
        format!("{}.{}", self.signing_input, URL_SAFE_NO_PAD.encode(signature))
    }

    /// Sign with jwt-compact here and now.
    pub fn sign_in_process(&self) -> Result<String, Verdict> {
        let signature = self
            .key
            .sign_in_process(self.signing_input.as_bytes())
            .map_err(|e| Verdict::failed(format!("signing a {} token failed: {e}", self.key.alg.name())))?;
        Ok(self.finish(&signature))
    }
}

fn b64_json<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    serde_json::to_vec(value).map(|bytes| URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use jwt_compact::{AlgorithmExt as _, UntrustedToken};
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Claims {
        iss: String,
    }

    #[derive(Serialize)]
    struct WithIat<'a> {
        iss: &'a str,
        iat: u64,
    }

    #[test]
    fn es256_token_verifies_with_jwt_compact() {
        let signing = SigningKey::from_slice(&[3u8; 32]).unwrap();
        let verifying = *signing.verifying_key();
        let key = Rc::new(JwtKey::es256(signing).unwrap());
        let claims = WithIat { iss: "TEAM", iat: 1_800_000_000 };
        let token = JwtToSign::new(key.clone(), Some("KEY"), None, &claims).unwrap().sign_in_process().unwrap();
        let untrusted = UntrustedToken::new(&token).unwrap();
        assert_eq!(untrusted.algorithm(), "ES256");
        assert_eq!(untrusted.header().key_id.as_deref(), Some("KEY"));
        let verified = Es256.validator::<Claims>(&verifying).validate(&untrusted).unwrap();
        assert_eq!(verified.claims().custom, Claims { iss: "TEAM".into() });
        assert_eq!(verified.claims().issued_at.map(|t| t.timestamp()), Some(1_800_000_000));
        assert!(key.id().starts_with("es256:"));
        assert!(!format!("{key:?}").contains(&URL_SAFE_NO_PAD.encode(key.pkcs8_der())));
    }
}
