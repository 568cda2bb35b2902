//! A status line at the bottom of a terminal: `mq-host deliver`'s
//! progress. While one is shown, the host log's stderr echo clears it,
//! prints the record on a line of its own, and draws it again below, so
//! log lines scroll above the status line instead of being glued to it.
//!
//! The status line and the echo write under one lock, in one write each,
//! with one `write` each where the system allows, so neither cuts into
//! the other.

use std::io::Write;
use std::sync::Mutex;

/// The line shown now, if any.
static STATUS: Mutex<Option<String>> = Mutex::new(None);

/// Erases the terminal line the cursor is on, from its start.
const CLEAR_LINE: &str = "\r\x1b[K";

/// Shows `line` as the status line (redrawn in place; the cursor stays at
/// its end). For a terminal only: the caller checks that stderr is one.
pub fn show_status(line: &str) {
    let mut status = STATUS.lock().unwrap_or_else(|e| e.into_inner());
    let mut err = std::io::stderr().lock();
    // A closed stderr must not stop the caller.
    let _ = err.write_all(format!("{CLEAR_LINE}{line}").as_bytes());
    *status = Some(line.to_owned());
}

/// Ends the status line: its last text stays on the terminal, followed by
/// a line end; later records are printed as plain lines again.
pub fn end_status() {
    let mut status = STATUS.lock().unwrap_or_else(|e| e.into_inner());
    if status.take().is_some() {
        let _ = writeln!(std::io::stderr().lock());
    }
}

/// Prints one echoed log line on stderr, above the status line if one is
/// shown.
pub(crate) fn echo(text: &dyn std::fmt::Display) {
    let status = STATUS.lock().unwrap_or_else(|e| e.into_inner());
    let mut err = std::io::stderr().lock();
    let bytes = match &*status {
        Some(line) => format!("{CLEAR_LINE}{text}\n{line}"),
        None => format!("{text}\n"),
    };
    let _ = err.write_all(bytes.as_bytes());
}
