//! The host's panic boundary: no panic unwinds out of an `extern "C"`
//! function the host exports, nor out of a worker's loop.
//!
//! A panic here is a host bug: it is logged (critical) and counted
//! (`host_panics`), and the function returns a neutral value.

use crate::observe::{panic_text, Counters, HostLog, Priority, Source};
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
    match crate::runtime::worker::current() {
        Some(w) => {
            Counters::bump(&w.shared.counters.host_panics);
            w.log(Priority::Critical, text);
        }
        None => match HostLog::fallback() {
            Some(log) => log.write(None, Priority::Critical, Source::Host, text),
            None => crate::observe::eprint_line(&format!("mq-host: {text}")),
        },
    }
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
