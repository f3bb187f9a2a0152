//! The I/O seam: everything the core asks of the world (sends, time,
//! randomness, KV, signatures, wake-ups, the rate limiter and the
//! deferred-delivery queue) goes through [`Transport`]. The worker
//! implements it in `http.rs`; host tests implement it with scripted fakes
//! on virtual time (`testing.rs`).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::config::DeferredSettings;
use crate::providers::jwt::JwtToSign;
use crate::providers::{OutRequest, ProviderResponse};

/// The I/O the core needs; the worker shell implements it with `fetch`,
/// KV, timers and its bindings (`http.rs`), the host tests with fakes.
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// Send one request (no redirects followed, bounded by `SEND_TIMEOUT_MS`).
    /// `Err` is a network error or timeout.
    async fn send(&self, request: &OutRequest) -> Result<ProviderResponse, String>;
    async fn sleep(&self, ms: u64);
    fn now_ms(&self) -> u64;
    /// A number in `[0, 1)` for jitter.
    fn random(&self) -> f64;
    async fn kv_get(&self, key: &str) -> Option<String>;
    async fn kv_put(&self, key: &str, value: &str, expiration_ttl_secs: u64);
    /// The signature of `jwt.signing_input`. The worker signs with
    /// WebCrypto; by default jwt-compact signs in process.
    async fn sign(&self, jwt: &JwtToSign) -> Result<Vec<u8>, String> {
        jwt.key.sign_in_process(jwt.signing_input.as_bytes())
    }
    /// A one-shot wake-up for a caller waiting on another caller's token
    /// mint: calling the first half completes the second. The worker makes
    /// the second half a promise of the waiting request, so the waiter
    /// resumes in its own request's context.
    fn signal(&self) -> Signal {
        local_signal()
    }
    /// Whether the device `key` names is over the per-pushkey rate limit
    /// (`PUSH_LIMITER`); never, without one.
    async fn over_rate_limit(&self, _key: &str) -> bool {
        false
    }
    /// Whether `over_rate_limit` can say yes at all: without a limiter the
    /// dispatcher does not hash each device into its key.
    fn limits_rate(&self) -> bool {
        true
    }
    /// The deferred-delivery knobs when a queue is bound (`DEFERRED_QUEUE`):
    /// devices still transient after their tries are then handed to it
    /// (`crate::deferred`). `None`: no queue, nothing is deferred.
    fn deferral(&self) -> Option<&DeferredSettings> {
        None
    }
    /// Put messages on the deferred-delivery queue: each a text and the
    /// seconds before it is delivered.
    async fn defer(&self, _messages: &[(String, u64)]) -> Result<(), String> {
        Err("no deferred-delivery queue is bound".into())
    }
    /// Whether this request may send no more (its subrequest budget is
    /// spent): `send` would refuse.
    fn is_spent(&self) -> bool {
        false
    }
}

/// A transport refusing sends past a subrequest budget (`MAX_SUBREQUESTS`):
/// the runtime would fail them anyway, and a refused send is `Transient`, so
/// the homeserver retries (or the queue, for a deferred push). A notify has a
/// budget of its own; a queue batch's pushes share one. It also keeps the
/// last answer's `Retry-After` as sent, token endpoints' included: the
/// dispatcher sees it capped for waiting inside a request, the queue can
/// wait longer.
pub struct Budgeted<'a, T: Transport> {
    inner: &'a T,
    left: Allowance<'a>,
    retry_after_secs: Cell<Option<u64>>,
}

enum Allowance<'a> {
    /// A notify's own.
    Own(Cell<u32>),
    /// A queue batch's, shared by its pushes.
    Shared(&'a Cell<u32>),
}

impl<'a, T: Transport> Budgeted<'a, T> {
    /// `inner`, allowed `budget` sends.
    pub fn new(inner: &'a T, budget: u32) -> Self {
        Self { inner, left: Allowance::Own(Cell::new(budget)), retry_after_secs: Cell::new(None) }
    }

    /// `inner`, drawing on a budget shared with others.
    pub fn sharing(inner: &'a T, budget: &'a Cell<u32>) -> Self {
        Self { inner, left: Allowance::Shared(budget), retry_after_secs: Cell::new(None) }
    }

    /// The `Retry-After` (seconds) of the last answer, if it had one.
    pub fn last_retry_after_secs(&self) -> Option<u64> {
        self.retry_after_secs.get()
    }

    fn left(&self) -> &Cell<u32> {
        match &self.left {
            Allowance::Own(left) => left,
            Allowance::Shared(left) => left,
        }
    }
}

impl<T: Transport> Transport for Budgeted<'_, T> {
    async fn send(&self, request: &OutRequest) -> Result<ProviderResponse, String> {
        let left = self.left().get();
        if left == 0 {
            let whose = match self.left {
                Allowance::Own(_) => "request",
                Allowance::Shared(_) => "batch",
            };
            return Err(format!("the {whose}'s subrequest budget (MAX_SUBREQUESTS) is spent"));
        }
        self.left().set(left - 1);
        let response = self.inner.send(request).await?;
        self.retry_after_secs.set(response.retry_after_secs());
        Ok(response)
    }
    async fn sleep(&self, ms: u64) {
        self.inner.sleep(ms).await;
    }
    fn now_ms(&self) -> u64 {
        self.inner.now_ms()
    }
    fn random(&self) -> f64 {
        self.inner.random()
    }
    async fn kv_get(&self, key: &str) -> Option<String> {
        self.inner.kv_get(key).await
    }
    async fn kv_put(&self, key: &str, value: &str, expiration_ttl_secs: u64) {
        self.inner.kv_put(key, value, expiration_ttl_secs).await;
    }
    async fn sign(&self, jwt: &JwtToSign) -> Result<Vec<u8>, String> {
        self.inner.sign(jwt).await
    }
    /// The worker's signal wakes a waiter in its own request's context: a
    /// default one would wake it from whichever request ends the mint.
    fn signal(&self) -> Signal {
        self.inner.signal()
    }
    async fn over_rate_limit(&self, key: &str) -> bool {
        self.inner.over_rate_limit(key).await
    }
    fn limits_rate(&self) -> bool {
        self.inner.limits_rate()
    }
    fn deferral(&self) -> Option<&DeferredSettings> {
        self.inner.deferral()
    }
    async fn defer(&self, messages: &[(String, u64)]) -> Result<(), String> {
        self.inner.defer(messages).await
    }
    fn is_spent(&self) -> bool {
        self.left().get() == 0 || self.inner.is_spent()
    }
}

/// A one-shot wake-up: calling the first half completes the second.
pub type Signal = (Box<dyn FnOnce()>, Pin<Box<dyn Future<Output = ()>>>);

/// A one-shot wake-up within one thread. The default of `Transport::signal`.
pub fn local_signal() -> Signal {
    let state: Rc<RefCell<(bool, Option<Waker>)>> = Rc::default();
    let wake = {
        let state = state.clone();
        Box::new(move || {
            let waker = {
                let mut state = state.borrow_mut();
                state.0 = true;
                state.1.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        })
    };
    (wake, Box::pin(LocalSignal(state)))
}

struct LocalSignal(Rc<RefCell<(bool, Option<Waker>)>>);

impl Future for LocalSignal {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.0.borrow_mut();
        if state.0 {
            return Poll::Ready(());
        }
        state.1 = Some(cx.waker().clone());
        Poll::Pending
    }
}
