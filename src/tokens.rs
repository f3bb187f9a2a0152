//! Provider credentials: one token per key, kept in isolate memory, shared
//! through the `TOKENS` KV namespace when `APPS` names the credential, and
//! minted by one caller at a time.
//!
//! At the edge many isolates run at once. A token is looked up in memory,
//! then in KV, and only then minted; callers that find a mint in progress
//! wait for it (one shared result per key, woken when it ends, no polling)
//! instead of starting another. A token close to its end is renewed by one
//! caller while the others keep using it, each isolate at its own moment
//! within a short spread, so that the first renewal's token reaches the
//! others through KV instead of every isolate minting at the same second.
//!
//! Bounds: tokens of credentials named by `APPS` (APNs keys, FCM service
//! accounts) are at most [`MAX_SHARED_KEYS`]; VAPID tokens, one per push
//! service origin, which devices choose, at most [`MAX_LOCAL_KEYS`], and they
//! never reach KV.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures_util::future::{select, Either};
use serde::{Deserialize, Serialize};

use crate::bounded::BoundedMap;
use crate::providers::{App, Mint, MintedToken, Outcome, Prepared, UnixSecs, Verdict};
use crate::transport::Transport;

/// KV refuses expiration TTLs under 60 seconds.
pub const KV_MIN_TTL_SECS: u64 = 60;

/// Tokens kept for credentials that `APPS` names (one per APNs key or FCM
/// service account): far more than any deployment configures, so in
/// practice none is ever dropped.
pub const MAX_SHARED_KEYS: usize = 256;
/// VAPID tokens kept, one per (VAPID key, push service origin). Browsers use
/// a handful of push services; a flood of made-up origins only makes the
/// least recently used tokens be signed again.
pub const MAX_LOCAL_KEYS: usize = 1024;

/// How long a refused credential (a `Failed` mint) is not minted again, and
/// a refused token that a mint gives anew is not sent again.
const REFUSAL_MEMORY_MS: u64 = 10_000;
/// After a failed renewal, while the token still works, the next try waits this long.
const RENEW_RETRY_MS: u64 = 10_000;
/// The most an isolate delays a renewal past `renew_at`, at random, so that
/// isolates holding the same token do not all renew at the same second: the
/// first one's token reaches the others through KV (which takes up to a
/// minute to reach other locations).
pub const RENEW_SPREAD_SECS: u64 = 300;
/// What a mint may take besides its send (`SEND_TIMEOUT_MS`): the KV read,
/// which the worker bounds by the send timeout too, and the signature.
const MINT_MARGIN_MS: u64 = 1_000;

/// A token as stored in KV.
#[derive(Serialize, Deserialize)]
struct StoredToken {
    value: String,
    valid_until: UnixSecs,
    /// Absent in entries written before tokens were renewed ahead.
    #[serde(default)]
    renew_at: Option<UnixSecs>,
}

/// How a token was obtained, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    Memory,
    Kv,
    Minted,
}

type MintResult = Result<(MintedToken, TokenSource), Verdict>;

/// The isolate's token memory. One per isolate; shared by all its requests.
pub struct TokenCache {
    /// Credentials named by `APPS`, shared through KV.
    shared: RefCell<BoundedMap<String, Slot>>,
    /// VAPID tokens: isolate memory only.
    local: RefCell<BoundedMap<String, Slot>>,
    /// How long a caller waits for another caller's mint before minting
    /// itself: a mint's worst case.
    mint_wait_ms: u64,
    /// How long a minting caller waits for its token's KV write: a send
    /// timeout, as the shell bounds a KV read.
    kv_write_ms: u64,
    next_flight: Cell<u64>,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(crate::config::Settings::default().send_timeout_ms)
    }
}

/// What the cache knows of one key.
#[derive(Default)]
struct Slot {
    token: Option<Held>,
    /// The mint in progress, if any.
    flight: Option<Rc<Flight>>,
    /// The last `Failed` mint: refused credentials are not asked again at once.
    refusal: Option<(Verdict, u64)>,
    /// When a renewal last failed (ms), while the token still worked.
    renewal_failed_at: Option<u64>,
    /// The token the provider refused last, and when (ms): never taken
    /// back from KV, and not used again when a mint gives it anew
    /// (deterministic signatures) until `REFUSAL_MEMORY_MS` have passed.
    refused: Option<(String, u64)>,
}

struct Held {
    token: MintedToken,
    /// `renew_at` plus this isolate's share of the spread.
    renew_after: UnixSecs,
}

/// One mint in progress: its waiters are woken when it ends.
struct Flight {
    id: u64,
    started_ms: u64,
    end: RefCell<Option<FlightEnd>>,
    wakes: RefCell<Vec<Box<dyn FnOnce()>>>,
}

#[derive(Clone)]
enum FlightEnd {
    Done(MintResult),
    /// The minting caller went away (its request ended) before the mint did.
    Abandoned,
}

impl Flight {
    fn finish(&self, end: FlightEnd) {
        if self.end.borrow().is_some() {
            return;
        }
        *self.end.borrow_mut() = Some(end);
        let wakes = std::mem::take(&mut *self.wakes.borrow_mut());
        wakes.into_iter().for_each(|wake| wake());
    }

    fn ended(&self) -> Option<FlightEnd> {
        self.end.borrow().clone()
    }
}

/// Held by the caller that mints: ends its flight as abandoned if that
/// caller goes away mid-mint, and clears the key's flight only if it is
/// still this one (a waiter that gave up on it may have started another).
struct FlightGuard<'a> {
    map: &'a RefCell<BoundedMap<String, Slot>>,
    key: &'a str,
    flight: Rc<Flight>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        self.flight.finish(FlightEnd::Abandoned);
        if let Some(slot) = self.map.borrow_mut().get_mut(&self.key.to_string()) {
            if slot.flight.as_ref().is_some_and(|f| f.id == self.flight.id) {
                slot.flight = None;
            }
        }
    }
}

/// What a caller does next, decided under one borrow of the slot.
enum Next {
    Use(MintedToken),
    Fail(Verdict),
    Wait(Rc<Flight>),
    /// Mint; `renewing` is the still-usable token being renewed.
    Mint { renewing: Option<MintedToken> },
}

impl TokenCache {
    /// A cache whose callers wait for another caller's mint as long as a
    /// mint can take with this send timeout.
    pub fn new(send_timeout_ms: u64) -> Self {
        Self {
            shared: RefCell::new(BoundedMap::new(MAX_SHARED_KEYS)),
            local: RefCell::new(BoundedMap::new(MAX_LOCAL_KEYS)),
            mint_wait_ms: send_timeout_ms.saturating_mul(2).saturating_add(MINT_MARGIN_MS),
            kv_write_ms: send_timeout_ms,
            next_flight: Cell::new(0),
        }
    }

    fn map(&self, app: &App) -> &RefCell<BoundedMap<String, Slot>> {
        if app.shares_tokens_through_kv() {
            &self.shared
        } else {
            &self.local
        }
    }

    /// How many keys the cache holds: (shared through KV, isolate only).
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        (self.shared.borrow().len(), self.local.borrow().len())
    }

    /// A usable token from memory, if any.
    #[cfg(test)]
    fn cached(&self, key: &str, now: UnixSecs) -> Option<MintedToken> {
        [&self.shared, &self.local].into_iter().find_map(|map| {
            let mut map = map.borrow_mut();
            let held = map.get_mut(&key.to_string())?.token.as_ref()?;
            is_usable(&held.token, now).then(|| held.token.clone())
        })
    }

    /// Forget `rejected` (a token the provider refused at `now_ms`), unless
    /// it was already replaced; the next load will not take it back from KV
    /// either.
    pub fn invalidate(&self, key: &str, rejected: &str, now_ms: u64) {
        for map in [&self.shared, &self.local] {
            if let Some(slot) = map.borrow_mut().get_mut(&key.to_string()) {
                if slot.token.as_ref().is_some_and(|h| h.token.value == rejected) {
                    slot.token = None;
                }
                slot.refused = Some((rejected.to_string(), now_ms));
            }
        }
    }

    /// The token for `key`: memory, then KV, then a mint, one at a time.
    pub async fn get<T: Transport>(
        &self,
        transport: &T,
        app: &App,
        prepared: &Prepared,
        key: &str,
    ) -> Result<(MintedToken, TokenSource), Verdict> {
        let map = self.map(app);
        loop {
            let now_ms = transport.now_ms();
            match self.next(map, key, now_ms) {
                Next::Use(token) => return Ok((token, TokenSource::Memory)),
                Next::Fail(verdict) => return Err(verdict),
                Next::Wait(flight) => match self.wait(transport, &flight).await {
                    Some(FlightEnd::Done(Ok((token, source)))) => {
                        let refused = map.borrow_mut().get_mut(&key.to_string()).and_then(|s| s.refused.clone());
                        // A mint that began before this caller's token was
                        // refused may have found that same token in KV.
                        if refused.is_none_or(|(r, _)| r != token.value) || source == TokenSource::Minted {
                            // Another caller's mint, shared through memory.
                            return Ok((token, TokenSource::Memory));
                        }
                    }
                    Some(FlightEnd::Done(Err(verdict))) => return Err(verdict),
                    // Abandoned, or still running past a mint's worst case:
                    // look again (this caller may take over).
                    Some(FlightEnd::Abandoned) | None => {}
                },
                Next::Mint { renewing } => return self.mint(transport, app, prepared, map, key, renewing).await,
            }
        }
    }

    fn next(&self, map: &RefCell<BoundedMap<String, Slot>>, key: &str, now_ms: u64) -> Next {
        let now = now_ms / 1000;
        let mut map = map.borrow_mut();
        let slot = map.entry_or_insert_with(&key.to_string(), Slot::default);
        let flight_live = slot
            .flight
            .as_ref()
            .filter(|f| f.ended().is_none() && now_ms < f.started_ms.saturating_add(self.mint_wait_ms))
            .cloned();
        if let Some(held) = &slot.token {
            if is_usable(&held.token, now) {
                let renewal_resting =
                    slot.renewal_failed_at.is_some_and(|at| now_ms < at.saturating_add(RENEW_RETRY_MS));
                if now < held.renew_after || flight_live.is_some() || renewal_resting {
                    return Next::Use(held.token.clone());
                }
                return Next::Mint { renewing: Some(held.token.clone()) };
            }
        }
        if let Some(flight) = flight_live {
            return Next::Wait(flight);
        }
        if let Some((verdict, at)) = &slot.refusal {
            if verdict.outcome == Outcome::Failed && now_ms < at.saturating_add(REFUSAL_MEMORY_MS) {
                return Next::Fail(verdict.clone());
            }
        }
        Next::Mint { renewing: None }
    }

    /// Wait for `flight` to end, at most until a mint's worst case has passed
    /// since it began. `None`: it has not ended by then.
    async fn wait<T: Transport>(&self, transport: &T, flight: &Flight) -> Option<FlightEnd> {
        let deadline = flight.started_ms.saturating_add(self.mint_wait_ms);
        loop {
            if let Some(end) = flight.ended() {
                return Some(end);
            }
            let now = transport.now_ms();
            if now >= deadline {
                return None;
            }
            let (wake, woken) = transport.signal();
            flight.wakes.borrow_mut().push(wake);
            let timeout = Box::pin(transport.sleep(deadline - now));
            match select(woken, timeout).await {
                Either::Left(_) => {}
                Either::Right(_) => return flight.ended(),
            }
        }
    }

    async fn mint<T: Transport>(
        &self,
        transport: &T,
        app: &App,
        prepared: &Prepared,
        map: &RefCell<BoundedMap<String, Slot>>,
        key: &str,
        renewing: Option<MintedToken>,
    ) -> Result<(MintedToken, TokenSource), Verdict> {
        let id = self.next_flight.get();
        self.next_flight.set(id.wrapping_add(1));
        let flight = Rc::new(Flight {
            id,
            started_ms: transport.now_ms(),
            end: RefCell::new(None),
            wakes: RefCell::new(Vec::new()),
        });
        let (refused, replaced) = {
            let mut map = map.borrow_mut();
            let slot = map.entry_or_insert_with(&key.to_string(), Slot::default);
            (slot.refused.clone(), slot.flight.replace(flight.clone()))
        };
        // A flight this one replaced (it outlived a mint's worst case): its
        // waiters look again and find this one. Woken after the map's borrow
        // ends, so no wake-up can ever meet it borrowed.
        if let Some(stale) = replaced {
            stale.finish(FlightEnd::Abandoned);
        }
        let guard = FlightGuard { map, key, flight: flight.clone() };

        let shared = app.shares_tokens_through_kv();
        let refused = refused.map(|(token, _)| token);
        let result = match self.load_or_mint(transport, app, prepared, key, shared, refused.as_deref()).await {
            Ok(Some(found)) => Ok(found),
            Err(verdict) => Err(verdict),
            Ok(None) => {
                // Not the credential's doing but this request's: the flight
                // ends abandoned (the guard's drop), so callers of other
                // requests, with budgets of their own, mint instead of
                // sharing this failure.
                drop(guard);
                return match renewing {
                    Some(token) if is_usable(&token, transport.now_ms() / 1000) => Ok((token, TokenSource::Memory)),
                    _ => Err(Verdict::transient("the request's subrequest budget (MAX_SUBREQUESTS) is spent")),
                };
            }
        };
        let now_ms = transport.now_ms();
        // A deterministic signature (APNs) mints the very token the provider
        // refused, for as long as its window lasts: never shared through KV
        // again, and within `REFUSAL_MEMORY_MS` of the refusal a refused
        // credential, so it is not sent again at once.
        let mut minted_refused = false;
        let result = {
            let mut map = map.borrow_mut();
            let slot = map.entry_or_insert_with(&key.to_string(), Slot::default);
            let result = match (result, &slot.refused) {
                (Ok((token, TokenSource::Minted)), Some((refused, at))) if *refused == token.value => {
                    minted_refused = true;
                    if now_ms < at.saturating_add(REFUSAL_MEMORY_MS) {
                        Err(Verdict::failed(
                            "credentials refused: a new token is the same as the refused one (check the key and its ids)",
                        ))
                    } else {
                        Ok((token, TokenSource::Minted))
                    }
                }
                (result, _) => result,
            };
            match &result {
                Ok((token, source)) => {
                    let stale = *source == TokenSource::Kv
                        && slot.refused.as_ref().is_some_and(|(refused, _)| *refused == token.value);
                    if !stale {
                        let spread = RENEW_SPREAD_SECS.min(token.valid_until.saturating_sub(token.renew_at) / 2);
                        let offset = (spread as f64 * transport.random().clamp(0.0, 1.0)) as u64;
                        slot.token = Some(Held { token: token.clone(), renew_after: token.renew_at.saturating_add(offset) });
                        slot.refused = None;
                        slot.refusal = None;
                        slot.renewal_failed_at = None;
                    }
                }
                Err(_) if renewing.is_some() => slot.renewal_failed_at = Some(now_ms),
                Err(verdict) => slot.refusal = Some((verdict.clone(), now_ms)),
            }
            result
        };
        flight.finish(FlightEnd::Done(result.clone()));
        drop(guard);

        match result {
            Ok((token, TokenSource::Minted)) => {
                // Shared after the waiters have it: they need not wait for KV.
                if shared && !minted_refused {
                    let stored = StoredToken {
                        value: token.value.clone(),
                        valid_until: token.valid_until,
                        renew_at: Some(token.renew_at),
                    };
                    if let Ok(json) = serde_json::to_string(&stored) {
                        // Bounded like a KV read: this caller's device waits
                        // for it, and KV only shares what memory holds.
                        let kv_key = kv_key(key);
                        let put = Box::pin(transport.kv_put(&kv_key, &json, kv_ttl(&token, now_ms / 1000)));
                        let _ = select(put, Box::pin(transport.sleep(self.kv_write_ms))).await;
                    }
                }
                Ok((token, TokenSource::Minted))
            }
            Ok(found) => Ok(found),
            // The token being renewed still works: use it, renew later.
            Err(verdict) => match renewing {
                Some(token) if is_usable(&token, transport.now_ms() / 1000) => Ok((token, TokenSource::Memory)),
                _ => Err(verdict),
            },
        }
    }

    /// KV (for shared credentials), then a mint. A token from KV is taken
    /// only while fresh (before its `renew_at`) and never if it is the one
    /// the provider refused. `Ok(None)`: no token exchange was tried, as
    /// the request's subrequest budget is spent.
    async fn load_or_mint<T: Transport>(
        &self,
        transport: &T,
        app: &App,
        prepared: &Prepared,
        key: &str,
        shared: bool,
        refused: Option<&str>,
    ) -> Result<Option<(MintedToken, TokenSource)>, Verdict> {
        if shared {
            if let Some(stored) = transport.kv_get(&kv_key(key)).await {
                if let Ok(t) = serde_json::from_str::<StoredToken>(&stored) {
                    let token =
                        MintedToken { renew_at: t.renew_at.unwrap_or(t.valid_until), valid_until: t.valid_until, value: t.value };
                    let fresh = transport.now_ms() / 1000 < token.renew_at;
                    if fresh && refused != Some(token.value.as_str()) {
                        return Ok(Some((token, TokenSource::Kv)));
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
                Mint::Exchange(_) if transport.is_spent() => return Ok(None),
                Mint::Exchange(request) => {
                    let response = transport
                        .send(&request)
                        .await
                        .map_err(|e| Verdict::transient(format!("token endpoint unreachable: {e}")))?;
                    Mint::Ready(app.finish_exchange(&response, transport.now_ms() / 1000)?)
                }
            };
        };
        Ok(Some((token, TokenSource::Minted)))
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
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    use std::collections::{HashMap, VecDeque};
    use std::rc::Rc;

    use futures_util::future::join_all;
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    use serde_json::json;

    use crate::apps::{Apps, Lookup};
    use crate::providers::jwt::JwtToSign;
    use crate::providers::{AnswerBody, OutRequest, ProviderResponse};
    use crate::testing::{drive, VirtualClock, YieldOnce};
    use crate::transport::{local_signal, Signal};

    const SEND_TIMEOUT_MS: u64 = 10_000;

    /// A token endpoint answering after `delay_ms`: 200 with a new token
    /// (`ya29.<n>`, n counting exchanges) or the status given.
    #[derive(Clone, Copy)]
    struct Answer {
        delay_ms: u64,
        status: u16,
    }

    const OK: Answer = Answer { delay_ms: 100, status: 200 };

    /// The I/O a mint does, on virtual time, counted.
    struct Io {
        clock: VirtualClock,
        answers: RefCell<VecDeque<Answer>>,
        exchanges: Cell<u32>,
        kv: RefCell<HashMap<String, String>>,
        kv_gets: Cell<u32>,
        kv_puts: Cell<u32>,
        kv_delay_ms: Cell<u64>,
        /// KV writes that never end (a stuck binding).
        kv_put_hangs: Cell<bool>,
        signs: Cell<u32>,
        /// Sign with a counter instead of a key: the cache, not ECDSA, is under test.
        quick_signatures: bool,
    }

    impl Io {
        fn new(answers: &[Answer]) -> Self {
            Self {
                clock: VirtualClock::starting_at(1_800_000_000_000),
                answers: RefCell::new(answers.iter().copied().collect()),
                exchanges: Cell::new(0),
                kv: RefCell::default(),
                kv_gets: Cell::new(0),
                kv_puts: Cell::new(0),
                kv_delay_ms: Cell::new(0),
                kv_put_hangs: Cell::new(false),
                signs: Cell::new(0),
                quick_signatures: false,
            }
        }
        fn kv_value(&self, key: &str) -> Option<String> {
            let stored = self.kv.borrow().get(&kv_key(key)).cloned()?;
            Some(serde_json::from_str::<StoredToken>(&stored).unwrap().value)
        }
        fn put_kv(&self, key: &str, token: &MintedToken) {
            let stored = StoredToken { value: token.value.clone(), valid_until: token.valid_until, renew_at: Some(token.renew_at) };
            self.kv.borrow_mut().insert(kv_key(key), serde_json::to_string(&stored).unwrap());
        }
    }

    impl Transport for Io {
        async fn send(&self, _request: &OutRequest) -> Result<ProviderResponse, String> {
            let n = self.exchanges.get() + 1;
            self.exchanges.set(n);
            let answer = {
                let mut answers = self.answers.borrow_mut();
                if answers.len() > 1 { answers.pop_front().unwrap() } else { answers.front().copied().unwrap_or(OK) }
            };
            self.clock.sleep(answer.delay_ms).await;
            let body = match answer.status {
                200 => format!(r#"{{"access_token":"ya29.{n}","expires_in":3599,"token_type":"Bearer"}}"#),
                400 => r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#.to_string(),
                _ => String::new(),
            };
            Ok(ProviderResponse { status: answer.status, headers: vec![], body: body.into_bytes() })
        }
        async fn sleep(&self, ms: u64) {
            self.clock.sleep(ms).await;
        }
        fn now_ms(&self) -> u64 {
            self.clock.now_ms()
        }
        fn random(&self) -> f64 {
            0.5
        }
        async fn kv_get(&self, key: &str) -> Option<String> {
            self.kv_gets.set(self.kv_gets.get() + 1);
            self.clock.sleep(self.kv_delay_ms.get()).await;
            YieldOnce(false).await;
            self.kv.borrow().get(key).cloned()
        }
        async fn kv_put(&self, key: &str, value: &str, _ttl: u64) {
            self.kv_puts.set(self.kv_puts.get() + 1);
            if self.kv_put_hangs.get() {
                std::future::pending::<()>().await;
            }
            self.kv.borrow_mut().insert(key.to_string(), value.to_string());
        }
        async fn sign(&self, jwt: &JwtToSign) -> Result<Vec<u8>, String> {
            self.signs.set(self.signs.get() + 1);
            YieldOnce(false).await;
            if self.quick_signatures {
                return Ok(self.signs.get().to_be_bytes().to_vec());
            }
            jwt.key.sign_in_process(jwt.signing_input.as_bytes())
        }
    }

    fn apps() -> Apps {
        let pem = p256::SecretKey::from_slice(&[7u8; 32]).unwrap().to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let account = include_str!("../tests/keys/test-only-fcm-service-account.json").to_string();
        let secrets = move |name: &str| match name {
            "APNS_KEY" | "VAPID" => Some(pem.clone()),
            "FCM" => Some(account.clone()),
            _ => None,
        };
        Apps::load(
            Some(&json!({
                "ios": {"type": "apns", "topic": "t", "team_id": "TEAM", "key_id": "KEY", "key_secret": "APNS_KEY"},
                "android": {"type": "fcm", "project_id": "p", "service_account_secret": "FCM"},
                "web": {"type": "webpush", "vapid_private_key_secret": "VAPID", "vapid_contact": "mailto:ops@example.com"}
            })),
            &secrets,
        )
    }

    fn app<'a>(apps: &'a Apps, id: &str) -> &'a Rc<App> {
        match apps.find(id) {
            Lookup::Found { app, .. } => app,
            _ => panic!("no app {id}"),
        }
    }

    fn prepared(url: &str, key: &str) -> Prepared {
        let request = OutRequest { url: url.into(), headers: vec![], body: vec![], answer_body: AnswerBody::Read };
        Prepared { request, token_key: Some(key.into()) }
    }

    const FCM_KEY: &str = "fcm:test";

    /// `n` callers at once for the FCM token.
    fn fcm_callers(io: &Io, cache: &TokenCache, apps: &Apps, n: usize) -> Vec<MintResult> {
        let fcm = app(apps, "android");
        let p = prepared("https://fcm.example/send", FCM_KEY);
        drive(&io.clock, join_all((0..n).map(|_| cache.get(io, fcm, &p, FCM_KEY))))
    }

    fn values(results: &[MintResult]) -> Vec<String> {
        results.iter().map(|r| r.as_ref().unwrap().0.value.clone()).collect()
    }

    #[test]
    fn fifty_concurrent_devices_one_slow_mint() {
        // Slower than the old 5 s wait, within the 10 s send timeout.
        let io = Io::new(&[Answer { delay_ms: 8_000, status: 200 }]);
        let (apps, cache) = (apps(), TokenCache::new(SEND_TIMEOUT_MS));
        let results = fcm_callers(&io, &cache, &apps, 50);
        assert_eq!(io.exchanges.get(), 1, "one mint for 50 callers");
        assert!(values(&results).iter().all(|v| v == "ya29.1"));
        let minted = results.iter().filter(|r| r.as_ref().unwrap().1 == TokenSource::Minted).count();
        assert_eq!(minted, 1);
        assert_eq!((io.kv_gets.get(), io.kv_puts.get()), (1, 1), "one KV read, one write");
        assert_eq!(io.clock.now_ms(), 1_800_000_008_000, "everyone had it when the mint ended");

        // APNs: one signature for 50 callers, and the same token from a second isolate.
        let apns = app(&apps, "ios");
        let key = "apns:test";
        let p = prepared("https://apns.example/3/device/x", key);
        let results = drive(&io.clock, join_all((0..50).map(|_| cache.get(&io, apns, &p, key))));
        assert_eq!(io.signs.get(), 2, "the FCM assertion and one APNs token");
        let other = Io::new(&[]);
        let (elsewhere, _) = drive(&other.clock, TokenCache::default().get(&other, apns, &p, key)).unwrap();
        assert!(values(&results).iter().all(|v| *v == elsewhere.value), "another isolate, no KV: the same token");
    }

    #[test]
    fn a_failed_mint_is_shared_and_remembered() {
        let io = Io::new(&[Answer { delay_ms: 2_000, status: 400 }, OK]);
        let (apps, cache) = (apps(), TokenCache::new(SEND_TIMEOUT_MS));
        let results = fcm_callers(&io, &cache, &apps, 50);
        assert_eq!(io.exchanges.get(), 1);
        assert!(results.iter().all(|r| r.as_ref().unwrap_err().outcome == Outcome::Failed));
        // A refused credential is not asked again at once...
        let again = fcm_callers(&io, &cache, &apps, 5);
        assert!(again.iter().all(Result::is_err));
        assert_eq!(io.exchanges.get(), 1);
        // ...but after a while, once.
        drive(&io.clock, io.clock.sleep(REFUSAL_MEMORY_MS));
        let later = fcm_callers(&io, &cache, &apps, 5);
        assert!(values(&later).iter().all(|v| v == "ya29.2"));
        assert_eq!(io.exchanges.get(), 2);

        // A transient failure goes to the callers that waited for it, and the
        // next caller tries again.
        let io = Io::new(&[Answer { delay_ms: 1_000, status: 503 }, OK]);
        let cache = TokenCache::new(SEND_TIMEOUT_MS);
        let results = fcm_callers(&io, &cache, &apps, 20);
        assert!(results.iter().all(|r| matches!(r.as_ref().unwrap_err().outcome, Outcome::Transient { .. })));
        assert_eq!(io.exchanges.get(), 1);
        assert!(values(&fcm_callers(&io, &cache, &apps, 3)).iter().all(|v| v == "ya29.2"));
        assert_eq!(io.exchanges.get(), 2);
    }

    #[test]
    fn a_token_near_its_end_is_renewed_by_one_caller_while_the_others_use_it() {
        let io = Io::new(&[OK, Answer { delay_ms: 3_000, status: 200 }]);
        let (apps, cache) = (apps(), TokenCache::new(SEND_TIMEOUT_MS));
        let first = fcm_callers(&io, &cache, &apps, 1).remove(0).unwrap().0;
        // Past renew_at and this isolate's spread (random() = 0.5), before valid_until.
        let spread = RENEW_SPREAD_SECS.min((first.valid_until - first.renew_at) / 2);
        let wait_s = first.renew_at + spread / 2 + 1 - io.now_ms() / 1000;
        drive(&io.clock, io.clock.sleep(wait_s * 1000));
        let started = io.now_ms();
        let fcm = app(&apps, "android");
        let p = prepared("https://fcm.example/send", FCM_KEY);
        let timed = |_| async {
            let r = cache.get(&io, fcm, &p, FCM_KEY).await;
            (r, io.now_ms() - started)
        };
        let results = drive(&io.clock, join_all((0..20).map(timed)));
        assert_eq!(io.exchanges.get(), 2, "one renewal");
        let (renewer, others): (Vec<_>, Vec<_>) = results.iter().partition(|(r, _)| r.as_ref().unwrap().1 == TokenSource::Minted);
        assert_eq!(renewer.len(), 1);
        assert_eq!(renewer[0].0.as_ref().unwrap().0.value, "ya29.2");
        assert_eq!(renewer[0].1, 3_000);
        assert!(others.iter().all(|(r, ms)| r.as_ref().unwrap().0.value == "ya29.1" && *ms == 0), "nobody waited");
        assert_eq!(values(&fcm_callers(&io, &cache, &apps, 1)), ["ya29.2"]);
        assert_eq!(io.kv_value(FCM_KEY).as_deref(), Some("ya29.2"));

        // Another isolate finds the renewed token in KV, and when its time
        // to renew comes, takes a fresher one from KV rather than minting.
        let cache2 = TokenCache::new(SEND_TIMEOUT_MS);
        let first2 = fcm_callers(&io, &cache2, &apps, 1).remove(0).unwrap();
        assert_eq!((first2.0.value.as_str(), first2.1), ("ya29.2", TokenSource::Kv));
        let wait_s = first2.0.renew_at + spread / 2 + 1 - io.now_ms() / 1000;
        drive(&io.clock, io.clock.sleep(wait_s * 1000));
        io.put_kv(FCM_KEY, &MintedToken { value: "ya29.fresh".into(), renew_at: io.now_ms() / 1000 + 600, valid_until: io.now_ms() / 1000 + 900 });
        let renewed = fcm_callers(&io, &cache2, &apps, 1).remove(0).unwrap();
        assert_eq!((renewed.0.value.as_str(), renewed.1), ("ya29.fresh", TokenSource::Kv));
        assert_eq!(io.exchanges.get(), 2, "no mint: KV had a fresh one");
    }

    #[test]
    fn a_refused_token_is_replaced_from_kv_only_if_kv_holds_another() {
        let io = Io::new(&[OK]);
        let (apps, cache) = (apps(), TokenCache::new(SEND_TIMEOUT_MS));
        let t1 = fcm_callers(&io, &cache, &apps, 1).remove(0).unwrap().0;
        // Another isolate stored a newer token meanwhile: taken, no mint.
        let now = io.now_ms() / 1000;
        io.put_kv(FCM_KEY, &MintedToken { value: "ya29.other".into(), renew_at: now + 600, valid_until: now + 900 });
        cache.invalidate(FCM_KEY, &t1.value, io.now_ms());
        assert_eq!(values(&fcm_callers(&io, &cache, &apps, 1)), ["ya29.other"]);
        assert_eq!(io.exchanges.get(), 1);
        // KV still holds the refused token: mint.
        cache.invalidate(FCM_KEY, "ya29.other", io.now_ms());
        assert_eq!(values(&fcm_callers(&io, &cache, &apps, 1)), ["ya29.2"]);
        assert_eq!(io.exchanges.get(), 2);
        // Invalidating a token that was already replaced changes nothing.
        cache.invalidate(FCM_KEY, &t1.value, io.now_ms());
        assert_eq!(values(&fcm_callers(&io, &cache, &apps, 1)), ["ya29.2"]);
        assert_eq!(io.exchanges.get(), 2);
    }

    #[test]
    fn invalidation_during_a_mint() {
        let apps = apps();
        let fcm = app(&apps, "android");
        let p = prepared("https://fcm.example/send", FCM_KEY);

        // A fresh isolate reads KV (slowly), which holds T1; meanwhile a
        // device of this isolate is refused T1 (it had it from elsewhere) and
        // waits for that mint: it must not be handed T1 again.
        let io = Io::new(&[OK]);
        let now = io.now_ms() / 1000;
        let t1 = MintedToken { value: "ya29.refused".into(), renew_at: now + 600, valid_until: now + 900 };
        io.put_kv(FCM_KEY, &t1);
        io.kv_delay_ms.set(500);
        let cache = TokenCache::new(SEND_TIMEOUT_MS);
        let first = async { cache.get(&io, fcm, &p, FCM_KEY).await };
        let refused = async {
            io.clock.sleep(100).await;
            cache.invalidate(FCM_KEY, &t1.value, io.now_ms());
            cache.get(&io, fcm, &p, FCM_KEY).await
        };
        let (first, refused) = drive(&io.clock, futures_util::future::join(first, refused));
        assert_eq!(first.unwrap().0.value, "ya29.refused", "the mint that began before the refusal found it in KV");
        assert_eq!(refused.unwrap().0.value, "ya29.1", "the refused caller got a new token");
        assert_eq!(io.exchanges.get(), 1);
        assert_eq!(io.kv_value(FCM_KEY).as_deref(), Some("ya29.1"));
        assert_eq!(cache.cached(FCM_KEY, io.now_ms() / 1000).unwrap().value, "ya29.1");
    }

    #[test]
    fn a_mint_whose_caller_went_away_is_taken_over() {
        use std::future::Future;
        use std::task::Context;
        let apps = apps();
        let fcm = app(&apps, "android");
        let p = prepared("https://fcm.example/send", FCM_KEY);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);

        // Dropped mid-mint (its request ended): the waiter is woken at once
        // and mints itself.
        let io = Io::new(&[Answer { delay_ms: 5_000, status: 200 }]);
        let cache = TokenCache::new(SEND_TIMEOUT_MS);
        let mut gone = Box::pin(cache.get(&io, fcm, &p, FCM_KEY));
        for _ in 0..3 {
            assert!(gone.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(io.exchanges.get(), 1, "its exchange is under way");
        let waiter = async {
            let r = cache.get(&io, fcm, &p, FCM_KEY).await;
            (r, io.now_ms())
        };
        let mut waiter = Box::pin(waiter);
        assert!(waiter.as_mut().poll(&mut cx).is_pending(), "it waits for the mint under way");
        drop(gone);
        let started = io.now_ms();
        let (r, done) = drive(&io.clock, waiter);
        assert!(r.is_ok());
        assert_eq!(done - started, 5_000, "it minted at once when the first caller went away");
        assert_eq!(io.exchanges.get(), 2);

        // Never ending (its request's I/O cancelled, the future never polled
        // again): the waiter waits a mint's worst case, then mints itself, and
        // the stuck mint, when it is finally dropped, leaves the new state alone.
        let io = Io::new(&[Answer { delay_ms: 5_000, status: 200 }]);
        let cache = TokenCache::new(SEND_TIMEOUT_MS);
        let mut stuck = Box::pin(cache.get(&io, fcm, &p, FCM_KEY));
        for _ in 0..3 {
            assert!(stuck.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(io.exchanges.get(), 1);
        let started = io.now_ms();
        let r = drive(&io.clock, cache.get(&io, fcm, &p, FCM_KEY));
        assert!(r.is_ok());
        assert_eq!(io.now_ms() - started, cache.mint_wait_ms + 5_000);
        assert!(cache.mint_wait_ms >= 2 * SEND_TIMEOUT_MS, "the wait covers a KV read and an exchange");
        drop(stuck);
        assert_eq!(values(&fcm_callers(&io, &cache, &apps, 3)), ["ya29.2"; 3]);
        assert_eq!(io.exchanges.get(), 2);
    }

    #[test]
    fn a_new_token_identical_to_the_refused_one_is_a_refused_credential() {
        // APNs signs deterministically: within a window, minting again gives
        // the very token APNs refused.
        let io = Io::new(&[]);
        let (apps, cache) = (apps(), TokenCache::new(SEND_TIMEOUT_MS));
        let apns = app(&apps, "ios");
        let key = "apns:refused";
        let p = prepared("https://apns.example/3/device/x", key);
        let callers = |n| drive(&io.clock, join_all((0..n).map(|_| cache.get(&io, apns, &p, key))));
        let first = callers(1).remove(0).unwrap().0;
        assert_eq!((io.signs.get(), io.kv_puts.get()), (1, 1));
        cache.invalidate(key, &first.value, io.now_ms());
        let again = callers(5);
        assert!(again.iter().all(|r| r.as_ref().unwrap_err().outcome == Outcome::Failed), "shared with the waiters");
        assert!(again[0].as_ref().unwrap_err().reason.contains("same as the refused one"));
        assert_eq!(io.signs.get(), 2, "one mint for the five");
        assert_eq!(io.kv_puts.get(), 1, "the refused token is not written to KV again");
        assert_eq!(cache.cached(key, io.now_ms() / 1000), None, "nor kept in memory");
        // Remembered: no signing for a while...
        assert!(callers(3).iter().all(Result::is_err));
        assert_eq!(io.signs.get(), 2);
        // ...then the same token is tried again (a key Apple had not yet
        // activated may work now), but not written to KV again...
        drive(&io.clock, io.clock.sleep(REFUSAL_MEMORY_MS));
        let retried = callers(2);
        assert!(retried.iter().all(|r| r.as_ref().unwrap().0.value == first.value));
        assert_eq!((io.signs.get(), io.kv_puts.get()), (3, 1));
        // ...and refused again, it is a refused credential at once again.
        cache.invalidate(key, &first.value, io.now_ms());
        assert!(callers(1)[0].is_err());
        // The next window's token is a new one, used and shared.
        let window_ends = (first.renew_at + 1) * 1000 - io.now_ms();
        drive(&io.clock, io.clock.sleep(window_ends));
        let next = callers(1).remove(0).unwrap().0;
        assert_ne!(next.value, first.value);
        assert_eq!(io.kv_puts.get(), 2);
    }

    #[test]
    fn a_kv_write_that_never_ends_holds_the_minting_caller_no_longer_than_a_send_timeout() {
        let io = Io::new(&[Answer { delay_ms: 1_000, status: 200 }]);
        io.kv_put_hangs.set(true);
        let (apps, cache) = (apps(), TokenCache::new(SEND_TIMEOUT_MS));
        let fcm = app(&apps, "android");
        let p = prepared("https://fcm.example/send", FCM_KEY);
        let started = io.now_ms();
        let timed = |_| async {
            let r = cache.get(&io, fcm, &p, FCM_KEY).await;
            (r.map(|(t, source)| (t.value, source)), io.now_ms() - started)
        };
        let results = drive(&io.clock, join_all((0..3).map(timed)));
        for (result, ms) in &results {
            let (value, source) = result.as_ref().unwrap();
            assert_eq!(value, "ya29.1");
            let expected = if *source == TokenSource::Minted { 1_000 + SEND_TIMEOUT_MS } else { 1_000 };
            assert_eq!(*ms, expected, "{source:?}");
        }
        assert_eq!(io.kv_puts.get(), 1);
    }

    /// Another request's transport: its subrequest budget is spent.
    struct Spent<'a>(&'a Io);

    impl Transport for Spent<'_> {
        async fn send(&self, _request: &OutRequest) -> Result<ProviderResponse, String> {
            Err("the request's subrequest budget (MAX_SUBREQUESTS) is spent".into())
        }
        async fn sleep(&self, ms: u64) {
            self.0.sleep(ms).await;
        }
        fn now_ms(&self) -> u64 {
            self.0.now_ms()
        }
        fn random(&self) -> f64 {
            self.0.random()
        }
        async fn kv_get(&self, key: &str) -> Option<String> {
            self.0.kv_get(key).await
        }
        async fn kv_put(&self, key: &str, value: &str, ttl: u64) {
            self.0.kv_put(key, value, ttl).await;
        }
        async fn sign(&self, jwt: &JwtToSign) -> Result<Vec<u8>, String> {
            self.0.sign(jwt).await
        }
        fn is_spent(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_mint_whose_request_has_no_budget_left_is_taken_over_by_another_request() {
        let io = Io::new(&[OK]);
        io.kv_delay_ms.set(500);
        let (apps, cache) = (apps(), TokenCache::new(SEND_TIMEOUT_MS));
        let fcm = app(&apps, "android");
        let p = prepared("https://fcm.example/send", FCM_KEY);
        let spent = Spent(&io);
        // The spent request starts the mint; another request's device waits for it.
        let first = cache.get(&spent, fcm, &p, FCM_KEY);
        let second = async {
            io.clock.sleep(100).await;
            cache.get(&io, fcm, &p, FCM_KEY).await
        };
        let (first, second) = drive(&io.clock, futures_util::future::join(first, second));
        let first = first.unwrap_err();
        assert!(matches!(first.outcome, Outcome::Transient { .. }) && first.reason.contains("MAX_SUBREQUESTS"), "{}", first.reason);
        let (token, source) = second.unwrap();
        assert_eq!((token.value.as_str(), source), ("ya29.1", TokenSource::Minted), "the waiter minted itself");
        assert_eq!(io.exchanges.get(), 1, "the spent request made no exchange");
        // Nothing of the spent request's failure is remembered.
        assert_eq!(values(&fcm_callers(&io, &cache, &apps, 1)), ["ya29.1"]);
    }

    /// A transport whose wake-ups record whether the token map was borrowed
    /// when they ran.
    struct Probe<'a> {
        io: &'a Io,
        cache: Rc<TokenCache>,
        woken_while_borrowed: Rc<Cell<u32>>,
    }

    impl Transport for Probe<'_> {
        async fn send(&self, request: &OutRequest) -> Result<ProviderResponse, String> {
            self.io.send(request).await
        }
        async fn sleep(&self, ms: u64) {
            self.io.sleep(ms).await;
        }
        fn now_ms(&self) -> u64 {
            self.io.now_ms()
        }
        fn random(&self) -> f64 {
            self.io.random()
        }
        async fn kv_get(&self, key: &str) -> Option<String> {
            self.io.kv_get(key).await
        }
        async fn kv_put(&self, key: &str, value: &str, ttl: u64) {
            self.io.kv_put(key, value, ttl).await;
        }
        fn signal(&self) -> Signal {
            let (wake, woken) = local_signal();
            let (cache, count) = (self.cache.clone(), self.woken_while_borrowed.clone());
            let probe = Box::new(move || {
                if cache.shared.try_borrow_mut().is_err() {
                    count.set(count.get() + 1);
                }
                wake();
            });
            (probe, woken)
        }
    }

    #[test]
    fn waiters_are_woken_after_the_token_map_borrow_ends() {
        use std::future::Future;
        use std::task::Context;
        let apps = apps();
        let fcm = app(&apps, "android");
        let p = prepared("https://fcm.example/send", FCM_KEY);
        let io = Io::new(&[Answer { delay_ms: 5_000, status: 200 }]);
        let cache = Rc::new(TokenCache::new(SEND_TIMEOUT_MS));
        let probe = Probe { io: &io, cache: cache.clone(), woken_while_borrowed: Rc::default() };
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // A mint that never ends; a waiter outlives it and replaces it,
        // which wakes the stale flight's waiters (the waiter's own old wake-up).
        let mut stuck = Box::pin(cache.get(&probe, fcm, &p, FCM_KEY));
        for _ in 0..3 {
            assert!(stuck.as_mut().poll(&mut cx).is_pending());
        }
        assert!(drive(&io.clock, cache.get(&probe, fcm, &p, FCM_KEY)).is_ok());
        drop(stuck);
        assert_eq!(probe.woken_while_borrowed.get(), 0);
    }

    #[test]
    fn ten_thousand_webpush_origins_no_kv_and_bounded_memory() {
        let mut io = Io::new(&[]);
        io.quick_signatures = true;
        let (apps, cache) = (apps(), TokenCache::new(SEND_TIMEOUT_MS));
        // An APNs token first: a flood of origins must not push it out.
        let apns = app(&apps, "ios");
        let ap = prepared("https://apns.example/3/device/x", "apns:k");
        drive(&io.clock, cache.get(&io, apns, &ap, "apns:k")).unwrap();
        let (gets, puts) = (io.kv_gets.get(), io.kv_puts.get());
        let web = app(&apps, "web");
        for i in 0..10_000 {
            let key = format!("vapid:fp:https://push{i}.example.net");
            let p = prepared(&format!("https://push{i}.example.net/s/{i}"), &key);
            drive(&io.clock, cache.get(&io, web, &p, &key)).unwrap();
            let (shared, local) = cache.sizes();
            assert!(shared <= MAX_SHARED_KEYS && local <= MAX_LOCAL_KEYS);
        }
        assert_eq!((io.kv_gets.get(), io.kv_puts.get()), (gets, puts), "not one KV read or write for VAPID");
        assert_eq!(cache.sizes(), (1, MAX_LOCAL_KEYS));
        let signs = io.signs.get();
        let (_, source) = drive(&io.clock, cache.get(&io, apns, &ap, "apns:k")).unwrap();
        assert_eq!((source, io.signs.get()), (TokenSource::Memory, signs), "the APNs token is still in memory");
        // The most recent origins are still cached.
        let key = "vapid:fp:https://push9999.example.net";
        let p = prepared("https://push9999.example.net/s/9999", key);
        assert_eq!(drive(&io.clock, cache.get(&io, web, &p, key)).unwrap().1, TokenSource::Memory);
    }

    #[test]
    fn usable_until_valid_until() {
        let t = MintedToken { value: "t".into(), renew_at: 90, valid_until: 100 };
        assert!(is_usable(&t, 99));
        assert!(!is_usable(&t, 100));
    }

    #[test]
    fn kv_ttl_respects_kv_minimum() {
        let t = MintedToken { value: "t".into(), renew_at: 1000, valid_until: 1000 };
        assert_eq!(kv_ttl(&t, 100), 900);
        assert_eq!(kv_ttl(&t, 990), KV_MIN_TTL_SECS);
        assert_eq!(kv_ttl(&t, 2000), KV_MIN_TTL_SECS);
    }
}
