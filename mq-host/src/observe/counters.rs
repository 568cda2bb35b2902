//! Counters a user can read: the guards beyond MailerQ's own rules, and
//! the traffic the host has seen.

use mq_hook_table::{Hook, HOOKS};
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $field:ident, )*) => {
        /// Live counters, shared by all workers.
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $( pub(crate) $field: AtomicU64, )*
            /// Hook calls per hook, indexed like [`HOOKS`].
            pub(crate) per_hook: [AtomicU64; HOOKS.len()],
        }

        /// A snapshot of the host's counters.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct CounterSnapshot {
            $( $(#[doc = $doc])* pub $field: u64, )*
            /// Hook calls per hook, indexed like
            /// [`HOOKS`](mq_hook_table::HOOKS) (see
            /// [`CounterSnapshot::calls_by_hook`]).
            pub per_hook: [u64; HOOKS.len()],
        }

        /// Every counter's name and doc text (its lines joined by `\n`), in
        /// declaration order: the help the metrics endpoint serves.
        pub(crate) const COUNTER_DOCS: &[(&str, &str)] =
            &[$( (stringify!($field), concat!($($doc, "\n"),*)), )*];

        impl Counters {
            pub(crate) fn snapshot(&self) -> CounterSnapshot {
                CounterSnapshot {
                    $( $field: self.$field.load(Ordering::Relaxed), )*
                    per_hook: std::array::from_fn(|i| self.per_hook[i].load(Ordering::Relaxed)),
                }
            }
        }

        impl CounterSnapshot {
            /// Name and value of every counter, in declaration order.
            pub fn entries(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($field), self.$field), )*]
            }
        }
    };
}

counters! {
    /// Chains run to their end (any outcome).
    chains_finished,
    /// Hook calls made into plugins.
    hook_calls,
    /// Hook calls that returned `true` (took control).
    take_overs,
    /// `smtp_in_close` calls left out: a Rust plugin whose author wrote no such hook
    /// keeps no data on the closing connection, so mq-plugin's own close would do nothing
    /// (a C plugin without the hook is not called either).
    smtp_in_close_skipped,
    /// Resumes for a take-over that was already resumed: ignored and logged.
    double_resumes,
    /// Resumes by a plugin that held no control of that connection: ignored and logged.
    stray_resumes,
    /// Resumes called from a thread other than the connection's worker: refused and logged.
    wrong_thread_resumes,
    /// Resumes called inside the hook call itself: applied after the hook returned.
    inline_resumes,
    /// Take-overs held past the hold deadline: reported, and the chain went on.
    held_past_deadline,
    /// Reports of a long hold: each `--hold-report` interval a plugin held control without
    /// resuming (the host waits on, as MailerQ does, unless a hold deadline is set).
    hold_reports,
    /// Resumes that arrived after the hold deadline had already moved the chain on: ignored.
    late_resumes,
    /// Chains cut because they retried more often than the retry limit.
    retry_loops_cut,
    /// Host function calls made off the worker thread that owns the handle: refused and logged.
    wrong_thread_calls,
    /// Host function calls with NULL, a value that is no handle of the right kind, or a
    /// handle whose object is gone (e.g. a connection after `smtp_in_close`): refused and logged.
    invalid_handles,
    /// Panics a Rust plugin caught in its own hooks, callbacks and destructors (the plugin
    /// logged each with its name; its hook took the fallback flow).
    plugin_panics,
    /// Host bugs: panics caught in a host function or a worker's loop (logged; the host goes on).
    host_panics,
    /// Host function calls the C API calls illegal but the host survives (a NULL buffer with a
    /// size, a timer delay that is not finite, negative or too long, stopping or resetting a
    /// timer that fired or was stopped, unwatching twice, no callback): refused or clamped;
    /// logged once per plugin, function and kind, every occurrence counted.
    api_misuse,
    /// Calls into a plugin (a hook, a timer or fd callback) that kept their worker busy longer
    /// than the stall report threshold: reported by the watchdog, once per call.
    worker_stalls,
    /// SMTP sessions accepted by `serve`.
    smtp_sessions,
    /// Messages stored durably by `serve` (one per recipient).
    messages_stored,
    /// Messages a plugin refused at `smtp_in_message` (reported under `refused/`).
    messages_refused,
    /// Group commits of `serve`'s store thread: each made the files of every transaction
    /// waiting for it durable together (see `store_fsyncs`).
    store_commits,
    /// `fsync` calls of `serve`'s group commits: one per file, plus one per directory per
    /// commit (shared by every transaction of the commit).
    store_fsyncs,
    /// Delivery attempts made to the relay.
    delivery_attempts,
    /// Messages the relay accepted.
    messages_delivered,
    /// Messages that failed for good (reported under `failures/`).
    messages_failed,
    /// Temporary delivery failures: the message waits for a retry.
    messages_deferred,
    /// Clients refused at a connection limit (`max_connections`, `max_connections_per_ip`).
    connections_refused,
    /// Accepts that failed for want of descriptors or memory (the acceptor backs off).
    accept_errors,
    /// Times a session stopped reading: its unhandled input or unread replies were at their limit.
    input_paused,
    /// `RCPT TO`s refused with `452` at `max_recipients`.
    recipients_over_limit,
    /// Sessions closed because a command line or a message's data took longer than its deadline.
    sessions_too_slow,
    /// Sessions closed because the client sent nothing for `idle_timeout`.
    sessions_idle,
    /// Messages refused with `552` for being over `max_message_size`.
    messages_too_big,
    /// AUTH lines over the longest allowed (the exchange was cancelled).
    auth_lines_too_long,
    /// `MQ_send` calls cut at the session's output limit (`max_output_buffer`).
    plugin_output_cut,
    /// `AUTH` refused with `538` on a connection that is not secure (see `--auth-insecure`).
    auth_needs_tls,
    /// `MQ_send` calls that returned 0 because no client could get the bytes
    /// (`smtp_in_close`, a delivery connection, no hook running).
    plugin_send_undeliverable,
    /// Log records whose text was cut at the record bound (`--log-record-max`).
    log_records_cut,
    /// Log records dropped from the in-memory log, oldest first, to stay within its
    /// bounds (`--log-max-bytes`, 100 000 records); the stderr echo printed them.
    log_records_evicted,
    /// Delivery attempts the relay made too slow (connecting, a reply, or taking the
    /// message's data past its limit): each ended as a retry.
    relay_timeouts,
    /// Outgoing messages' properties that MailerQ documents and mq-host does not
    /// implement (`dkim`, `ips`, ...), one per property per message; each property
    /// is also named in a warning, once per delivery run.
    properties_not_implemented,
    /// Messages that expired before delivery: their `maxdelivertime` passed or their
    /// `maxattempts` were used up (a failure with state `process`, result `timeout`).
    messages_expired,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a call of `hook` into a plugin.
    pub(crate) fn hook_called(&self, hook: &Hook) {
        Counters::bump(&self.hook_calls);
        Counters::bump(&self.per_hook[hook.index()]);
    }
}

impl CounterSnapshot {
    /// The hooks called at least once, with how often, in table order.
    pub fn calls_by_hook(&self) -> Vec<(&'static str, u64)> {
        HOOKS
            .iter()
            .zip(self.per_hook)
            .filter(|(_, n)| *n > 0)
            .map(|(hook, n)| (hook.name, n))
            .collect()
    }
}

impl std::fmt::Display for CounterSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (name, value) in self.entries() {
            writeln!(f, "{name:<22} {value}")?;
        }
        for (hook, value) in self.calls_by_hook() {
            writeln!(f, "  {hook:<20} {value}")?;
        }
        Ok(())
    }
}
