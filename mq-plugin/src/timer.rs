//! One-shot timers on the worker's event loop (`MQ_startTimer`).
//!
//! Every running timer is also known to its context's [`TimerRegistry`]:
//! at `mq_context_cleanup` the framework stops the timers still running
//! and drops their callbacks (each in a panic boundary of its own), so
//! nothing a plugin scheduled outlives its context or leaks.

use crate::boundary::{catch, guard_callback};
use crate::handles::Context;
use crate::host::host;
use crate::sys::MQ_Timer;
use crate::HostError;
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::rc::{Rc, Weak};
use std::time::Duration;

struct TimerState {
    done: Cell<bool>,
    raw: Cell<*mut MQ_Timer>,
    callback: RefCell<Option<Box<dyn FnOnce()>>>,
}

impl TimerState {
    /// Stops the host's timer if it has not fired; takes back the
    /// reference the host held, and returns the callback to drop.
    fn stop(self: &Rc<Self>) -> Option<Box<dyn FnOnce()>> {
        if self.done.replace(true) {
            return None;
        }
        // SAFETY: the timer has not fired, so the host still knows it.
        unsafe { host().api.stop_timer(self.raw.get()) };
        let callback = self.callback.borrow_mut().take();
        // SAFETY: the host will not call `fire`; take its reference back.
        drop(unsafe { Rc::from_raw(Rc::as_ptr(self)) });
        callback
    }
}

/// A running one-shot timer. Dropping the handle does not stop the timer;
/// call [`Timer::stop`] for that.
pub struct Timer {
    state: Rc<TimerState>,
}

/// The running timers of one context.
#[derive(Default)]
pub(crate) struct TimerRegistry {
    timers: RefCell<Vec<Weak<TimerState>>>,
}

impl TimerRegistry {
    fn add(&self, state: &Rc<TimerState>) {
        let mut timers = self.timers.borrow_mut();
        // Forget fired and stopped ones now and then (amortized).
        if timers.len() >= 32 && timers.len().is_power_of_two() {
            timers.retain(|t| t.upgrade().is_some_and(|t| !t.done.get()));
        }
        timers.push(Rc::downgrade(state));
    }

    /// Stops every timer still running and drops its callback.
    pub(crate) fn stop_all(&self) {
        let timers = std::mem::take(&mut *self.timers.borrow_mut());
        for state in timers.iter().filter_map(Weak::upgrade) {
            if let Some(callback) = state.stop() {
                if let Err(message) = catch(move || drop(callback)) {
                    crate::log::log_text(
                        crate::sys::MQ_CRIT,
                        &format!(
                            "[{}] dropping a timer callback at context cleanup panicked: {message}",
                            crate::log::plugin_name()
                        ),
                    );
                }
            }
        }
    }
}

impl Context {
    /// Runs `callback` on this worker's event loop after `after` (a
    /// duration too long for the host waits as long as the host can: 365
    /// days in mq-host).
    /// A timer still running at `mq_context_cleanup` is stopped then, and
    /// its callback dropped.
    ///
    /// ```no_run
    /// # use mq_plugin::Context;
    /// # fn f(ctx: &Context) -> Result<(), mq_plugin::HostError> {
    /// let timer = ctx.start_timer(std::time::Duration::from_millis(50), || {
    ///     log::info!("fired");
    /// })?;
    /// timer.stop();
    /// # Ok(()) }
    /// ```
    pub fn start_timer(
        &self,
        after: Duration,
        callback: impl FnOnce() + 'static,
    ) -> Result<Timer, HostError> {
        let state = Rc::new(TimerState {
            done: Cell::new(false),
            raw: Cell::new(std::ptr::null_mut()),
            callback: RefCell::new(Some(Box::new(callback))),
        });
        let data = Rc::into_raw(state.clone()) as *mut c_void;
        // SAFETY: live context; `data` is an Rc the trampoline takes back.
        let raw = unsafe {
            host()
                .api
                .start_timer(self.as_raw(), seconds(after), Some(fire), data)
        };
        if raw.is_null() {
            // SAFETY: the host did not keep `data`; take the reference back.
            drop(unsafe { Rc::from_raw(data as *const TimerState) });
            return Err(HostError("MQ_startTimer returned no timer"));
        }
        state.raw.set(raw);
        self.store_for_runtime().runtime.timers.add(&state);
        Ok(Timer { state })
    }
}

/// A duration as the C API's float seconds, saturating at the longest
/// delay mq-host supports ([`mq_abi::MAX_TIMER_SECONDS`], 365 days), which
/// the host would otherwise clamp and report as a misuse.
pub(crate) fn seconds(after: Duration) -> f32 {
    after.as_secs_f32().min(mq_abi::MAX_TIMER_SECONDS)
}

unsafe extern "C" fn fire(data: *mut c_void) {
    // SAFETY: `data` is the Rc given to MQ_startTimer; a one-shot timer
    // fires at most once, so this takes that reference back exactly once.
    let state = unsafe { Rc::from_raw(data as *const TimerState) };
    state.done.set(true);
    let callback = state.callback.borrow_mut().take();
    if let Some(callback) = callback {
        guard_callback("a timer callback", callback);
    }
}

impl Timer {
    /// Whether the timer fired or was stopped.
    pub fn is_done(&self) -> bool {
        self.state.done.get()
    }

    /// Stops the timer before it fires; returns false if it already fired
    /// or was stopped.
    pub fn stop(&self) -> bool {
        match self.state.stop() {
            Some(callback) => {
                drop(callback);
                true
            }
            None => false,
        }
    }

    /// Makes the timer fire `after` from now instead; returns false if it
    /// already fired or was stopped.
    pub fn reset(&self, after: Duration) -> bool {
        if self.state.done.get() {
            return false;
        }
        // SAFETY: the timer has not fired, so the host still knows it.
        unsafe { host().api.reset_timer(self.state.raw.get(), seconds(after)) };
        true
    }
}

impl std::fmt::Debug for Timer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timer")
            .field("done", &self.is_done())
            .finish()
    }
}
