//! What a hook tells the host to do next.

use std::fmt::Display;

/// How the host goes on after a hook.
///
/// | `Flow`     | C equivalent                          | the host then            |
/// |------------|---------------------------------------|--------------------------|
/// | `Continue` | return `false` (or `MQ_continue`)     | calls the next plugin    |
/// | `Complete` | return `true`, later `MQ_complete`    | skips the other plugins  |
/// | `Retry`    | return `true`, later `MQ_retry`       | restarts from plugin one |
///
/// `Continue` from a synchronous hook costs nothing: the hook returns
/// `false` and the host goes on at once. `Complete` and `Retry` take control
/// and hand it back from the event loop, never inside the hook call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Flow {
    /// Go on with the next plugin.
    #[default]
    Continue,
    /// Skip all remaining plugins for this step.
    Complete,
    /// Restart this step from the first plugin.
    Retry,
}

impl Flow {
    /// The lower-case name (`continue`, `complete`, `retry`).
    pub const fn name(self) -> &'static str {
        match self {
            Flow::Continue => "continue",
            Flow::Complete => "complete",
            Flow::Retry => "retry",
        }
    }
}

impl Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
