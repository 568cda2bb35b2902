//! Batch mode: MailerQ JSON messages, one per line, through the message
//! hooks; the resulting JSON, one per line.
//!
//! Incoming (the default), each message is one SMTP session as the host's
//! SMTP server would run it: `smtp_in_connect`, `smtp_in_mailfrom` (the
//! `envelope`), `smtp_in_rcptto` (the `recipient`), `smtp_in_data` (the
//! `mime`), `smtp_in_message`, `smtp_in_close`. A plugin that answers a
//! step with a 4xx/5xx reply refuses the message there. Outgoing, each
//! message runs `smtp_out_data` then `smtp_out_sent`, as a delivery would.
//!
//! Every input line gives exactly one output line: the message after the
//! hooks with a `result` object (`queue`: `inbox`, `local` or `refused`,
//! with `stage` and `reply` when refused; for outgoing messages `smtp`:
//! what would be sent), or for an unusable line (not UTF-8, not JSON, not
//! a JSON object) `{"error": ..., "line": N}`; the lines after it still
//! run. Blank lines are skipped; nothing else is dropped silently. An
//! incoming message whose MIME a plugin made 8-bit (not UTF-8) is such an
//! error line too: a JSON string cannot carry it byte for byte, and the
//! host does not make it lossy.

use crate::api::{Event, EventResult, Host, RunError};
use crate::runtime::message::Direction;
use serde_json::{json, Map, Value};
use std::io::{BufRead, Write};

/// Totals of a batch run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Input lines with a message.
    pub messages: u64,
    /// Messages accepted (incoming) or processed (outgoing).
    pub accepted: u64,
    /// Messages a plugin refused.
    pub refused: u64,
    /// Lines that were not a JSON object, and messages whose run failed.
    pub errors: u64,
}

/// Why a batch run stopped.
#[derive(Debug)]
pub enum BatchError {
    /// Reading the input or writing the output failed.
    Io(std::io::Error),
    /// The host could not run an event (its workers stopped).
    Run(RunError),
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Io(e) => write!(f, "i/o error: {e}"),
            BatchError::Run(e) => write!(f, "the host failed: {e}"),
        }
    }
}

impl std::error::Error for BatchError {}

impl From<std::io::Error> for BatchError {
    fn from(e: std::io::Error) -> Self {
        BatchError::Io(e)
    }
}

/// Runs every line of `input` through the host and writes one line each to
/// `output`.
pub fn run_jsonl(
    host: &Host,
    direction: Direction,
    input: impl BufRead,
    mut output: impl Write,
) -> Result<RunSummary, BatchError> {
    let mut summary = RunSummary::default();
    for (number, line) in lines(input).enumerate() {
        let line = line?;
        let parsed = match std::str::from_utf8(&line) {
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => serde_json::from_str::<Value>(text).map_err(|e| format!("not JSON: {e}")),
            Err(e) => Err(format!("not UTF-8: {e}")),
        };
        let result = match parsed {
            Ok(Value::Object(message)) => {
                summary.messages += 1;
                let outcome = match direction {
                    Direction::Incoming => incoming(host, message),
                    Direction::Outgoing => outgoing(host, message),
                };
                match outcome {
                    Ok((value, refused)) => {
                        if refused {
                            summary.refused += 1;
                        } else {
                            summary.accepted += 1;
                        }
                        value
                    }
                    Err(RunError::WorkerGone) => return Err(BatchError::Run(RunError::WorkerGone)),
                    Err(e) => {
                        summary.errors += 1;
                        json!({"error": e.to_string(), "line": number + 1})
                    }
                }
            }
            Ok(_) => {
                summary.errors += 1;
                json!({"error": "a MailerQ message must be a JSON object", "line": number + 1})
            }
            Err(error) => {
                summary.errors += 1;
                json!({"error": error, "line": number + 1})
            }
        };
        serde_json::to_writer(&mut output, &result).map_err(std::io::Error::from)?;
        output.write_all(b"\n")?;
    }
    output.flush()?;
    Ok(summary)
}

/// The lines of `input` as bytes, without their `\n` or `\r\n`: a line
/// that is not UTF-8 is that line's problem, not the whole input's.
fn lines(mut input: impl BufRead) -> impl Iterator<Item = std::io::Result<Vec<u8>>> {
    std::iter::from_fn(move || {
        let mut line = Vec::new();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => None,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                Some(Ok(line))
            }
            Err(e) => Some(Err(e)),
        }
    })
}

fn text(message: &Map<String, Value>, key: &str) -> String {
    message
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn refusal(mut message: Map<String, Value>, step: &EventResult) -> (Value, bool) {
    message.insert(
        "result".into(),
        crate::inbound::refused(step.hook, step.reply().as_deref()),
    );
    (Value::Object(message), true)
}

fn incoming(host: &Host, message: Map<String, Value>) -> Result<(Value, bool), RunError> {
    let mut session = host.open(Direction::Incoming)?;
    let steps = [
        Event::Connect,
        Event::MailFrom(text(&message, "envelope")),
        Event::RcptTo(text(&message, "recipient")),
        Event::Data(text(&message, "mime").into_bytes()),
    ];
    let mut recipient_local = false;
    for step in steps {
        let is_rcpt = matches!(step, Event::RcptTo(_));
        let result = session.run(step)?;
        if result.refused() {
            session.close()?;
            return Ok(refusal(message, &result));
        }
        if is_rcpt {
            recipient_local = result.local.unwrap_or(false);
        }
    }
    let result = session.run(Event::Message(Value::Object(message.clone())))?;
    session.close()?;
    if result.refused() {
        return Ok(refusal(message, &result));
    }
    // Never a lossy `mime`: 8-bit MIME a plugin set is reported instead.
    if let Some(mime) = result.mime.as_deref() {
        if std::str::from_utf8(mime).is_err() {
            return Err(RunError::MimeNotUtf8 { bytes: mime.len() });
        }
    }
    let Some(Value::Object(mut changed)) = result.message else {
        unreachable!("message events return the message")
    };
    let local = recipient_local || result.local.unwrap_or(false);
    changed.insert("result".into(), crate::inbound::accepted(local));
    Ok((Value::Object(changed), false))
}

fn outgoing(host: &Host, message: Map<String, Value>) -> Result<(Value, bool), RunError> {
    let mut session = host.open(Direction::Outgoing)?;
    session.run(Event::OutData(Value::Object(message)))?;
    let sent = session.run(Event::OutSent)?;
    session.close()?;
    let Some(Value::Object(mut stored)) = sent.message else {
        unreachable!("message events return the message")
    };
    let smtp = sent.smtp.expect("outgoing messages have an SMTP view");
    stored.insert(
        "result".into(),
        json!({
            "stage": "smtp_out_sent",
            "smtp": {
                "envelope": smtp.envelope,
                "recipient": smtp.recipient,
                "mime": smtp.mime.map(|m| String::from_utf8_lossy(&m).into_owned()),
            }
        }),
    );
    Ok((Value::Object(stored), false))
}
