//! The worker's clock as mq-host's test host runs it: a virtual clock that
//! jumps ahead while the worker is idle. The host table's `clock_offset`
//! says how far; `hold_clock` keeps it from jumping while a
//! `spawn_blocking` job runs. In MailerQ (and on mq-host's real clock) the
//! offset is 0 and no hold is taken.

use crate::executor::current_context;
use crate::host::host;
use crate::sys::MQ_Context;
use std::cell::Cell;
use std::ffi::c_void;
use std::time::{Duration, Instant};

thread_local! {
    /// The context of the synchronous hook running on this thread (null
    /// outside one); read by [`now`] only.
    static SYNC_HOOK: Cell<*mut MQ_Context> = const { Cell::new(std::ptr::null_mut()) };
}

/// Marks the context of a synchronous hook call for [`now`] while it
/// lives, and restores the previous one after (also when the hook
/// unwinds). It does not make the hook a hook future: `sleep` and the
/// sockets still refuse to run there.
pub(crate) struct SyncHook(*mut MQ_Context);

impl SyncHook {
    /// Enters `ctx`, a live context for the duration of the hook call.
    #[inline(always)]
    pub(crate) fn enter(ctx: *mut MQ_Context) -> SyncHook {
        SyncHook(SYNC_HOOK.with(|c| c.replace(ctx)))
    }
}

impl Drop for SyncHook {
    #[inline(always)]
    fn drop(&mut self) {
        let _ = SYNC_HOOK.try_with(|c| c.set(self.0));
    }
}

/// The worker's now: [`Instant::now`] plus the host's clock offset of the
/// context whose hook future (or synchronous hook) runs; no offset outside
/// one.
pub(crate) fn now() -> Instant {
    let now = Instant::now();
    let Some(offset) = host().clock_offset else {
        return now;
    };
    let ctx = match current_context() {
        Some(ctx) => ctx.as_raw(),
        None => SYNC_HOOK.with(Cell::get),
    };
    if ctx.is_null() {
        return now;
    }
    // SAFETY: the live context of this thread's hook future or of the
    // synchronous hook call running on it.
    let offset = Duration::from_nanos(unsafe { offset(ctx) });
    now.checked_add(offset).unwrap_or(now)
}

/// Keeps a test host's virtual clock from jumping while it lives (it may
/// be dropped on any thread); does nothing on a real clock.
pub(crate) struct ClockHold(*mut c_void);

// SAFETY: the host's hold is released by `release_clock`, which the host
// table allows from any thread; the pointer is never dereferenced here.
unsafe impl Send for ClockHold {}
// SAFETY: `&ClockHold` allows nothing.
unsafe impl Sync for ClockHold {}

impl ClockHold {
    /// Takes a hold of the clock of the context whose hook future runs.
    pub(crate) fn take() -> ClockHold {
        let raw = match (current_context(), host().hold_clock) {
            // SAFETY: a live context of this thread's hook future.
            (Some(ctx), Some(hold)) => unsafe { hold(ctx.as_raw()) },
            _ => std::ptr::null_mut(),
        };
        ClockHold(raw)
    }
}

impl Drop for ClockHold {
    fn drop(&mut self) {
        if let (false, Some(release)) = (self.0.is_null(), host().release_clock) {
            // SAFETY: a hold `hold_clock` gave, released once (here).
            unsafe { release(self.0) };
        }
    }
}
