//! A C plugin (`misuse.c`) that misuses the host's functions in the ways
//! MailerQ's documentation calls illegal but a host can survive — NULL
//! buffers with a size, non-finite, negative and absurd timer delays,
//! stopping or resetting a timer that fired or was stopped, unwatching
//! twice, missing callbacks — and that blocks its worker inside a hook, a
//! timer callback or an fd callback on request. The scenario comes from
//! `<file>.plan` next to the copy; the protocol is at the top of
//! `misuse.c`.

/// Path of the compiled plugin in this crate's build output directory.
pub const PLUGIN_SO: &str = concat!(env!("OUT_DIR"), "/libmq_test_c_misuse.so");
