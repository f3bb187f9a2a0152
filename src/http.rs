//! The worker's I/O: the one place that calls `fetch`, KV and timers.

use std::cell::OnceCell;
use std::time::Duration;

use futures_util::future::{select, Either};
use worker::js_sys::{self, Array, Function, Object, Promise, Reflect, Uint8Array};
use worker::wasm_bindgen::prelude::wasm_bindgen;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::web_sys;
use worker::{Delay, Env, KvStore, MessageBuilder, Queue, QueueContentType};

use crate::config::DeferredSettings;
use crate::deferred;
use crate::js::describe;
use crate::providers::jwt::JwtToSign;
use crate::providers::{AnswerBody, OutRequest, ProviderResponse};
use crate::transport::{Signal, Transport};

/// The most of a provider's answer that is read. Every verdict needs a few
/// hundred bytes at most (APNs' `{"reason"}`, FCM's error with its details)
/// and an OAuth answer holds a token of at most 2 KiB; the rest of a longer
/// body is cancelled unread, so an endpoint that answers with megabytes, or
/// never stops, costs the isolate 8 KiB.
pub const MAX_ANSWER_BYTES: usize = 8 * 1024;

/// The optional Workers Rate Limiting binding limiting sends per device.
const RATE_LIMITER: &str = "PUSH_LIMITER";

/// The only response header the providers read (`ProviderResponse::retry_after`).
const RETRY_AFTER: &str = "retry-after";

/// The transport of one request. A send is one call to `glue.js`'s
/// `exchange` rather than `worker::Fetch` and `worker::Response`, whose
/// conversions read properties (e.g. `cf`) that cost CPU on every send and
/// are never used, or a loop of `web_sys` calls.
pub struct WorkerTransport<'a> {
    env: &'a Env,
    /// `TOKENS`, looked up on first use: a notify with a cached token never needs it.
    kv: OnceCell<Option<KvStore>>,
    /// `PUSH_LIMITER`'s `limit` function and the binding, looked up on first use.
    limiter: OnceCell<Option<(Function, JsValue)>>,
    pub send_timeout_ms: u64,
    /// Deferred delivery's knobs, and its queue (`DEFERRED_QUEUE`), looked up
    /// on first use.
    deferred: Option<&'a DeferredSettings>,
    queue: OnceCell<Option<Queue>>,
}

/// The binding of the deferred-delivery queue.
pub const DEFERRED_QUEUE: &str = "DEFERRED_QUEUE";

/// What one `sendBatch` may carry in all (Queues allows 256 KB).
const MAX_BATCH_BYTES: usize = 200_000;

impl<'a> WorkerTransport<'a> {
    pub fn new(env: &'a Env, send_timeout_ms: u64) -> Self {
        Self { env, kv: OnceCell::new(), limiter: OnceCell::new(), send_timeout_ms, deferred: None, queue: OnceCell::new() }
    }

    /// Defer transient devices to `DEFERRED_QUEUE` when it is bound.
    pub fn with_deferral(mut self, settings: &'a DeferredSettings) -> Self {
        self.deferred = Some(settings);
        self
    }

    /// `DEFERRED_QUEUE`, if bound.
    pub fn queue(&self) -> Option<&Queue> {
        self.queue.get_or_init(|| self.env.queue(DEFERRED_QUEUE).ok()).as_ref()
    }

    fn kv(&self) -> Option<&KvStore> {
        self.kv.get_or_init(|| self.env.kv("TOKENS").ok()).as_ref()
    }

    /// The rate limiter binding, called through its JS interface (`limit({key})`).
    fn limiter(&self) -> Option<&(Function, JsValue)> {
        self.limiter
            .get_or_init(|| {
                let binding = Reflect::get(self.env, &JsValue::from_str(RATE_LIMITER)).ok().filter(|b| b.is_object())?;
                let limit = Reflect::get(&binding, &JsValue::from_str("limit")).ok()?.dyn_into::<Function>().ok()?;
                Some((limit, binding))
            })
            .as_ref()
    }
}

/// Sends message texts to a queue, each after its delay, in as few
/// `sendBatch` calls as the limits allow, in order. On a refusal, the error
/// says how many of the first messages were sent before it.
pub async fn send_texts(queue: &Queue, messages: &[(String, u64)]) -> Result<(), (usize, String)> {
    let sizes: Vec<usize> = messages.iter().map(|(text, _)| text.len()).collect();
    let mut sent = 0;
    for run in deferred::batches(&sizes, MAX_BATCH_BYTES) {
        let Some(chunk) = messages.get(run) else { continue };
        let count = chunk.len();
        let batch = chunk.iter().map(|(text, delay)| {
            MessageBuilder::new(text.clone())
                .content_type(QueueContentType::Text)
                .delay_seconds(u32::try_from(*delay).unwrap_or(u32::MAX))
                .build()
        });
        queue.send_batch(batch).await.map_err(|e| (sent, e.to_string()))?;
        sent += count;
    }
    Ok(())
}

/// `src/glue.js`: the loops and awaits over JS objects of a request, each one
/// call from here (bench/README.md, "What was changed").
#[wasm_bindgen(module = "/src/glue.js", wasm_bindgen = worker::wasm_bindgen, js_sys = worker::js_sys)]
extern "C" {
    #[wasm_bindgen(js_name = readBody)]
    pub fn read_body(request: &web_sys::Request, max: f64) -> Promise;
    fn exchange(url: &str, headers: &str, body: &[u8], timeout_ms: f64, cap: f64) -> Promise;
    #[wasm_bindgen(catch)]
    pub fn respond(status: u16, body: &str, retry_after_secs: f64) -> Result<web_sys::Response, JsValue>;
}

impl WorkerTransport<'_> {
    /// `send`, with errors as workerd words them.
    async fn exchange(&self, request: &OutRequest) -> Result<ProviderResponse, String> {
        // One string for all the headers: `name\nvalue\n...`. A value is
        // trimmed of whitespace at its ends as `fetch` would; one with a line
        // break or NUL inside is no header (`fetch` would refuse it unnamed).
        let mut headers = String::new();
        for (name, value) in &request.headers {
            let value = value.trim_matches([' ', '\t', '\r', '\n']);
            if name.contains(['\r', '\n', '\0']) || value.contains(['\r', '\n', '\0']) {
                return Err(format!("bad header {name}: a line break or NUL in it"));
            }
            headers.push_str(name);
            headers.push('\n');
            headers.push_str(value);
            headers.push('\n');
        }
        let cap = match request.answer_body {
            AnswerBody::Read => MAX_ANSWER_BYTES as f64,
            AnswerBody::Cancel => -1.0,
        };
        let answer = JsFuture::from(exchange(&request.url, &headers, &request.body, self.send_timeout_ms as f64, cap))
            .await
            .map_err(describe)?;
        if answer.is_null() {
            return Err(format!("no answer within {} ms", self.send_timeout_ms));
        }
        if let Some(error) = answer.as_string() {
            return Err(error);
        }
        let answer: Array = answer.dyn_into().map_err(|_| "the exchange gave no answer".to_string())?;
        let status = answer.get(0).as_f64().map_or(0, |s| s as u16);
        let headers = answer.get(1).as_string().map(|v| vec![(RETRY_AFTER.to_string(), v)]).unwrap_or_default();
        let body = answer.get(2).dyn_into::<Uint8Array>().map(|b| b.to_vec()).unwrap_or_default();
        Ok(ProviderResponse { status, headers, body })
    }
}

impl Transport for WorkerTransport<'_> {
    /// Errors go into logs: any URL in them is cut to its origin.
    async fn send(&self, request: &OutRequest) -> Result<ProviderResponse, String> {
        self.exchange(request).await.map_err(|e| request.redact(&e))
    }

    async fn sign(&self, jwt: &JwtToSign) -> Result<Vec<u8>, String> {
        if jwt.key.is_deterministic() {
            // APNs: the same token in every isolate (RFC 6979), which
            // WebCrypto's randomised ECDSA cannot give.
            jwt.key.sign_in_process(jwt.signing_input.as_bytes())
        } else {
            crate::webcrypto::sign(jwt).await
        }
    }

    /// A promise made here, in the waiting request's context: whichever
    /// request ends the mint resolves it, and workerd runs the waiter's
    /// continuation in the waiter's own context (a Rust waker would poll the
    /// waiter inside the waking request, whose I/O ends with it).
    fn signal(&self) -> Signal {
        let mut resolve: Option<Function> = None;
        let promise = Promise::new(&mut |res, _rej| resolve = Some(res));
        let wake = Box::new(move || {
            if let Some(resolve) = resolve {
                let _ = resolve.call0(&JsValue::UNDEFINED);
            }
        });
        (wake, Box::pin(async move {
            let _ = JsFuture::from(promise).await;
        }))
    }

    fn limits_rate(&self) -> bool {
        self.limiter().is_some()
    }

    async fn over_rate_limit(&self, key: &str) -> bool {
        let Some((limit, binding)) = self.limiter() else { return false };
        let options = Object::new();
        if Reflect::set(&options, &JsValue::from_str("key"), &JsValue::from_str(key)).is_err() {
            return false;
        }
        let outcome = match limit.call1(binding, &options) {
            Ok(promise) => JsFuture::from(Promise::from(promise)).await,
            Err(e) => Err(e),
        };
        match outcome.and_then(|o| Reflect::get(&o, &JsValue::from_str("success"))) {
            Ok(success) => success.as_bool() == Some(false),
            Err(e) => {
                // A limiter that fails lets the push through: it guards, it does not decide.
                worker::console_warn!("{{\"msg\":\"PUSH_LIMITER failed\",\"error\":{:?}}}", describe(e));
                false
            }
        }
    }

    async fn sleep(&self, ms: u64) {
        Delay::from(Duration::from_millis(ms)).await;
    }

    fn now_ms(&self) -> u64 {
        // The static `Date.now()`: `worker::Date::now()` builds a `Date` object.
        js_sys::Date::now() as u64
    }

    fn random(&self) -> f64 {
        js_sys::Math::random()
    }

    async fn kv_get(&self, key: &str) -> Option<String> {
        let kv = self.kv()?;
        // Bounded like a send: a mint's worst case, which waiters wait out,
        // is then two send timeouts.
        let read = Box::pin(kv.get(key).text());
        let timeout = Delay::from(Duration::from_millis(self.send_timeout_ms));
        match select(read, timeout).await {
            Either::Left((Ok(value), _)) => value,
            Either::Left((Err(e), _)) => {
                worker::console_warn!("{{\"msg\":\"TOKENS read failed\",\"error\":{:?}}}", e.to_string());
                None
            }
            Either::Right(_) => {
                worker::console_warn!("{{\"msg\":\"TOKENS read timed out\",\"ms\":{}}}", self.send_timeout_ms);
                None
            }
        }
    }

    fn deferral(&self) -> Option<&DeferredSettings> {
        self.deferred.filter(|_| self.queue().is_some())
    }

    async fn defer(&self, messages: &[(String, u64)]) -> Result<(), String> {
        let queue = self.queue().ok_or_else(|| format!("{DEFERRED_QUEUE} is not bound"))?;
        // Some sent and some not is still a failure: the notify is answered
        // 502, and the copies already queued carry the push's identity, so
        // the homeserver's retry shows it once.
        send_texts(queue, messages).await.map_err(|(sent, e)| match sent {
            0 => e,
            _ => format!("{e} (after {sent} of {} were queued)", messages.len()),
        })
    }

    async fn kv_put(&self, key: &str, value: &str, expiration_ttl_secs: u64) {
        let Some(kv) = self.kv() else { return };
        let result = match kv.put(key, value) {
            Ok(builder) => builder.expiration_ttl(expiration_ttl_secs).execute().await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            // The token still works from memory; KV only shares it.
            worker::console_warn!("{{\"msg\":\"TOKENS write failed\",\"error\":{:?}}}", e.to_string());
        }
    }
}
