//! The C side of the hook-cost bench, a MailerQ plugin written in C
//! (`hooks.c`). Its twin in Rust is `mq-bench-rust-hooks`; both implement
//! the same hooks doing the same work, one hook per measured case (see
//! `hooks.c` and the bench `mq-bench/benches/hook_cost.rs`).

/// Path of the compiled plugin (`libmq_bench_c_hooks.so`) in this crate's
/// build output directory.
pub const PLUGIN_SO: &str = concat!(env!("OUT_DIR"), "/libmq_bench_c_hooks.so");
