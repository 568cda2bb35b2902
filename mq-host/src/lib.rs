//! # mq-host: an open MailerQ plugin host
//!
//! Loads MailerQ plugins — C shared objects written against `mailerq.h`,
//! and Rust plugins built with `mq-plugin` — and runs their hooks with
//! MailerQ's exact semantics: plugins in byte order of file name, `false`
//! goes on, `true` holds the chain until exactly one `MQ_continue`,
//! `MQ_complete` or `MQ_retry`. Each worker thread has a real event loop
//! (fd watchers, timers, cross-thread wake-ups) behind `MQ_ioWatch` and
//! `MQ_startTimer`.
//!
//! ```no_run
//! use mq_host::{Direction, Event, Host};
//! use serde_json::json;
//!
//! let host = Host::builder().plugin_dir("plugins").start()?;
//! let result = host.run_event(
//!     Direction::Incoming,
//!     Event::Message(json!({"envelope": "a@example.com", "recipient": "b@example.org", "mime": "Subject: hi\r\n\r\nhello"})),
//! )?;
//! println!("{:?}: {}", result.end, result.message.unwrap());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## SMTP in and out
//!
//! [`Host::serve`] serves real ESMTP with the `smtp_in_*` hooks
//! ([`smtp_in`]) and stores accepted messages durably; [`delivery`] sends
//! the outbox to a relay with `smtp_out_data` and `smtp_out_sent`:
//!
//! ```no_run
//! use mq_host::delivery::{self, DeliveryConfig, Outbox, Until};
//! use mq_host::Host;
//! use serde_json::json;
//!
//! let host = Host::builder().plugin_dir("plugins").start()?;
//! let (outbox, _pickup) = Outbox::open("mq-data")?;
//! outbox.add(&json!({"envelope": "a@example.com", "recipient": "b@example.org",
//!                    "mime": "Subject: hi\r\n\r\nhello\r\n"}))?;
//! let config = DeliveryConfig { relay: "127.0.0.1:2526".into(), ..Default::default() };
//! delivery::run(&host, &outbox, &config, Until::Empty, &|outcome| {
//!     println!("{}: {}", outcome.status.as_str(), outcome.result);
//! });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Embedding and C plugins
//!
//! C plugins resolve the host's `MQ_*` functions from the executable, so an
//! executable that embeds this library must export them: link it with
//! `-Wl,--export-dynamic-symbol=MQ_*` (a `build.rs` line
//! `cargo:rustc-link-arg=-Wl,--export-dynamic-symbol=MQ_*`). The `mq-host`
//! binary and this crate's tests do. Without it, loading a C plugin fails
//! with an error that says so.
//!
//! ## Beyond MailerQ
//!
//! A second resume is ignored, a resume from the wrong thread refused, a
//! hold past the deadline reported (the chain goes on), a retry loop cut
//! after a limit; each is logged and counted ([`CounterSnapshot`]).
//!
//! Misuse of the host's functions that MailerQ would not survive is
//! refused or clamped, logged once per plugin, function and kind, and
//! counted (`api_misuse`): a NULL buffer with a size (`MQ_send`,
//! `MQ_setMime`, `MQ_setRecipient`, `MQ_setEnvelope`) changes nothing; a
//! timer delay runs within 0 s ..= 365 days (NaN and negative as 0 s,
//! longer or `INFINITY` as 365 days); stopping or resetting a timer that
//! fired or was stopped, and unwatching a watcher twice, are ignored.
//!
//! ## The stall watchdog
//!
//! A plugin that blocks inside a hook, a timer callback or an fd callback
//! blocks its worker's event loop, and with it every other connection of
//! that worker. Nothing can interrupt it, but the host tells its author: a
//! watchdog thread notices a worker that has been inside one call into a
//! plugin for longer than a threshold
//! ([`HostBuilder::stall_report`], `--stall-report SECONDS`, default 1 s,
//! 0 turns it off), logs a warning naming the plugin, the hook (or "a
//! timer callback", "an fd callback") and the worker, once per call,
//! counts it (`worker_stalls`), and logs how long the call took when it
//! returns. The workers only store a word per call into a plugin; the
//! watchdog polls four times per threshold and stops with the host.
//! Lifecycle hooks (`mq_initialize`, `mq_context_initialize`, ...) are
//! not watched: MailerQ lets them block.

#![warn(missing_docs)]

// Lower modules first: each uses only modules above it in this list.
mod api;
pub mod batch;
mod capi;
mod clock;
pub mod delivery;
mod inbound;
mod observe;
mod plugins;
pub mod runtime;
pub mod smtp_in;
mod store;

pub use api::{
    Event, EventResult, Host, HostBuilder, PendingEvent, RunError, Session, Shutdown, StartError,
    DEFAULT_HOLD_REPORT,
};
pub use mq_abi::Flow;
pub use mq_hook_table as hook_table;
pub use observe::{
    end_status, escape_controls, prometheus_gauge, prometheus_text, show_status, CounterSnapshot,
    LogEcho, LogRecord, MetricsEndpoint, Priority, Source, DEFAULT_LOG_MAX_BYTES,
    DEFAULT_LOG_RECORD_MAX,
};
pub use plugins::{discover, HostMode, LoadError, LoadErrorKind, PluginInfo, PluginKind};
pub use runtime::chain::{ChainEnd, HookCall, Resume};
pub use runtime::event_loop;
pub use runtime::message::{Direction, SmtpView};

/// Loads one plugin file and reports what it is, without running it
/// (`mq-host inspect`). Rust plugins get their ABI checked; nothing but
/// `mq_version` is called, and what it returns is reported, not checked
/// (compare [`PluginInfo::api_version`] with the version you run).
pub fn inspect(file: &std::path::Path) -> Result<PluginInfo, LoadError> {
    plugins::inspect(file)
}
