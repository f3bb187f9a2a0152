//! The worker's I/O: the one place that calls `fetch`, KV and timers.

use std::time::Duration;

use futures_util::future::{select, Either};
use worker::{
    js_sys, AbortController, Date, Delay, Fetch, Headers, KvStore, Method, Request, RequestInit, RequestRedirect,
};

use crate::dispatch::Transport;
use crate::providers::jwt::JwtToSign;
use crate::providers::{OutRequest, ProviderResponse};

/// Provider answers are small; a larger body is cut here.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

pub struct WorkerTransport {
    pub kv: Option<KvStore>,
    pub send_timeout_ms: u64,
}

impl Transport for WorkerTransport {
    async fn send(&self, request: &OutRequest) -> Result<ProviderResponse, String> {
        let headers = Headers::new();
        for (name, value) in &request.headers {
            headers.set(name, value).map_err(|e| format!("bad header {name}: {e}"))?;
        }
        let body = js_sys::Uint8Array::from(request.body.as_slice());
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_headers(headers)
            .with_redirect(RequestRedirect::Manual)
            .with_body(Some(body.into()));
        let outgoing = Request::new_with_init(&request.url, &init).map_err(|e| format!("bad request: {e}"))?;

        let controller = AbortController::default();
        let signal = controller.signal();
        let fetch = Fetch::Request(outgoing);
        let sending = Box::pin(fetch.send_with_signal(&signal));
        let timeout = Delay::from(Duration::from_millis(self.send_timeout_ms));
        let mut response = match select(sending, timeout).await {
            Either::Left((result, _)) => result.map_err(|e| e.to_string())?,
            Either::Right(_) => {
                controller.abort();
                return Err(format!("no answer within {} ms", self.send_timeout_ms));
            }
        };
        let headers = ["retry-after", "content-type", "apns-id", "location"]
            .iter()
            .filter_map(|name| response.headers().get(name).ok().flatten().map(|v| (name.to_string(), v)))
            .collect();
        let status = response.status_code();
        let mut body = match response.bytes().await {
            Ok(body) => body,
            // A success whose body was cut off is no success (a token
            // endpoint's answer without its token): retry it.
            Err(e) if (200..300).contains(&status) => return Err(format!("the answer was cut off: {e}")),
            // An error status stands on its own; its unreadable reason is not needed.
            Err(_) => Vec::new(),
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
        Date::now().as_millis()
    }

    fn random(&self) -> f64 {
        js_sys::Math::random()
    }

    async fn kv_get(&self, key: &str) -> Option<String> {
        let kv = self.kv.as_ref()?;
        match kv.get(key).text().await {
            Ok(value) => value,
            Err(e) => {
                worker::console_warn!("{{\"msg\":\"TOKENS read failed\",\"error\":{:?}}}", e.to_string());
                None
            }
        }
    }

    async fn kv_put(&self, key: &str, value: &str, expiration_ttl_secs: u64) {
        let Some(kv) = self.kv.as_ref() else { return };
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
