//! One-shot timers on the worker's event loop (`MQ_startTimer`).

use crate::boundary::guard_callback;
use crate::handles::Context;
use crate::host::host;
use crate::sys::MQ_Timer;
use crate::HostError;
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::rc::Rc;
use std::time::Duration;

struct TimerState {
    done: Cell<bool>,
    callback: RefCell<Option<Box<dyn FnOnce()>>>,
}

/// A running one-shot timer. Dropping the handle does not stop the timer;
/// call [`Timer::stop`] for that.
pub struct Timer {
    raw: *mut MQ_Timer,
    state: Rc<TimerState>,
}

impl Context {
    /// Runs `callback` on this worker's event loop after `after`.
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
            callback: RefCell::new(Some(Box::new(callback))),
        });
        let data = Rc::into_raw(state.clone()) as *mut c_void;
        // SAFETY: live context; `data` is an Rc the trampoline takes back.
        let raw = unsafe {
            host()
                .api
                .start_timer(self.as_raw(), after.as_secs_f32(), Some(fire), data)
        };
        if raw.is_null() {
            // SAFETY: the host did not keep `data`; take the reference back.
            drop(unsafe { Rc::from_raw(data as *const TimerState) });
            return Err(HostError("MQ_startTimer returned no timer"));
        }
        Ok(Timer { raw, state })
    }
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
        if self.state.done.replace(true) {
            return false;
        }
        // SAFETY: the timer has not fired, so the host still knows it.
        unsafe { host().api.stop_timer(self.raw) };
        self.state.callback.borrow_mut().take();
        // SAFETY: the host will not call `fire`; take its reference back.
        drop(unsafe { Rc::from_raw(Rc::as_ptr(&self.state)) });
        true
    }

    /// Makes the timer fire `after` from now instead; returns false if it
    /// already fired or was stopped.
    pub fn reset(&self, after: Duration) -> bool {
        if self.state.done.get() {
            return false;
        }
        // SAFETY: the timer has not fired, so the host still knows it.
        unsafe { host().api.reset_timer(self.raw, after.as_secs_f32()) };
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
