//! What a failing test prints: the step that failed, and the log.

use mq_host::{EventResult, LogRecord, Priority, Resume, Source};
use std::fmt::Write;

/// A step for a failure message: the hook, each call's flow, how the chain
/// ended, the reply, and what the plugins logged during it.
pub(crate) fn describe(result: &EventResult) -> String {
    let mut out = format!("step: {} ({:?})\n", result.hook.name, result.end);
    for call in &result.calls {
        let flow = match (call.took_control, call.resumed) {
            (false, _) => "returned false (continue)".to_owned(),
            (true, Some(Resume::Flow(flow))) => format!("took control, resumed with {flow}"),
            (true, Some(other)) => format!("took control, {other:?} at the hold deadline"),
            (true, None) => "took control, never resumed".to_owned(),
        };
        let _ = writeln!(out, "  {}: {flow}", call.plugin);
    }
    if result.calls.is_empty() {
        out.push_str("  (no plugin defines this hook)\n");
    }
    match result.reply() {
        Some(reply) => {
            let _ = writeln!(out, "reply sent by a plugin: {reply}");
        }
        None => out.push_str("no plugin replied (the host gives its own reply)\n"),
    }
    let log = result.plugin_log();
    if log.is_empty() {
        out.push_str("the plugins logged nothing during the step");
    } else {
        out.push_str("what the plugins logged during the step:");
        for line in log {
            let _ = write!(out, "\n  {line}");
        }
    }
    out
}

/// The host's whole log, printed when a test fails with a host alive.
pub(crate) fn log_dump(records: &[LogRecord]) -> String {
    let mut out = format!(
        "mq-plugin-test: the test failed; the host's log ({} records):",
        records.len()
    );
    for r in records {
        let who = match r.source {
            Source::Plugin => "plugin",
            Source::Host => "host",
        };
        let priority = match r.priority {
            Priority::Critical => "CRIT",
            Priority::Warning => "WARN",
            Priority::Info => "INFO",
        };
        let worker = r
            .worker
            .map_or_else(|| "main".to_owned(), |w| format!("worker {w}"));
        let _ = write!(out, "\n  [{priority}] [{worker}] [{who}] {}", r.text);
    }
    out
}
