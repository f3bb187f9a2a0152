//! The deferred-delivery queue's consumer (`deferred.rs` holds the queue's
//! message): every message of a batch is tried once, through the
//! dispatcher's send loop, and then acknowledged, put back with a delay, or
//! dead-lettered. Plain Rust over [`Transport`]; the shell moves the texts.
//!
//! The consumer never asks Queues to retry a message it has read: it puts a
//! fresh copy back with `delaySeconds` and acknowledges the old one, so the
//! consumer's `max_retries` only matters when the handler itself fails, and
//! the age limit is ours ([`DeferredSettings::max_age_secs`]).
//!
//! Tested with the hand-off in `deferred.rs`.

use std::cell::Cell;

use futures_util::future::join_all;
use serde::Serialize;

use crate::apps::{AppEntry, Apps, Lookup};
use crate::config::{DeferredSettings, Settings, MAX_QUEUE_DELAY_SECS};
use crate::deferred::{given_up, mark_given_up, DeferredPush, Enqueue};
use crate::dispatch::Dispatcher;
use crate::providers::{App, Outcome, Verdict};
use crate::report::{DeviceReport, FinalOutcome};
use crate::tokens::{TokenCache, TokenSource};
use crate::transport::{Budgeted, Transport};

/// What became of one queue message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// The provider took it.
    Delivered,
    /// The provider says the device is gone. The homeserver already had its
    /// answer, so nobody can be told; its next push to this pusher is
    /// rejected as usual.
    Rejected,
    /// Not delivered yet: back on the queue with a delay.
    Retrying,
    /// Too old to send (the age limit, or a `Retry-After` past it): given
    /// up, and sent to the dead-letter queue if one is bound.
    Expired,
    /// Not a message this worker can read: sent to the dead-letter queue if
    /// one is bound.
    Unreadable,
    /// A message that was already given up (this worker is also consuming
    /// its dead-letter queue): acknowledged, nothing sent.
    GivenUp,
}

/// What the shell does with a queue message after [`consume`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Acknowledge it.
    Ack,
    /// Put this copy on the queue, then acknowledge the old one.
    Requeue(Box<Enqueue>),
    /// Put this text on the dead-letter queue (if bound), then acknowledge.
    DeadLetter(String),
}

/// One log line per queue message (`"msg":"deferred"`).
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerLog {
    pub msg: &'static str,
    pub result: Fate,
    pub app_id: String,
    pub pushkey: String,
    pub provider: String,
    /// This consumer try (1 for the first).
    pub round: u32,
    /// Seconds since the notify.
    pub age_s: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenSource>,
    /// When retrying: seconds until the next try.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_in_s: Option<u64>,
    /// Given up: whether it went to the dead-letter queue (`DEFERRED_DLQ`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<bool>,
    pub ms: u64,
}

impl ConsumerLog {
    /// Expired and unreadable pushes are lost to the device: an error.
    pub fn is_error(&self) -> bool {
        matches!(self.result, Fate::Expired | Fate::Unreadable)
    }
}

/// One queue message handled.
#[derive(Debug, Clone)]
pub struct Handled {
    pub action: Action,
    pub log: ConsumerLog,
}

/// Tries every message of a batch once, concurrently, and says for each
/// what to do with it. `messages` are the texts as read from the queue;
/// `from_dead_letter`: the batch came from the dead-letter queue, whose
/// messages are never dead-lettered again (dropped instead).
pub async fn consume<T: Transport>(
    transport: &T,
    apps: &Apps,
    settings: &Settings,
    deferred: &DeferredSettings,
    tokens: &TokenCache,
    messages: &[Option<String>],
    from_dead_letter: bool,
) -> Vec<Handled> {
    // One try per round: the queue's delay is the backoff. The batch shares
    // one subrequest budget, as a notify does.
    let one_try = Settings { max_tries: 1, max_subrequests: u32::MAX, ..settings.clone() };
    let budget = Cell::new(settings.max_subrequests);
    let round = Round { transport, apps, settings: &one_try, deferred, tokens, budget: &budget };
    let mut handled = join_all(messages.iter().map(|text| round.handle(text.as_deref()))).await;
    if from_dead_letter {
        for h in &mut handled {
            if matches!(h.action, Action::DeadLetter(_)) {
                h.action = Action::Ack;
                h.log.dead_letter = Some(false);
                h.log.reason = format!("{}; it came from the dead-letter queue: dropped", h.log.reason);
            }
        }
    }
    handled
}

struct Round<'a, T: Transport> {
    transport: &'a T,
    apps: &'a Apps,
    settings: &'a Settings,
    deferred: &'a DeferredSettings,
    tokens: &'a TokenCache,
    budget: &'a Cell<u32>,
}

impl<T: Transport> Round<'_, T> {
    async fn handle(&self, text: Option<&str>) -> Handled {
        let started = self.transport.now_ms();
        let Some(text) = text else {
            let reason = "the message body is not text".to_string();
            let action = Action::DeadLetter(mark_given_up("", &reason));
            return Handled { action, log: self.log(Fate::Unreadable, None, reason, started) };
        };
        if let Some(why) = given_up(text) {
            // Given up already, maybe unreadable: only the mark is read.
            let push = DeferredPush::from_text(text).ok();
            let log = self.log(Fate::GivenUp, push.as_ref(), why, started);
            return Handled { action: Action::Ack, log };
        }
        let mut push = match DeferredPush::from_text(text) {
            Ok(push) => push,
            Err(reason) => {
                let action = Action::DeadLetter(mark_given_up(text, &reason));
                return Handled { action, log: self.log(Fate::Unreadable, None, reason, started) };
            }
        };
        let age_s = started.saturating_sub(push.created_ms) / 1000;
        push.round = push.round.saturating_add(1);
        let mut log = self.log(Fate::Retrying, Some(&push), String::new(), started);
        log.age_s = age_s;
        let deadline_ms = push.created_ms.saturating_add(self.deferred.max_age_secs.saturating_mul(1000));
        if started >= deadline_ms {
            return self.give_up(push, text, log, format!("older than DEFERRED_MAX_AGE_SECS ({} s)", self.deferred.max_age_secs));
        }

        let metered = Budgeted::sharing(self.transport, self.budget);
        // A held UnifiedPush endpoint's wait, when it is not sent.
        let mut held_secs = None;
        let mut report = DeviceReport {
            outcome: FinalOutcome::Transient,
            ..DeviceReport::for_device(push.app_id.clone(), log.pushkey.clone())
        };
        let verdict = match (self.app_for(&push), push.prepared()) {
            (Err(verdict), _) => verdict,
            (Ok(_), Err(reason)) => {
                log.result = Fate::Unreadable;
                let action = Action::DeadLetter(mark_given_up(text, &reason));
                log.reason = reason;
                return Handled { action, log };
            }
            (Ok((entry, app)), Ok(prepared)) => 'sent: {
                if let App::UnifiedPush(up) = app {
                    if let Some(secs) = up.held_for(&prepared.request.url, started / 1000) {
                        // The endpoint asked to be left alone (a 429 to another push).
                        held_secs = Some(secs);
                        break 'sent Verdict::transient(format!("endpoint: asked to be left alone for {secs} s more; not sent"));
                    }
                }
                let dispatcher = Dispatcher::new(&metered, self.apps, self.settings, self.tokens);
                let verdict = dispatcher.send_prepared(entry, app, &prepared, &push.device(), started, &mut report).await;
                match verdict.outcome {
                    // As in a notify, but the only evidence is the app's
                    // recent deliveries in this isolate.
                    Outcome::Refused(refusal) => {
                        entry.record.judge(&push.app_id, refusal, &verdict.reason, false, self.transport.now_ms())
                    }
                    _ => verdict,
                }
            }
        };
        let now = self.transport.now_ms();
        log.status = report.status;
        log.token = report.token;
        log.ms = now.saturating_sub(started);
        log.reason = verdict.reason;
        match verdict.outcome {
            Outcome::Delivered => {
                log.result = Fate::Delivered;
                Handled { action: Action::Ack, log }
            }
            Outcome::Rejected => {
                log.result = Fate::Rejected;
                Handled { action: Action::Ack, log }
            }
            // Transient, and our own failures too: a fixed configuration
            // sends what is still queued. Only the age limit ends these.
            Outcome::Transient { .. } | Outcome::Failed | Outcome::StaleCredentials | Outcome::Refused(_) => {
                let backoff = self.deferred.backoff_secs(push.round.saturating_add(1), self.transport.random());
                let asked = held_secs.or(metered.last_retry_after_secs()).unwrap_or(0).min(MAX_QUEUE_DELAY_SECS);
                // The next try must start before the deadline; a whole second
                // is kept for the queue's own delivery delay.
                let latest = deadline_ms.saturating_sub(now) / 1000;
                let latest = latest.saturating_sub(1);
                if latest == 0 || asked > latest {
                    let why = if asked > latest {
                        format!("{}; Retry-After {asked} s is past DEFERRED_MAX_AGE_SECS", log.reason)
                    } else {
                        format!("{}; DEFERRED_MAX_AGE_SECS ({} s) reached", log.reason, self.deferred.max_age_secs)
                    };
                    return self.give_up(push, text, log, why);
                }
                let delay_secs = backoff.max(asked).min(latest);
                log.next_in_s = Some(delay_secs);
                Handled { action: Action::Requeue(Box::new(Enqueue { push, delay_secs })), log }
            }
        }
    }

    /// The app the push was built for, as configured now.
    fn app_for(&self, push: &DeferredPush) -> Result<(&AppEntry, &App), Verdict> {
        if let Some(error) = &self.apps.global_error {
            return Err(Verdict::failed(format!("APPS is broken: {error}")));
        }
        let (entry, app) = match self.apps.find(&push.app_id) {
            Lookup::Found { entry, app } => (entry, app.as_ref()),
            Lookup::NoMatch => return Err(Verdict::failed("no app is configured for this app_id any more")),
            Lookup::Ambiguous { first, second } => {
                return Err(Verdict::failed(format!("the app_id now matches the globs {first:?} and {second:?}")))
            }
            Lookup::Broken { pattern, error } => {
                return Err(Verdict::failed(format!("app {pattern:?} is misconfigured: {error}")))
            }
        };
        if app.provider() != push.provider {
            return Err(Verdict::failed(format!("the app is now {}, the push was built for {}", app.provider(), push.provider)));
        }
        Ok((entry, app))
    }

    /// Expired: the push as last tried, marked, for the dead-letter queue
    /// (the text as read, marked, if the push cannot be written).
    fn give_up(&self, mut push: DeferredPush, text: &str, mut log: ConsumerLog, why: String) -> Handled {
        log.result = Fate::Expired;
        log.reason.clone_from(&why);
        push.given_up = Some(why.clone());
        let letter = push.to_text().unwrap_or_else(|_| mark_given_up(text, &why));
        Handled { action: Action::DeadLetter(letter), log }
    }

    fn log(&self, result: Fate, push: Option<&DeferredPush>, reason: String, started: u64) -> ConsumerLog {
        ConsumerLog {
            msg: "deferred",
            result,
            app_id: push.map(|p| p.app_id.clone()).unwrap_or_default(),
            pushkey: push.map(|p| p.pushkey_short.clone()).unwrap_or_default(),
            provider: push.map(|p| p.provider.clone()).unwrap_or_else(|| "none".into()),
            round: push.map_or(0, |p| p.round),
            age_s: 0,
            status: None,
            reason,
            token: None,
            next_in_s: None,
            dead_letter: None,
            ms: self.transport.now_ms().saturating_sub(started),
        }
    }
}
