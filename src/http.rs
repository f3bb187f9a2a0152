//! The worker's I/O: the one place that calls `fetch`, KV and timers.

use std::cell::OnceCell;
use std::time::Duration;

use futures_util::future::{select, Either};
use worker::js_sys::{self, Uint8Array};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::web_sys::{self, AbortController, RequestRedirect, WorkerGlobalScope};
use worker::{Delay, Env, KvStore};

use crate::dispatch::Transport;
use crate::providers::jwt::JwtToSign;
use crate::providers::{OutRequest, ProviderResponse};

/// Provider answers are small; a larger body is cut here.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The only response header the providers read (`ProviderResponse::retry_after`).
const RETRY_AFTER: &str = "retry-after";

/// The transport of one request. Calls go to `web_sys` directly rather than
/// through `worker::Fetch` and `worker::Response`, whose conversions read
/// properties (e.g. `cf`) that cost CPU on every send and are never used.
pub struct WorkerTransport<'a> {
    env: &'a Env,
    /// `TOKENS`, looked up on first use: a notify with a cached token never needs it.
    kv: OnceCell<Option<KvStore>>,
    pub send_timeout_ms: u64,
}

impl<'a> WorkerTransport<'a> {
    pub fn new(env: &'a Env, send_timeout_ms: u64) -> Self {
        Self { env, kv: OnceCell::new(), send_timeout_ms }
    }

    fn kv(&self) -> Option<&KvStore> {
        self.kv.get_or_init(|| self.env.kv("TOKENS").ok()).as_ref()
    }
}

impl Transport for WorkerTransport<'_> {
    async fn send(&self, request: &OutRequest) -> Result<ProviderResponse, String> {
        let headers = web_sys::Headers::new().map_err(describe)?;
        for (name, value) in &request.headers {
            headers.set(name, value).map_err(|e| format!("bad header {name}: {}", describe(e)))?;
        }
        let init = web_sys::RequestInit::new();
        init.set_method("POST");
        init.set_headers_headers(&headers);
        init.set_body(&Uint8Array::from(request.body.as_slice()));
        init.set_redirect(RequestRedirect::Manual);
        let controller = AbortController::new().map_err(describe)?;
        init.set_signal(Some(&controller.signal()));

        let global: WorkerGlobalScope = js_sys::global().unchecked_into();
        // The timeout bounds the whole exchange, body included: a provider
        // that sends its headers and then stalls is as dead as a silent one.
        let exchange = Box::pin(async {
            let response = JsFuture::from(global.fetch_with_str_and_init(&request.url, &init)).await.map_err(describe)?;
            read_response(response).await
        });
        let timeout = Delay::from(Duration::from_millis(self.send_timeout_ms));
        let (status, headers, mut body) = match select(exchange, timeout).await {
            Either::Left((result, _)) => result?,
            Either::Right(_) => {
                controller.abort();
                return Err(format!("no answer within {} ms", self.send_timeout_ms));
            }
        };
        body.truncate(MAX_RESPONSE_BYTES);
        Ok(ProviderResponse { status, headers, body })
    }

    async fn sign(&self, jwt: &JwtToSign) -> Result<Vec<u8>, String> {
        crate::webcrypto::sign(jwt).await
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
        match kv.get(key).text().await {
            Ok(value) => value,
            Err(e) => {
                worker::console_warn!("{{\"msg\":\"TOKENS read failed\",\"error\":{:?}}}", e.to_string());
                None
            }
        }
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

/// Status, the headers the providers read, and the body of a fetch's answer.
async fn read_response(response: JsValue) -> Result<(u16, Vec<(String, String)>, Vec<u8>), String> {
    let response: web_sys::Response = response.dyn_into().map_err(|_| "fetch did not return a Response".to_string())?;
    let status = response.status();
    let success = (200..300).contains(&status);
    // `Retry-After` only matters on an error answer.
    let retry_after = if success { None } else { response.headers().get(RETRY_AFTER).ok().flatten() };
    let headers = retry_after.map(|v| vec![(RETRY_AFTER.to_string(), v)]).unwrap_or_default();
    let body = match response.array_buffer() {
        Ok(promise) => JsFuture::from(promise).await,
        Err(e) => Err(e),
    };
    let body = match body {
        Ok(buffer) => Uint8Array::new(&buffer).to_vec(),
        // A success whose body was cut off is no success (a token
        // endpoint's answer without its token): retry it.
        Err(e) if success => return Err(format!("the answer was cut off: {}", describe(e))),
        // An error status stands on its own; its unreadable reason is not needed.
        Err(_) => Vec::new(),
    };
    Ok((status, headers, body))
}

/// A JS error as `worker::Error` words it (`TypeError: ...`), as before.
pub(crate) fn describe(error: JsValue) -> String {
    worker::Error::from(error).to_string()
}
