//! The one panic boundary used by every function the runtime exports to C.
//!
//! A panic must never unwind into the host: it is caught here, and the
//! caller turns it into the hook's fallback.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`, returning `Err(message)` if it panicked. The host is told
/// (`mq-host` counts plugin panics); the caller logs the message.
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = panic_message(payload);
        count_panic();
        message
    })
}

fn count_panic() {
    if let Some(panicked) = crate::host::host().panicked {
        // SAFETY: mq-host's counter function, without arguments.
        unsafe { panicked() };
    }
}

/// Runs a callback from C whose result has nowhere to go: a panic is logged.
pub(crate) fn guard_callback(what: &str, f: impl FnOnce()) {
    if let Err(message) = catch(f) {
        crate::log::log_text(
            crate::sys::MQ_CRIT,
            &format!("[{}] {what} panicked: {message}", crate::log::plugin_name()),
        );
    }
}

pub(crate) use mq_abi::panic_text as panic_message;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_messages() {
        assert_eq!(catch(|| 3), Ok(3));
        assert_eq!(
            catch(|| panic!("boom {}", 1)),
            Err::<(), _>("boom 1".to_owned())
        );
        assert_eq!(
            catch(|| panic!("static")),
            Err::<(), _>("static".to_owned())
        );
        assert_eq!(
            catch(|| std::panic::panic_any(5u8)),
            Err::<(), _>("a panic with a non-string payload".to_owned())
        );
    }

    /// A payload whose `Drop` panics, with a payload like itself.
    struct Bomb;

    impl Drop for Bomb {
        fn drop(&mut self) {
            std::panic::panic_any(Bomb);
        }
    }

    #[test]
    fn a_payload_whose_drop_panics_stays_inside() {
        assert_eq!(
            catch(|| std::panic::panic_any(Bomb)),
            Err::<(), _>("a panic with a non-string payload".to_owned())
        );
    }
}
