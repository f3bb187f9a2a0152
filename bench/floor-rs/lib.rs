//! The floor of a Rust worker: bench/floor.mjs's work (read the request, one
//! fetch to `UPSTREAM`, answer `{"rejected":[]}`) through `web_sys` (the
//! request and response types, the body read by hand, the static `fetch`).
//! Nothing else: no parsing, no timeout, no log.
//!
//! The query adds, one by one, what a gateway asks of the runtime beyond
//! that, so the bench can price each (bench/README.md), still through
//! `web_sys`: `timeout` (an AbortController and a timer raced against the
//! exchange), `headers` (the four more request headers of an APNs send),
//! `reader` (the answer read through a stream reader instead of
//! `arrayBuffer`), `log` (one line the size of edgepush's notify line),
//! `clock` (nine more `Date.now()`), or `all` of them. `gateway` does what
//! `all` does the way edgepush's shell does it: the body read, the exchange
//! (APNs headers, timeout, capped answer) and the answer through `glue.js`
//! (a link to edgepush's `src/glue.js`), the clock read ten times and one
//! log line.

use std::time::Duration;

use futures_util::future::{select, Either};
use worker::js_sys::{self, Promise, Reflect, Uint8Array};
use worker::wasm_bindgen::prelude::wasm_bindgen;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::web_sys::{self, AbortController, RequestRedirect, WorkerGlobalScope};
use worker::{console_log, event, Context, Delay, Env, Result};

/// A line like edgepush's per-notify log line.
const LINE: &str = r#"{"msg":"notify","request_id":"0123456789abcdef","status":200,"ms":1,"devices":[{"app_id":"org.example.bench.ios","pushkey":"abcdef…","provider":"apns","outcome":"delivered","status":200,"tries":1,"token":"memory","ms":1}]}"#;

#[wasm_bindgen(module = "/glue.js", wasm_bindgen = worker::wasm_bindgen, js_sys = worker::js_sys)]
extern "C" {
    #[wasm_bindgen(js_name = readBody)]
    fn glue_read_body(request: &web_sys::Request, max: f64) -> Promise;
    #[wasm_bindgen(js_name = exchange)]
    fn glue_exchange(url: &str, headers: &str, body: &[u8], timeout_ms: f64, cap: f64) -> Promise;
    #[wasm_bindgen(js_name = respond)]
    fn glue_respond(status: u16, body: &str, retry_after_secs: f64) -> web_sys::Response;
}

/// `?gateway`: edgepush's runtime calls for an APNs notify, without edgepush.
async fn gateway(req: web_sys::Request, env: Env) -> Result<web_sys::Response> {
    let body = Uint8Array::new(&JsFuture::from(glue_read_body(&req, 65536.0)).await?).to_vec();
    let upstream = env.var("UPSTREAM")?.to_string();
    for _ in 0..10 {
        std::hint::black_box(js_sys::Date::now());
    }
    let headers = format!(
        "content-type\napplication/json\napns-topic\norg.example.bench\napns-push-type\nalert\napns-priority\n10\nauthorization\nbearer {}\n",
        "x".repeat(180)
    );
    let answer = JsFuture::from(glue_exchange(&upstream, &headers, &body, 10_000.0, 8192.0)).await?;
    let ok = answer.is_object() && {
        // As edgepush reads an answer: status, Retry-After, body.
        let answer: &js_sys::Array = answer.unchecked_ref();
        let _retry_after = answer.get(1).as_string();
        let _body = answer.get(2).dyn_into::<Uint8Array>().map(|b| b.to_vec());
        answer.get(0).as_f64() == Some(200.0)
    };
    console_log!("{LINE}");
    let text = if ok { r#"{"rejected":[]}"# } else { r#"{"upstream":"failed"}"# };
    Ok(glue_respond(if ok { 200 } else { 502 }, text, -1.0))
}

#[event(fetch)]
async fn fetch(req: web_sys::Request, env: Env, _ctx: Context) -> Result<web_sys::Response> {
    let url = req.url();
    let query = url.split_once('?').map_or("", |(_, q)| q);
    if query == "gateway" {
        return gateway(req, env).await;
    }
    let with = |feature: &str| query.split('&').any(|f| f == feature || f == "all");
    let body = read_body(req).await?;
    let upstream = env.var("UPSTREAM")?.to_string();
    if with("clock") {
        for _ in 0..9 {
            std::hint::black_box(js_sys::Date::now());
        }
    }

    let headers = web_sys::Headers::new()?;
    headers.set("content-type", "application/json")?;
    if with("headers") {
        headers.set("apns-topic", "org.example.bench")?;
        headers.set("apns-push-type", "alert")?;
        headers.set("apns-priority", "10")?;
        headers.set("authorization", &format!("bearer {}", "x".repeat(180)))?;
    }
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_headers_headers(&headers);
    init.set_body(&Uint8Array::from(body.as_slice()));
    let global: WorkerGlobalScope = js_sys::global().unchecked_into();
    let reader = with("reader");
    let exchange = async {
        let response: web_sys::Response = JsFuture::from(global.fetch_with_str_and_init(&upstream, &init)).await?.dyn_into()?;
        let answer = if reader { read_stream(response.body()).await? } else { Uint8Array::new(&JsFuture::from(response.array_buffer()?).await?).to_vec() };
        Ok::<_, worker::Error>((response.ok(), answer))
    };
    let (ok, answer) = if with("timeout") {
        init.set_redirect(RequestRedirect::Manual);
        let controller = AbortController::new()?;
        init.set_signal(Some(&controller.signal()));
        match select(Box::pin(exchange), Delay::from(Duration::from_secs(10))).await {
            Either::Left((result, _)) => result?,
            Either::Right(_) => {
                controller.abort();
                (false, Vec::new())
            }
        }
    } else {
        exchange.await?
    };
    let ok = ok && answer.len() < 1 << 20;
    if with("log") {
        console_log!("{LINE}");
    }

    let headers = web_sys::Headers::new()?;
    headers.set("content-type", "application/json")?;
    let init = web_sys::ResponseInit::new();
    init.set_status(if ok { 200 } else { 502 });
    init.set_headers(&headers);
    let text = if ok { r#"{"rejected":[]}"# } else { r#"{"upstream":"failed"}"# };
    Ok(web_sys::Response::new_with_opt_str_and_init(Some(text), &init)?)
}

async fn read_body(req: web_sys::Request) -> Result<Vec<u8>> {
    read_stream(req.body()).await
}

async fn read_stream(stream: Option<web_sys::ReadableStream>) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let Some(stream) = stream else { return Ok(body) };
    let reader: web_sys::ReadableStreamDefaultReader = stream.get_reader().unchecked_into();
    let (done, value) = (JsValue::from_str("done"), JsValue::from_str("value"));
    loop {
        let chunk = JsFuture::from(reader.read()).await?;
        if Reflect::get(&chunk, &done)?.is_truthy() {
            return Ok(body);
        }
        let bytes: Uint8Array = Reflect::get(&chunk, &value)?.dyn_into()?;
        let start = body.len();
        body.resize(start + bytes.length() as usize, 0);
        if let Some(slot) = body.get_mut(start..) {
            bytes.copy_to(slot);
        }
    }
}
