//! Short, stable names for what must not be kept or sent whole: an
//! endpoint a device names, a secret, a public key. SHA-256, so no input
//! can be chosen to share another's name.

use sha2::{Digest as _, Sha256};

/// The first 16 bytes of SHA-256 over `parts`, with a zero byte between
/// each two (so `["ab", "c"]` and `["a", "bc"]` differ).
pub fn fingerprint(parts: &[&[u8]]) -> [u8; 16] {
    let mut hasher = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update([0u8]);
        }
        hasher.update(part);
    }
    let mut short = [0u8; 16];
    for (out, byte) in short.iter_mut().zip(hasher.finalize()) {
        *out = byte;
    }
    short
}

/// The first `n` bytes of a fingerprint in lowercase hex, for a key name.
pub fn hex(fingerprint: &[u8; 16], n: usize) -> String {
    fingerprint.iter().take(n).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_the_start_of_sha_256() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(hex(&fingerprint(&[b"abc"]), 16), "ba7816bf8f01cfea414140de5dae2223");
        assert_eq!(hex(&fingerprint(&[b"abc"]), 8), "ba7816bf8f01cfea");
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"a", b"bc"]));
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"abc"]));
    }

    /// The rate limiter's device key is the same fingerprint: its keys, which
    /// leave the worker, stay what they are if it is built on this one.
    #[test]
    fn the_rate_limit_key_is_this_fingerprint_of_app_and_pushkey() {
        for (app_id, pushkey) in [("com.example.ios", "flood"), ("", ""), ("im.app.up", "https://up.example/é?x")] {
            let key = crate::dispatch::rate_limit_key(app_id, pushkey);
            assert_eq!(hex(&fingerprint(&[app_id.as_bytes(), pushkey.as_bytes()]), 16), key);
        }
    }
}
