//! One delivery attempt: what its result says (MailerQ's `state` and
//! `result`), the SMTP conversation with the relay, and the
//! `smtp_out_data` / `smtp_out_sent` chains at DATA.

use super::properties::Plan;
use super::relay::{Broken, Relay, Reply};
use super::*;
use crate::api::{Event, Host};
use crate::observe::Priority;
use crate::runtime::message::Direction;
use serde_json::{Map, Value};
use std::os::fd::AsRawFd;

/// Where in the attempt a result arose: the `state` of a result in
/// MailerQ's result JSON, with MailerQ's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Before any connection: the message cannot be sent as it is
    /// (no recipient, an address no SMTP command can carry), or it expired.
    Process,
    /// Its MIME, kept apart under its `key`, cannot be read.
    Storage,
    /// Its nested `mime` object would have to be made into MIME.
    Responsive,
    /// The relay's name cannot be resolved.
    Dns,
    /// Setting up the TCP connection.
    Connect,
    /// Waiting for the relay's greeting.
    Intro,
    /// `EHLO` was sent.
    Ehlo,
    /// `HELO` was sent (after the relay refused `EHLO`).
    Helo,
    /// `MAIL FROM` was sent.
    Mailfrom,
    /// `RCPT TO` was sent.
    Rcptto,
    /// `DATA` was sent (and, after its `354`, the data is on its way).
    Data,
    /// The message's data and its final `.` were sent: the final reply.
    Message,
}

impl Step {
    /// The name in the result JSON.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Step::Process => "process",
            Step::Storage => "storage",
            Step::Responsive => "responsive",
            Step::Dns => "dns",
            Step::Connect => "connect",
            Step::Intro => "intro",
            Step::Ehlo => "ehlo",
            Step::Helo => "helo",
            Step::Mailfrom => "mailfrom",
            Step::Rcptto => "rcptto",
            Step::Data => "data",
            Step::Message => "message",
        }
    }

    /// Whether a refusal here is about the connection (busy, our name), not
    /// about this message: such a refusal is retried.
    fn speaks_of_the_connection(self) -> bool {
        matches!(self, Step::Intro | Step::Ehlo | Step::Helo)
    }
}

/// The `result` of a result in MailerQ's result JSON: what kind of answer
/// ended the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// The relay accepted the message (only with [`Step::Message`]).
    Accepted,
    /// No answer came in time.
    Timeout,
    /// The connection was lost while waiting for an answer.
    Lost,
    /// An answer came, but it is not a valid SMTP reply.
    Invalid,
    /// A valid reply refused, or the host found an error of its own.
    Error,
}

impl Kind {
    /// The name in the result JSON.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Kind::Accepted => "accepted",
            Kind::Timeout => "timeout",
            Kind::Lost => "lost",
            Kind::Invalid => "invalid",
            Kind::Error => "error",
        }
    }
}

/// What the attempt learnt of its connection, for the result's `mta`,
/// `from`, `to`, `messages`, `sent` and `dsn`.
#[derive(Debug, Clone, Default)]
pub(super) struct Connected {
    /// The relay's name, from its greeting.
    pub(super) mta: Option<String>,
    /// Our side's IP address.
    pub(super) from: Option<String>,
    /// The relay's IP address.
    pub(super) to: Option<String>,
    /// Bytes written to the connection (commands and data).
    pub(super) sent: u64,
    /// Bytes of the message's data written (dot-stuffed, CRLF lines,
    /// without the final `.`).
    pub(super) data: u64,
    /// The relay announced `DSN` in its reply to `EHLO`.
    pub(super) dsn: bool,
}

/// One attempt's result, before it is recorded.
pub(super) struct Attempt {
    pub(super) status: Status,
    pub(super) state: Step,
    pub(super) kind: Kind,
    pub(super) reply: Option<Box<Reply>>,
    pub(super) error: Option<String>,
    /// Set once a TCP connection was made.
    pub(super) connected: Option<Box<Connected>>,
    /// The header of the MIME sent, or else of the message's MIME, for
    /// the result's `extracted`.
    pub(super) mime_head: Option<Vec<u8>>,
    /// The message's JSON as the `smtp_out_data` hooks left it (changed
    /// through `MQ_json`), when they ran: what the result carries.
    pub(super) message: Option<Box<Map<String, Value>>>,
}

impl Attempt {
    pub(super) fn error(status: Status, state: Step, error: impl Into<Broken>) -> Attempt {
        let Broken { text, kind } = error.into();
        Attempt {
            status,
            state,
            kind,
            reply: None,
            error: Some(text),
            connected: None,
            mime_head: None,
            message: None,
        }
    }

    /// The status a reply means: 2xx success, 4xx retry, anything else
    /// failure.
    pub(super) fn from_reply(state: Step, reply: Reply) -> Attempt {
        let (status, kind) = match reply.code / 100 {
            2 => (Status::Success, Kind::Accepted),
            4 => (Status::Retry, Kind::Error),
            _ => (Status::Failure, Kind::Error),
        };
        Attempt {
            status,
            state,
            kind,
            reply: Some(Box::new(reply)),
            error: None,
            connected: None,
            mime_head: None,
            message: None,
        }
    }

    /// The attempt ended because the relay took too long.
    pub(super) fn timed_out(&self) -> bool {
        self.kind == Kind::Timeout
    }
}

/// One delivery attempt of `message` to the relay (`plan.relay`), with
/// the out hooks; the relay connection too while the conversation is still
/// in step (for a polite `QUIT` once the result is recorded).
pub(super) fn attempt(
    host: &Host,
    outbox: &Outbox,
    config: &DeliveryConfig,
    message: &Map<String, Value>,
    plan: &Plan,
) -> (Attempt, Option<Relay>) {
    let envelope = message
        .get("envelope")
        .and_then(Value::as_str)
        .unwrap_or("");
    let recipient = match message.get("recipient").and_then(Value::as_str) {
        Some(r) if !r.trim().is_empty() => r,
        _ => {
            let e = Broken::invalid("the message has no `recipient`");
            return (Attempt::error(Status::Failure, Step::Process, e), None);
        }
    };
    for (what, address) in [("envelope", envelope), ("recipient", recipient)] {
        if let Some(bad) = address
            .chars()
            .find(|c| matches!(c, '\r' | '\n' | '\0' | '<' | '>'))
        {
            let e = format!("the message's `{what}` holds {bad:?}, which no SMTP address may");
            let e = Broken::invalid(e);
            return (Attempt::error(Status::Failure, Step::Process, e), None);
        }
    }
    // Its `mime` string, or the data kept apart under its `key`.
    let mime = match crate::store::mime::message_mime(&outbox.data_dir, message) {
        Ok(mime) => mime.map(|mime| plan.edit_mime(mime)),
        Err(e) => {
            let status = match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidInput => Status::Failure,
                _ => Status::Retry,
            };
            let e = format!("the message's MIME cannot be read: {e}");
            return (Attempt::error(status, Step::Storage, e), None);
        }
    };
    let head = mime.as_deref().map(mime_head);
    let mut relay = match Relay::connect(config, &plan.relay) {
        Ok(relay) => relay,
        Err((step, e)) => {
            let mut attempt = Attempt::error(Status::Retry, step, e);
            attempt.mime_head = head;
            return (attempt, None);
        }
    };
    match outbox.track(relay.reader.get_ref().socket()) {
        Some(tracked) => relay.tracked = Some(tracked),
        None => {
            let e = "the host is stopping";
            return (Attempt::error(Status::Retry, Step::Connect, e), None);
        }
    }
    let addresses = (envelope, recipient);
    let mut attempt = converse(host, config, &mut relay, message, mime, addresses);
    attempt.connected = Some(Box::new(relay.connected()));
    attempt.mime_head = relay.sent_head.take().or(head);
    // After an error the connection is broken, or aborted in DATA: it is
    // only closed.
    let relay = attempt.error.is_none().then_some(relay);
    (attempt, relay)
}

/// The header of `mime`: up to its first empty line.
pub(super) fn mime_head(mime: &[u8]) -> Vec<u8> {
    let end = [&b"\r\n\r\n"[..], b"\n\n"]
        .iter()
        .filter_map(|blank| mime.windows(blank.len()).position(|w| w == *blank))
        .min()
        .unwrap_or(mime.len());
    mime[..end].to_vec()
}

/// The conversation with the relay, from its greeting to its reply after
/// the message's data.
fn converse(
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
    let mut changed = None;
    if let Err(mut stop) = send_message(host, relay, message, mime, &mut changed) {
        stop.message = changed;
        return stop;
    }
    let mut attempt = match relay.read_reply("the relay's reply to the message's data") {
        Ok(reply) => Attempt::from_reply(Step::Message, reply),
        Err(e) => Attempt::error(Status::Retry, Step::Message, e),
    };
    attempt.message = changed;
    attempt
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
            if a.status == Status::Success {
                a.kind = Kind::Invalid;
                a.status = Status::Retry;
            }
            if step.speaks_of_the_connection() {
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
    let greeting = relay.read_reply("the relay's greeting");
    if let Ok(greeting) = &greeting {
        // Its name: the greeting's first word.
        let name = greeting.text.split_whitespace().next();
        relay.connected.mta = name.map(str::to_owned);
    }
    expect(Step::Intro, greeting, 2)?;
    match relay.command(&format!("EHLO {}", config.helo)) {
        Ok(reply) if reply.code / 100 == 5 => {
            let helo = relay.command(&format!("HELO {}", config.helo));
            expect(Step::Helo, helo, 2)?;
        }
        reply => {
            let reply = expect(Step::Ehlo, reply, 2)?;
            relay.connected.dsn = reply.lines.iter().any(|line| {
                let keyword = line.split_whitespace().next().unwrap_or("");
                keyword.eq_ignore_ascii_case("DSN")
            });
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
/// sent, then `smtp_out_sent`. The hooks' connection has the relay's
/// socket as its descriptor (`MQ_fileDescriptor`).
///
/// `changed` gets the message's JSON as the `smtp_out_data` hooks left
/// it, for the result — with the message's own `mime`/`key`: a MIME a
/// plugin set changes what is sent in this attempt, not what is stored.
fn send_message(
    host: &Host,
    relay: &mut Relay,
    message: &Map<String, Value>,
    mime: Option<Vec<u8>>,
    changed: &mut Option<Box<Map<String, Value>>>,
) -> Result<(), Attempt> {
    let cannot_run = |e| {
        Attempt::error(
            Status::Retry,
            Step::Data,
            format!("the host cannot run smtp_out_data: {e}"),
        )
    };
    let fd = relay.reader.get_ref().socket().as_raw_fd();
    let mut session = host
        .open_socket(Direction::Outgoing, fd)
        .map_err(cannot_run)?;
    let json = Value::Object(message.clone());
    let event = match mime {
        Some(mime) => Event::OutDataWithMime(json, mime),
        None => Event::OutData(json),
    };
    let mime = match session.run(event) {
        Ok(out) => {
            if let Some(Value::Object(mut json)) = out.message {
                for stored in ["mime", "key"] {
                    match message.get(stored) {
                        Some(value) => json.insert(stored.to_owned(), value.clone()),
                        None => json.remove(stored),
                    };
                }
                *changed = Some(Box::new(json));
            }
            out.smtp.and_then(|smtp| smtp.mime)
        }
        Err(e) => return Err(cannot_run(e)),
    };
    let Some(mime) = mime else {
        // Closing the connection in DATA aborts the transaction.
        let _ = session.close();
        return Err(Attempt::error(
            Status::Failure,
            Step::Storage,
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
