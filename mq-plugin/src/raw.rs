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

/// What a hook returns that decides at run time whether to resume by
/// itself: a [`Flow`], or control taken with [`ManualControl::take`] (so
/// only `unsafe` code can make it mean "manual"). `Result<Control, E>`
/// with `E: Display` is a hook return type too.
#[derive(Debug)]
pub enum Control {
    /// Go on as this flow says.
    Flow(Flow),
    /// The plugin took control and resumes by itself.
    Manual(ManualControl),
}

impl crate::flow::sealed::HookReturnNotImplementableByPlugins for Control {}

impl crate::flow::HookReturn for Control {
    fn into_outcome(self) -> crate::flow::Outcome {
        match self {
            Control::Flow(flow) => crate::flow::Outcome::Flow(flow),
            Control::Manual(_) => crate::flow::Outcome::Manual,
        }
    }
}

impl<E> crate::flow::sealed::HookReturnNotImplementableByPlugins for Result<Control, E> {}

impl<E: std::fmt::Display> crate::flow::HookReturn for Result<Control, E> {
    fn into_outcome(self) -> crate::flow::Outcome {
        match self {
            Ok(control) => control.into_outcome(),
            Err(e) => crate::flow::Outcome::Failed(e.to_string()),
        }
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
