//! edgepush: a Matrix Push Gateway for Cloudflare Workers.
//!
//! Everything but the worker shell (`shell`, `http`) is plain Rust that
//! builds and tests on the host.

pub mod apps;
pub mod bounded;
pub mod config;
pub mod consumer;
pub mod deferred;
pub mod dispatch;
pub mod endpoints;
pub mod error;
pub mod evidence;
pub mod fingerprint;
pub mod metrics;
pub mod notify;
pub mod origin;
pub mod providers;
pub mod report;
pub mod routes;
#[cfg(not(target_arch = "wasm32"))]
pub mod sygnal_import;
pub mod tokens;
pub mod transport;
#[cfg(test)]
pub(crate) mod testing;


#[cfg(target_arch = "wasm32")]
mod http;
#[cfg(target_arch = "wasm32")]
mod js;
#[cfg(target_arch = "wasm32")]
mod shell;
#[cfg(target_arch = "wasm32")]
mod webcrypto;
