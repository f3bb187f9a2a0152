//! What the worker's modules (`shell.rs`, `http.rs`, `webcrypto.rs`) share
//! about JS values.

use worker::wasm_bindgen::JsValue;

/// A JS error as `worker::Error` words it (`TypeError: ...`).
pub fn describe(error: JsValue) -> String {
    worker::Error::from(error).to_string()
}
