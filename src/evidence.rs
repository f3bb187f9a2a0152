//! What this isolate has seen of each app's sends.
//!
//! A provider answer that a wrong app configuration produces for every device
//! (APNs `BadDeviceToken` on a fixed platform, `DeviceTokenNotForTopic`) says
//! nothing about the device until the same app id has been seen to deliver:
//! a delivery proves its key, topic and environment. This record holds that
//! evidence, per app id, the counts `/health` reports for an app whose
//! refusals are not proven, and, for APNs apps with `platform: "auto"`,
//! which devices live in the sandbox.
//!
//! It lives in isolate memory, beside the `APPS` it is evidence about: a new
//! `APPS` is a new deployment, so evidence never outlives the configuration
//! it proves. Everything here is bounded: a fixed number of minutes of counts
//! per app id, a fixed number of app ids per glob entry, and a fixed number
//! of remembered devices per entry.

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use crate::bounded::BoundedMap;
use crate::providers::{Outcome, Refusal, Verdict};

/// How long a delivery counts as evidence, and how far back `/health` counts.
pub const WINDOW_MINUTES: u64 = 10;
const MINUTE_MS: u64 = 60_000;
pub const WINDOW_MS: u64 = WINDOW_MINUTES * MINUTE_MS;

/// Refusals after the app's last delivery that are still judged by it. More
/// in a row mean something changed since (Apple's side, say): each further
/// refusal waits for a new delivery.
pub const MAX_REFUSALS_PER_DELIVERY: u32 = 10;

/// Devices remembered per generation; two generations are kept.
pub const DEVICES_PER_GENERATION: usize = 4096;

/// App ids a glob entry keeps evidence for: the most recently used. An app
/// id pushed out loses its evidence, which costs its next refusals a 502,
/// never a wrong rejection.
pub const APP_IDS_PER_GLOB: usize = 64;

/// The most of an app id `/health` shows: devices choose app ids.
const MAX_APP_ID_CHARS: usize = 256;

/// One `APPS` entry's record. Shared by every request of the isolate; never
/// borrowed across an `await`.
///
/// Evidence is kept per app id, not per entry: a glob such as
/// `im.vector.app.ios.*` with one `platform` covers builds of different
/// kinds (`.prod`, `.dev`), and a delivery to one proves nothing about the
/// platform of the other.
pub struct AppRecord {
    seen: RefCell<SeenBy>,
    sandbox: RefCell<DeviceSet>,
}

impl Default for AppRecord {
    /// The record of an exact entry.
    fn default() -> Self {
        Self::new(false)
    }
}

/// What was seen, by app id.
enum SeenBy {
    /// An exact entry: its one app id.
    One(Seen),
    /// A glob entry: each app id it matched (keyed by a hash, shown cut),
    /// the least recently used forgotten first.
    Each(BoundedMap<u64, (String, Seen)>),
}

impl SeenBy {
    fn of(&mut self, app_id: &str) -> &mut Seen {
        match self {
            Self::One(seen) => seen,
            Self::Each(map) => {
                let (_, seen) = map.entry_or_insert_with(&app_key(app_id), || {
                    (app_id.chars().take(MAX_APP_ID_CHARS).collect(), Seen::default())
                });
                seen
            }
        }
    }
}

#[derive(Default)]
struct Seen {
    last_delivered_ms: Option<u64>,
    refusals_since_delivery: u32,
    /// The last refusal answered `Failed` for want of evidence.
    last_unproven_ms: Option<u64>,
    /// The counts of the latest minute, and of the minutes before it still
    /// in the window, oldest first.
    current: Minute,
    past: VecDeque<Minute>,
}

#[derive(Default)]
struct Minute {
    minute: u64,
    delivered: u32,
    unproven: u32,
    /// Refusals by cause: a handful of provider reasons.
    refused: Vec<(Refusal, u32)>,
}

impl Seen {
    /// The counts of the minute `now_ms` falls in.
    fn minute(&mut self, now_ms: u64) -> &mut Minute {
        let minute = now_ms / MINUTE_MS;
        if self.current.minute != minute {
            let done = std::mem::replace(&mut self.current, Minute { minute, ..Minute::default() });
            self.past.push_back(done);
        }
        let first_kept = minute.saturating_sub(WINDOW_MINUTES - 1);
        self.past.retain(|m| m.minute >= first_kept && m.minute < minute);
        &mut self.current
    }

    /// The minutes of the window that ends at `now_ms`.
    fn window(&self, now_ms: u64) -> impl Iterator<Item = &Minute> {
        let minute = now_ms / MINUTE_MS;
        let first_kept = minute.saturating_sub(WINDOW_MINUTES - 1);
        self.past
            .iter()
            .chain(std::iter::once(&self.current))
            .filter(move |m| m.minute >= first_kept && m.minute <= minute)
    }

    fn delivered(&mut self, now_ms: u64) {
        self.last_delivered_ms = Some(self.last_delivered_ms.map_or(now_ms, |t| t.max(now_ms)));
        self.refusals_since_delivery = 0;
        self.minute(now_ms).delivered += 1;
    }

    fn judge(&mut self, refusal: Refusal, reason: &str, delivered_in_this_notify: bool, now_ms: u64) -> Verdict {
        let evidence = if delivered_in_this_notify {
            Evidence::ThisNotify
        } else {
            match self.last_delivered_ms.map(|t| now_ms.saturating_sub(t)) {
                Some(ago_ms) if ago_ms < WINDOW_MS => {
                    if self.refusals_since_delivery < MAX_REFUSALS_PER_DELIVERY {
                        Evidence::Recent { ago_ms }
                    } else {
                        Evidence::TooManyRefusals
                    }
                }
                _ => Evidence::NoDelivery,
            }
        };
        self.refusals_since_delivery = self.refusals_since_delivery.saturating_add(1);
        let minute = self.minute(now_ms);
        match minute.refused.iter_mut().find(|(r, _)| *r == refusal) {
            Some((_, count)) => *count += 1,
            None => minute.refused.push((refusal, 1)),
        }
        let verdict = match evidence {
            Evidence::ThisNotify => {
                Verdict::rejected(format!("{reason}; rejected: the app delivered to another device of this notify"))
            }
            Evidence::Recent { ago_ms } => Verdict::rejected(format!(
                "{reason}; rejected: the app delivered to another device {} s ago",
                ago_ms / 1000
            )),
            Evidence::NoDelivery => Verdict::failed(format!(
                "{reason}; not rejected: the app delivered nothing in the last {WINDOW_MINUTES} minutes (check {})",
                refusal.check
            )),
            Evidence::TooManyRefusals => Verdict::failed(format!(
                "{reason}; not rejected: {MAX_REFUSALS_PER_DELIVERY} refusals since the app's last delivery (check {})",
                refusal.check
            )),
        };
        if verdict.outcome == Outcome::Failed {
            minute.unproven += 1;
            self.last_unproven_ms = Some(now_ms);
        }
        verdict
    }

    /// Why this app id looks misconfigured, without the `suspect: ` prefix.
    fn suspect(&self, now_ms: u64) -> Option<String> {
        let unproven: u32 = self.window(now_ms).map(|m| m.unproven).sum();
        let delivered_since = match (self.last_delivered_ms, self.last_unproven_ms) {
            (Some(delivered), Some(unproven)) => delivered >= unproven,
            _ => false,
        };
        if unproven == 0 || delivered_since {
            return None;
        }
        let delivered: u32 = self.window(now_ms).map(|m| m.delivered).sum();
        let mut refused: Vec<(Refusal, u32)> = Vec::new();
        for (refusal, count) in self.window(now_ms).flat_map(|m| m.refused.iter()) {
            match refused.iter_mut().find(|(r, _)| r == refusal) {
                Some((_, total)) => *total += count,
                None => refused.push((*refusal, *count)),
            }
        }
        let counts: Vec<String> = refused.iter().map(|(r, n)| format!("{n} {}", r.cause)).collect();
        let mut checks: Vec<&str> = Vec::new();
        for (r, _) in &refused {
            if !checks.contains(&r.check) {
                checks.push(r.check);
            }
        }
        Some(format!(
            "{delivered} delivered, {} in the last {WINDOW_MINUTES} minutes; {unproven} answered 502 \
             instead of rejected until the app delivers again: check {}",
            counts.join(", "),
            checks.join("; ")
        ))
    }
}

/// Where a refusal's evidence came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// The same app id delivered to another device of the same notify.
    ThisNotify,
    /// The app id's last delivery in this isolate, this long ago.
    Recent { ago_ms: u64 },
    /// No delivery in the window.
    NoDelivery,
    /// A delivery in the window, but too many refusals since.
    TooManyRefusals,
}

impl AppRecord {
    /// The record of an entry: `glob` entries keep evidence per app id they
    /// match.
    pub fn new(glob: bool) -> Self {
        let seen = if glob { SeenBy::Each(BoundedMap::new(APP_IDS_PER_GLOB)) } else { SeenBy::One(Seen::default()) };
        Self { seen: RefCell::new(seen), sandbox: RefCell::default() }
    }

    /// A send to `app_id` was delivered.
    pub fn delivered(&self, app_id: &str, now_ms: u64) {
        self.seen.borrow_mut().of(app_id).delivered(now_ms);
    }

    /// Judge a device of `app_id` that its provider `Refused`: `Rejected`
    /// with evidence that the app is configured right for this app id, else
    /// `Failed`. `delivered_in_this_notify`: another device of the same app
    /// id was delivered by this notify.
    pub fn judge(
        &self,
        app_id: &str,
        refusal: Refusal,
        reason: &str,
        delivered_in_this_notify: bool,
        now_ms: u64,
    ) -> Verdict {
        self.seen.borrow_mut().of(app_id).judge(refusal, reason, delivered_in_this_notify, now_ms)
    }

    /// For `/health`: why the entry looks misconfigured, when refusals of
    /// one of its app ids were answered `Failed` in the window and that app
    /// id has delivered nothing since. A glob entry names each such app id.
    pub fn suspect(&self, now_ms: u64) -> Option<String> {
        match &*self.seen.borrow() {
            SeenBy::One(seen) => seen.suspect(now_ms).map(|why| format!("suspect: {why}")),
            SeenBy::Each(map) => {
                let mut suspects: Vec<(&str, String)> =
                    map.values().filter_map(|(id, seen)| Some((id.as_str(), seen.suspect(now_ms)?))).collect();
                if suspects.is_empty() {
                    return None;
                }
                suspects.sort();
                let each: Vec<String> = suspects.iter().map(|(id, why)| format!("{id:?}: {why}")).collect();
                Some(format!("suspect: {}", each.join(" | ")))
            }
        }
    }

    /// APNs `auto`: whether the device's token was last seen working in the sandbox.
    pub fn in_sandbox(&self, pushkey: &str) -> bool {
        self.sandbox.borrow_mut().contains(device_key(pushkey))
    }

    /// APNs `auto`: the device's token worked in the sandbox (`true`) or in
    /// production, or in neither (`false`: forget it).
    pub fn set_in_sandbox(&self, pushkey: &str, in_sandbox: bool) {
        let key = device_key(pushkey);
        let mut set = self.sandbox.borrow_mut();
        if in_sandbox {
            set.insert(key);
        } else {
            set.remove(key);
        }
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        let set = self.sandbox.borrow();
        set.current.len() + set.previous.len()
    }

    #[cfg(test)]
    fn app_ids(&self) -> usize {
        match &*self.seen.borrow() {
            SeenBy::One(_) => 1,
            SeenBy::Each(map) => map.len(),
        }
    }
}

/// An app id as a glob's record keys it.
fn app_key(app_id: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    app_id.hash(&mut hasher);
    hasher.finish()
}

/// A device as remembered: a 64-bit hash of its pushkey, so memory holds no
/// token. A collision costs one extra request, never a wrong verdict.
fn device_key(pushkey: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    pushkey.hash(&mut hasher);
    hasher.finish()
}

/// A bounded set that forgets the least recently used keys first, roughly:
/// two generations, the older dropped whole when the newer fills up.
#[derive(Default)]
struct DeviceSet {
    current: HashSet<u64>,
    previous: HashSet<u64>,
}

impl DeviceSet {
    fn contains(&mut self, key: u64) -> bool {
        if self.current.contains(&key) {
            return true;
        }
        if self.previous.remove(&key) {
            self.insert(key);
            return true;
        }
        false
    }

    fn insert(&mut self, key: u64) {
        if self.current.contains(&key) {
            return;
        }
        if self.current.len() >= DEVICES_PER_GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.previous.remove(&key);
        self.current.insert(key);
    }

    fn remove(&mut self, key: u64) {
        self.current.remove(&key);
        self.previous.remove(&key);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const NOT_FOR_TOPIC: Refusal = Refusal { cause: "DeviceTokenNotForTopic", check: "topic" };
    const BAD_TOKEN: Refusal = Refusal { cause: "BadDeviceToken", check: "platform" };
    const T0: u64 = 1_800_000_000_000;
    const APP: &str = "com.example.ios";

    #[test]
    fn without_a_delivery_a_refusal_fails_and_the_app_is_suspect() {
        let r = AppRecord::default();
        assert_eq!(r.suspect(T0), None);
        for i in 0..17 {
            let v = r.judge(APP, NOT_FOR_TOPIC, "400 DeviceTokenNotForTopic", false, T0 + i);
            assert_eq!(v.outcome, Outcome::Failed);
            assert!(v.reason.contains("check topic"), "{}", v.reason);
        }
        let suspect = r.suspect(T0 + 1000).unwrap();
        assert!(suspect.starts_with("suspect: 0 delivered, 17 DeviceTokenNotForTopic in the last 10 minutes"), "{suspect}");
        assert!(suspect.contains("17 answered 502") && suspect.ends_with("check topic"), "{suspect}");
        // The window passes: nothing is suspect any more.
        assert_eq!(r.suspect(T0 + WINDOW_MS), None);
    }

    #[test]
    fn a_delivery_proves_the_app_for_the_window() {
        let r = AppRecord::default();
        r.delivered(APP, T0);
        let v = r.judge(APP, BAD_TOKEN, "400 BadDeviceToken", false, T0 + 5_000);
        assert_eq!(v.outcome, Outcome::Rejected, "{}", v.reason);
        assert!(v.reason.contains("5 s ago"), "{}", v.reason);
        assert_eq!(r.suspect(T0 + 5_000), None, "proven refusals are no suspicion");
        let late = r.judge(APP, BAD_TOKEN, "400 BadDeviceToken", false, T0 + WINDOW_MS);
        assert_eq!(late.outcome, Outcome::Failed, "the evidence is too old");
        let suspect = r.suspect(T0 + WINDOW_MS).unwrap();
        assert!(suspect.contains("0 delivered, 1 BadDeviceToken"), "the old minute left the window: {suspect}");
    }

    #[test]
    fn a_delivery_in_the_same_notify_is_evidence_on_a_fresh_record() {
        let r = AppRecord::default();
        let v = r.judge(APP, BAD_TOKEN, "400 BadDeviceToken", true, T0);
        assert_eq!(v.outcome, Outcome::Rejected);
        assert!(v.reason.contains("this notify"));
    }

    #[test]
    fn too_many_refusals_since_the_last_delivery_void_it() {
        let r = AppRecord::default();
        r.delivered(APP, T0);
        let outcomes: Vec<Outcome> =
            (0..MAX_REFUSALS_PER_DELIVERY + 2).map(|i| r.judge(APP, NOT_FOR_TOPIC, "x", false, T0 + u64::from(i)).outcome).collect();
        assert!(outcomes[..MAX_REFUSALS_PER_DELIVERY as usize].iter().all(|o| *o == Outcome::Rejected));
        assert!(outcomes[MAX_REFUSALS_PER_DELIVERY as usize..].iter().all(|o| *o == Outcome::Failed));
        let suspect = r.suspect(T0 + 100).unwrap();
        assert!(suspect.contains("1 delivered, 12 DeviceTokenNotForTopic") && suspect.contains("2 answered 502"), "{suspect}");
        // A new delivery clears the suspicion and proves the next refusal.
        r.delivered(APP, T0 + 200);
        assert_eq!(r.suspect(T0 + 300), None);
        assert_eq!(r.judge(APP, NOT_FOR_TOPIC, "x", false, T0 + 300).outcome, Outcome::Rejected);
    }

    #[test]
    fn suspect_lists_each_cause_and_what_to_check() {
        let r = AppRecord::default();
        r.judge(APP, NOT_FOR_TOPIC, "x", false, T0);
        r.judge(APP, BAD_TOKEN, "x", false, T0 + MINUTE_MS);
        r.judge(APP, BAD_TOKEN, "x", false, T0 + 2 * MINUTE_MS);
        let suspect = r.suspect(T0 + 2 * MINUTE_MS).unwrap();
        assert!(suspect.contains("1 DeviceTokenNotForTopic, 2 BadDeviceToken"), "{suspect}");
        assert!(suspect.ends_with("check topic; platform"), "{suspect}");
    }

    #[test]
    fn minutes_are_bounded_by_the_window() {
        let r = AppRecord::default();
        for i in 0..1000 {
            r.delivered(APP, T0 + i * MINUTE_MS);
        }
        match &*r.seen.borrow() {
            SeenBy::One(seen) => assert!(seen.past.len() < WINDOW_MINUTES as usize),
            SeenBy::Each(_) => unreachable!("an exact entry"),
        };
    }

    #[test]
    fn a_glob_keeps_evidence_per_app_id() {
        // `im.vector.app.ios.*` with one platform: the production build
        // delivers, the development build's tokens are refused.
        let r = AppRecord::new(true);
        let (prod, dev) = ("im.vector.app.ios.prod", "im.vector.app.ios.dev");
        r.delivered(prod, T0);
        let v = r.judge(dev, BAD_TOKEN, "400 BadDeviceToken", false, T0 + 1_000);
        assert_eq!(v.outcome, Outcome::Failed, "another app id's delivery proves nothing: {}", v.reason);
        assert_eq!(r.judge(prod, BAD_TOKEN, "400 BadDeviceToken", false, T0 + 1_000).outcome, Outcome::Rejected);
        let suspect = r.suspect(T0 + 2_000).unwrap();
        assert!(
            suspect.starts_with(r#"suspect: "im.vector.app.ios.dev": 0 delivered, 1 BadDeviceToken in the last 10 minutes"#),
            "{suspect}"
        );
        assert!(!suspect.contains(prod), "{suspect}");
        // Two suspect app ids are both named, in order.
        r.judge("im.vector.app.ios.beta", NOT_FOR_TOPIC, "x", false, T0 + 3_000);
        let suspect = r.suspect(T0 + 3_000).unwrap();
        assert!(suspect.contains(r#""im.vector.app.ios.beta": 0 delivered, 1 DeviceTokenNotForTopic"#), "{suspect}");
        assert!(suspect.contains(r#" | "im.vector.app.ios.dev": "#), "{suspect}");
        // The development build delivers: it is proven, and no longer suspect.
        r.delivered(dev, T0 + 4_000);
        assert_eq!(r.judge(dev, BAD_TOKEN, "x", false, T0 + 5_000).outcome, Outcome::Rejected);
        assert!(!r.suspect(T0 + 5_000).unwrap().contains(dev));
    }

    #[test]
    fn a_glob_remembers_a_bounded_number_of_app_ids_least_recently_used_first() {
        let r = AppRecord::new(true);
        r.delivered("kept", T0);
        for i in 0..10 * APP_IDS_PER_GLOB {
            r.delivered(&format!("flood.{i}"), T0);
            if i % 10 == 0 {
                r.delivered("kept", T0);
            }
            assert!(r.app_ids() <= APP_IDS_PER_GLOB);
        }
        assert_eq!(r.judge("kept", BAD_TOKEN, "x", false, T0 + 1).outcome, Outcome::Rejected, "used now and then: kept");
        assert_eq!(r.judge("flood.0", BAD_TOKEN, "x", false, T0 + 1).outcome, Outcome::Failed, "forgotten: no evidence");
        // A long app id is shown cut.
        let long = "x".repeat(10_000);
        r.judge(&long, BAD_TOKEN, "x", false, T0 + 2);
        assert!(r.suspect(T0 + 2).unwrap().len() < 2_000);
    }

    #[test]
    fn sandbox_devices_are_remembered_forgotten_and_bounded() {
        let r = AppRecord::default();
        assert!(!r.in_sandbox("a"));
        r.set_in_sandbox("a", true);
        assert!(r.in_sandbox("a") && !r.in_sandbox("b"));
        r.set_in_sandbox("a", false);
        assert!(!r.in_sandbox("a"));
        r.set_in_sandbox("old", true);
        for i in 0..3 * DEVICES_PER_GENERATION {
            r.set_in_sandbox(&format!("device{i}"), true);
            if i % 100 == 0 {
                // Used now and then: kept while the others come and go.
                assert!(r.in_sandbox("old"), "{i}");
            }
        }
        assert!(r.remembered() <= 2 * DEVICES_PER_GENERATION);
        assert!(!r.in_sandbox("device0"), "the least recently used are forgotten");
        assert!(r.in_sandbox(&format!("device{}", 3 * DEVICES_PER_GENERATION - 1)));
    }
}
