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
#[cfg(not(target_arch = "wasm32"))]
use jwt_compact::alg::{Es256, Rsa, StrongAlg, StrongKey};
#[cfg(not(target_arch = "wasm32"))]
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
    #[cfg(not(target_arch = "wasm32"))]
    Es256(SigningKey),
    /// In the worker ES256 is signed by WebCrypto only: loading a key does
    /// no curve arithmetic (see `es256_from_pkcs8_pem`).
    #[cfg(target_arch = "wasm32")]
    Es256,
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
            #[cfg(not(target_arch = "wasm32"))]
            in_process: InProcessKey::Es256(key),
            #[cfg(target_arch = "wasm32")]
            in_process: InProcessKey::Es256,
        })
    }

    /// An ES256 key from a PKCS#8 PEM (an APNs `.p8`).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn es256_from_pkcs8_pem(pem: &str) -> Result<Self, String> {
        use p256::pkcs8::DecodePrivateKey as _;
        Self::es256(SigningKey::from_pkcs8_pem(pem).map_err(|e| e.to_string())?)
    }

    /// The worker's ES256 key from a PKCS#8 PEM: its structure is checked (a
    /// P-256 private key, the scalar in range) and it is kept as DER for
    /// WebCrypto, which checks the key pair when it imports it (as for RSA).
    /// No curve arithmetic unless the PEM lacks its public key: the first
    /// scalar multiplication in an isolate costs ~8 ms of CPU, most of it
    /// compiling the field arithmetic.
    #[cfg(target_arch = "wasm32")]
    pub fn es256_from_pkcs8_pem(pem: &str) -> Result<Self, String> {
        let (der, public) = es256_pkcs8_parts(pem)?;
        Ok(Self { alg: JwtAlg::Es256, id: key_id("es256", &public), pkcs8_der: der, in_process: InProcessKey::Es256 })
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
            #[cfg(not(target_arch = "wasm32"))]
            InProcessKey::Es256(key) => Ok(Es256.sign(key, message).as_bytes().to_vec()),
            #[cfg(not(target_arch = "wasm32"))]
            InProcessKey::Rs256(key) => Ok(StrongAlg(Rsa::rs256()).sign(key.as_ref(), message).as_bytes().to_vec()),
            #[cfg(target_arch = "wasm32")]
            InProcessKey::Es256 | InProcessKey::Rs256 => {
                let _ = message;
                Err(format!("{} is signed by WebCrypto in the worker", self.alg.name()))
            }
        }
    }
}

/// A P-256 PKCS#8 PEM's DER and its public key (SEC1), the public key taken
/// from the DER when present (WebCrypto checks that it matches).
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
fn es256_pkcs8_parts(pem: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    use p256::elliptic_curve::ALGORITHM_OID;
    use p256::pkcs8::der::Decode as _;
    use p256::pkcs8::{AssociatedOid as _, PrivateKeyInfo};
    let (label, der) = p256::pkcs8::der::pem::decode_vec(pem.as_bytes()).map_err(|e| e.to_string())?;
    if label != "PRIVATE KEY" {
        return Err(format!("the PEM holds a {label:?}, not a \"PRIVATE KEY\""));
    }
    let info = PrivateKeyInfo::from_der(&der).map_err(|e| e.to_string())?;
    info.algorithm.assert_oids(ALGORITHM_OID, p256::NistP256::OID).map_err(|e| e.to_string())?;
    let ec = sec1::EcPrivateKey::from_der(info.private_key).map_err(|e| e.to_string())?;
    let secret = p256::SecretKey::from_slice(ec.private_key).map_err(|_| "the private scalar is out of range".to_string())?;
    let public = match ec.public_key {
        Some(public) => public.to_vec(),
        None => secret.public_key().to_sec1_bytes().to_vec(),
    };
    Ok((der, public))
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

    #[test]
    fn worker_es256_parts_match_the_full_parse() {
        use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
        let secret = p256::SecretKey::from_slice(&[5u8; 32]).unwrap();
        let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let full = JwtKey::es256_from_pkcs8_pem(&pem).unwrap();
        let (der, public) = es256_pkcs8_parts(&pem).unwrap();
        assert_eq!(key_id("es256", &public), full.id());
        assert_eq!(der, full.pkcs8_der());
        // Without its public key, the key's id is the same (derived).
        let scalar = secret.to_bytes();
        let bare = sec1::EcPrivateKey { private_key: &scalar, parameters: None, public_key: None };
        let bare_der = sec1::der::Encode::to_der(&bare).unwrap();
        let algorithm = p256::pkcs8::AlgorithmIdentifierRef {
            oid: p256::elliptic_curve::ALGORITHM_OID,
            parameters: Some((&<p256::NistP256 as p256::pkcs8::AssociatedOid>::OID).into()),
        };
        let bare_info = p256::pkcs8::PrivateKeyInfo::new(algorithm, &bare_der);
        let bare_pem = p256::pkcs8::der::EncodePem::to_pem(&bare_info, LineEnding::LF).unwrap();
        assert_eq!(key_id("es256", &es256_pkcs8_parts(&bare_pem).unwrap().1), full.id());
        let rsa_like = pem.replace("PRIVATE KEY", "RSA PRIVATE KEY");
        assert!(es256_pkcs8_parts(&rsa_like).is_err());
        assert!(es256_pkcs8_parts("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
    }
}
