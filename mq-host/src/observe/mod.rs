//! What the host reports: its log (what plugins write with `MQ_log`, and
//! the host's own lines) and its counters, also as Prometheus metrics.

mod counters;
mod escape;
mod log;
mod metrics;
mod status;

pub use counters::CounterSnapshot;
pub(crate) use counters::Counters;
pub use escape::escape_controls;
pub(crate) use log::{CallerScope, HostLog, LogLimits};
pub use log::{
    LogEcho, LogRecord, Priority, Source, DEFAULT_LOG_MAX_BYTES, DEFAULT_LOG_RECORD_MAX,
};
pub use metrics::{prometheus_gauge, prometheus_text, Endpoint as MetricsEndpoint};
pub use status::{end_status, show_status};

/// Prints `line` on stderr as one line, escaped (for reports made when no
/// host log exists).
pub(crate) fn eprint_line(line: &str) {
    eprintln!("{}", escape_controls(line));
}

pub(crate) use mq_abi::panic_text;
