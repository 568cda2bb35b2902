//! Table-only extensions for the worker's clock, which a Rust plugin needs
//! under virtual time (`HostBuilder::virtual_time`): the clock's offset
//! (for `time::Interval`) and clock holds (for `task::spawn_blocking`).
//! On the real clock the offset is 0 and no hold is given.

use super::{context, host_call};
use crate::runtime::event_loop::{ClockHolds, ClockMode};
use mq_abi::sys::MQ_Context;
use std::ffi::c_void;
use std::sync::Arc;

/// How far the clock of `ctx`'s worker is ahead of the real clock, in
/// nanoseconds (0 on the real clock, and for a refused context).
pub(super) unsafe extern "C" fn clock_offset(ctx: *mut MQ_Context) -> u64 {
    host_call(
        "clock_offset",
        || 0,
        || {
            context("clock_offset", ctx).map_or(0, |(w, _)| {
                u64::try_from(w.ev.clock_offset().as_nanos()).unwrap_or(u64::MAX)
            })
        },
    )
}

/// Keeps the virtual clock of `ctx`'s worker from jumping until the
/// returned hold is given to [`release_clock`] (from any thread); NULL on
/// the real clock (nothing to hold) and for a refused context.
pub(super) unsafe extern "C" fn hold_clock(ctx: *mut MQ_Context) -> *mut c_void {
    host_call("hold_clock", std::ptr::null_mut, || {
        let Some((w, _)) = context("hold_clock", ctx) else {
            return std::ptr::null_mut();
        };
        if w.ev.clock_mode() != ClockMode::Virtual {
            return std::ptr::null_mut();
        }
        let holds = w.ev.clock_holds();
        holds.take();
        let remote = w.ev.remote();
        Arc::into_raw(Arc::new(Hold { holds, remote }))
            .cast_mut()
            .cast()
    })
}

/// Releases a hold of [`hold_clock`] and wakes its loop, so that it looks
/// at its clock again. NULL is ignored.
pub(super) unsafe extern "C" fn release_clock(hold: *mut c_void) {
    if hold.is_null() {
        return;
    }
    host_call(
        "release_clock",
        || (),
        || {
            // SAFETY: `hold` came from `hold_clock` (the table's contract:
            // released once), which made it with `Arc::into_raw`.
            let hold = unsafe { Arc::from_raw(hold.cast_const().cast::<Hold>()) };
            hold.holds.release();
            hold.remote.post(Box::new(|| {}));
        },
    )
}

/// A clock hold given to a plugin.
struct Hold {
    holds: Arc<ClockHolds>,
    remote: crate::runtime::event_loop::LoopRemote,
}
