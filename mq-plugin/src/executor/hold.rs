//! Ending a hold from outside the future (`cancel_hold`, `smtp_in_close`)
//! and the synchronous hooks' scheduled resumes: the context's runtime
//! slot.

use super::{Executor, FxMap};
use crate::host::host;
use crate::sys::{MQ_Connection, MQ_Context};
use crate::Context;
use std::cell::RefCell;
use std::ffi::c_void;

/// Ends this plugin's hold of `conn` (the host's `cancel_hold`): a pending
/// hook future is dropped, or a scheduled resume of a synchronous hook is
/// stopped. Either way the take-over is never resumed. False if the plugin
/// holds nothing it can cancel there.
///
/// # Safety
/// `ctx` and `conn` are this plugin's live context and connection.
pub(crate) unsafe fn cancel_hold(ctx: *mut MQ_Context, conn: *mut MQ_Connection) -> bool {
    // SAFETY: the caller's promise.
    let context = unsafe { Context::from_raw(ctx) };
    let Some(runtime) = context.runtime_if_any() else {
        return false;
    };
    if let Some(meta) = runtime.executor.get().and_then(|e| e.cancel_hook(conn)) {
        crate::__private_v1::after_async_hook(meta, conn);
        return true;
    }
    runtime.cancel_scheduled(conn)
}

/// Drops the pending hook of `conn` before its connection goes away
/// (`smtp_in_close`), so no per-connection data is freed under a borrow.
///
/// # Safety
/// As [`cancel_hold`].
pub(crate) unsafe fn drop_pending_hook(ctx: *mut MQ_Context, conn: *mut MQ_Connection) {
    // SAFETY: the caller's promise.
    let context = unsafe { Context::from_raw(ctx) };
    let Some(runtime) = context.runtime_if_any() else {
        return;
    };
    if let Some(meta) = runtime.executor.get().and_then(|e| e.cancel_hook(conn)) {
        crate::log::log_text(
            crate::sys::MQ_CRIT,
            &format!(
                "[{}] hook {} (fn {}) was still pending when its connection closed; \
                 it was dropped without resuming",
                meta.plugin, meta.hook.name, meta.function
            ),
        );
    }
    runtime.cancel_scheduled(conn);
}

/// A synchronous hook's `Complete` or `Retry` on its way to the host from
/// a zero-delay timer (never inside the hook call).
struct ScheduledResume {
    ctx: *mut MQ_Context,
    conn: *mut MQ_Connection,
    flow: crate::Flow,
}

/// The context data slot's runtime part: what the framework itself keeps
/// per context, all released at `mq_context_cleanup`.
#[derive(Default)]
pub(crate) struct RuntimeSlot {
    pub(crate) executor: std::cell::OnceCell<Executor>,
    /// Scheduled resumes by connection: the timer and its boxed data.
    scheduled: RefCell<FxMap<usize, (*mut crate::sys::MQ_Timer, *mut ScheduledResume)>>,
    /// The plugin's running timers, stopped (and their callbacks dropped)
    /// at cleanup.
    pub(crate) timers: crate::timer::TimerRegistry,
}

impl RuntimeSlot {
    /// Takes control and resumes `conn` with `flow` from a zero-delay
    /// timer; false if the host gave no timer.
    pub(crate) fn schedule_resume(
        &self,
        ctx: *mut MQ_Context,
        conn: *mut MQ_Connection,
        flow: crate::Flow,
    ) -> bool {
        let pending = Box::into_raw(Box::new(ScheduledResume { ctx, conn, flow }));
        // SAFETY: live context; the trampoline takes `pending` back.
        let timer = unsafe {
            host()
                .api
                .start_timer(ctx, 0.0, Some(resume_from_loop), pending.cast())
        };
        if timer.is_null() {
            // SAFETY: the host did not keep `pending`.
            drop(unsafe { Box::from_raw(pending) });
            return false;
        }
        self.scheduled
            .borrow_mut()
            .insert(conn as usize, (timer, pending));
        true
    }

    fn cancel_scheduled(&self, conn: *mut MQ_Connection) -> bool {
        let Some((timer, pending)) = self.scheduled.borrow_mut().remove(&(conn as usize)) else {
            return false;
        };
        // SAFETY: the timer has not fired (firing removes the entry), so the
        // host still knows it; stopped, it never takes `pending` back.
        unsafe {
            host().api.stop_timer(timer);
            drop(Box::from_raw(pending));
        }
        true
    }
}

impl Drop for RuntimeSlot {
    /// Context cleanup: pending hook futures first (they may stop their
    /// own timers), then scheduled resumes, then the plugin's timers.
    fn drop(&mut self) {
        drop(self.executor.take());
        let scheduled: Vec<_> = self.scheduled.borrow_mut().drain().collect();
        for (_, (timer, pending)) in scheduled {
            // SAFETY: as in `cancel_scheduled`.
            unsafe {
                host().api.stop_timer(timer);
                drop(Box::from_raw(pending));
            }
        }
        self.timers.stop_all();
    }
}

unsafe extern "C" fn resume_from_loop(data: *mut c_void) {
    // SAFETY: `data` is the ScheduledResume boxed by schedule_resume; the
    // one-shot timer fires once, and its entry is removed here.
    let pending = unsafe { Box::from_raw(data.cast::<ScheduledResume>()) };
    // SAFETY: the context of this plugin, live while its timers fire.
    let context = unsafe { Context::from_raw(pending.ctx) };
    if let Some(runtime) = context.runtime_if_any() {
        runtime
            .scheduled
            .borrow_mut()
            .remove(&(pending.conn as usize));
    }
    // SAFETY: this plugin holds the chain of `conn`; we are on its loop.
    unsafe { crate::raw::resume(pending.conn, pending.flow) };
}
