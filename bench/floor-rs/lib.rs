//! The floor of a Rust worker: bench/floor.mjs's work (read the request, one
//! fetch to `UPSTREAM`, answer `{"rejected":[]}`) through the same calls as
//! edgepush's shell (`web_sys` types, the body read by hand, the static
//! `fetch`). Nothing else: no parsing, no timeout, no log.

use worker::js_sys::{self, Reflect, Uint8Array};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::web_sys::{self, WorkerGlobalScope};
use worker::{event, Context, Env, Result};

#[event(fetch)]
async fn fetch(req: web_sys::Request, env: Env, _ctx: Context) -> Result<web_sys::Response> {
    let body = read_body(req).await?;
    let upstream = env.var("UPSTREAM")?.to_string();

    let headers = web_sys::Headers::new()?;
    headers.set("content-type", "application/json")?;
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_headers_headers(&headers);
    init.set_body(&Uint8Array::from(body.as_slice()));
    let global: WorkerGlobalScope = js_sys::global().unchecked_into();
    let response: web_sys::Response = JsFuture::from(global.fetch_with_str_and_init(&upstream, &init)).await?.dyn_into()?;
    let answer = Uint8Array::new(&JsFuture::from(response.array_buffer()?).await?).to_vec();
    let ok = response.ok() && answer.len() < 1 << 20;

    let headers = web_sys::Headers::new()?;
    headers.set("content-type", "application/json")?;
    let init = web_sys::ResponseInit::new();
    init.set_status(if ok { 200 } else { 502 });
    init.set_headers(&headers);
    let text = if ok { r#"{"rejected":[]}"# } else { r#"{"upstream":"failed"}"# };
    Ok(web_sys::Response::new_with_opt_str_and_init(Some(text), &init)?)
}

async fn read_body(req: web_sys::Request) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let Some(stream) = req.body() else { return Ok(body) };
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
