//! What a hook tells the host to do next.

use std::fmt::Display;

pub use mq_abi::Flow;

/// What a hook body produced, before the fallback is applied.
#[doc(hidden)]
#[derive(Debug)]
pub enum Outcome {
    /// A flow chosen by the hook.
    Flow(Flow),
    /// The hook failed; the message is logged and the fallback taken.
    Failed(String),
    /// The hook took control itself (see [`crate::raw::ManualControl`]).
    Manual,
}

/// Keeps the return traits to mq-plugin's own types: the supertraits below
/// cannot be named outside the crate, so a plugin cannot implement
/// [`HookReturn`] or [`LifecycleReturn`]. A plugin's own `HookReturn` impl
/// could hand the runtime an outcome that takes control and never resumes
/// (the host would hang), which only `unsafe` `ManualControl::take` may do.
/// The names are what rustc shows on such an impl.
pub(crate) mod sealed {
    use super::Flow;
    use crate::raw::ManualControl;

    /// The supertrait of [`HookReturn`](super::HookReturn).
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot implement `HookReturn`: the types an SMTP hook returns are fixed by mq-plugin",
        label = "a plugin cannot implement `HookReturn`: it is sealed, so that only `unsafe` code can take control from the host",
        note = "return `Flow`, `()`, `Result<Flow, E>` or `Result<(), E>` with `E: Display`, converting your type in the hook",
        note = "a hook that resumes the host itself returns `mq_plugin::raw::ManualControl`, from `ManualControl::take()` in an `unsafe` block"
    )]
    pub trait HookReturnNotImplementableByPlugins {}

    impl HookReturnNotImplementableByPlugins for Flow {}
    impl HookReturnNotImplementableByPlugins for () {}
    impl<E> HookReturnNotImplementableByPlugins for Result<Flow, E> {}
    impl<E> HookReturnNotImplementableByPlugins for Result<(), E> {}
    impl HookReturnNotImplementableByPlugins for ManualControl {}

    /// The supertrait of [`LifecycleReturn`](super::LifecycleReturn).
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot implement `LifecycleReturn`: the types a lifecycle hook returns are fixed by mq-plugin",
        label = "a plugin cannot implement `LifecycleReturn`: it is sealed",
        note = "return `()` or `Result<(), E>` with `E: Display`, converting your type in the hook"
    )]
    pub trait LifecycleReturnNotImplementableByPlugins {}

    impl LifecycleReturnNotImplementableByPlugins for () {}
    impl<E> LifecycleReturnNotImplementableByPlugins for Result<(), E> {}
}

/// Types an SMTP hook may return: [`Flow`], `()` (continue),
/// `Result<Flow, E>` and `Result<(), E>` with `E: Display`.
///
/// An `Err` is logged through `MQ_log` with the plugin, hook and message,
/// and the hook's fallback flow (default `Continue`) is taken.
///
/// The trait is sealed: a plugin cannot implement it. A hook that resumes
/// the host itself returns [`ManualControl`](crate::raw::ManualControl).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a return type an SMTP hook can have",
    label = "return `Flow`, `()`, `Result<Flow, E>` or `Result<(), E>` with `E: Display`",
    note = "`Flow::Continue` lets the host go on; `Flow::Complete` skips later plugins; `Flow::Retry` restarts the step"
)]
pub trait HookReturn: sealed::HookReturnNotImplementableByPlugins {
    /// Converts the value into an outcome.
    #[doc(hidden)]
    fn into_outcome(self) -> Outcome;
}

impl HookReturn for Flow {
    fn into_outcome(self) -> Outcome {
        Outcome::Flow(self)
    }
}

impl HookReturn for () {
    fn into_outcome(self) -> Outcome {
        Outcome::Flow(Flow::Continue)
    }
}

impl<E: Display> HookReturn for Result<Flow, E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(flow) => Outcome::Flow(flow),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

impl<E: Display> HookReturn for Result<(), E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(()) => Outcome::Flow(Flow::Continue),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

/// Types a lifecycle hook (`initialize`, `cleanup`, `context_initialize`,
/// `context_cleanup`) may return: `()` or `Result<(), E>` with `E: Display`.
/// An `Err` is logged as critical.
///
/// The trait is sealed: a plugin cannot implement it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a return type a lifecycle hook can have",
    label = "return `()` or `Result<(), E>` with `E: Display`",
    note = "lifecycle hooks cannot take control, so they do not return a `Flow`"
)]
pub trait LifecycleReturn: sealed::LifecycleReturnNotImplementableByPlugins {
    /// `Err(message)` when the hook failed.
    #[doc(hidden)]
    fn into_result(self) -> Result<(), String>;
}

impl LifecycleReturn for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: Display> LifecycleReturn for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}
