//! Helpers for host tests.
//!
//! Virtual time: sleeps that end when the test's clock reaches them, and a
//! driver that moves the clock only when every task is waiting on a timer.
//! A slow mint or a long `Retry-After` then costs no real time, and the
//! order of events is the one real time would give.
//!
//! Synapse fixtures: the captured requests in `tests/fixtures/synapse/`,
//! read by one loader.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures_util::task::{waker, ArcWake};

/// The test's clock, in milliseconds.
#[derive(Default)]
pub struct VirtualClock {
    now_ms: Cell<u64>,
    timers: RefCell<Vec<(u64, Waker)>>,
}

impl VirtualClock {
    pub fn starting_at(ms: u64) -> Self {
        let clock = Self::default();
        clock.now_ms.set(ms);
        clock
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms.get()
    }

    /// Ends when the clock reaches now + `ms`.
    pub fn sleep(&self, ms: u64) -> Sleep<'_> {
        Sleep { clock: self, until: self.now_ms().saturating_add(ms) }
    }

    /// Move the clock to the earliest timer and wake the timers due; false
    /// when no timer is waiting.
    fn advance(&self) -> bool {
        let Some(next) = self.timers.borrow().iter().map(|(at, _)| *at).min() else { return false };
        self.now_ms.set(self.now_ms.get().max(next));
        let now = self.now_ms.get();
        let due: Vec<Waker> = {
            let mut timers = self.timers.borrow_mut();
            let (due, waiting): (Vec<_>, Vec<_>) = timers.drain(..).partition(|(at, _)| *at <= now);
            *timers = waiting;
            due.into_iter().map(|(_, w)| w).collect()
        };
        due.into_iter().for_each(Waker::wake);
        true
    }
}

pub struct Sleep<'a> {
    clock: &'a VirtualClock,
    until: u64,
}

impl Future for Sleep<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.clock.now_ms() >= self.until {
            return Poll::Ready(());
        }
        self.clock.timers.borrow_mut().push((self.until, cx.waker().clone()));
        Poll::Pending
    }
}

struct Flag(AtomicBool);

impl ArcWake for Flag {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.store(true, Ordering::SeqCst);
    }
}

/// Run `future` to completion on `clock`: polled while anything woke it,
/// the clock moved to the next timer when nothing did. Panics when nothing
/// can ever wake it (a lost wake-up is a bug worth failing on).
pub fn drive<F: Future>(clock: &VirtualClock, future: F) -> F::Output {
    let flag = Arc::new(Flag(AtomicBool::new(true)));
    let waker = waker(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        flag.0.store(false, Ordering::SeqCst);
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        if !flag.0.load(Ordering::SeqCst) && !clock.advance() {
            panic!("stuck: nothing will wake the future (a lost wake-up)");
        }
    }
}

/// Pending once: lets other tasks run, as awaiting I/O does.
pub struct YieldOnce(pub bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// The `/notify` body of a captured Synapse request in `tests/fixtures/synapse/`.
#[allow(clippy::unwrap_used)]
pub fn synapse_body(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/synapse/{name}", env!("CARGO_MANIFEST_DIR"));
    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    raw.get("body").cloned().unwrap_or_else(|| panic!("{path} has no body"))
}

/// That body, parsed, with its `devices` replaced when `devices` is given.
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
pub fn synapse_notification(name: &str, devices: Option<Vec<serde_json::Value>>) -> crate::notify::Notification {
    let mut body = synapse_body(name);
    if let Some(devices) = devices {
        body["notification"]["devices"] = serde_json::Value::Array(devices);
    }
    crate::notify::parse_notify(&serde_json::to_vec(&body).unwrap(), 20).unwrap()
}
