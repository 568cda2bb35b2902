//! # mq-plugin: MailerQ plugins in safe Rust
//!
//! MailerQ loads plugins as C shared objects that export hooks such as
//! `bool mq_smtp_in_rcptto(MQ_Context*, MQ_Connection*, MQ_Address*)`. With
//! this crate a plugin is a `cdylib` crate whose hooks are ordinary Rust
//! functions:
//!
//! ```no_run
//! use mq_plugin::{mq_hook, Address, Connection, Flow};
//!
//! mq_plugin::declare_plugin!();
//!
//! #[mq_hook(smtp_in_rcptto)]
//! fn only_example_org(conn: &Connection, rcpt: &Address) -> Flow {
//!     // Parsed (RFC 5321), so `x@evil.net\n@example.org` is refused too.
//!     match rcpt.mailbox() {
//!         Ok(mailbox) if mailbox.domain_is("example.org") => Flow::Continue,
//!         _ => {
//!             conn.send(b"550 5.7.1 not here\r\n");
//!             Flow::Complete
//!         }
//!     }
//! }
//! # fn main() {}
//! ```
//!
//! `cargo build` turns that into a `.so` that exports `mq_version`,
//! `mq_smtp_in_rcptto` and the rest of MailerQ's exact symbols, loadable by
//! MailerQ and by `mq-host`.
//!
//! ## The control-flow model
//!
//! At each event the host calls the hook of every plugin in file-name
//! order. A C hook returns `false` to let the host go on, or `true` to take
//! control, after which it must call exactly one of `MQ_continue`,
//! `MQ_complete` or `MQ_retry` later, from the event loop. A Rust hook
//! returns a [`Flow`] instead and the framework does the rest:
//!
//! | the hook returns             | the C hook returns | later, from the loop |
//! |------------------------------|--------------------|----------------------|
//! | `Flow::Continue` or `()`     | `false`            | nothing              |
//! | `Flow::Complete`             | `true`             | `MQ_complete` once   |
//! | `Flow::Retry`                | `true`             | `MQ_retry` once      |
//! | `Err(e)` or a panic          | the fallback flow, logged with plugin and hook |
//!
//! A panic never unwinds into the host. Hooks may also be `async fn`: see
//! [`control_flow`] for the whole model, with the same plugin in C and in
//! async Rust side by side.
//!
//! ## Hooks and their parameters
//!
//! A hook takes any of the arguments of its call, identified by type:
//! `&Context`, `&Connection`, `&Address` (`smtp_in_mailfrom`,
//! `smtp_in_rcptto`), `&Credentials` (`smtp_in_authenticate`), `&[u8]`
//! (the MIME of `smtp_in_data`) and `&mut Message` (`smtp_in_message`,
//! `smtp_out_data`, `smtp_out_sent`). Lifecycle hooks (`initialize`,
//! `cleanup`, `context_initialize`, `context_cleanup`) return `()` or
//! `Result<(), E>`.
//!
//! An address is whatever the client or the message said: decide on
//! [`Address::mailbox`], the address parsed by RFC 5321's grammar
//! ([`Mailbox`]: local part, domain, a case-insensitive
//! [`domain_is`](Mailbox::domain_is)), never on how its text ends.
//!
//! ## Where it runs
//!
//! In `mq-host`, the plugin gets the host's functions as a table through its
//! abi_stable root module (the `mq-abi` crate holds that contract); in
//! MailerQ it resolves the global `MQ_*` symbols at run time. The same `.so`
//! works in both.
//!
//! ## Building for your MailerQ
//!
//! `mq_version()` must return exactly the `MQ_API_VERSION` of the MailerQ
//! that loads the plugin, a number found in the `mailerq.h` it installs.
//! This crate picks it when it is built ([`API_VERSION`]):
//!
//! 1. `MQ_API_VERSION=N cargo build` sets it outright;
//! 2. else `MQ_PLUGIN_MAILERQ_HEADER=/path/to/mailerq.h` reads it from that
//!    header;
//! 3. else it is read from MailerQ's installed header,
//!    `/usr/include/mailerq.h` or `/usr/local/include/mailerq.h`;
//! 4. else it is this project's default,
//!    [`hook_table::MQ_API_VERSION`] (1), which `mq-host` expects unless
//!    started with `--api-version N`.
//!
//! Changing either variable rebuilds the crate (and its plugins); a header
//! installed after the first build is seen after `cargo clean -p
//! mq-plugin`. `mq-host inspect` shows what a plugin returns.

#![warn(missing_docs)]

mod boundary;
mod clock;
pub mod control_flow;
mod data;
mod executor;
mod fd;
mod flow;
mod handles;
mod host;
pub mod io;
pub mod log;
pub mod mailbox;
mod message_json;
pub mod net;
pub mod raw;
pub mod task;
pub mod time;
mod timer;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private_v1;

#[doc(hidden)]
pub mod __private {
    pub use crate::__private_v1 as v1;
}

pub use fd::{FdWatcher, Interest};
pub use flow::{Flow, HookReturn, LifecycleReturn};
pub use handles::{Address, Connection, Context, Credentials, Message};
pub use host::uses_host_table;
pub use mailbox::{Mailbox, MailboxError};
pub use message_json::JsonError;
/// Raw C declarations of the MailerQ plugin API, as in `mailerq.h` (for
/// calling `MQ_*` functions directly; see [`raw`]).
pub use mq_abi::sys;
pub use mq_hook_table as hook_table;
#[doc = include_str!("../docs/declare_plugin.md")]
pub use mq_plugin_macros::declare_plugin;
#[doc = include_str!("../docs/mq_hook.md")]
pub use mq_plugin_macros::mq_hook;
pub use timer::Timer;

// `API_VERSION` and `API_VERSION_SOURCE`, written by the build script.
include!(concat!(env!("OUT_DIR"), "/api_version.rs"));

/// The host could not do what was asked (a host function returned nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError(&'static str);

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for HostError {}

/// Everything a plugin usually needs.
pub mod prelude {
    pub use crate::{
        declare_plugin, mq_hook, Address, Connection, Context, Credentials, Flow, Interest, Message,
    };
}

#[cfg(test)]
mod doc_tests {
    /// The `#[mq_hook]` reference follows the hook table: every hook, its
    /// symbol and its parameters.
    #[test]
    fn mq_hook_docs_list_every_hook_of_the_table() {
        let docs = include_str!("../docs/mq_hook.md");
        for hook in mq_hook_table::HOOKS {
            let params = hook
                .shape
                .rust_params()
                .iter()
                .map(|p| format!("`{}`", p.rust_type()))
                .collect::<Vec<_>>();
            let params = if params.is_empty() {
                "—".to_owned()
            } else {
                params.join(", ")
            };
            let row = format!("| `{}` | `{}` |", hook.name, hook.symbol);
            let line = docs
                .lines()
                .find(|l| l.starts_with(&row))
                .unwrap_or_else(|| panic!("no row for {}", hook.name));
            assert!(
                line.trim_end().ends_with(&format!("| {params} |")),
                "{line}"
            );
        }
    }
}
