//! The host's log: what plugins write with `MQ_log` and what the host
//! reports itself (guards, load problems).
//!
//! `MQ_log` is a global C function without a host argument: on a worker
//! thread it reaches that worker's host; elsewhere (plugin threads,
//! `mq_initialize`) the most recently started host.

use std::io::Write;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::SystemTime;

/// How important a log record is (MailerQ's three priorities).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// `MQ_CRIT` (1).
    Critical,
    /// `MQ_WARN` (2).
    Warning,
    /// `MQ_INFO` (3), also for unknown priorities (marked invalid).
    Info,
}

impl Priority {
    /// Maps a C priority; unknown values log as info, with a flag.
    pub fn from_c(priority: i32) -> (Priority, bool) {
        match priority {
            1 => (Priority::Critical, true),
            2 => (Priority::Warning, true),
            3 => (Priority::Info, true),
            _ => (Priority::Info, false),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Priority::Critical => "CRIT",
            Priority::Warning => "WARN",
            Priority::Info => "INFO",
        }
    }
}

/// Who wrote a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A plugin, through `MQ_log`.
    Plugin,
    /// The host itself.
    Host,
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Position in the host's log, from 0.
    pub seq: u64,
    /// The worker thread it was written on, if any.
    pub worker: Option<usize>,
    /// Priority.
    pub priority: Priority,
    /// Who wrote it.
    pub source: Source,
    /// The text; an unknown priority is marked `(invalid priority N)`.
    pub text: String,
    /// When it was written.
    pub time: SystemTime,
}

impl LogRecord {
    /// The record as one JSON object (`--log-format json`): `time` (RFC 3339
    /// UTC, milliseconds), `level` (`critical`, `warning`, `info`),
    /// `worker` (a number, or null off the workers), `source` (`plugin` or
    /// `host`), `seq` and `text`.
    pub fn to_json(&self) -> serde_json::Value {
        let since = self
            .time
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let seconds = crate::clock::rfc3339(self.time);
        let time = format!(
            "{}.{:03}Z",
            seconds.trim_end_matches('Z'),
            since.subsec_millis()
        );
        let level = match self.priority {
            Priority::Critical => "critical",
            Priority::Warning => "warning",
            Priority::Info => "info",
        };
        let source = match self.source {
            Source::Plugin => "plugin",
            Source::Host => "host",
        };
        serde_json::json!({
            "time": time,
            "level": level,
            "worker": self.worker,
            "source": source,
            "seq": self.seq,
            "text": self.text,
        })
    }
}

impl std::fmt::Display for LogRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let worker = match self.worker {
            Some(w) => format!("worker {w}"),
            None => "main".to_owned(),
        };
        let who = match self.source {
            Source::Plugin => "plugin",
            Source::Host => "host",
        };
        write!(
            f,
            "[{}] [{worker}] [{who}] {}",
            self.priority.label(),
            self.text
        )
    }
}

/// Where log output goes besides the in-memory record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogEcho {
    /// Keep records in memory only (library default).
    #[default]
    None,
    /// Also print every record to stderr (the binary's default).
    Stderr,
    /// Also print every record to stderr as one JSON object per line
    /// ([`LogRecord::to_json`]).
    StderrJson,
}

/// The in-memory log of one host.
#[derive(Debug)]
pub(crate) struct HostLog {
    records: Mutex<Records>,
    echo: LogEcho,
}

/// How many records a log keeps: the oldest are dropped beyond this, so a
/// long-running `serve` does not grow without bound (the stderr echo sees
/// every record).
const RETAINED: usize = 100_000;

#[derive(Debug, Default)]
struct Records {
    /// The sequence number of `list[0]`.
    base: u64,
    list: std::collections::VecDeque<LogRecord>,
}

static FALLBACK: RwLock<Option<Weak<HostLog>>> = RwLock::new(None);

thread_local! {
    /// The log of the host whose lifecycle hooks run on this thread now.
    static CALLER: std::cell::RefCell<Option<Arc<HostLog>>> = const { std::cell::RefCell::new(None) };
}

/// Routes `MQ_log` calls made on this thread to `log` until dropped (for
/// `mq_initialize`/`mq_cleanup`, which run on the caller's thread).
pub(crate) struct CallerScope(Option<Arc<HostLog>>);

impl CallerScope {
    pub(crate) fn enter(log: &Arc<HostLog>) -> CallerScope {
        CallerScope(CALLER.with(|c| c.borrow_mut().replace(Arc::clone(log))))
    }
}

impl Drop for CallerScope {
    fn drop(&mut self) {
        let previous = self.0.take();
        let _ = CALLER.try_with(|c| *c.borrow_mut() = previous);
    }
}

impl HostLog {
    pub(crate) fn new(echo: LogEcho) -> Arc<HostLog> {
        Arc::new(HostLog {
            records: Mutex::new(Records::default()),
            echo,
        })
    }

    /// Makes this log the one `MQ_log` uses off the worker threads.
    pub(crate) fn install_as_fallback(self: &Arc<Self>) {
        *FALLBACK.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::downgrade(self));
    }

    /// The log for a call off the worker threads: the host whose lifecycle
    /// hooks run on this thread, else the most recently started host.
    pub(crate) fn fallback() -> Option<Arc<HostLog>> {
        if let Some(log) = CALLER.try_with(|c| c.borrow().clone()).ok().flatten() {
            return Some(log);
        }
        FALLBACK
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()?
            .upgrade()
    }

    pub(crate) fn write(
        &self,
        worker: Option<usize>,
        priority: Priority,
        source: Source,
        text: String,
    ) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let record = LogRecord {
            seq: records.base + records.list.len() as u64,
            worker,
            priority,
            source,
            text,
            time: SystemTime::now(),
        };
        match self.echo {
            LogEcho::None => {}
            LogEcho::Stderr => {
                let _ = writeln!(std::io::stderr().lock(), "{record}");
            }
            LogEcho::StderrJson => {
                let _ = writeln!(std::io::stderr().lock(), "{}", record.to_json());
            }
        }
        if records.list.len() == RETAINED {
            records.list.pop_front();
            records.base += 1;
        }
        records.list.push_back(record);
    }

    /// The next sequence number (a mark for [`HostLog::since`]).
    pub(crate) fn mark(&self) -> u64 {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.base + records.list.len() as u64
    }

    /// Records from `mark` on, optionally only those of one worker.
    pub(crate) fn since(&self, mark: u64, worker: Option<usize>) -> Vec<LogRecord> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let skip = mark.saturating_sub(records.base) as usize;
        records
            .list
            .iter()
            .skip(skip)
            .filter(|r| worker.is_none() || r.worker == worker)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_most_recent_records_and_marks_stay_valid() {
        let log = HostLog::new(LogEcho::None);
        for n in 0..RETAINED + 10 {
            log.write(Some(n % 2), Priority::Info, Source::Host, n.to_string());
        }
        assert_eq!(log.mark(), (RETAINED + 10) as u64);
        let all = log.since(0, None);
        assert_eq!(all.len(), RETAINED, "the oldest ten were dropped");
        assert_eq!(all[0].seq, 10);
        assert_eq!(all[0].text, "10");
        let mark = log.mark() - 3;
        let last: Vec<_> = log.since(mark, None).into_iter().map(|r| r.text).collect();
        assert_eq!(
            last,
            [RETAINED + 7, RETAINED + 8, RETAINED + 9].map(|n| n.to_string())
        );
        assert_eq!(log.since(mark, Some(1)).len(), 2);
    }

    #[test]
    fn json_records() {
        let record = LogRecord {
            seq: 7,
            worker: Some(1),
            priority: Priority::Warning,
            source: Source::Plugin,
            text: "[p] hello".into(),
            time: std::time::UNIX_EPOCH + std::time::Duration::from_millis(86_400_250),
        };
        assert_eq!(
            record.to_json(),
            serde_json::json!({"time": "1970-01-02T00:00:00.250Z", "level": "warning",
                               "worker": 1, "source": "plugin", "seq": 7, "text": "[p] hello"})
        );
    }
}
