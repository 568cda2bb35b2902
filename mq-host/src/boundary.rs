//! The host's panic boundary: no panic unwinds out of an `extern "C"`
//! function the host exports, nor out of a worker's loop.
//!
//! A panic here is a host bug: it is logged (critical) and counted
//! (`host_panics`), and the function returns a neutral value.

use crate::counters::Counters;
use crate::hostlog::{HostLog, Priority, Source};
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs the body of exported host function `function`; on a panic, reports
/// it and returns `neutral()`.
pub(crate) fn host_call<R>(
    function: &'static str,
    neutral: impl FnOnce() -> R,
    body: impl FnOnce() -> R,
) -> R {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(panic) => {
            let text = format!(
                "host bug: {function} panicked: {}; it returned a neutral value",
                panic_text(panic)
            );
            // Reporting must not panic again inside the C call.
            let _ = catch_unwind(AssertUnwindSafe(|| report(text)));
            neutral()
        }
    }
}

fn report(text: String) {
    match crate::worker::current() {
        Some(w) => {
            Counters::bump(&w.shared.counters.host_panics);
            w.log(Priority::Critical, text);
        }
        None => match HostLog::fallback() {
            Some(log) => log.write(None, Priority::Critical, Source::Host, text),
            None => eprintln!("mq-host: {text}"),
        },
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Bomb;

    impl Drop for Bomb {
        fn drop(&mut self) {
            std::panic::panic_any(Bomb);
        }
    }

    #[test]
    fn a_panicking_body_returns_the_neutral_value() {
        assert_eq!(host_call("MQ_test", || 7, || panic!("boom")), 7);
        assert_eq!(host_call("MQ_test", || 7, || 3), 3);
    }

    #[test]
    fn a_payload_whose_drop_panics_is_contained() {
        let text = host_call("MQ_test", || "neutral", || std::panic::panic_any(Bomb));
        assert_eq!(text, "neutral");
    }
}
