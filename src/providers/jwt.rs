//! Provider JWTs (APNs provider tokens, the FCM OAuth assertion, VAPID),
//! built in one place and signed where it suits each token.
//!
//! The signing input (`base64url(header).base64url(claims)`) is built here
//! from each provider's claims type. Then:
//! - APNs provider tokens are signed here, in process, with ECDSA per
//!   RFC 6979 (RustCrypto `p256`): the signature is a function of the key and
//!   the claims, and the claims of a window are the same everywhere, so every
//!   isolate that mints in the same 30-minute window makes the same token,
//!   byte for byte, and Apple sees one token per window whatever KV does;
//! - RS256 (the FCM assertion) and VAPID are signed in the worker by
//!   WebCrypto (an RS256 signature in wasm costs ~8 ms of CPU, in WebCrypto a
//!   fraction of that), on the host with jwt-compact, so tests verify tokens
//!   from both paths with the same jwt-compact verifier.

use std::fmt;
use std::rc::Rc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
#[cfg(not(target_arch = "wasm32"))]
use jwt_compact::alg::{Rsa, StrongAlg, StrongKey};
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
use crate::fingerprint::{fingerprint, hex};

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
    /// The private scalar, checked in range when the key loads. Signing uses
    /// it directly (`p256`'s ECDSA primitive, RFC 6979 nonces, the same
    /// signature as `SigningKey`'s): a signing key would derive the public
    /// key, a scalar multiplication nobody needs, and loading `APPS` does no
    /// curve arithmetic at all.
    Es256(p256::SecretKey),
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
    /// Signed in process everywhere (RFC 6979: the same claims give the same
    /// token in every isolate), never by WebCrypto (whose ECDSA is randomised).
    deterministic: bool,
    in_process: InProcessKey,
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JwtKey({}, id={}, <redacted>)", self.alg.name(), self.id)
    }
}

impl JwtKey {
    /// An ES256 key signed by the runtime's signer (WebCrypto in the worker):
    /// VAPID, whose tokens stay in one isolate and need not be reproducible.
    pub fn es256(key: SigningKey) -> Result<Self, String> {
        let secret = p256::SecretKey::from(&key);
        let der = secret.to_pkcs8_der().map_err(|e| format!("the key cannot be encoded as PKCS#8: {e}"))?;
        let public = secret.public_key().to_sec1_bytes();
        Ok(Self {
            alg: JwtAlg::Es256,
            id: key_id("es256", &public),
            pkcs8_der: der.as_bytes().to_vec(),
            deterministic: false,
            in_process: InProcessKey::Es256(secret),
        })
    }

    /// An ES256 key from a PKCS#8 PEM (an APNs `.p8`), signed in process and
    /// deterministically. Its structure is checked (a P-256 private key, the
    /// scalar in range) without curve arithmetic, unless the PEM lacks its
    /// public key: loading `APPS` stays cheap, and the arithmetic waits for
    /// the first mint.
    pub fn es256_from_pkcs8_pem(pem: &str) -> Result<Self, String> {
        let (der, public, secret) = es256_pkcs8_parts(pem)?;
        Ok(Self {
            alg: JwtAlg::Es256,
            id: key_id("es256", &public),
            pkcs8_der: der,
            deterministic: true,
            in_process: InProcessKey::Es256(secret),
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
            deterministic: false,
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
        Ok(Self {
            alg: JwtAlg::Rs256,
            id: key_id("rs256", modulus),
            pkcs8_der,
            deterministic: false,
            in_process: InProcessKey::Rs256,
        })
    }

    pub fn alg(&self) -> JwtAlg {
        self.alg
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this key's tokens must be signed in process (RFC 6979), never
    /// by a randomised signer.
    pub fn is_deterministic(&self) -> bool {
        self.deterministic
    }

    /// The private key as PKCS#8 DER, for a signer that imports it.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8_der
    }

    /// Sign in this process: ES256 with `p256` (deterministic, RFC 6979) on
    /// every target, RS256 with jwt-compact on the host.
    pub fn sign_in_process(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        match &self.in_process {
            InProcessKey::Es256(secret) => {
                use ecdsa::hazmat::{bits2field, SignPrimitive as _};
                let z = bits2field::<p256::NistP256>(&Sha256::digest(message)).map_err(|e| e.to_string())?;
                let (signature, _) =
                    secret.to_nonzero_scalar().try_sign_prehashed_rfc6979::<Sha256>(&z, &[]).map_err(|e| e.to_string())?;
                Ok(signature.to_bytes().to_vec())
            }
            #[cfg(not(target_arch = "wasm32"))]
            InProcessKey::Rs256(key) => Ok(StrongAlg(Rsa::rs256()).sign(key.as_ref(), message).as_bytes().to_vec()),
            #[cfg(target_arch = "wasm32")]
            InProcessKey::Rs256 => {
                let _ = message;
                Err(format!("{} is signed by WebCrypto in the worker", self.alg.name()))
            }
        }
    }
}

/// A P-256 PKCS#8 PEM's DER, its public key (SEC1) and its private scalar,
/// the public key taken from the DER when present.
fn es256_pkcs8_parts(pem: &str) -> Result<(Vec<u8>, Vec<u8>, p256::SecretKey), String> {
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
    Ok((der, public, secret))
}

fn rsa_size_error() -> String {
    "is an RSA key shorter than 2048 bits".into()
}

fn key_id(alg: &str, public: &[u8]) -> String {
    format!("{alg}:{}", hex(&fingerprint(&[public]), 8))
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
    use jwt_compact::alg::Es256;
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
    fn pkcs8_parts_match_the_full_parse() {
        use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, LineEnding};
        let secret = p256::SecretKey::from_slice(&[5u8; 32]).unwrap();
        let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let full = JwtKey::es256(SigningKey::from_pkcs8_pem(&pem).unwrap()).unwrap();
        let (der, public, scalar) = es256_pkcs8_parts(&pem).unwrap();
        assert_eq!(key_id("es256", &public), full.id());
        assert_eq!(der, full.pkcs8_der());
        assert_eq!(scalar.to_bytes(), secret.to_bytes());
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
        let zero_scalar = sec1::der::Encode::to_der(&sec1::EcPrivateKey { private_key: &[0u8; 32], parameters: None, public_key: None }).unwrap();
        let zero_pem = p256::pkcs8::der::EncodePem::to_pem(&p256::pkcs8::PrivateKeyInfo::new(algorithm, &zero_scalar), LineEnding::LF).unwrap();
        assert!(es256_pkcs8_parts(&zero_pem).unwrap_err().contains("out of range"));
    }

    /// APNs tokens: the same key and claims give the same token, from two
    /// separately loaded copies of the key (two isolates), and it verifies.
    #[test]
    fn a_p8_signs_deterministically_and_lazily() {
        use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
        let secret = p256::SecretKey::from_slice(&[9u8; 32]).unwrap();
        let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let (a, b) = (Rc::new(JwtKey::es256_from_pkcs8_pem(&pem).unwrap()), Rc::new(JwtKey::es256_from_pkcs8_pem(&pem).unwrap()));
        assert!(a.is_deterministic());
        let claims = WithIat { iss: "TEAM", iat: 1_800_000_000 };
        let token_a = JwtToSign::new(a.clone(), Some("KEY"), None, &claims).unwrap().sign_in_process().unwrap();
        let token_b = JwtToSign::new(b, Some("KEY"), None, &claims).unwrap().sign_in_process().unwrap();
        assert_eq!(token_a, token_b);
        // The signature RustCrypto's SigningKey makes (RFC 6979), byte for byte.
        let input = JwtToSign::new(a.clone(), Some("KEY"), None, &claims).unwrap().signing_input;
        let expected: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(&SigningKey::from(&secret), input.as_bytes());
        assert_eq!(a.sign_in_process(input.as_bytes()).unwrap(), expected.to_bytes().to_vec());
        let later = WithIat { iss: "TEAM", iat: 1_800_001_800 };
        let token_later = JwtToSign::new(a, Some("KEY"), None, &later).unwrap().sign_in_process().unwrap();
        assert_ne!(token_a, token_later, "another window, another token");
        let verifying = *SigningKey::from(&secret).verifying_key();
        for token in [&token_a, &token_later] {
            let untrusted = UntrustedToken::new(token).unwrap();
            Es256.validator::<Claims>(&verifying).validate(&untrusted).unwrap();
        }
        // VAPID keys are not bound to be reproducible: WebCrypto signs them in the worker.
        assert!(!JwtKey::es256(SigningKey::from(&secret)).unwrap().is_deterministic());
    }

}
