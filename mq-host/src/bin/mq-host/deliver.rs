//! `mq-host deliver`: a file of messages through an outbox to a relay,
//! results as JSON lines, progress on stderr.

use crate::*;
use mq_host::delivery::{self, DeliveryConfig, Outbox, Status, Until};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `mq-host deliver`: the file's messages into an outbox, delivered until
/// each has its final result.
pub(crate) fn deliver(
    args: HostArgs,
    config: DeliveryConfig,
    data_dir: Option<PathBuf>,
    input: PathBuf,
    output: Option<PathBuf>,
    progress_interval: Duration,
) -> Result<(), String> {
    let text = read_input(&input)?;
    let mut writer = open_output(output.as_deref())?;
    let temporary = data_dir.is_none();
    let data_dir = data_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("mq-host-deliver-{}", std::process::id()))
    });
    let (outbox, pickup) = Outbox::open(&data_dir)
        .map_err(|e| format!("cannot open the outbox in {}: {e}", data_dir.display()))?;
    let examples = ExamplePlugins::unless_given(&args)?;
    let host = start(&args, examples.as_ref().map(|e| e.dir.as_path()))?;
    let invalid = fill_outbox(&outbox, &text, &mut writer)?;
    let total = outbox.pending();
    if pickup.waiting > 0 {
        eprintln!(
            "mq-host: {} message(s) from an earlier run in {} are delivered too",
            pickup.waiting,
            outbox.dir().display()
        );
    }
    let progress = Progress::new(total, progress_interval);
    let writer = std::sync::Mutex::new(writer);
    let write_error = std::sync::Mutex::new(None);
    let (running, ended) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        // Keeps the line alive while nothing finishes; ends with the run.
        let progress = &progress;
        scope.spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                ended.recv_timeout(progress.tick_every())
            {
                progress.tick();
            }
        });
        delivery::run(&host, &outbox, &config, Until::Empty, &|outcome| {
            progress.record(outcome.status);
            if outcome.status != Status::Retry {
                let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = writeln!(w, "{}", outcome.result).and_then(|_| w.flush()) {
                    write_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e.to_string());
                }
            }
        });
        drop(running);
    });
    progress.finish();
    finish(host, &args);
    let left = outbox.pending_files();
    let outbox_dir = outbox.dir();
    drop(outbox);
    if left > 0 {
        return Err(format!(
            "{left} message(s) got no final result (see the log) and stay in {}",
            outbox_dir.display()
        ));
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    if let Some(e) = write_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(format!("cannot write a result: {e}"));
    }
    let failed = progress.failed() + invalid;
    if failed > 0 {
        return Err(format!("{failed} message(s) not delivered"));
    }
    Ok(())
}

/// The bytes of `input` (`-`: standard input). Not checked as UTF-8
/// here: a line that is not is that line's error.
fn read_input(input: &Path) -> Result<Vec<u8>, String> {
    if input == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        Ok(bytes)
    } else {
        std::fs::read(input).map_err(|e| format!("cannot read {}: {e}", input.display()))
    }
}

/// Where the results go: `output`, or standard output.
fn open_output(output: Option<&Path>) -> Result<Box<dyn Write + Send>, String> {
    Ok(match output {
        None => Box::new(std::io::stdout()),
        Some(p) => Box::new(
            std::fs::File::create(p)
                .map_err(|e| format!("cannot create output {}: {e}", p.display()))?,
        ),
    })
}

/// Each line of `text` into the outbox; a line that is not a message gets
/// an error line in `writer`. Returns how many lines were not messages.
fn fill_outbox(outbox: &Outbox, text: &[u8], writer: &mut dyn Write) -> Result<usize, String> {
    let mut invalid = 0;
    for (n, line) in lines(text).enumerate() {
        let line = match std::str::from_utf8(line) {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => Ok(line),
            Err(e) => Err(format!("not UTF-8: {e}")),
        };
        let parsed = line.and_then(|line| {
            serde_json::from_str::<serde_json::Value>(line).map_err(|e| format!("not JSON: {e}"))
        });
        let error = match parsed {
            Ok(message @ serde_json::Value::Object(_)) => match outbox.add(&message) {
                Ok(_) => continue,
                Err(e) => format!("cannot store it in the outbox: {e}"),
            },
            Ok(_) => "a MailerQ message must be a JSON object".to_owned(),
            Err(error) => error,
        };
        invalid += 1;
        let line = serde_json::json!({"error": format!("line {}: {error}", n + 1), "line": n + 1});
        writeln!(writer, "{line}").map_err(|e| format!("cannot write a result: {e}"))?;
    }
    Ok(invalid)
}

/// The lines of `bytes`, without their `\n` or `\r\n`.
fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
}

/// The progress line of `mq-host deliver` (stderr). On a terminal it is
/// one line redrawn in place, on each result and each second meanwhile,
/// kept below the log lines echoed meanwhile ([`mq_host::show_status`]).
/// Otherwise (a log file, a pipe) it is a line at each tenth of the batch
/// done, and a line whenever `interval` passed since the last one — also
/// while nothing finishes (a slow relay, messages waiting for a retry), so
/// a long run always shows it is alive.
pub(crate) struct Progress {
    total: usize,
    /// A line each time this many more messages are done (a tenth).
    step: usize,
    interval: Duration,
    started: std::time::Instant,
    state: std::sync::Mutex<ProgressState>,
    terminal: bool,
}

#[derive(Default)]
pub(crate) struct ProgressState {
    success: usize,
    failure: usize,
    retries: usize,
    printed: Option<std::time::Instant>,
}

impl Progress {
    fn new(total: usize, interval: Duration) -> Progress {
        use std::io::IsTerminal;
        Progress {
            total,
            step: (total / 10).max(1),
            interval,
            started: std::time::Instant::now(),
            state: Default::default(),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// How often [`Progress::tick`] should run.
    fn tick_every(&self) -> Duration {
        if self.terminal {
            self.interval.min(Duration::from_secs(1))
        } else {
            self.interval
        }
    }

    fn record(&self, status: Status) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match status {
            Status::Success => state.success += 1,
            Status::Failure => state.failure += 1,
            Status::Retry => state.retries += 1,
        }
        let done = state.success + state.failure;
        // The last one is printed by `finish`.
        if done == self.total {
            return;
        }
        let step = status != Status::Retry && done.is_multiple_of(self.step);
        if self.terminal || step || self.overdue(&state) {
            self.print(&mut state, false);
        }
    }

    /// Prints the line if it is due although nothing finished.
    fn tick(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.terminal || self.overdue(&state) {
            self.print(&mut state, false);
        }
    }

    fn overdue(&self, state: &ProgressState) -> bool {
        state
            .printed
            .unwrap_or(self.started)
            .elapsed()
            .ge(&self.interval)
    }

    fn print(&self, state: &mut ProgressState, last: bool) {
        state.printed = Some(std::time::Instant::now());
        let line = format!(
            "deliver: {}/{} done: {} delivered, {} failed; {} retr{} so far; {} s",
            state.success + state.failure,
            self.total,
            state.success,
            state.failure,
            state.retries,
            if state.retries == 1 { "y" } else { "ies" },
            self.started.elapsed().as_secs()
        );
        if self.terminal {
            // Log lines echoed meanwhile go above it.
            mq_host::show_status(&line);
            if last {
                mq_host::end_status();
            }
        } else {
            // A closed stderr must not stop the delivery.
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
    }

    fn finish(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.print(&mut state, true);
    }

    fn failed(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).failure
    }
}
