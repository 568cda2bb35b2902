//! The recipient allow-list plugin, written in C (`allowlist.c`).
//!
//! The build script compiles `allowlist.c` against `include/mailerq.h`
//! into a MailerQ plugin. This crate only tells Rust code (the host's tests)
//! where that shared object is; it is also copied next to the binaries in
//! `target/<profile>/`.
//!
//! The plugin reads its allow-list from the file named by
//! `MQ_ALLOWLIST_FILE` (one entry per line: `@domain` or an exact address,
//! `#` comments), defaulting to `@example.com`, `@example.org` and
//! `postmaster@localhost`. Each `RCPT TO` is parsed as an RFC 5321 mailbox
//! first and decided on its parsed domain: an address that does not parse
//! gets `553 5.1.3` with the cause, one not on the list `550 5.7.1`. See
//! `README.md`.

#![forbid(unsafe_code)]

/// Path of the compiled plugin (`libmq_example_c_allowlist.so`) in this
/// crate's build output directory.
pub const PLUGIN_SO: &str = concat!(env!("OUT_DIR"), "/libmq_example_c_allowlist.so");
