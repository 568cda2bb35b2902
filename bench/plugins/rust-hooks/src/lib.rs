//! The Rust side of the hook-cost bench: the twin of
//! `bench/plugins/c-hooks/hooks.c`, hook for hook, doing the same work the
//! way a Rust author writes it with `mq-plugin`.
//!
//! - `smtp_in_rcptto` (sync): allow-list by domain: the address's email, a
//!   suffix check, go on (an address outside the list gets a 550).
//! - `smtp_in_mailfrom`: an `async fn` with nothing to do.
//! - `smtp_in_data`: `sleep(Duration::ZERO).await`, then go on.
//! - `smtp_in_connect`: `sleep(1 ms).await`, then go on.
//! - `smtp_in_secure`: `readable(fd).await` on an eventfd that always is.
//! - `smtp_in_authenticate`: `sleep(2 s).await` (the held-memory case).

use mq_plugin::io::readable;
use mq_plugin::prelude::*;
use mq_plugin::time::sleep;
use std::os::fd::RawFd;
use std::sync::OnceLock;
use std::time::Duration;

mq_plugin::declare_plugin!();

/// An eventfd that is always readable: written once, never read.
fn ready_fd() -> RawFd {
    static FD: OnceLock<RawFd> = OnceLock::new();
    // SAFETY: eventfd takes no pointers; the fd is never closed.
    *FD.get_or_init(|| unsafe { libc::eventfd(1, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
}

#[mq_hook(smtp_in_rcptto)]
fn allow(conn: &Connection, rcpt: &Address) -> Flow {
    match rcpt.email() {
        Some(email) if email.len() > 12 && email.ends_with("@example.org") => Flow::Continue,
        _ => {
            conn.send(b"550 5.7.1 not here\r\n");
            Flow::Complete
        }
    }
}

#[mq_hook(smtp_in_mailfrom)]
async fn nothing() -> Flow {
    Flow::Continue
}

#[mq_hook(smtp_in_data)]
async fn zero_timer() -> Flow {
    sleep(Duration::ZERO).await;
    Flow::Continue
}

#[mq_hook(smtp_in_connect)]
async fn real_timer() -> Flow {
    sleep(Duration::from_millis(1)).await;
    Flow::Continue
}

#[mq_hook(smtp_in_secure)]
async fn fd_ready() -> Flow {
    let _ = readable(ready_fd()).await;
    Flow::Continue
}

#[mq_hook(smtp_in_authenticate)]
async fn held() -> Flow {
    sleep(Duration::from_secs(2)).await;
    Flow::Continue
}
