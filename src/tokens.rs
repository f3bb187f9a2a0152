//! Provider credentials: one token per key, shared through isolate memory and
//! the `TOKENS` KV namespace, minted by one caller at a time.
//!
//! At the edge many isolates run at once; each minting its own APNs token is
//! what makes APNs answer `TooManyProviderTokenUpdates`, and an RS256 mint
//! costs milliseconds of CPU. So a token is looked up in memory, then in KV,
//! and only then minted, and a caller that finds a mint in progress waits for
//! it instead of starting another.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::dispatch::Transport;
use crate::providers::{App, Mint, MintedToken, Outcome, Prepared, UnixSecs, Verdict};

/// KV refuses expiration TTLs under 60 seconds.
pub const KV_MIN_TTL_SECS: u64 = 60;

/// How long a caller waits for another caller's mint before minting itself.
const MINT_WAIT_MS: u64 = 5_000;
const MINT_POLL_MS: u64 = 5;
/// How long refused credentials are not retried by other callers.
const REFUSAL_MEMORY_MS: u64 = 10_000;

/// A token as stored in KV.
#[derive(Serialize, Deserialize)]
struct StoredToken {
    value: String,
    valid_until: UnixSecs,
}

/// The isolate's token memory. One per isolate; shared by all its requests.
#[derive(Default)]
pub struct TokenCache {
    tokens: RefCell<HashMap<String, MintedToken>>,
    /// Keys being minted, with the time (ms) the mint started and its number.
    minting: RefCell<HashMap<String, (u64, u64)>>,
    /// The last failed mint per key: callers that waited for it share its
    /// verdict instead of each asking the token endpoint again.
    failures: RefCell<HashMap<String, MintFailure>>,
    next_mint: Cell<u64>,
}

struct MintFailure {
    verdict: Verdict,
    at_ms: u64,
    /// The number of the mint that failed.
    mint: u64,
}

/// Marks a key as being minted for as long as it lives.
struct MintGuard<'a> {
    cache: &'a TokenCache,
    key: String,
}

impl Drop for MintGuard<'_> {
    fn drop(&mut self) {
        self.cache.minting.borrow_mut().remove(&self.key);
    }
}

/// How a token was obtained, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    Memory,
    Kv,
    Minted,
}

impl TokenCache {
    /// A usable token from memory, if any.
    pub fn cached(&self, key: &str, now: UnixSecs) -> Option<MintedToken> {
        self.tokens.borrow().get(key).filter(|t| is_usable(t, now)).cloned()
    }

    /// Forget `rejected` (a token the provider refused), unless it was already
    /// replaced.
    pub fn invalidate(&self, key: &str, rejected: &str) {
        let mut tokens = self.tokens.borrow_mut();
        if tokens.get(key).is_some_and(|t| t.value == rejected) {
            tokens.remove(key);
        }
    }

    /// The token for `prepared.token_key`: memory, then KV, then a mint.
    /// With `skip_kv` (after the provider refused the stored token) KV is not
    /// read, and the new token overwrites it.
    pub async fn get<T: Transport>(
        &self,
        transport: &T,
        app: &App,
        prepared: &Prepared,
        key: &str,
        skip_kv: bool,
    ) -> Result<(MintedToken, TokenSource), Verdict> {
        let waited_since = transport.now_ms();
        // The mint this caller waited for, if any: its failure is ours too.
        let mut waited_for: Option<u64> = None;
        loop {
            let now = transport.now_ms() / 1000;
            if let Some(t) = self.cached(key, now) {
                return Ok((t, TokenSource::Memory));
            }
            if let Some(verdict) = self.shared_failure(key, waited_for, transport.now_ms()) {
                return Err(verdict);
            }
            let in_flight = self
                .minting
                .borrow()
                .get(key)
                .filter(|(started, _)| transport.now_ms().saturating_sub(*started) < MINT_WAIT_MS)
                .map(|(_, mint)| *mint);
            match in_flight {
                Some(mint) if transport.now_ms().saturating_sub(waited_since) < MINT_WAIT_MS => {
                    waited_for = Some(mint);
                    transport.sleep(MINT_POLL_MS).await;
                }
                _ => break,
            }
        }

        let mint = self.next_mint.get();
        self.next_mint.set(mint.wrapping_add(1));
        self.minting.borrow_mut().insert(key.to_string(), (transport.now_ms(), mint));
        let _guard = MintGuard { cache: self, key: key.to_string() };
        let result = self.load_or_mint(transport, app, prepared, key, skip_kv).await;
        match &result {
            Ok(_) => {
                self.failures.borrow_mut().remove(key);
            }
            Err(verdict) => {
                let failure = MintFailure { verdict: verdict.clone(), at_ms: transport.now_ms(), mint };
                self.failures.borrow_mut().insert(key.to_string(), failure);
            }
        }
        result
    }

    /// A failure to hand to this caller: that of the mint it waited for, or
    /// a recent `Failed` (refused credentials stay refused for a while).
    fn shared_failure(&self, key: &str, waited_for: Option<u64>, now_ms: u64) -> Option<Verdict> {
        let failures = self.failures.borrow();
        let failure = failures.get(key)?;
        let recent_refusal =
            failure.verdict.outcome == Outcome::Failed && now_ms.saturating_sub(failure.at_ms) < REFUSAL_MEMORY_MS;
        (waited_for == Some(failure.mint) || recent_refusal).then(|| failure.verdict.clone())
    }

    async fn load_or_mint<T: Transport>(
        &self,
        transport: &T,
        app: &App,
        prepared: &Prepared,
        key: &str,
        skip_kv: bool,
    ) -> Result<(MintedToken, TokenSource), Verdict> {
        let kv_key = kv_key(key);
        if !skip_kv {
            if let Some(stored) = transport.kv_get(&kv_key).await {
                if let Ok(t) = serde_json::from_str::<StoredToken>(&stored) {
                    let token = MintedToken { value: t.value, valid_until: t.valid_until };
                    if is_usable(&token, transport.now_ms() / 1000) {
                        self.tokens.borrow_mut().insert(key.to_string(), token.clone());
                        return Ok((token, TokenSource::Kv));
                    }
                }
            }
        }

        let now = transport.now_ms() / 1000;
        let mut step = app.mint(prepared, now)?;
        let token = loop {
            step = match step {
                Mint::Ready(t) => break t,
                Mint::Sign(jwt) => {
                    let signature = transport
                        .sign(&jwt)
                        .await
                        .map_err(|e| Verdict::failed(format!("signing a {} token failed: {e}", jwt.key.alg().name())))?;
                    app.signed(jwt.finish(&signature), now)?
                }
                Mint::Exchange(request) => {
                    let response = transport
                        .send(&request)
                        .await
                        .map_err(|e| Verdict::transient(format!("token endpoint unreachable: {e}")))?;
                    Mint::Ready(app.finish_exchange(&response, transport.now_ms() / 1000)?)
                }
            };
        };
        self.tokens.borrow_mut().insert(key.to_string(), token.clone());
        let stored = StoredToken { value: token.value.clone(), valid_until: token.valid_until };
        if let Ok(json) = serde_json::to_string(&stored) {
            transport.kv_put(&kv_key, &json, kv_ttl(&token, now)).await;
        }
        Ok((token, TokenSource::Minted))
    }
}

/// A token is used only while `now < valid_until`; each provider sets
/// `valid_until` with its own safety margin.
pub fn is_usable(token: &MintedToken, now: UnixSecs) -> bool {
    now < token.valid_until
}

/// KV entries expire with the token, but never sooner than KV allows.
pub fn kv_ttl(token: &MintedToken, now: UnixSecs) -> u64 {
    token.valid_until.saturating_sub(now).max(KV_MIN_TTL_SECS)
}

/// KV keys are namespaced so the `TOKENS` namespace can be shared.
pub fn kv_key(token_key: &str) -> String {
    format!("token:v1:{token_key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_until_valid_until() {
        let t = MintedToken { value: "t".into(), valid_until: 100 };
        assert!(is_usable(&t, 99));
        assert!(!is_usable(&t, 100));
    }

    #[test]
    fn kv_ttl_respects_kv_minimum() {
        let t = MintedToken { value: "t".into(), valid_until: 1000 };
        assert_eq!(kv_ttl(&t, 100), 900);
        assert_eq!(kv_ttl(&t, 990), KV_MIN_TTL_SECS);
        assert_eq!(kv_ttl(&t, 2000), KV_MIN_TTL_SECS);
    }

    #[test]
    fn invalidate_only_forgets_the_refused_token() {
        let cache = TokenCache::default();
        cache.tokens.borrow_mut().insert("k".into(), MintedToken { value: "new".into(), valid_until: 10 });
        cache.invalidate("k", "old");
        assert!(cache.cached("k", 0).is_some());
        cache.invalidate("k", "new");
        assert!(cache.cached("k", 0).is_none());
    }
}
