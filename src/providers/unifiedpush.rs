//! STUB: replaced by the provider's implementation.

use crate::config::UnifiedPushConfig;
use crate::notify::{Device, Notification};
use super::{Prepared, ProviderResponse, UnixSecs, Verdict};

pub struct UnifiedPushApp {
    pub config: UnifiedPushConfig,
}

impl UnifiedPushApp {
    pub fn new(config: UnifiedPushConfig) -> Result<Self, String> {
        Ok(Self { config })
    }
    pub fn prepare(&self, _n: &Notification, _d: &Device, _now: UnixSecs) -> Result<Prepared, Verdict> {
        Err(Verdict::failed("unifiedpush is not implemented yet"))
    }
}

pub fn classify(_response: &ProviderResponse) -> Verdict {
    Verdict::failed("not implemented")
}
