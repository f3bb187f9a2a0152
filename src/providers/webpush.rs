//! STUB: replaced by the provider's implementation.

use crate::config::WebPushConfig;
use crate::notify::{Device, Notification};
use super::{MintedToken, OutRequest, Prepared, ProviderResponse, Secrets, UnixSecs, Verdict};

pub struct WebPushApp {
    pub config: WebPushConfig,
}

impl WebPushApp {
    pub fn new(config: WebPushConfig, _secrets: &dyn Secrets) -> Result<Self, String> {
        Ok(Self { config })
    }
    pub fn prepare(&self, _n: &Notification, _d: &Device, _now: UnixSecs) -> Result<Prepared, Verdict> {
        Err(Verdict::failed("webpush is not implemented yet"))
    }
}

pub fn classify(_response: &ProviderResponse) -> Verdict {
    Verdict::failed("not implemented")
}
impl WebPushApp {
    pub fn mint(&self, _p: &Prepared, _now: UnixSecs) -> Result<MintedToken, Verdict> { Err(Verdict::failed("todo")) }
    pub fn authorization(&self, token: &str) -> String { format!("vapid t={token}") }
}
