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

/// The timers of [`crate::time::Sleep`]: entries of a per-thread slab,
/// named by index and generation, so a sleep allocates nothing once the
/// slab has grown, and the host's timer carries the name as its `data`
/// (an integer, never a pointer: a late or stray fire finds a newer
/// generation, or nothing, and is ignored).
pub(crate) mod sleeps {
    use super::seconds;
    use crate::host::host;
    use crate::sys::{MQ_Context, MQ_Timer};
    use std::cell::RefCell;
    use std::ffi::c_void;
    use std::task::{Poll, Waker};
    use std::time::Duration;

    /// A sleep's entry in this thread's slab.
    #[derive(Debug)]
    pub(crate) struct SleepTimer {
        index: u32,
        generation: u32,
    }

    enum State {
        Free,
        Armed {
            raw: *mut MQ_Timer,
            ctx: *mut MQ_Context,
            waker: Option<Waker>,
        },
        Fired,
    }

    struct Slot {
        generation: u32,
        state: State,
    }

    #[derive(Default)]
    struct Slab {
        slots: Vec<Slot>,
        free: Vec<u32>,
    }

    impl Slab {
        fn slot(&mut self, t: &SleepTimer) -> Option<&mut Slot> {
            self.slots
                .get_mut(t.index as usize)
                .filter(|s| s.generation == t.generation)
        }

        /// Frees a slot: a new generation, so old names miss.
        fn release(&mut self, index: u32) -> State {
            let slot = &mut self.slots[index as usize];
            slot.generation = slot.generation.wrapping_add(1);
            self.free.push(index);
            std::mem::replace(&mut slot.state, State::Free)
        }
    }

    impl Drop for Slab {
        /// Thread exit: wakers dropped with the slab already gone (a task
        /// freed here may drop sleeps, which then find no slab).
        fn drop(&mut self) {
            let slots = std::mem::take(&mut self.slots);
            drop(slots);
        }
    }

    thread_local! {
        static SLAB: RefCell<Slab> = RefCell::new(Slab::default());
    }

    fn data_of(t: &SleepTimer) -> *mut c_void {
        ((u64::from(t.generation) << 32) | u64::from(t.index)) as usize as *mut c_void
    }

    /// Starts a sleep's host timer on `ctx`'s loop; `None` if the host gave
    /// no timer.
    pub(crate) fn start(
        ctx: *mut MQ_Context,
        after: Duration,
        waker: &Waker,
    ) -> Option<SleepTimer> {
        // Cloned before the slab is borrowed: a waker of another executor
        // may run any code.
        let waker = waker.clone();
        SLAB.try_with(|slab| {
            let mut slab = slab.borrow_mut();
            let index = match slab.free.pop() {
                Some(index) => index,
                None => {
                    let index = u32::try_from(slab.slots.len()).ok()?;
                    slab.slots.push(Slot {
                        generation: 0,
                        state: State::Free,
                    });
                    index
                }
            };
            let timer = SleepTimer {
                index,
                generation: slab.slots[index as usize].generation,
            };
            // The host's MQ_startTimer does not call into the plugin; if
            // some host did, its call would find the slab borrowed and
            // panic (caught), never alias it.
            // SAFETY: a live context (the caller's poll runs under it);
            // `data` is an integer that `fire` decodes.
            let raw = unsafe {
                host()
                    .api
                    .start_timer(ctx, seconds(after), Some(fire), data_of(&timer))
            };
            if raw.is_null() {
                slab.release(index);
                return None;
            }
            slab.slots[index as usize].state = State::Armed {
                raw,
                ctx,
                waker: Some(waker),
            };
            Some(timer)
        })
        .ok()
        .flatten()
    }

    /// Whether the sleep's timer fired (the slot is then freed; `None` from
    /// then on). A slot that is gone (stopped at context cleanup) counts as
    /// fired. Otherwise remembers `waker`.
    pub(crate) fn poll(timer: &mut Option<SleepTimer>, waker: &Waker) -> Poll<()> {
        let Some(t) = timer else {
            return Poll::Ready(());
        };
        enum Seen {
            Done,
            Same,
            Other,
        }
        let seen = SLAB
            .try_with(|slab| {
                let mut slab = slab.borrow_mut();
                match slab.slot(t).map(|s| &s.state) {
                    Some(State::Armed { waker: Some(w), .. }) if w.will_wake(waker) => Seen::Same,
                    Some(State::Armed { .. }) => Seen::Other,
                    Some(State::Fired) => {
                        slab.release(t.index);
                        Seen::Done
                    }
                    Some(State::Free) | None => Seen::Done,
                }
            })
            .unwrap_or(Seen::Done);
        match seen {
            Seen::Done => {
                *timer = None;
                Poll::Ready(())
            }
            Seen::Same => Poll::Pending,
            Seen::Other => {
                // Clone and drop wakers outside the slab's borrow: a waker
                // of another executor may run any code.
                let new = Some(waker.clone());
                let old = SLAB.with(|slab| match slab.borrow_mut().slot(t) {
                    Some(Slot {
                        state: State::Armed { waker, .. },
                        ..
                    }) => std::mem::replace(waker, new),
                    _ => new,
                });
                drop(old);
                Poll::Pending
            }
        }
    }

    /// Stops the sleep's timer if it has not fired, and frees its slot.
    pub(crate) fn cancel(timer: SleepTimer) {
        let state = SLAB
            .try_with(|slab| {
                let mut slab = slab.borrow_mut();
                slab.slot(&timer)?;
                Some(slab.release(timer.index))
            })
            .ok()
            .flatten();
        if let Some(State::Armed { raw, waker, .. }) = state {
            // SAFETY: armed, so the host has not fired it and still knows it.
            unsafe { host().api.stop_timer(raw) };
            drop(waker);
        }
    }

    /// Context cleanup: stops the sleeps still armed on `ctx` (those of
    /// futures that were forgotten rather than dropped) and drops their
    /// wakers.
    pub(crate) fn stop_all(ctx: *mut MQ_Context) {
        let stopped: Vec<State> = SLAB
            .try_with(|slab| {
                let mut slab = slab.borrow_mut();
                let mine: Vec<u32> = slab
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| matches!(s.state, State::Armed { ctx: c, .. } if c == ctx))
                    .map(|(i, _)| i as u32)
                    .collect();
                mine.into_iter().map(|i| slab.release(i)).collect()
            })
            .unwrap_or_default();
        for state in stopped {
            if let State::Armed { raw, waker, .. } = state {
                // SAFETY: armed, so the host still knows it.
                unsafe { host().api.stop_timer(raw) };
                drop(waker);
            }
        }
    }

    unsafe extern "C" fn fire(data: *mut c_void) {
        let data = data as usize as u64;
        let timer = SleepTimer {
            index: data as u32,
            generation: (data >> 32) as u32,
        };
        let waker = SLAB
            .try_with(|slab| {
                let mut slab = slab.borrow_mut();
                let slot = slab.slot(&timer)?;
                match std::mem::replace(&mut slot.state, State::Fired) {
                    State::Armed { waker, .. } => waker,
                    other => {
                        slot.state = other;
                        None
                    }
                }
            })
            .ok()
            .flatten();
        if let Some(waker) = waker {
            super::guard_callback("a sleep's timer", || crate::executor::wake_from_loop(waker));
        }
    }
}
