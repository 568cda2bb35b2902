//! The host's log: what plugins write with `MQ_log` and what the host
//! reports itself (guards, load problems).
//!
//! `MQ_log` is a global C function without a host argument: on a worker
//! thread it reaches that worker's host; elsewhere (plugin threads,
//! `mq_initialize`) the most recently started host.
//!
//! Whatever a plugin or a client wrote, a record is one line: its text is
//! escaped when written ([`escape_controls`](super::escape_controls)), and
//! again (a no-op then) when printed. A plugin cannot fill the memory
//! either: a record's text is cut at the record bound
//! ([`DEFAULT_LOG_RECORD_MAX`]) and the log keeps only its newest records
//! within a byte bound ([`DEFAULT_LOG_MAX_BYTES`]) and a count bound; cuts
//! and evictions are counted (`log_records_cut`, `log_records_evicted`).

use super::escape::{escape_bounded, escape_controls};
use super::Counters;
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
    /// The text, one line: control, separator and bidi characters are
    /// escaped (see [`escape_controls`](crate::escape_controls)). An unknown
    /// priority is marked `(invalid priority N)`; a text longer than the
    /// record bound is cut and ends with ` [... N bytes cut]`.
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
            "text": escape_controls(&self.text),
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
            escape_controls(&self.text)
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
    limits: LogLimits,
    /// The host's counters (shared with its workers): the log counts its
    /// cuts and evictions there.
    counters: Arc<Counters>,
}

/// How many records a log keeps at most, whatever their size: the oldest
/// are dropped beyond this (the stderr echo sees every record).
const RETAINED: usize = 100_000;

/// The default bound of the in-memory log, in bytes (16 MiB): the texts of
/// the records kept plus a fixed cost per record. The oldest records are
/// dropped beyond it (the stderr echo sees every record).
pub const DEFAULT_LOG_MAX_BYTES: usize = 16 << 20;

/// The default bound of one record's text, in bytes (16 KiB, after
/// escaping): a longer text is cut, at a character, and ends with
/// ` [... N bytes cut]`, N being the bytes of the original text left out.
pub const DEFAULT_LOG_RECORD_MAX: usize = 16 << 10;

/// What one record costs besides its text.
const RECORD_OVERHEAD: usize = std::mem::size_of::<LogRecord>();

/// Bounds of the in-memory log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogLimits {
    /// The bytes the records may take together (texts plus a fixed cost per
    /// record); the newest record is always kept.
    pub(crate) max_bytes: usize,
    /// The bytes one record's text may take before it is cut.
    pub(crate) max_record: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_bytes: DEFAULT_LOG_MAX_BYTES,
            max_record: DEFAULT_LOG_RECORD_MAX,
        }
    }
}

#[derive(Debug, Default)]
struct Records {
    /// The sequence number of `list[0]`.
    base: u64,
    list: std::collections::VecDeque<LogRecord>,
    /// What `list` costs, as counted against [`LogLimits::max_bytes`].
    bytes: usize,
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
    pub(crate) fn new(echo: LogEcho, limits: LogLimits) -> Arc<HostLog> {
        Arc::new(HostLog {
            records: Mutex::new(Records::default()),
            echo,
            limits,
            counters: Arc::default(),
        })
    }

    /// The counters the log counts in; the host's `Shared` uses the same.
    pub(crate) fn counters(&self) -> &Arc<Counters> {
        &self.counters
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

    /// Appends a record: its text escaped and cut at the record bound,
    /// echoed, then kept within the log's bounds.
    pub(crate) fn write(
        &self,
        worker: Option<usize>,
        priority: Priority,
        source: Source,
        text: String,
    ) {
        let text = self.one_line(text);
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
            LogEcho::Stderr => super::status::echo(&record),
            LogEcho::StderrJson => super::status::echo(&record.to_json()),
        }
        records.bytes += cost(&record);
        records.list.push_back(record);
        let mut evicted = 0;
        while records.list.len() > 1
            && (records.list.len() > RETAINED || records.bytes > self.limits.max_bytes)
        {
            let Some(oldest) = records.list.pop_front() else {
                break;
            };
            records.bytes -= cost(&oldest);
            records.base += 1;
            evicted += 1;
        }
        if evicted > 0 {
            self.counters
                .log_records_evicted
                .fetch_add(evicted, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// `text` escaped to one line and cut at the record bound (counted).
    fn one_line(&self, text: String) -> String {
        let max = self.limits.max_record;
        if text.len() <= max && !text.chars().any(super::escape::needs_escape) {
            return text;
        }
        let (mut kept, cut) = escape_bounded(&text, max);
        if cut > 0 {
            Counters::bump(&self.counters.log_records_cut);
            kept.push_str(&format!(" [... {cut} bytes cut]"));
        }
        kept
    }

    /// What the in-memory records cost now, in bytes (texts plus a fixed
    /// cost per record).
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).bytes
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

/// What `record` counts against the byte bound.
fn cost(record: &LogRecord) -> usize {
    RECORD_OVERHEAD + record.text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_most_recent_records_and_marks_stay_valid() {
        let log = HostLog::new(LogEcho::None, LogLimits::default());
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

    fn limited(max_bytes: usize, max_record: usize) -> Arc<HostLog> {
        HostLog::new(
            LogEcho::None,
            LogLimits {
                max_bytes,
                max_record,
            },
        )
    }

    fn counted(log: &HostLog) -> (u64, u64) {
        let c = log.counters().snapshot();
        (c.log_records_cut, c.log_records_evicted)
    }

    #[test]
    fn a_record_is_one_line_whatever_its_text() {
        let log = HostLog::new(LogEcho::None, LogLimits::default());
        let forged = "email a\x1b[31mRED\u{9b}@example.com\r\n[INFO] [worker 0] [host] forged\u{2028}\u{202e}moc.evil";
        log.write(Some(0), Priority::Info, Source::Plugin, forged.into());
        let record = log.since(0, None).remove(0);
        assert_eq!(
            record.text,
            r"email a\x1b[31mRED\u{9b}@example.com\r\n[INFO] [worker 0] [host] forged\u{2028}\u{202e}moc.evil"
        );
        let line = record.to_string();
        assert!(
            !line.chars().any(super::super::escape::needs_escape),
            "{line}"
        );
        assert_eq!(line, format!("[INFO] [worker 0] [plugin] {}", record.text));
        assert_eq!(record.to_json()["text"], record.text.as_str());
        assert!(!record.to_json().to_string().contains('\u{202e}'));
    }

    #[test]
    fn a_record_made_elsewhere_is_escaped_when_printed() {
        let record = LogRecord {
            seq: 0,
            worker: None,
            priority: Priority::Info,
            source: Source::Host,
            text: "a\nb\u{202e}".into(),
            time: std::time::UNIX_EPOCH,
        };
        assert_eq!(record.to_string(), r"[INFO] [main] [host] a\nb\u{202e}");
        assert_eq!(record.to_json()["text"], r"a\nb\u{202e}");
    }

    #[test]
    fn a_huge_record_is_cut_and_says_how_much() {
        let log = limited(DEFAULT_LOG_MAX_BYTES, 1024);
        let huge = "x".repeat(10 << 20);
        log.write(None, Priority::Info, Source::Plugin, huge);
        log.write(None, Priority::Info, Source::Plugin, "y".repeat(1024));
        let records = log.since(0, None);
        let cut = (10 << 20) - 1024;
        assert_eq!(
            records[0].text,
            format!("{} [... {cut} bytes cut]", "x".repeat(1024))
        );
        assert_eq!(
            records[1].text,
            "y".repeat(1024),
            "a text at the bound is whole"
        );
        assert_eq!(counted(&log), (1, 0));
        // Escapes count against the bound, and are never split.
        log.write(None, Priority::Info, Source::Plugin, "\x1b".repeat(300));
        let text = log.since(2, None).remove(0).text;
        assert_eq!(text, format!("{} [... 44 bytes cut]", r"\x1b".repeat(256)));
        assert_eq!(counted(&log), (2, 0));
    }

    #[test]
    fn the_log_stays_within_its_byte_bound() {
        const BOUND: usize = 1 << 20;
        let log = limited(BOUND, DEFAULT_LOG_RECORD_MAX);
        let huge = "z".repeat(1 << 20);
        for _ in 0..1000 {
            log.write(Some(0), Priority::Info, Source::Plugin, huge.clone());
            assert!(log.bytes() <= BOUND, "{} bytes kept", log.bytes());
        }
        let kept = log.since(0, None);
        let texts: usize = kept.iter().map(|r| r.text.len() + RECORD_OVERHEAD).sum();
        assert_eq!(texts, log.bytes());
        assert!(
            kept.len() > 10 && kept.len() < 1000,
            "{} records kept",
            kept.len()
        );
        assert_eq!(kept.last().unwrap().seq, 999, "the newest are kept");
        assert_eq!(log.mark(), 1000);
        assert_eq!(counted(&log), (1000, 1000 - kept.len() as u64));
    }

    #[test]
    fn the_newest_record_is_kept_even_past_the_bound() {
        let log = limited(10, 1000);
        log.write(None, Priority::Info, Source::Host, "first".into());
        log.write(None, Priority::Info, Source::Host, "second".into());
        let kept: Vec<_> = log.since(0, None).into_iter().map(|r| r.text).collect();
        assert_eq!(kept, ["second"]);
        assert_eq!(counted(&log), (0, 1));
    }
}
