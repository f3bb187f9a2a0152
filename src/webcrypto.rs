//! JWT signatures by the runtime's WebCrypto (`crypto.subtle`): native code,
//! a fraction of the CPU the same signature costs in wasm. Keys are imported
//! once per isolate.

use std::cell::RefCell;
use std::collections::HashMap;

use worker::js_sys::{self, Array, Object, Reflect, Uint8Array};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;

use crate::js::describe;
use crate::providers::jwt::{JwtAlg, JwtToSign};

thread_local! {
    /// Imported `CryptoKey`s by `JwtKey::id`.
    static KEYS: RefCell<HashMap<String, JsValue>> = RefCell::new(HashMap::new());
}

/// The signature of `jwt.signing_input`, as JWS wants it (ECDSA: raw
/// `r || s`, which is also what WebCrypto returns).
pub async fn sign(jwt: &JwtToSign) -> Result<Vec<u8>, String> {
    let subtle = subtle()?;
    let key = imported_key(&subtle, jwt).await?;
    let data = Uint8Array::from(jwt.signing_input.as_bytes());
    let promise = call(&subtle, "sign", &[sign_params(jwt.key.alg())?, key, data.into()])?;
    let signature = JsFuture::from(promise).await.map_err(describe)?;
    Ok(Uint8Array::new(&signature).to_vec())
}

async fn imported_key(subtle: &JsValue, jwt: &JwtToSign) -> Result<JsValue, String> {
    if let Some(key) = KEYS.with(|keys| keys.borrow().get(jwt.key.id()).cloned()) {
        return Ok(key);
    }
    let der = Uint8Array::from(jwt.key.pkcs8_der());
    let usages = Array::of1(&JsValue::from_str("sign"));
    let args = [JsValue::from_str("pkcs8"), der.into(), import_params(jwt.key.alg())?, JsValue::FALSE, usages.into()];
    let key = JsFuture::from(call(subtle, "importKey", &args)?).await.map_err(describe)?;
    KEYS.with(|keys| keys.borrow_mut().insert(jwt.key.id().to_string(), key.clone()));
    Ok(key)
}

fn subtle() -> Result<JsValue, String> {
    let crypto = Reflect::get(&js_sys::global(), &"crypto".into()).map_err(describe)?;
    Reflect::get(&crypto, &"subtle".into()).map_err(describe)
}

fn call(target: &JsValue, method: &str, args: &[JsValue]) -> Result<js_sys::Promise, String> {
    let function: js_sys::Function = Reflect::get(target, &method.into())
        .map_err(describe)?
        .dyn_into()
        .map_err(|_| format!("crypto.subtle.{method} is not a function"))?;
    let result = function.apply(target, &args.iter().collect::<Array>()).map_err(describe)?;
    result.dyn_into().map_err(|_| format!("crypto.subtle.{method} did not return a promise"))
}

fn params(entries: &[(&str, &str)]) -> Result<JsValue, String> {
    let object = Object::new();
    for (name, value) in entries {
        Reflect::set(&object, &(*name).into(), &(*value).into()).map_err(describe)?;
    }
    Ok(object.into())
}

fn import_params(alg: JwtAlg) -> Result<JsValue, String> {
    match alg {
        JwtAlg::Es256 => params(&[("name", "ECDSA"), ("namedCurve", "P-256")]),
        JwtAlg::Rs256 => params(&[("name", "RSASSA-PKCS1-v1_5"), ("hash", "SHA-256")]),
    }
}

fn sign_params(alg: JwtAlg) -> Result<JsValue, String> {
    match alg {
        JwtAlg::Es256 => params(&[("name", "ECDSA"), ("hash", "SHA-256")]),
        JwtAlg::Rs256 => params(&[("name", "RSASSA-PKCS1-v1_5")]),
    }
}
