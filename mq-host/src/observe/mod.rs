//! What the host reports: its log (what plugins write with `MQ_log`, and
//! the host's own lines) and its counters.

mod counters;
mod escape;
mod log;

pub use counters::CounterSnapshot;
pub(crate) use counters::Counters;
pub use escape::escape_controls;
pub(crate) use log::{CallerScope, HostLog, LogLimits};
pub use log::{
    LogEcho, LogRecord, Priority, Source, DEFAULT_LOG_MAX_BYTES, DEFAULT_LOG_RECORD_MAX,
};

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Prints `line` on stderr as one line, escaped (for reports made when no
/// host log exists).
pub(crate) fn eprint_line(line: &str) {
    eprintln!("{}", escape_controls(line));
}

/// A panic's message; the payload is dropped inside a boundary of its own
/// (a payload whose `Drop` panics is leaked instead of aborting).
pub(crate) fn panic_text(payload: Box<dyn Any + Send>) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    };
    drop_payload(payload);
    text
}

/// Drops a panic payload; a `Drop` that panics again is caught, a few
/// times, and then the last payload is leaked rather than looping.
fn drop_payload(mut payload: Box<dyn Any + Send>) {
    for _ in 0..8 {
        match catch_unwind(AssertUnwindSafe(move || drop(payload))) {
            Ok(()) => return,
            Err(again) => payload = again,
        }
    }
    std::mem::forget(payload);
}
