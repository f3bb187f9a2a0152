//! One notification, fanned out to its devices concurrently; each device ends
//! in one outcome, and `reply` alone turns outcomes into the answer.

use std::cell::RefCell;
use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;

use crate::apps::{AppEntry, Apps, Lookup};
use crate::config::Settings;
use crate::error::{ApiError, Reply};
use crate::fingerprint;
use crate::notify::{Device, Notification};
use crate::providers::apns::{self, ApnsApp, Environment};
use crate::providers::{App, Outcome, Prepared, Verdict, RETRY_AFTER_CAP};
use crate::report::{DeviceReport, FinalOutcome};
use crate::tokens::TokenCache;
use crate::transport::{Budgeted, Transport};

/// No retry starts after this much time in one request: the homeserver's
/// own timeout should not fire while we are still trying.
pub const REQUEST_BUDGET_MS: u64 = 25_000;
/// The longest pause between two tries.
pub const MAX_BACKOFF_MS: u64 = 3_000;

/// Everything one `/notify` needs besides the notification.
pub struct Dispatcher<'a, T: Transport> {
    transport: Budgeted<'a, T>,
    apps: &'a Apps,
    settings: &'a Settings,
    tokens: &'a TokenCache,
    /// Devices (by index) that ended transient, with their requests and the
    /// provider's `Retry-After`: handed to the deferred-delivery queue when
    /// one is bound.
    deferrable: RefCell<Vec<(usize, Prepared, Option<Duration>)>>,
}

impl<'a, T: Transport> Dispatcher<'a, T> {
    /// One dispatcher per notify: it holds that request's subrequest budget.
    pub fn new(transport: &'a T, apps: &'a Apps, settings: &'a Settings, tokens: &'a TokenCache) -> Self {
        let transport = Budgeted::new(transport, settings.max_subrequests);
        Self { transport, apps, settings, tokens, deferrable: RefCell::new(Vec::new()) }
    }

    /// Deliver to every device concurrently; reports keep the devices' order.
    ///
    /// A device its provider `Refused` is judged once every device of the
    /// notify has settled, so a dead token answered before its app's other
    /// devices were delivered still has their deliveries as evidence.
    pub async fn dispatch(&self, n: &Notification) -> Vec<(Device, DeviceReport)> {
        let started = self.transport.now_ms();
        let settled = join_all(n.devices.iter().enumerate().map(|(i, d)| self.deliver(n, d, i, started))).await;
        // Evidence is per app id: a glob's app ids may be builds of different
        // kinds (a production and a development build), proving nothing
        // about each other.
        let delivered_here: HashSet<String> =
            settled.iter().filter(|s| s.delivered_by_send()).map(|s| s.report.app_id.clone()).collect();
        let now = self.transport.now_ms();
        let mut reports: Vec<DeviceReport> = settled.into_iter().map(|s| s.judge(&delivered_here, now)).collect();
        crate::deferred::hand_off(&self.transport, self.deferrable.take(), &n.devices, &mut reports, started).await;
        n.devices.iter().cloned().zip(reports).collect()
    }

    async fn deliver(&self, n: &Notification, d: &Device, index: usize, request_started: u64) -> Settled<'a> {
        let started = self.transport.now_ms();
        let mut report = DeviceReport::new(d);
        let settle = |report, verdict, entry| Settled::new(report, verdict, entry, started, &self.transport);
        if let Some(error) = &self.apps.global_error {
            // Without a usable APPS nothing can be said about any device.
            return settle(report, Verdict::failed(format!("APPS is broken: {error}")), None);
        }
        let (entry, app) = match self.apps.find(&d.app_id) {
            Lookup::Found { entry, app } => (entry, app),
            Lookup::NoMatch => return settle(report, Verdict::rejected("no app configured for this app_id"), None),
            Lookup::Ambiguous { first, second } => {
                let verdict = Verdict::failed(format!(
                    "app_id matches the globs {first:?} and {second:?}: give it an entry of its own or make them not overlap"
                ));
                return settle(report, verdict, None);
            }
            Lookup::Broken { pattern, error } => {
                return settle(report, Verdict::failed(format!("app {pattern:?} is misconfigured: {error}")), None);
            }
        };
        report.provider = app.provider();
        if self.transport.limits_rate() && self.transport.over_rate_limit(&rate_limit_key(&d.app_id, d.pushkey.as_str())).await {
            report.rate_limited = true;
            return settle(report, Verdict::transient("over the per-pushkey rate limit; not sent"), Some(entry));
        }
        let verdict = self.deliver_to(entry, app, n, d, index, request_started, &mut report).await;
        settle(report, verdict, Some(entry))
    }

    /// The request, built once; with a deferred-delivery queue it carries
    /// the push's stable identity, and is kept for the queue if the device
    /// ends transient.
    #[allow(clippy::too_many_arguments)]
    async fn deliver_to(
        &self,
        entry: &AppEntry,
        app: &App,
        n: &Notification,
        d: &Device,
        index: usize,
        request_started: u64,
        report: &mut DeviceReport,
    ) -> Verdict {
        let now = self.transport.now_ms() / 1000;
        let mut prepared = match app.prepare(n, d, now) {
            Ok(p) => p,
            Err(verdict) => return verdict,
        };
        let deferral = self.transport.deferral().is_some();
        if deferral {
            crate::deferred::stamp_identity(app, &mut prepared.request, n, d);
        }
        let verdict = self.send_prepared(entry, app, &prepared, d, request_started, report).await;
        if let (true, Outcome::Transient { retry_after }) = (deferral, verdict.outcome) {
            self.deferrable.borrow_mut().push((index, prepared, retry_after));
        }
        verdict
    }

    /// The send loop: credentials, retries with backoff, one re-mint on
    /// stale credentials, and for APNs `auto` one try in the other
    /// environment. The same bytes on every try.
    pub(crate) async fn send_prepared(
        &self,
        entry: &AppEntry,
        app: &App,
        prepared: &Prepared,
        d: &Device,
        request_started: u64,
        report: &mut DeviceReport,
    ) -> Verdict {
        let mut auto = AutoEnvironment::for_device(app, entry, d);
        let mut reminted = false;
        let mut used_token: Option<String> = None;
        loop {
            let request = match &prepared.token_key {
                None => prepared.request.clone(),
                Some(key) => match self.tokens.get(&self.transport, app, prepared, key).await {
                    Ok((token, source)) => {
                        report.token = Some(source);
                        used_token = Some(token.value.clone());
                        app.authorize(&prepared.request, &token.value)
                    }
                    Err(verdict) => {
                        // A failed token fetch counts as a try, so a dead
                        // token endpoint cannot keep a device looping.
                        report.tries += 1;
                        match self.retry_or_stop(verdict, report, request_started).await {
                            Some(done) => return done,
                            None => continue,
                        }
                    }
                },
            };
            let request = match &auto {
                Some(auto) => match auto.apns.in_environment(&request, auto.environment, d) {
                    Ok(request) => request,
                    Err(verdict) => return verdict,
                },
                None => request,
            };
            report.tries += 1;
            report.retry_after_s = None;
            let verdict = match self.transport.send(&request).await {
                Ok(response) => {
                    report.status = Some(response.status);
                    report.retry_after_s = response.retry_after_secs();
                    app.classify(&request, &response, self.transport.now_ms() / 1000)
                }
                Err(e) => Verdict::transient(format!("network: {e}")),
            };
            if verdict.outcome == Outcome::Delivered {
                entry.record.delivered(&d.app_id, self.transport.now_ms());
            }
            if let Some(auto) = &mut auto {
                if auto.next(&verdict, entry, d) {
                    continue;
                }
            }
            if verdict.outcome == Outcome::StaleCredentials {
                if reminted {
                    return Verdict::failed(format!("credentials refused again after a new token: {}", verdict.reason));
                }
                reminted = true;
                if let (Some(key), Some(token)) = (&prepared.token_key, &used_token) {
                    self.tokens.invalidate(key, token, self.transport.now_ms());
                }
                continue;
            }
            if let Some(done) = self.retry_or_stop(verdict, report, request_started).await {
                return done;
            }
        }
    }

    /// `Some(verdict)` when the device is done; `None` after waiting for the
    /// next try of a transient failure.
    async fn retry_or_stop(&self, verdict: Verdict, report: &mut DeviceReport, request_started: u64) -> Option<Verdict> {
        let Outcome::Transient { retry_after } = verdict.outcome else {
            return Some(verdict);
        };
        // A provider that asks for more time than one request waits (a
        // UnifiedPush endpoint's 429) is left alone; the homeserver retries later.
        let beyond_request = retry_after.is_some_and(|d| d > RETRY_AFTER_CAP);
        if beyond_request || report.tries >= self.settings.max_tries || self.transport.is_spent() {
            return Some(verdict);
        }
        let wait = backoff_ms(self.settings.retry_base_ms, report.tries, retry_after, self.transport.random());
        let elapsed = self.transport.now_ms().saturating_sub(request_started);
        let next_try_ends = elapsed.saturating_add(wait).saturating_add(self.settings.send_timeout_ms);
        if next_try_ends > REQUEST_BUDGET_MS.max(self.settings.send_timeout_ms) {
            return Some(verdict);
        }
        self.transport.sleep(wait).await;
        None
    }
}

/// An APNs device of a `platform: "auto"` app: the environment it is tried
/// in, first the one that last worked for it (production when unknown), then
/// once the other.
struct AutoEnvironment<'a> {
    apns: &'a ApnsApp,
    environment: Environment,
    switched: bool,
}

impl<'a> AutoEnvironment<'a> {
    fn for_device(app: &'a App, entry: &AppEntry, d: &Device) -> Option<Self> {
        let App::Apns(apns) = app else { return None };
        if !apns.is_auto() {
            return None;
        }
        let environment =
            if entry.record.in_sandbox(d.pushkey.as_str()) { Environment::Sandbox } else { Environment::Production };
        Some(Self { apns, environment, switched: false })
    }

    /// Learn from a send's verdict; `true` when the device is to be tried in
    /// the other environment now.
    fn next(&mut self, verdict: &Verdict, entry: &AppEntry, d: &Device) -> bool {
        let pushkey = d.pushkey.as_str();
        match verdict.outcome {
            Outcome::Delivered => entry.record.set_in_sandbox(pushkey, self.environment == Environment::Sandbox),
            Outcome::Refused(refusal) if refusal == apns::BAD_DEVICE_TOKEN => {
                if !self.switched {
                    self.switched = true;
                    self.environment = self.environment.other();
                    return true;
                }
                // Neither environment knows the token.
                entry.record.set_in_sandbox(pushkey, false);
            }
            _ => {}
        }
        false
    }
}

/// A device whose sends are over; a `Refused` verdict still waits for the
/// evidence of the notify's other devices.
struct Settled<'a> {
    report: DeviceReport,
    verdict: Verdict,
    /// The app entry the device was routed to.
    entry: Option<&'a AppEntry>,
}

impl<'a> Settled<'a> {
    fn new<T: Transport>(
        mut report: DeviceReport,
        verdict: Verdict,
        entry: Option<&'a AppEntry>,
        started: u64,
        transport: &T,
    ) -> Self {
        report.ms = transport.now_ms().saturating_sub(started);
        Self { report, verdict, entry }
    }

    /// Delivered by the provider itself, not decided without a send.
    fn delivered_by_send(&self) -> bool {
        self.verdict.outcome == Outcome::Delivered && self.report.status.is_some()
    }

    /// The device's final report: a refusal becomes `Rejected` with evidence
    /// that its app is configured right, else `Failed`.
    fn judge(self, delivered_here: &HashSet<String>, now_ms: u64) -> DeviceReport {
        let verdict = match (self.verdict.outcome, self.entry) {
            (Outcome::Refused(refusal), Some(entry)) => {
                let app_id = self.report.app_id.as_str();
                let here = delivered_here.contains(app_id);
                entry.record.judge(app_id, refusal, &self.verdict.reason, here, now_ms)
            }
            _ => self.verdict,
        };
        conclude(self.report, verdict)
    }
}

fn conclude(mut report: DeviceReport, verdict: Verdict) -> DeviceReport {
    report.outcome = match verdict.outcome {
        Outcome::Delivered => FinalOutcome::Delivered,
        Outcome::Rejected => FinalOutcome::Rejected,
        Outcome::Transient { .. } => FinalOutcome::Transient,
        // A stale credential that survived the re-mint is our problem, and a
        // refusal never judged is no evidence.
        Outcome::StaleCredentials | Outcome::Failed | Outcome::Refused(_) => FinalOutcome::Failed,
    };
    report.reason = verdict.reason;
    report
}

/// Exponential backoff with jitter, at least `Retry-After`, capped.
pub fn backoff_ms(base_ms: u64, tries_so_far: u32, retry_after: Option<Duration>, random: f64) -> u64 {
    let exp = base_ms.saturating_mul(1u64 << tries_so_far.saturating_sub(1).min(16));
    // Full jitter on half the delay: retries from many isolates spread out.
    let jittered = exp / 2 + ((exp / 2) as f64 * random.clamp(0.0, 1.0)) as u64;
    let floor = retry_after.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    jittered.max(floor).min(MAX_BACKOFF_MS)
}

/// What the rate limiter counts: the device, hashed (the limiter's keys
/// leave the worker; a pushkey never does).
pub fn rate_limit_key(app_id: &str, pushkey: &str) -> String {
    fingerprint::hex(&fingerprint::fingerprint(&[app_id.as_bytes(), pushkey.as_bytes()]), 16)
}

/// `Retry-After` of a notify refused by the rate limit: the longest period a
/// Workers rate limit can have, so the retry finds a new window.
pub const RATE_LIMIT_RETRY_AFTER_SECS: u64 = 60;

/// The answer to the homeserver: the only place that decides between 200,
/// 429 and 502. 200 only when every device was delivered, rejected or
/// deferred; 429 when every device was over the rate limit.
pub fn reply(reports: &[(Device, DeviceReport)]) -> Reply {
    if !reports.is_empty() && reports.iter().all(|(_, r)| r.rate_limited) {
        return ApiError::LimitExceeded { retry_after_ms: RATE_LIMIT_RETRY_AFTER_SECS * 1000 }.to_reply();
    }
    let mut rejected = Vec::new();
    let (mut transient, mut failed) = (0usize, 0usize);
    for (device, report) in reports {
        match report.outcome {
            FinalOutcome::Delivered | FinalOutcome::Deferred => {}
            FinalOutcome::Rejected => rejected.push(device.pushkey.as_str().to_string()),
            FinalOutcome::Transient => transient += 1,
            FinalOutcome::Failed => failed += 1,
        }
    }
    if transient + failed == 0 {
        return Reply::ok(serde_json::json!({ "rejected": rejected }));
    }
    ApiError::Upstream(format!(
        "{transient} device(s) failed transiently and {failed} failed on the gateway's side; retry later"
    ))
    .to_reply()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::notify::Pushkey;

    fn report(outcome: FinalOutcome) -> DeviceReport {
        DeviceReport {
            app_id: "a".into(),
            pushkey: "k…".into(),
            provider: "apns",
            outcome,
            status: None,
            reason: String::new(),
            tries: 1,
            token: None,
            ms: 0,
            rate_limited: false,
            retry_after_s: None,
        }
    }

    fn device(key: &str) -> Device {
        Device {
            app_id: "a".into(),
            pushkey: Pushkey(key.into()),
            pushkey_ts: None,
            data: Default::default(),
            tweaks: Default::default(),
        }
    }

    #[test]
    fn reply_is_200_with_rejected_only_when_all_settled() {
        let r = reply(&[(device("a"), report(FinalOutcome::Delivered)), (device("b"), report(FinalOutcome::Rejected))]);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, serde_json::json!({"rejected": ["b"]}));
        for bad in [FinalOutcome::Transient, FinalOutcome::Failed] {
            let r = reply(&[(device("a"), report(FinalOutcome::Rejected)), (device("b"), report(bad))]);
            assert_eq!(r.status, 502);
            assert_eq!(r.body["errcode"], "M_UNKNOWN");
        }
    }

    #[test]
    fn a_new_report_is_failed_until_a_verdict_says_otherwise() {
        let r = DeviceReport::new(&device("a-long-pushkey"));
        assert_eq!(r.outcome, FinalOutcome::Failed);
        assert_eq!((r.tries, r.status, r.pushkey.contains("a-long-pushkey")), (0, None, false));
    }

    #[test]
    fn backoff_grows_honours_retry_after_and_is_capped() {
        assert_eq!(backoff_ms(200, 1, None, 1.0), 200);
        assert_eq!(backoff_ms(200, 2, None, 1.0), 400);
        assert_eq!(backoff_ms(200, 2, None, 0.0), 200);
        assert_eq!(backoff_ms(200, 1, Some(Duration::from_secs(2)), 0.0), 2000);
        assert_eq!(backoff_ms(200, 30, None, 1.0), MAX_BACKOFF_MS);
        assert_eq!(backoff_ms(0, 1, None, 0.5), 0);
    }
}

/// The dispatcher against a scripted transport: retries, re-mints, token
/// sharing and outcomes, with a virtual clock.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod dispatch_tests {
    use std::cell::{Cell, RefCell};
    use std::collections::{HashMap, VecDeque};

    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    use serde_json::json;

    use super::*;
    use crate::notify::parse_notify;
    use crate::providers::{apns, OutRequest, ProviderResponse};
    use crate::tokens::TokenSource;
    use crate::testing::{drive, VirtualClock, YieldOnce};

    type ScriptedAnswer = (u16, &'static str, Vec<(String, String)>);

    /// Answers by the last path segment of the URL (the device token), in
    /// order; the last answer repeats. `None` is a network error.
    #[derive(Default)]
    struct FakeTransport {
        script: RefCell<HashMap<String, VecDeque<Option<ScriptedAnswer>>>>,
        sent: RefCell<Vec<OutRequest>>,
        /// Virtual time: sleeps end when `drive` moves the clock to them.
        clock: VirtualClock,
        slept_ms: RefCell<Vec<u64>>,
        kv: RefCell<HashMap<String, (String, u64)>>,
        kv_gets: Cell<u32>,
        /// Tokens whose answers take longer than the others'.
        slow: RefCell<std::collections::HashSet<String>>,
        /// Tokens in the order their answers came back.
        answered: RefCell<Vec<String>>,
        /// Rate limiter keys over their limit.
        over_limit: RefCell<Vec<String>>,
        /// No limiter bound: `limits_rate` says so.
        no_limiter: Cell<bool>,
    }

    impl FakeTransport {
        fn new() -> Self {
            Self { clock: VirtualClock::starting_at(1_800_000_000_000), ..Self::default() }
        }
        fn answer(&self, token: &str, answers: Vec<Option<(u16, &'static str)>>) {
            let answers = answers.into_iter().map(|a| a.map(|(s, b)| (s, b, vec![]))).collect();
            self.script.borrow_mut().insert(token.to_string(), answers);
        }
        fn sent_to(&self, token: &str) -> usize {
            self.sent.borrow().iter().filter(|r| r.url.ends_with(&format!("/{token}"))).count()
        }
    }

    impl Transport for FakeTransport {
        async fn send(&self, request: &OutRequest) -> Result<ProviderResponse, String> {
            YieldOnce(false).await;
            self.sent.borrow_mut().push(request.clone());
            let token = request.url.rsplit('/').next().unwrap_or_default().to_string();
            if self.slow.borrow().contains(&token) {
                for _ in 0..5 {
                    YieldOnce(false).await;
                }
            }
            self.answered.borrow_mut().push(token.clone());
            let mut script = self.script.borrow_mut();
            let answers = script.entry(token).or_default();
            let answer = if answers.len() > 1 { answers.pop_front().unwrap() } else { answers.front().cloned().unwrap_or(Some((200, "", vec![]))) };
            match answer {
                None => Err("connection refused".into()),
                Some((status, body, headers)) => Ok(ProviderResponse { status, headers, body: body.as_bytes().to_vec() }),
            }
        }
        async fn sleep(&self, ms: u64) {
            self.slept_ms.borrow_mut().push(ms);
            self.clock.sleep(ms).await;
        }
        fn now_ms(&self) -> u64 {
            self.clock.now_ms()
        }
        fn random(&self) -> f64 {
            0.5
        }
        async fn kv_get(&self, key: &str) -> Option<String> {
            YieldOnce(false).await;
            self.kv_gets.set(self.kv_gets.get() + 1);
            self.kv.borrow().get(key).map(|(v, _)| v.clone())
        }
        async fn kv_put(&self, key: &str, value: &str, ttl: u64) {
            self.kv.borrow_mut().insert(key.to_string(), (value.to_string(), ttl));
        }
        async fn over_rate_limit(&self, key: &str) -> bool {
            self.over_limit.borrow().iter().any(|k| k == key)
        }
        fn limits_rate(&self) -> bool {
            !self.no_limiter.get()
        }
    }

    fn apps() -> Apps {
        let pem = p256::SecretKey::from_slice(&[7u8; 32]).unwrap().to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let account = include_str!("../tests/keys/test-only-fcm-service-account.json").to_string();
        let secrets = move |name: &str| match name {
            "APNS_KEY" => Some(pem.clone()),
            "FCM" => Some(account.clone()),
            _ => None,
        };
        Apps::load(
            Some(&json!({
                "com.example.ios": {"type": "apns", "topic": "com.example", "team_id": "TEAM", "key_id": "KEY",
                                     "key_secret": "APNS_KEY", "convert_device_token_to_hex": false},
                "com.example.broken": {"type": "apns", "topic": "t", "team_id": "T", "key_id": "K", "key_secret": "MISSING"},
                "com.example.auto": {"type": "apns", "topic": "com.example", "team_id": "TEAM", "key_id": "KEY", "key_secret": "APNS_KEY",
                                     "convert_device_token_to_hex": false, "platform": "auto",
                                     "url": "http://production.test", "sandbox_url": "http://sandbox.test"},
                "glob.*": {"type": "apns", "topic": "t", "team_id": "T", "key_id": "K", "key_secret": "APNS_KEY"},
                "im.vector.app.ios.*": {"type": "apns", "topic": "im.vector.app", "team_id": "TEAM", "key_id": "KEY",
                                        "key_secret": "APNS_KEY", "convert_device_token_to_hex": false, "platform": "production"},
                "*.x": {"type": "apns", "topic": "t", "team_id": "T", "key_id": "K", "key_secret": "APNS_KEY"},
                "com.example.android": {"type": "fcm", "project_id": "p", "service_account_secret": "FCM"}
            })),
            &secrets,
        )
    }

    fn notification(devices: &[(&str, &str)]) -> Notification {
        let devices: Vec<_> = devices.iter().map(|(app, key)| json!({"app_id": app, "pushkey": key})).collect();
        let body = json!({"notification": {"event_id": "$e", "room_id": "!r", "counts": {"unread": 1}, "devices": devices}});
        parse_notify(&serde_json::to_vec(&body).unwrap(), 20).unwrap()
    }

    fn run(t: &FakeTransport, tokens: &TokenCache, n: &Notification) -> (Reply, Vec<DeviceReport>) {
        let apps = apps();
        let settings = Settings::default();
        let d = Dispatcher::new(t, &apps, &settings, tokens);
        let results = drive(&t.clock, d.dispatch(n));
        (reply(&results), results.into_iter().map(|(_, r)| r).collect())
    }

    /// One notify against `apps`, which keep what they saw between calls.
    fn run_with(t: &FakeTransport, apps: &Apps, n: &Notification) -> (Reply, Vec<DeviceReport>) {
        let (settings, tokens) = (Settings::default(), TokenCache::default());
        let results = drive(&t.clock, Dispatcher::new(t, apps, &settings, &tokens).dispatch(n));
        (reply(&results), results.into_iter().map(|(_, r)| r).collect())
    }

    #[test]
    fn outcomes_per_device_become_one_answer() {
        let t = FakeTransport::new();
        t.answer("dead", vec![Some((410, r#"{"reason":"Unregistered"}"#))]);
        t.answer("bad", vec![Some((400, r#"{"reason":"BadDeviceToken"}"#))]);
        let n = notification(&[("com.example.ios", "good"), ("com.example.ios", "dead"), ("com.example.ios", "bad"), ("com.unknown", "nobody")]);
        let (answer, reports) = run(&t, &TokenCache::default(), &n);
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, json!({"rejected": ["dead", "bad", "nobody"]}));
        assert_eq!(reports[0].outcome, FinalOutcome::Delivered);
        assert_eq!(t.sent_to("nobody"), 0, "unknown app ids are rejected without a send");
    }

    #[test]
    fn transient_is_retried_then_delivered() {
        let t = FakeTransport::new();
        t.answer("flaky", vec![Some((503, "")), None, Some((200, ""))]);
        let (answer, reports) = run(&t, &TokenCache::default(), &notification(&[("com.example.ios", "flaky")]));
        assert_eq!(answer.status, 200);
        assert_eq!(reports[0].tries, 3);
        assert_eq!(t.slept_ms.borrow().len(), 2);
        let sent = t.sent.borrow();
        assert!(sent.windows(2).all(|w| w[0].body == w[1].body), "the same bytes on every try");
    }

    #[test]
    fn transient_exhausted_is_502_never_rejected() {
        let t = FakeTransport::new();
        t.answer("down", vec![Some((429, r#"{"reason":"TooManyRequests"}"#))]);
        let (answer, reports) = run(&t, &TokenCache::default(), &notification(&[("com.example.ios", "down")]));
        assert_eq!(answer.status, 502);
        assert_eq!(answer.body["errcode"], "M_UNKNOWN");
        assert_eq!(reports[0].outcome, FinalOutcome::Transient);
        assert_eq!(t.sent_to("down"), Settings::default().max_tries as usize);
    }

    #[test]
    fn stale_token_is_reminted_once() {
        // FCM: a new access token, and the send goes through.
        let t = FakeTransport::new();
        let first = r#"{"access_token":"ya29.first","expires_in":3599,"token_type":"Bearer"}"#;
        let second = r#"{"access_token":"ya29.second","expires_in":3599,"token_type":"Bearer"}"#;
        t.answer("token", vec![Some((200, first)), Some((200, second))]);
        t.answer("messages:send", vec![Some((401, "")), Some((200, "{}"))]);
        let (answer, reports) = run(&t, &TokenCache::default(), &notification(&[("com.example.android", "once")]));
        assert_eq!(answer.status, 200, "{reports:?}");
        assert_eq!((t.sent_to("token"), t.sent_to("messages:send")), (2, 2));
        let auth: Vec<String> =
            t.sent.borrow().iter().filter(|r| r.url.ends_with(":send")).map(|r| r.header("authorization").unwrap().to_string()).collect();
        assert_eq!(auth, ["Bearer ya29.first", "Bearer ya29.second"]);

        // APNs signs the same token for its whole window: the refused token
        // is not sent again, the device fails at once.
        for body in [r#"{"reason":"ExpiredProviderToken"}"#, r#"{"reason":"InvalidProviderToken"}"#] {
            let t = FakeTransport::new();
            t.answer("always", vec![Some((403, body)), Some((200, ""))]);
            let (answer, reports) = run(&t, &TokenCache::default(), &notification(&[("com.example.ios", "always")]));
            assert_eq!(answer.status, 502);
            assert_eq!(reports[0].outcome, FinalOutcome::Failed);
            assert!(reports[0].reason.contains("same as the refused one"), "{}", reports[0].reason);
            assert_eq!(t.sent_to("always"), 1, "{body}: one send, no second with the same token");
            assert_eq!(t.kv.borrow().len(), 1, "written once");
        }
    }

    #[test]
    fn broken_and_ambiguous_apps() {
        let t = FakeTransport::new();
        let (answer, reports) = run(&t, &TokenCache::default(), &notification(&[("com.example.broken", "k1")]));
        assert_eq!(answer.status, 502, "a broken app's devices fail, never rejected");
        assert_eq!(reports[0].outcome, FinalOutcome::Failed);
        let (no_apps, settings, tokens) = (Apps::load(None, &|_: &str| None), Settings::default(), TokenCache::default());
        let broken = Dispatcher::new(&t, &no_apps, &settings, &tokens);
        let results = drive(&t.clock, broken.dispatch(&notification(&[("com.example.ios", "k0")])));
        assert_eq!(reply(&results).status, 502, "no APPS: failed, never rejected");
        let (answer, reports) = run(&t, &TokenCache::default(), &notification(&[("glob.x", "k2")]));
        assert_eq!(answer.status, 502, "two globs match: a configuration error, never rejected");
        assert!(reports[0].reason.contains(r#""glob.*""#) && reports[0].reason.contains(r#""*.x""#), "{}", reports[0].reason);
        assert!(t.sent.borrow().is_empty());
    }

    #[test]
    fn topic_disallowed_is_failed() {
        let t = FakeTransport::new();
        t.answer("any", vec![Some((400, r#"{"reason":"TopicDisallowed"}"#))]);
        let n = notification(&[("com.example.ios", "good"), ("com.example.ios", "any")]);
        let (answer, reports) = run_with(&t, &apps(), &n);
        assert_eq!(answer.status, 502);
        assert_eq!(reports[1].outcome, FinalOutcome::Failed);
        assert_eq!(t.sent_to("any"), 1, "not retried");
    }

    #[test]
    fn refusals_of_an_app_that_delivers_nothing_are_failed_until_it_does() {
        let t = FakeTransport::new();
        let apps = apps();
        for key in ["a", "b", "c"] {
            t.answer(key, vec![Some((400, r#"{"reason":"DeviceTokenNotForTopic"}"#))]);
        }
        let n = notification(&[("com.example.ios", "a"), ("com.example.ios", "b"), ("com.example.ios", "c")]);
        let (answer, reports) = run_with(&t, &apps, &n);
        assert_eq!(answer.status, 502, "every device refused: no evidence, nothing rejected");
        assert!(reports.iter().all(|r| r.outcome == FinalOutcome::Failed && r.reason.contains("check topic")), "{reports:?}");
        let entry = apps.entries.iter().find(|e| e.pattern == "com.example.ios").unwrap();
        let suspect = entry.record.suspect(t.now_ms()).unwrap();
        assert!(suspect.contains("0 delivered, 3 DeviceTokenNotForTopic"), "{suspect}");

        // Another device of the app is delivered: the app is proven, and
        // the same refusal in a later notify rejects.
        let (answer, _) = run_with(&t, &apps, &notification(&[("com.example.ios", "fine")]));
        assert_eq!(answer.status, 200);
        assert_eq!(entry.record.suspect(t.now_ms()), None);
        let (answer, reports) = run_with(&t, &apps, &notification(&[("com.example.ios", "a")]));
        assert_eq!(answer.body, json!({"rejected": ["a"]}), "{reports:?}");
    }

    #[test]
    fn a_dead_token_answered_first_is_rejected_by_the_deliveries_of_the_same_notify() {
        let t = FakeTransport::new();
        t.answer("dead", vec![Some((400, r#"{"reason":"BadDeviceToken"}"#))]);
        for live in ["live1", "live2"] {
            t.slow.borrow_mut().insert(live.to_string());
        }
        let n = notification(&[("com.example.ios", "live1"), ("com.example.ios", "dead"), ("com.example.ios", "live2")]);
        // A fresh isolate: the only evidence is this notify's own deliveries.
        let (answer, reports) = run_with(&t, &apps(), &n);
        assert_eq!(t.answered.borrow().first().map(String::as_str), Some("dead"), "the refusal came back first");
        assert_eq!(answer.status, 200, "{reports:?}");
        assert_eq!(answer.body, json!({"rejected": ["dead"]}));
        assert!(reports[1].reason.contains("this notify"), "{}", reports[1].reason);
    }

    #[test]
    fn evidence_is_per_app() {
        let t = FakeTransport::new();
        t.answer("dead", vec![Some((400, r#"{"reason":"BadDeviceToken"}"#))]);
        let n = notification(&[("glob.a", "live"), ("com.example.ios", "dead")]);
        let (answer, reports) = run_with(&t, &apps(), &n);
        assert_eq!(answer.status, 502, "another app's delivery proves nothing: {reports:?}");
    }

    #[test]
    fn evidence_is_per_app_id_within_a_glob() {
        // One glob, one platform: the production build's devices are
        // delivered, the development build's are refused for the platform.
        let t = FakeTransport::new();
        let apps = apps();
        t.answer("devbuild", vec![Some((400, r#"{"reason":"BadDeviceToken"}"#))]);
        let (prod, dev) = ("im.vector.app.ios.prod", "im.vector.app.ios.dev");
        let (answer, reports) = run_with(&t, &apps, &notification(&[(prod, "live"), (dev, "devbuild")]));
        assert_eq!(answer.status, 502, "a delivery to .prod is no evidence for .dev: {reports:?}");
        assert_eq!(reports[1].outcome, FinalOutcome::Failed);
        assert!(reports[1].reason.contains("not rejected"), "{}", reports[1].reason);
        // Nor is .prod's recent delivery, in a later notify.
        let (answer, _) = run_with(&t, &apps, &notification(&[(dev, "devbuild")]));
        assert_eq!(answer.status, 502);
        let entry = apps.entries.iter().find(|e| e.pattern == "im.vector.app.ios.*").unwrap();
        let suspect = entry.record.suspect(t.now_ms()).unwrap();
        assert!(suspect.starts_with(r#"suspect: "im.vector.app.ios.dev": 0 delivered, 2 BadDeviceToken"#), "{suspect}");
        // A dead token of .prod is still rejected on .prod's own deliveries.
        t.answer("gone", vec![Some((400, r#"{"reason":"BadDeviceToken"}"#))]);
        let (answer, _) = run_with(&t, &apps, &notification(&[(prod, "gone")]));
        assert_eq!(answer.body, json!({"rejected": ["gone"]}));
        // Once .dev delivers, its own dead tokens are rejected in the same notify.
        let (answer, _) = run_with(&t, &apps, &notification(&[(dev, "devlive"), (dev, "devbuild")]));
        assert_eq!(answer.body, json!({"rejected": ["devbuild"]}));
    }

    #[test]
    fn auto_tries_the_sandbox_once_and_remembers_it() {
        let t = FakeTransport::new();
        let apps = apps();
        t.answer("dev", vec![Some((400, r#"{"reason":"BadDeviceToken"}"#)), Some((200, ""))]);
        let (answer, reports) = run_with(&t, &apps, &notification(&[("com.example.auto", "dev")]));
        assert_eq!(answer.status, 200, "{reports:?}");
        assert_eq!(answer.body, json!({"rejected": []}));
        let urls: Vec<String> = t.sent.borrow().iter().map(|r| r.url.clone()).collect();
        assert_eq!(urls, ["http://production.test/3/device/dev", "http://sandbox.test/3/device/dev"]);
        assert_eq!(reports[0].tries, 2);

        let (answer, reports) = run_with(&t, &apps, &notification(&[("com.example.auto", "dev")]));
        assert_eq!(answer.status, 200);
        assert_eq!(reports[0].tries, 1, "straight to the sandbox");
        assert_eq!(t.sent.borrow().last().unwrap().url, "http://sandbox.test/3/device/dev");

        // A production device is never sent to the sandbox.
        let (answer, reports) = run_with(&t, &apps, &notification(&[("com.example.auto", "prod")]));
        assert_eq!((answer.status, reports[0].tries), (200, 1));
        assert_eq!(t.sent.borrow().last().unwrap().url, "http://production.test/3/device/prod");
    }

    #[test]
    fn auto_rejects_only_when_both_environments_refuse_and_the_app_is_proven() {
        let t = FakeTransport::new();
        let apps = apps();
        t.answer("gone", vec![Some((400, r#"{"reason":"BadDeviceToken"}"#))]);
        let (answer, _) = run_with(&t, &apps, &notification(&[("com.example.auto", "gone")]));
        assert_eq!(answer.status, 502, "no delivery from the app yet");
        assert_eq!(t.sent_to("gone"), 2, "production, then the sandbox");
        let (answer, _) = run_with(&t, &apps, &notification(&[("com.example.auto", "gone"), ("com.example.auto", "alive")]));
        assert_eq!(answer.body, json!({"rejected": ["gone"]}));
        assert_eq!(t.sent_to("gone"), 4, "forgotten: production first again");

        // A device remembered in the sandbox whose token moved to production.
        t.answer("moved", vec![Some((400, r#"{"reason":"BadDeviceToken"}"#)), Some((200, ""))]);
        run_with(&t, &apps, &notification(&[("com.example.auto", "moved")]));
        t.answer("moved", vec![Some((400, r#"{"reason":"BadDeviceToken"}"#)), Some((200, ""))]);
        let (answer, _) = run_with(&t, &apps, &notification(&[("com.example.auto", "moved")]));
        assert_eq!(answer.status, 200);
        let urls: Vec<String> = t.sent.borrow().iter().rev().take(2).map(|r| r.url.clone()).collect();
        assert_eq!(urls, ["http://production.test/3/device/moved", "http://sandbox.test/3/device/moved"]);
        let (_, reports) = run_with(&t, &apps, &notification(&[("com.example.auto", "moved")]));
        assert_eq!(reports[0].tries, 1);
        assert_eq!(t.sent.borrow().last().unwrap().url, "http://production.test/3/device/moved");
    }

    #[test]
    fn token_is_minted_once_and_shared_through_memory_and_kv() {
        let t = FakeTransport::new();
        let tokens = TokenCache::default();
        let n = notification(&[("com.example.ios", "a"), ("com.example.ios", "b"), ("com.example.ios", "c")]);
        let (_, reports) = run(&t, &tokens, &n);
        let minted = reports.iter().filter(|r| r.token == Some(TokenSource::Minted)).count();
        assert_eq!(minted, 1, "{reports:?}");
        let auth: Vec<String> = t.sent.borrow().iter().map(|r| r.header("authorization").unwrap().to_string()).collect();
        assert!(auth.windows(2).all(|w| w[0] == w[1]));
        let (_, reports) = run(&t, &tokens, &n);
        assert!(reports.iter().all(|r| r.token == Some(TokenSource::Memory)));

        // A new isolate finds the token in KV instead of minting.
        let kv_gets = t.kv_gets.get();
        let (_, reports) = run(&t, &TokenCache::default(), &notification(&[("com.example.ios", "a")]));
        assert_eq!(reports[0].token, Some(TokenSource::Kv));
        assert_eq!(t.kv_gets.get(), kv_gets + 1);
        let (_, ttl) = t.kv.borrow().values().next().cloned().unwrap();
        assert!((60..=apns::TOKEN_MAX_AGE_SECS).contains(&ttl), "{ttl}");
    }

    #[test]
    fn concurrent_devices_share_one_token_fetch_even_when_it_fails() {
        let t = FakeTransport::new();
        t.answer("token", vec![Some((503, ""))]);
        let n = notification(&[("com.example.android", "a"), ("com.example.android", "b"), ("com.example.android", "c")]);
        let (answer, reports) = run(&t, &TokenCache::default(), &n);
        assert_eq!(answer.status, 502);
        assert!(reports.iter().all(|r| r.outcome == FinalOutcome::Transient), "{reports:?}");
        let max_tries = Settings::default().max_tries as usize;
        assert_eq!(t.sent_to("token"), max_tries, "one token fetch per round, not per device");
        assert_eq!(t.sent.borrow().len(), max_tries, "no message is sent without a token");

        let t = FakeTransport::new();
        t.answer("token", vec![Some((200, r#"{"access_token":"ya29.test","expires_in":3599,"token_type":"Bearer"}"#))]);
        let tokens = TokenCache::default();
        let (answer, _) = run(&t, &tokens, &n);
        assert_eq!(answer.status, 200);
        assert_eq!(t.sent_to("token"), 1);
        assert!(t.sent.borrow().iter().filter(|r| r.url.ends_with(":send")).all(|r| r.header("authorization") == Some("Bearer ya29.test")));
    }

    #[test]
    fn devices_over_the_rate_limit_are_not_sent_and_a_notify_of_only_those_is_429() {
        let t = FakeTransport::new();
        t.over_limit.borrow_mut().push(rate_limit_key("com.example.ios", "flood"));
        let (answer, reports) = run(&t, &TokenCache::default(), &notification(&[("com.example.ios", "flood")]));
        assert_eq!(answer.status, 429);
        assert_eq!(answer.body["errcode"], "M_LIMIT_EXCEEDED");
        assert_eq!(answer.body["retry_after_ms"], RATE_LIMIT_RETRY_AFTER_SECS * 1000);
        assert!(reports[0].rate_limited && reports[0].outcome == FinalOutcome::Transient);
        assert_eq!(t.sent_to("flood"), 0);

        let (answer, _) = run(&t, &TokenCache::default(), &notification(&[("com.example.ios", "flood"), ("com.example.ios", "calm")]));
        assert_eq!(answer.status, 502, "the homeserver retries the limited device later");
        assert_eq!((t.sent_to("flood"), t.sent_to("calm")), (0, 1));
        // The key names the device without carrying its pushkey.
        let key = rate_limit_key("com.example.ios", "flood");
        assert!(!key.contains("flood") && key != rate_limit_key("com.example.io", "sflood"));

        // A transport without a limiter is not asked: the device is sent.
        t.no_limiter.set(true);
        let (answer, _) = run(&t, &TokenCache::default(), &notification(&[("com.example.ios", "flood")]));
        assert_eq!((answer.status, t.sent_to("flood")), (200, 1));
    }

    #[test]
    fn the_retry_budget_check_cannot_overflow() {
        let t = FakeTransport::new();
        t.answer("slow", vec![Some((503, "")), Some((200, ""))]);
        let (apps, tokens) = (apps(), TokenCache::default());
        let settings = Settings { send_timeout_ms: u64::MAX, ..Settings::default() };
        let d = Dispatcher::new(&t, &apps, &settings, &tokens);
        let results = drive(&t.clock, d.dispatch(&notification(&[("com.example.ios", "slow")])));
        assert_eq!(reply(&results).status, 200, "retried within a budget as long as the send timeout");
        assert_eq!(results[0].1.tries, 2);
    }

    #[test]
    fn retries_stop_at_the_subrequest_budget() {
        let t = FakeTransport::new();
        let devices: Vec<(&str, String)> = (0..20).map(|i| ("com.example.ios", format!("down{i}"))).collect();
        for (_, key) in &devices {
            t.answer(key, vec![Some((503, ""))]);
        }
        let refs: Vec<(&str, &str)> = devices.iter().map(|(a, k)| (*a, k.as_str())).collect();
        let (answer, reports) = run(&t, &TokenCache::default(), &notification(&refs));
        assert_eq!(answer.status, 502);
        assert!(reports.iter().all(|r| r.outcome == FinalOutcome::Transient));
        assert_eq!(t.sent.borrow().len(), Settings::default().max_subrequests as usize, "20 devices x 3 tries would be 60");
        assert!(reports.iter().all(|r| r.tries >= 1), "every device got its first try");
    }
}
