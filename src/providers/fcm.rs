//! STUB: replaced by the provider's implementation.

use crate::config::FcmConfig;
use crate::notify::{Device, Notification};
use super::{MintedToken, OutRequest, Prepared, ProviderResponse, Secrets, UnixSecs, Verdict};

pub struct FcmApp {
    pub config: FcmConfig,
}

impl FcmApp {
    pub fn new(config: FcmConfig, _secrets: &dyn Secrets) -> Result<Self, String> {
        Ok(Self { config })
    }
    pub fn prepare(&self, _n: &Notification, _d: &Device, _now: UnixSecs) -> Result<Prepared, Verdict> {
        Err(Verdict::failed("fcm is not implemented yet"))
    }
}

pub fn classify(_response: &ProviderResponse) -> Verdict {
    Verdict::failed("not implemented")
}
impl FcmApp {
    pub fn token_request(&self, _now: UnixSecs) -> Result<OutRequest, Verdict> { Err(Verdict::failed("todo")) }
    pub fn read_token_response(&self, _r: &ProviderResponse, _now: UnixSecs) -> Result<MintedToken, Verdict> { Err(Verdict::failed("todo")) }
}
