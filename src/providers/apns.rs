//! STUB: replaced by the provider's implementation.

use crate::config::ApnsConfig;
use crate::notify::{Device, Notification};
use super::{MintedToken, OutRequest, Prepared, ProviderResponse, Secrets, UnixSecs, Verdict};

pub struct ApnsApp {
    pub config: ApnsConfig,
}

impl ApnsApp {
    pub fn new(config: ApnsConfig, _secrets: &dyn Secrets) -> Result<Self, String> {
        Ok(Self { config })
    }
    pub fn prepare(&self, _n: &Notification, _d: &Device, _now: UnixSecs) -> Result<Prepared, Verdict> {
        Err(Verdict::failed("apns is not implemented yet"))
    }
}

pub fn classify(_response: &ProviderResponse) -> Verdict {
    Verdict::failed("not implemented")
}
impl ApnsApp {
    pub fn mint(&self, _now: UnixSecs) -> Result<MintedToken, Verdict> { Err(Verdict::failed("todo")) }
}
