//! The stall watchdog: reports a worker that has been inside one call into
//! a plugin — a hook, a timer or fd callback, a cancellation — for longer
//! than a threshold. Such a call blocks the worker's event loop, so every
//! other connection of that worker waits; MailerQ says nothing about it,
//! and nothing inside one process can interrupt it, but its author should
//! hear of it.
//!
//! The worker side is cheap: entering a call stores one word in its
//! [`CallSlot`] (which plugin, which hook or callback, a sequence number)
//! and leaving restores the previous word, both plain atomic swaps. The
//! watchdog thread polls the slots a few times per threshold; a word it
//! sees unchanged for the threshold is a stall. It claims the stall by
//! setting a bit in the slot's word (compare-and-swap, so a call that ended
//! meanwhile is never reported), logs a warning and counts it
//! (`worker_stalls`), once per call. The worker finds the bit when it
//! leaves the call and hands over how long the call took, which the
//! watchdog logs next.
//!
//! Lifecycle hooks (`mq_initialize`, `mq_context_initialize`, ...) are not
//! watched: MailerQ lets them block.

use crate::observe::{Counters, Priority, Source};
use crate::runtime::worker::Shared;
use mq_hook_table::{Hook, HOOKS};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Set in a slot's word while a call runs.
const BUSY: u64 = 1 << 63;
/// Set by the watchdog once it reported the call as a stall.
const REPORTED: u64 = 1 << 62;
const SEQ_MASK: u64 = (1 << 30) - 1;
const SITE_TIMER: u16 = 0xFFFF;
const SITE_FD: u16 = 0xFFFE;
const SITE_CANCEL: u16 = 0xFFFD;

/// What a worker is calling into, for the watchdog's report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallSite {
    /// A hook.
    Hook(&'static Hook),
    /// A timer callback (`MQ_startTimer`).
    TimerCallback,
    /// An fd watcher callback (`MQ_ioWatch`).
    FdCallback,
    /// The plugin's `cancel_hold` at a hold deadline.
    CancelHold,
}

impl CallSite {
    fn code(self) -> u16 {
        match self {
            // The hook table has a few dozen rows.
            CallSite::Hook(hook) => hook.index() as u16,
            CallSite::TimerCallback => SITE_TIMER,
            CallSite::FdCallback => SITE_FD,
            CallSite::CancelHold => SITE_CANCEL,
        }
    }

    fn from_code(code: u16) -> Option<CallSite> {
        match code {
            SITE_TIMER => Some(CallSite::TimerCallback),
            SITE_FD => Some(CallSite::FdCallback),
            SITE_CANCEL => Some(CallSite::CancelHold),
            index => HOOKS.get(usize::from(index)).map(CallSite::Hook),
        }
    }

    /// How the report names it: `mq_smtp_in_message`, `a timer callback`, ...
    fn name(self) -> &'static str {
        match self {
            CallSite::Hook(hook) => hook.symbol,
            CallSite::TimerCallback => "a timer callback",
            CallSite::FdCallback => "an fd callback",
            CallSite::CancelHold => "cancel_hold",
        }
    }
}

/// A call as one word: `BUSY | REPORTED? | seq << 32 | plugin << 16 | site`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Call(u64);

impl Call {
    fn new(seq: u32, plugin: usize, site: CallSite) -> Call {
        // Plugin indexes are below `handles::MAX_PLUGINS`, far below 2^16.
        let plugin = (plugin as u64) & 0xFFFF;
        Call(BUSY | (u64::from(seq) & SEQ_MASK) << 32 | plugin << 16 | u64::from(site.code()))
    }

    fn is_busy(self) -> bool {
        self.0 & BUSY != 0
    }

    fn is_reported(self) -> bool {
        self.0 & REPORTED != 0
    }

    fn reported(self) -> Call {
        Call(self.0 | REPORTED)
    }

    fn plugin(self) -> usize {
        ((self.0 >> 16) & 0xFFFF) as usize
    }

    fn site(self) -> Option<CallSite> {
        CallSite::from_code(self.0 as u16)
    }
}

/// One worker's current call into a plugin: written by the worker, read by
/// the watchdog.
#[derive(Debug)]
pub(crate) struct CallSlot {
    worker: usize,
    /// The [`Call`] running now, or 0.
    current: AtomicU64,
    /// The sequence number of the last call entered (worker only).
    seq: AtomicU32,
    /// Reported calls that returned since the watchdog last looked, with
    /// how long each took. Only reported calls come here: rare, and at
    /// most one per poll of the watchdog.
    returned: Mutex<Vec<(Call, Duration)>>,
}

impl CallSlot {
    /// The slot of worker `worker`.
    pub(crate) fn new(worker: usize) -> CallSlot {
        CallSlot {
            worker,
            current: AtomicU64::new(0),
            seq: AtomicU32::new(0),
            returned: Mutex::new(Vec::new()),
        }
    }

    /// Marks a call of `plugin` at `site` until the guard drops.
    pub(crate) fn enter(&self, plugin: usize, site: CallSite) -> CallGuard<'_> {
        let seq = self.seq.load(Ordering::Relaxed).wrapping_add(1);
        self.seq.store(seq, Ordering::Relaxed);
        let call = Call::new(seq, plugin, site);
        let previous = self.current.swap(call.0, Ordering::AcqRel);
        CallGuard {
            slot: self,
            previous,
            started: Instant::now(),
        }
    }
}

/// A call in a [`CallSlot`]; dropping it ends the call.
pub(crate) struct CallGuard<'a> {
    slot: &'a CallSlot,
    previous: u64,
    started: Instant,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        let ended = Call(self.slot.current.swap(self.previous, Ordering::AcqRel));
        if ended.is_reported() {
            let took = self.started.elapsed();
            self.slot
                .returned
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((ended, took));
        }
    }
}

/// What one poll found.
#[derive(Debug, PartialEq)]
enum Finding {
    /// A call has been running for at least `for_at_least`.
    Stalled {
        worker: usize,
        call: Call,
        for_at_least: Duration,
    },
    /// A reported call returned after `took`.
    Returned {
        worker: usize,
        call: Call,
        took: Duration,
    },
}

/// What the watchdog remembers of a slot between polls.
#[derive(Clone, Copy)]
struct Seen {
    word: u64,
    since: Instant,
}

/// The watchdog's logic without its thread, for the tests: [`poll`] with
/// an explicit clock.
///
/// [`poll`]: Observer::poll
struct Observer {
    threshold: Duration,
    slots: Vec<Arc<CallSlot>>,
    seen: Vec<Option<Seen>>,
}

impl Observer {
    fn new(slots: Vec<Arc<CallSlot>>, threshold: Duration) -> Observer {
        let seen = vec![None; slots.len()];
        Observer {
            threshold,
            slots,
            seen,
        }
    }

    /// Looks at every slot at time `now`.
    fn poll(&mut self, now: Instant) -> Vec<Finding> {
        let mut findings = Vec::new();
        for (slot, seen) in self.slots.iter().zip(&mut self.seen) {
            let word = slot.current.load(Ordering::Acquire);
            let call = Call(word);
            match *seen {
                Some(s) if s.word == word && call.is_busy() && !call.is_reported() => {
                    let running = now.saturating_duration_since(s.since);
                    // Claimed only if the call is still the same one.
                    if running >= self.threshold
                        && slot
                            .current
                            .compare_exchange(
                                word,
                                call.reported().0,
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            )
                            .is_ok()
                    {
                        findings.push(Finding::Stalled {
                            worker: slot.worker,
                            call,
                            for_at_least: running,
                        });
                        *seen = Some(Seen {
                            word: call.reported().0,
                            since: s.since,
                        });
                    }
                }
                Some(s) if s.word == word => {}
                _ => *seen = Some(Seen { word, since: now }),
            }
            let returned =
                std::mem::take(&mut *slot.returned.lock().unwrap_or_else(PoisonError::into_inner));
            findings.extend(returned.into_iter().map(|(call, took)| Finding::Returned {
                worker: slot.worker,
                call,
                took,
            }));
        }
        findings
    }
}

/// Tells the watchdog thread to stop.
#[derive(Default)]
struct StopSignal {
    stopped: Mutex<bool>,
    wake: Condvar,
}

/// The watchdog thread of a host; stopped (and joined) on
/// [`Watchdog::stop`] or drop.
pub(crate) struct Watchdog {
    stop: Arc<StopSignal>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts watching `slots` (one per worker): a call that runs for
    /// `threshold` or longer is reported to `shared`'s log and counters.
    pub(crate) fn start(
        shared: Arc<Shared>,
        slots: Vec<Arc<CallSlot>>,
        threshold: Duration,
    ) -> Result<Watchdog, String> {
        let stop = Arc::new(StopSignal::default());
        let signal = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("mq-watchdog".to_owned())
            .spawn(move || watch(&shared, Observer::new(slots, threshold), &signal))
            .map_err(|e| format!("cannot start the stall watchdog thread: {e}"))?;
        Ok(Watchdog {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread (after a last look, so that a call that just
    /// returned is logged) and waits for it.
    pub(crate) fn stop(&mut self) {
        *self
            .stop
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.stop.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How often the watchdog looks: four times per threshold, at least every
/// second and at most every millisecond.
fn poll_period(threshold: Duration) -> Duration {
    (threshold / 4).clamp(Duration::from_millis(1), Duration::from_secs(1))
}

/// The watchdog thread: polls until stopped.
fn watch(shared: &Shared, mut observer: Observer, stop: &StopSignal) {
    let period = poll_period(observer.threshold);
    let mut stopped = stop.stopped.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let last = *stopped;
        drop(stopped);
        for finding in observer.poll(Instant::now()) {
            report(shared, observer.threshold, finding);
        }
        if last {
            return;
        }
        stopped = stop.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        if !*stopped {
            stopped = stop
                .wake
                .wait_timeout(stopped, period)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

fn report(shared: &Shared, threshold: Duration, finding: Finding) {
    let (worker, call) = match finding {
        Finding::Stalled { worker, call, .. } | Finding::Returned { worker, call, .. } => {
            (worker, call)
        }
    };
    let plugin = shared.plugin_name(call.plugin());
    let site = call.site().map_or("(unknown)", CallSite::name);
    let (priority, text) = match finding {
        Finding::Stalled { for_at_least, .. } => {
            Counters::bump(&shared.counters.worker_stalls);
            (
                Priority::Warning,
                format!(
                    "worker {worker}: plugin {plugin} has been inside {site} for {:.1} s (stall \
                     report threshold {:.1} s); every other connection of this worker waits \
                     until it returns: a plugin must not block the event loop",
                    for_at_least.as_secs_f64(),
                    threshold.as_secs_f64()
                ),
            )
        }
        Finding::Returned { took, .. } => (
            Priority::Warning,
            format!(
                "worker {worker}: plugin {plugin} returned from {site} after {:.2} s; the worker \
                 serves again",
                took.as_secs_f64()
            ),
        ),
    };
    shared.log.write(Some(worker), priority, Source::Host, text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{HostLog, LogEcho};
    use crate::runtime::worker::Limits;
    use mq_hook_table::HookId;

    const THRESHOLD: Duration = Duration::from_millis(500);

    fn observer() -> (Arc<CallSlot>, Observer) {
        let slot = Arc::new(CallSlot::new(3));
        let observer = Observer::new(vec![Arc::clone(&slot)], THRESHOLD);
        (slot, observer)
    }

    fn message_hook() -> CallSite {
        CallSite::Hook(HookId::SmtpInMessage.hook())
    }

    #[test]
    fn call_sites_round_trip() {
        for hook in HOOKS {
            let call = Call::new(7, 5, CallSite::Hook(hook));
            assert_eq!(call.site(), Some(CallSite::Hook(hook)));
            assert_eq!(call.plugin(), 5);
        }
        for site in [
            CallSite::TimerCallback,
            CallSite::FdCallback,
            CallSite::CancelHold,
        ] {
            assert_eq!(Call::new(u32::MAX, 0, site).site(), Some(site));
        }
        assert_eq!(message_hook().name(), "mq_smtp_in_message");
        assert_eq!(CallSite::TimerCallback.name(), "a timer callback");
        assert_eq!(CallSite::FdCallback.name(), "an fd callback");
    }

    #[test]
    fn a_long_call_is_reported_once_then_its_return() {
        let (slot, mut observer) = observer();
        let t0 = Instant::now();
        assert!(observer.poll(t0).is_empty(), "idle");
        let guard = slot.enter(2, message_hook());
        assert!(observer.poll(t0).is_empty(), "first seen");
        assert!(observer.poll(t0 + THRESHOLD / 2).is_empty());
        let found = observer.poll(t0 + THRESHOLD);
        let [Finding::Stalled {
            worker: 3,
            call,
            for_at_least,
        }] = found[..]
        else {
            panic!("{found:?}");
        };
        assert_eq!(for_at_least, THRESHOLD);
        assert_eq!((call.plugin(), call.site()), (2, Some(message_hook())));
        assert!(
            observer.poll(t0 + 3 * THRESHOLD).is_empty(),
            "once per call"
        );
        drop(guard);
        let found = observer.poll(t0 + 4 * THRESHOLD);
        let [Finding::Returned {
            worker: 3, call, ..
        }] = found[..]
        else {
            panic!("{found:?}");
        };
        assert_eq!(call.plugin(), 2);
        assert!(observer.poll(t0 + 5 * THRESHOLD).is_empty());
        assert_eq!(slot.current.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn short_calls_are_never_reported() {
        let (slot, mut observer) = observer();
        let t0 = Instant::now();
        // Each poll sees a call of the same plugin and hook, but never the
        // same call twice.
        for i in 0..10u32 {
            let _guard = slot.enter(1, message_hook());
            assert!(observer.poll(t0 + THRESHOLD * i).is_empty());
        }
        // A call that ends before the watchdog claims it: not reported.
        let guard = slot.enter(1, CallSite::TimerCallback);
        assert!(observer.poll(t0 + THRESHOLD * 20).is_empty());
        drop(guard);
        assert!(observer.poll(t0 + THRESHOLD * 30).is_empty());
        assert!(slot.returned.lock().unwrap().is_empty());
    }

    #[test]
    fn a_nested_call_is_reported_as_itself() {
        let (slot, mut observer) = observer();
        let t0 = Instant::now();
        let outer = slot.enter(0, message_hook());
        let inner = slot.enter(1, CallSite::CancelHold);
        observer.poll(t0);
        let found = observer.poll(t0 + THRESHOLD);
        assert!(
            matches!(found[..], [Finding::Stalled { call, .. }] if call.plugin() == 1),
            "{found:?}"
        );
        drop(inner);
        let found = observer.poll(t0 + THRESHOLD);
        assert!(matches!(found[..], [Finding::Returned { call, .. }] if call.plugin() == 1));
        drop(outer);
        assert_eq!(slot.current.load(Ordering::Relaxed), 0);
    }

    fn shared() -> Arc<Shared> {
        let limits = Limits {
            clock: Default::default(),
            hold_deadline: None,
            hold_report: None,
            retry_limit: 1,
        };
        Arc::new(Shared::new(
            Vec::new(),
            limits,
            HostLog::new(LogEcho::None, Default::default()),
        ))
    }

    /// Waits (at most 10 s) for a log line containing `needle`.
    fn wait_for(shared: &Shared, needle: &str) {
        let start = Instant::now();
        while !shared
            .log
            .since(0, None)
            .iter()
            .any(|r| r.text.contains(needle))
        {
            assert!(start.elapsed() < Duration::from_secs(10), "no {needle:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_thread_reports_and_stops() {
        let shared = shared();
        let slot = Arc::new(CallSlot::new(0));
        let mut watchdog = Watchdog::start(
            Arc::clone(&shared),
            vec![Arc::clone(&slot)],
            Duration::from_millis(20),
        )
        .unwrap();
        let guard = slot.enter(0, CallSite::FdCallback);
        wait_for(
            &shared,
            "worker 0: plugin (unknown) has been inside an fd callback for",
        );
        drop(guard);
        watchdog.stop();
        wait_for(
            &shared,
            "worker 0: plugin (unknown) returned from an fd callback after",
        );
        assert_eq!(shared.counters.snapshot().worker_stalls, 1);
    }

    #[test]
    fn stopping_joins_the_thread_without_hanging() {
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = shared();
        std::thread::spawn(move || {
            let slot = Arc::new(CallSlot::new(0));
            let hour = Duration::from_secs(3600);
            let mut watchdog = Watchdog::start(shared, vec![slot], hour).unwrap();
            watchdog.stop();
            let _ = tx.send(());
        });
        // A hang fails the test instead of hanging it.
        assert!(
            rx.recv_timeout(Duration::from_secs(10)).is_ok(),
            "stop hung"
        );
    }
}
