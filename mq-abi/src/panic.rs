//! A caught panic as text, the same on both sides of the ABI: the plugin's
//! framework and the host each catch panics at every `extern "C"` boundary
//! and report them by their message.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A caught panic's message. The payload is dropped inside a boundary of
/// its own: a payload whose `Drop` panics again (`panic_any(Bomb)`) is
/// caught a few times and then leaked, never unwound across `extern "C"`.
pub fn panic_text(payload: Box<dyn Any + Send>) -> String {
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
            panic!("the payload's drop panics too");
        }
    }

    #[test]
    fn messages_and_bombs() {
        let caught = catch_unwind(|| panic!("plain {}", 1)).unwrap_err();
        assert_eq!(panic_text(caught), "plain 1");
        let caught = catch_unwind(|| std::panic::panic_any(Bomb)).unwrap_err();
        assert_eq!(panic_text(caught), "a panic with a non-string payload");
    }
}
