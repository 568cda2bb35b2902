//! Low-level control, for plugins that manage the resume themselves the C
//! way (and for the framework's own tests).
//!
//! Most plugins never need this: return a [`Flow`] instead.

use crate::host::host;
use crate::sys::MQ_Connection;
use crate::Flow;

/// Returned by a hook that took control itself: the hook returns `true` to
/// the host and the plugin promises to call [`resume`] exactly once later,
/// from the event loop of the connection's worker.
#[derive(Debug)]
pub struct ManualControl(());

impl ManualControl {
    /// Takes control of the current chain.
    ///
    /// # Safety
    /// The caller must arrange exactly one [`resume`] for the connection
    /// of this hook call, from the worker's event loop (not inside the hook,
    /// not from another thread), while the connection lives. Anything else
    /// leaks the message or corrupts the host, as in C.
    pub unsafe fn take() -> ManualControl {
        ManualControl(())
    }
}

impl crate::flow::HookReturn for ManualControl {
    fn into_outcome(self) -> crate::flow::Outcome {
        crate::flow::Outcome::Manual
    }
}

/// Hands control back to the host: `MQ_continue`, `MQ_complete` or
/// `MQ_retry` for `flow`.
///
/// # Safety
/// `connection` must be a connection whose chain this plugin holds, and the
/// call must happen on its worker's event loop (mq-host refuses and logs
/// anything else; MailerQ may not).
pub unsafe fn resume(connection: *mut MQ_Connection, flow: Flow) {
    // SAFETY: the caller's promise.
    unsafe {
        match flow {
            Flow::Continue => host().api.continue_(connection),
            Flow::Complete => host().api.complete(connection),
            Flow::Retry => host().api.retry(connection),
        }
    }
}
