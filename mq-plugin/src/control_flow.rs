//! # The control-flow model, in one page
//!
//! ## What MailerQ does
//!
//! At every event (a `RCPT TO`, a message ready for delivery, ...) the host
//! walks its plugins in file-name order and calls the hook of each plugin
//! that exports it. A hook answers in one of two ways:
//!
//! - **`false`** — "not mine": the host calls the next plugin at once.
//! - **`true`** — "I take control": the host leaves this connection alone
//!   and serves others, until the plugin calls **exactly one** of
//!   `MQ_continue` (next plugin), `MQ_complete` (skip the rest of this
//!   step) or `MQ_retry` (run the step again from the first plugin) — from
//!   the worker's event loop, never from another thread.
//!
//! Everything runs on non-blocking event loops, one per worker thread. A
//! blocking call in a hook stalls every connection of that worker.
//!
//! ## What a Rust hook does instead
//!
//! A hook returns a [`Flow`](crate::Flow); an `async fn` hook returns it
//! when its future completes. The framework turns that into the C protocol:
//!
//! | the hook                                     | C return | later, on the loop       |
//! |----------------------------------------------|----------|--------------------------|
//! | `fn` → `Flow::Continue` or `()`              | `false`  | —                        |
//! | `fn` → `Flow::Complete` / `Flow::Retry`      | `true`   | `MQ_complete` / `MQ_retry`, once |
//! | `async fn`, ready at the first poll with `Continue` | `false` | — (and no allocation) |
//! | `async fn`, pending at the first poll        | `true`   | the matching `MQ_*` once, when it completes |
//! | `Err(e)` or a panic                          | the hook's `fallback` (default continue), logged with plugin, hook and message |
//!
//! The first poll of an async hook happens inside the C call; later polls
//! happen on the loop (a zero-delay host timer wakes the executor; a wake
//! from another thread arrives through an eventfd the executor watches).
//! The resume is never issued inside the hook call and never from another
//! thread. At `mq_context_cleanup` every pending hook future is dropped.
//!
//! ## The same plugin, two ways
//!
//! A tarpit: wait 200 ms before answering each `RCPT TO`, without blocking.
//!
//! | C, callback style | async Rust |
//! |---|---|
//! | `bool mq_smtp_in_rcptto(MQ_Context *ctx, MQ_Connection *c, MQ_Address *a)` | `#[mq_hook(smtp_in_rcptto)]` |
//! | `{ MQ_startTimer(ctx, 0.2f, resume, c);` | `async fn tarpit() -> Flow {` |
//! | `  return true; }` — and hope nothing else resumes `c` | `    sleep(Duration::from_millis(200)).await;` |
//! | `static void resume(void *c) { MQ_continue(c); }` — exactly once, or the message leaks or the host breaks | `    Flow::Continue }` — the framework resumes, exactly once |
//! | state across calls: `malloc` + `MQ_setConnectionData`, and `free` in `mq_smtp_in_close` | `conn.data_or_insert_with(..)`, freed by the framework |
//! | a crash in the hook takes MailerQ down | a panic is caught, logged, and the fallback taken |
//!
//! ```no_run
//! use mq_plugin::prelude::*;
//! use mq_plugin::time::sleep;
//! use std::time::Duration;
//!
//! mq_plugin::declare_plugin!();
//!
//! #[mq_hook(smtp_in_rcptto)]
//! async fn tarpit(rcpt: &Address) -> Flow {
//!     sleep(Duration::from_millis(200)).await;
//!     log::info!("answered {:?} after 200 ms", rcpt.email());
//!     Flow::Continue
//! }
//! # fn main() {}
//! ```
//!
//! ## What waits on the loop
//!
//! - [`time::sleep`](crate::time::sleep), [`time::timeout`](crate::time::timeout),
//!   [`time::interval`](crate::time::interval) — host timers.
//! - [`io::readable`](crate::io::readable) / [`io::writable`](crate::io::writable)
//!   and [`net::TcpStream`](crate::net::TcpStream) (`AsyncRead`/`AsyncWrite`)
//!   — host fd watchers.
//! - [`task::spawn_blocking`](crate::task::spawn_blocking) — CPU or blocking
//!   work on a small plugin-owned pool, resolved on the loop.
//! - [`Context::spawn_local`](crate::Context::spawn_local) — background work
//!   on the loop, cancelled at context cleanup.
//!
//! All of them use only MailerQ's `MQ_*` loop functions, so they work in
//! MailerQ itself as well as in `mq-host`.
//!
//! ## Lifetimes
//!
//! Handles (`&Context`, `&Connection`, `&Address`, `&mut Message`, ...) are
//! borrowed for the hook call — for an async hook, until its future
//! completes, which is exactly as long as the plugin holds control. They
//! cannot be stored elsewhere or sent to another thread: that is a compile
//! error, not a crash in the host.
