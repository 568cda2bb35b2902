//! One delivery attempt: the SMTP conversation with the relay, and the
//! `smtp_out_data` / `smtp_out_sent` chains at DATA.

use super::timed::{is_timeout, seconds, TimedStream};
use super::*;
use crate::api::{Event, Host};
use crate::observe::Priority;
use crate::runtime::message::Direction;
use serde_json::{Map, Value};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Where in the attempt a result arose: the `state` of a result in
/// MailerQ's result JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Before any connection: the message itself cannot be sent.
    Message,
    Connect,
    Greeting,
    /// EHLO, or HELO after a refused EHLO.
    Ehlo,
    Mailfrom,
    Rcptto,
    Data,
    /// The reply after the message's data.
    Sent,
}

impl Step {
    /// The name in the result JSON.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Step::Message => "message",
            Step::Connect => "connect",
            Step::Greeting => "greeting",
            Step::Ehlo => "ehlo",
            Step::Mailfrom => "mailfrom",
            Step::Rcptto => "rcptto",
            Step::Data => "data",
            Step::Sent => "sent",
        }
    }

    /// Whether a refusal here is about the connection (busy, our name), not
    /// about this message: such a refusal is retried.
    fn speaks_of_the_connection(self) -> bool {
        matches!(self, Step::Greeting | Step::Ehlo)
    }
}

/// One attempt's result, before it is recorded.
pub(super) struct Attempt {
    pub(super) status: Status,
    pub(super) state: Step,
    pub(super) reply: Option<Reply>,
    pub(super) error: Option<String>,
    /// The attempt ended because the relay took too long.
    pub(super) timed_out: bool,
}

impl Attempt {
    pub(super) fn error(status: Status, state: Step, error: impl Into<Broken>) -> Attempt {
        let Broken { text, timed_out } = error.into();
        Attempt {
            status,
            state,
            reply: None,
            error: Some(text),
            timed_out,
        }
    }

    /// The status a reply means: 2xx success, 4xx retry, anything else
    /// failure.
    pub(super) fn from_reply(state: Step, reply: Reply) -> Attempt {
        let status = match reply.code / 100 {
            2 => Status::Success,
            4 => Status::Retry,
            _ => Status::Failure,
        };
        Attempt {
            status,
            state,
            reply: Some(reply),
            error: None,
            timed_out: false,
        }
    }
}

/// Why the conversation with the relay broke off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Broken {
    /// What happened, for the result's `description`.
    pub(super) text: String,
    /// A step took longer than its limit.
    pub(super) timed_out: bool,
}

impl Broken {
    /// `what` took longer than `limit` (named by `limit_name`).
    fn timed_out(what: &str, limit: Duration, limit_name: &str, progress: String) -> Broken {
        Broken {
            text: format!(
                "{what} timed out after {} (the {limit_name}){progress}",
                seconds(limit)
            ),
            timed_out: true,
        }
    }
}

impl From<String> for Broken {
    fn from(text: String) -> Broken {
        Broken {
            text,
            timed_out: false,
        }
    }
}

impl From<&str> for Broken {
    fn from(text: &str) -> Broken {
        text.to_owned().into()
    }
}

/// A relay's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reply {
    pub(super) code: u16,
    /// The enhanced status code (`2.0.0`), if the relay gave one.
    pub(super) extended: Option<String>,
    /// The reply's text, lines joined with a space, without the codes.
    pub(super) text: String,
}

/// An SMTP client connection to the relay (blocking, with deadlines: each
/// reply within `reply_timeout`, the message's data within `send_timeout`).
pub(super) struct Relay {
    pub(super) reader: BufReader<TimedStream>,
    pub(super) writer: BufWriter<TimedStream>,
    pub(super) reply_timeout: Duration,
    pub(super) send_timeout: Duration,
    /// Lets a shutdown cut this connection.
    pub(super) tracked: Option<Tracked>,
}

/// The longest reply line read from a relay (RFC 5321 allows 512 octets).
pub(super) const LONGEST_REPLY_LINE: usize = 4096;

/// The most lines a relay's reply may have.
pub(super) const MOST_REPLY_LINES: usize = 100;

impl Relay {
    /// Connects to the relay: every address it resolves to in turn, all
    /// within `connect_timeout` together. (Resolving the name is not
    /// bounded: the system resolver has its own timeouts.)
    pub(super) fn connect(config: &DeliveryConfig) -> Result<Relay, Broken> {
        let started = Instant::now();
        let addrs = config
            .relay
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve relay {}: {e}", config.relay))?;
        let mut last = Broken::from(format!("relay {} has no address", config.relay));
        for addr in addrs {
            let left = config.connect_timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(stream) => {
                    let writer = stream.try_clone().map_err(|e| e.to_string())?;
                    return Ok(Relay {
                        reader: BufReader::new(TimedStream::new(stream, config.reply_timeout)),
                        writer: BufWriter::new(TimedStream::new(writer, config.reply_timeout)),
                        reply_timeout: config.reply_timeout,
                        send_timeout: config.send_timeout,
                        tracked: None,
                    });
                }
                Err(e) if is_timeout(&e) => {
                    let what = format!("connecting to relay {addr}");
                    let limit = config.connect_timeout;
                    last = Broken::timed_out(&what, limit, "connect timeout", String::new());
                }
                Err(e) => last = format!("cannot connect to relay {addr}: {e}").into(),
            }
        }
        Err(last)
    }

    /// One reply (all its lines) within `reply_timeout` for the whole
    /// reply, however the relay spreads its bytes; lines longer than
    /// [`LONGEST_REPLY_LINE`] or replies of more than [`MOST_REPLY_LINES`]
    /// lines are errors. `what` names the reply in errors ("the relay's
    /// reply to EHLO").
    pub(super) fn read_reply(&mut self, what: &str) -> Result<Reply, Broken> {
        self.reader.get_mut().limit(self.reply_timeout);
        let mut text = Vec::new();
        let mut extended = None;
        for _ in 0..MOST_REPLY_LINES {
            let mut line = Vec::new();
            let read = std::io::Read::take(&mut self.reader, LONGEST_REPLY_LINE as u64)
                .read_until(b'\n', &mut line);
            match read {
                Ok(0) => return Err("the relay closed the connection".into()),
                Ok(_) if line.last() != Some(&b'\n') => {
                    if line.len() >= LONGEST_REPLY_LINE {
                        return Err("the relay sent a reply line that is too long".into());
                    }
                    return Err("the relay closed the connection".into());
                }
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {
                    let came = self.reader.get_ref().moved();
                    let progress = format!("; {came} byte(s) of it had come");
                    let limit = self.reply_timeout;
                    return Err(Broken::timed_out(what, limit, "reply timeout", progress));
                }
                Err(e) => return Err(format!("reading from the relay: {e}").into()),
            }
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            let (code, more, rest) = parse_reply_line(line)
                .ok_or_else(|| format!("the relay sent a malformed reply: {line:?}"))?;
            let (ext, rest) = split_extended(rest);
            if extended.is_none() {
                extended = ext;
            }
            if !rest.is_empty() {
                text.push(rest.to_owned());
            }
            if !more {
                return Ok(Reply {
                    code,
                    extended,
                    text: text.join(" "),
                });
            }
        }
        Err(format!("the relay sent a reply of more than {MOST_REPLY_LINES} lines").into())
    }

    /// `QUIT`, waiting briefly for the answer; the result is already known.
    pub(super) fn quit(&mut self) {
        self.reply_timeout = self.reply_timeout.min(Duration::from_secs(5));
        let _ = self.command("QUIT");
    }

    /// Sends the command `line` (writing it, too, within `reply_timeout`),
    /// then reads its reply.
    pub(super) fn command(&mut self, line: &str) -> Result<Reply, Broken> {
        let verb = line.split([' ', ':']).next().unwrap_or(line);
        self.writer.get_mut().limit(self.reply_timeout);
        self.writer
            .write_all(line.as_bytes())
            .and_then(|_| self.writer.write_all(b"\r\n"))
            .and_then(|_| self.writer.flush())
            .map_err(|e| {
                if !is_timeout(&e) {
                    return format!("writing to the relay: {e}").into();
                }
                let what = format!("sending {verb} to the relay");
                Broken::timed_out(&what, self.reply_timeout, "reply timeout", String::new())
            })?;
        self.read_reply(&format!("the relay's reply to {verb}"))
    }

    /// Sends `mime` as DATA content, all within `send_timeout` however
    /// slowly the relay reads: every line end (CRLF, or a bare LF or CR)
    /// sent as CRLF, lines starting with `.` dot-stuffed, a final CRLF
    /// added if missing, then `.`. A bare CR never reaches the relay, so
    /// no relay can read an end of data into the content.
    pub(super) fn send_data(&mut self, mime: &[u8]) -> Result<(), Broken> {
        self.writer.get_mut().limit(self.send_timeout);
        let w = &mut self.writer;
        let mut write = || -> std::io::Result<()> {
            let mut at_line_start = true;
            let mut i = 0;
            while i < mime.len() {
                let b = mime[i];
                if at_line_start && b == b'.' {
                    w.write_all(b".")?;
                }
                match b {
                    b'\r' => {
                        // CRLF, or a bare CR: one line end either way.
                        if mime.get(i + 1) == Some(&b'\n') {
                            i += 1;
                        }
                        w.write_all(b"\r\n")?;
                        at_line_start = true;
                    }
                    b'\n' => {
                        w.write_all(b"\r\n")?;
                        at_line_start = true;
                    }
                    _ => {
                        w.write_all(&[b])?;
                        at_line_start = false;
                    }
                }
                i += 1;
            }
            if !at_line_start {
                w.write_all(b"\r\n")?;
            }
            w.write_all(b".\r\n")?;
            w.flush()
        };
        write().map_err(|e| {
            if !is_timeout(&e) {
                return format!("sending the message to the relay: {e}").into();
            }
            let sent = self.writer.get_ref().moved();
            let progress = format!(
                "; {sent} byte(s) had gone out, of a message of {} byte(s)",
                mime.len()
            );
            let what = "sending the message's data to the relay";
            Broken::timed_out(what, self.send_timeout, "send timeout", progress)
        })
    }
}

/// `250-text` → (250, true, "text"); `250 text` or `250` → (250, false, ..).
pub(super) fn parse_reply_line(line: &str) -> Option<(u16, bool, &str)> {
    let code = line.get(..3)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u16 = code.parse().ok()?;
    match line.as_bytes().get(3) {
        None => Some((code, false, "")),
        Some(b'-') => Some((code, true, &line[4..])),
        Some(b' ') => Some((code, false, &line[4..])),
        Some(_) => None,
    }
}

/// `2.1.0 Ok` → (Some("2.1.0"), "Ok").
pub(super) fn split_extended(text: &str) -> (Option<String>, &str) {
    let (first, rest) = text.split_once(' ').unwrap_or((text, ""));
    let parts: Vec<_> = first.split('.').collect();
    let extended = parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    if extended {
        (Some(first.to_owned()), rest.trim_start())
    } else {
        (None, text)
    }
}

/// One delivery attempt of `message` to the relay, with the out hooks;
/// the relay connection too while the conversation is still in step (for
/// a polite `QUIT` once the result is recorded).
pub(super) fn attempt(
    host: &Host,
    outbox: &Outbox,
    config: &DeliveryConfig,
    message: &Map<String, Value>,
) -> (Attempt, Option<Relay>) {
    let envelope = message
        .get("envelope")
        .and_then(Value::as_str)
        .unwrap_or("");
    let recipient = match message.get("recipient").and_then(Value::as_str) {
        Some(r) if !r.trim().is_empty() => r,
        _ => {
            let e = "the message has no `recipient`";
            return (Attempt::error(Status::Failure, Step::Message, e), None);
        }
    };
    for (what, address) in [("envelope", envelope), ("recipient", recipient)] {
        if let Some(bad) = address
            .chars()
            .find(|c| matches!(c, '\r' | '\n' | '\0' | '<' | '>'))
        {
            let e = format!("the message's `{what}` holds {bad:?}, which no SMTP address may");
            return (Attempt::error(Status::Failure, Step::Message, e), None);
        }
    }
    // Its `mime` string, or the data kept apart under its `key`.
    let mime = match crate::store::mime::message_mime(&outbox.data_dir, message) {
        Ok(mime) => mime,
        Err(e) => {
            let status = match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidInput => Status::Failure,
                _ => Status::Retry,
            };
            let e = format!("the message's MIME cannot be read: {e}");
            return (Attempt::error(status, Step::Message, e), None);
        }
    };
    let mut relay = match Relay::connect(config) {
        Ok(relay) => relay,
        Err(e) => return (Attempt::error(Status::Retry, Step::Connect, e), None),
    };
    match outbox.track(relay.reader.get_ref().socket()) {
        Some(tracked) => relay.tracked = Some(tracked),
        None => {
            let e = "the host is stopping";
            return (Attempt::error(Status::Retry, Step::Connect, e), None);
        }
    }
    let addresses = (envelope, recipient);
    let attempt = converse(host, config, &mut relay, message, mime, addresses);
    // After an error the connection is broken, or aborted in DATA: it is
    // only closed.
    let relay = attempt.error.is_none().then_some(relay);
    (attempt, relay)
}

/// The conversation with the relay, from its greeting to its reply after
/// the message's data.
pub(super) fn converse(
    host: &Host,
    config: &DeliveryConfig,
    relay: &mut Relay,
    message: &Map<String, Value>,
    mime: Option<Vec<u8>>,
    (envelope, recipient): (&str, &str),
) -> Attempt {
    if let Err(stop) = open_data(config, relay, envelope, recipient) {
        return stop;
    }
    if let Err(stop) = send_message(host, relay, message, mime) {
        return stop;
    }
    match relay.read_reply("the relay's reply to the message's data") {
        Ok(reply) => Attempt::from_reply(Step::Sent, reply),
        Err(e) => Attempt::error(Status::Retry, Step::Sent, e),
    }
}

/// The reply to `step`, if its class is `want` (2 for 2xx, 3 for 3xx);
/// otherwise the attempt ends with it.
fn expect(step: Step, reply: Result<Reply, Broken>, want: u16) -> Result<Reply, Attempt> {
    match reply {
        Ok(reply) if reply.code / 100 == want => Ok(reply),
        Ok(reply) => {
            let mut a = Attempt::from_reply(step, reply);
            // A 2xx where a 354 was due: the relay is confused. A 5xx to
            // the greeting or EHLO/HELO speaks of the connection (busy, our
            // name), not of this message.
            if a.status == Status::Success || step.speaks_of_the_connection() {
                a.status = Status::Retry;
            }
            Err(a)
        }
        Err(e) => Err(Attempt::error(Status::Retry, step, e)),
    }
}

/// Greeting, EHLO (HELO if refused), MAIL FROM, RCPT TO and DATA: on `Ok`
/// the relay waits for the message's data.
fn open_data(
    config: &DeliveryConfig,
    relay: &mut Relay,
    envelope: &str,
    recipient: &str,
) -> Result<(), Attempt> {
    expect(Step::Greeting, relay.read_reply("the relay's greeting"), 2)?;
    match relay.command(&format!("EHLO {}", config.helo)) {
        Ok(reply) if reply.code / 100 == 5 => {
            let helo = relay.command(&format!("HELO {}", config.helo));
            expect(Step::Ehlo, helo, 2)?;
        }
        reply => {
            expect(Step::Ehlo, reply, 2)?;
        }
    }
    let mail = relay.command(&format!("MAIL FROM:<{envelope}>"));
    expect(Step::Mailfrom, mail, 2)?;
    let rcpt = relay.command(&format!("RCPT TO:<{recipient}>"));
    expect(Step::Rcptto, rcpt, 2)?;
    expect(Step::Data, relay.command("DATA"), 3)?;
    Ok(())
}

/// In the DATA state: `smtp_out_data` (which may set the MIME), the data
/// sent, then `smtp_out_sent`.
fn send_message(
    host: &Host,
    relay: &mut Relay,
    message: &Map<String, Value>,
    mime: Option<Vec<u8>>,
) -> Result<(), Attempt> {
    let cannot_run = |e| {
        Attempt::error(
            Status::Retry,
            Step::Data,
            format!("the host cannot run smtp_out_data: {e}"),
        )
    };
    let mut session = host.open(Direction::Outgoing).map_err(cannot_run)?;
    let json = Value::Object(message.clone());
    let event = match mime {
        Some(mime) => Event::OutDataWithMime(json, mime),
        None => Event::OutData(json),
    };
    let mime = match session.run(event) {
        Ok(out) => out.smtp.and_then(|smtp| smtp.mime),
        Err(e) => return Err(cannot_run(e)),
    };
    let Some(mime) = mime else {
        // Closing the connection in DATA aborts the transaction.
        let _ = session.close();
        return Err(Attempt::error(
            Status::Failure,
            Step::Data,
            "the message has no `mime` and no plugin set one in smtp_out_data",
        ));
    };
    if let Err(e) = relay.send_data(&mime) {
        let _ = session.close();
        return Err(Attempt::error(Status::Retry, Step::Data, e));
    }
    let sent = session.run(Event::OutSent);
    let _ = session.close();
    if let Err(e) = sent {
        host.host_log(
            Priority::Warning,
            format!("delivery: smtp_out_sent did not run: {e}"),
        );
    }
    Ok(())
}
