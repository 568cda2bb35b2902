//! The C test probe, a MailerQ plugin written in C (`probe.c`).
//!
//! End-to-end tests copy the compiled shared object under names such as
//! `10-a.so` and `20-b.so` into a plugin directory and drive each copy with
//! a plan file next to it (`10-a.so.plan`): one line per hook,
//! `<hook> <action> [argument]`, e.g. `smtp_in_rcptto reject 550 no`.
//! Every hook logs `probe <name> <hook>` through `MQ_log`, where `<name>`
//! is the copy's file name without `.so`. The protocol is documented at the
//! top of `probe.c`.

/// Path of the compiled probe (`libmq_test_c_probe.so`) in this crate's
/// build output directory.
pub const PLUGIN_SO: &str = concat!(env!("OUT_DIR"), "/libmq_test_c_probe.so");
