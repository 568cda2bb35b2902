//! The SMTP client connection to the relay: commands, replies and the
//! message's data, each within its deadline.

use super::attempt::{Connected, Kind, Step};
use super::timed::{is_timeout, seconds, TimedStream};
use super::*;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Why the conversation with the relay broke off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Broken {
    /// What happened, for the result's `description`.
    pub(super) text: String,
    /// The result's `result`: `timeout`, `lost`, `invalid` or `error`.
    pub(super) kind: Kind,
}

impl Broken {
    /// `what` took longer than `limit` (named by `limit_name`).
    fn timed_out(what: &str, limit: Duration, limit_name: &str, progress: String) -> Broken {
        Broken {
            text: format!(
                "{what} timed out after {} (the {limit_name}){progress}",
                seconds(limit)
            ),
            kind: Kind::Timeout,
        }
    }

    /// The connection broke: `lost`.
    pub(super) fn lost(text: impl Into<String>) -> Broken {
        Broken {
            text: text.into(),
            kind: Kind::Lost,
        }
    }

    /// The relay's answer is not SMTP: `invalid`.
    pub(super) fn invalid(text: impl Into<String>) -> Broken {
        Broken {
            text: text.into(),
            kind: Kind::Invalid,
        }
    }
}

impl From<String> for Broken {
    fn from(text: String) -> Broken {
        Broken {
            text,
            kind: Kind::Error,
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
    /// The text of each line, without the codes (EHLO's keywords).
    pub(super) lines: Vec<String>,
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
    /// What the result tells of the connection.
    pub(super) connected: Connected,
    /// The header of the MIME sent, once it is.
    pub(super) sent_head: Option<Vec<u8>>,
}

/// The longest reply line read from a relay (RFC 5321 allows 512 octets).
pub(super) const LONGEST_REPLY_LINE: usize = 4096;

/// The most lines a relay's reply may have.
pub(super) const MOST_REPLY_LINES: usize = 100;

impl Relay {
    /// Connects to the relay: every address it resolves to in turn, all
    /// within `connect_timeout` together. (Resolving the name is not
    /// bounded: the system resolver has its own timeouts.)
    /// `target` is `host:port`; an error comes with its step (`dns` or
    /// `connect`).
    pub(super) fn connect(config: &DeliveryConfig, target: &str) -> Result<Relay, (Step, Broken)> {
        let started = Instant::now();
        let addrs = target.to_socket_addrs().map_err(|e| {
            let e = Broken::from(format!("cannot resolve relay {target}: {e}"));
            (Step::Dns, e)
        })?;
        let mut last = Broken::from(format!("relay {target} has no address"));
        for addr in addrs {
            let left = config.connect_timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(stream) => {
                    let writer = stream
                        .try_clone()
                        .map_err(|e| (Step::Connect, e.to_string().into()))?;
                    let connected = Connected {
                        from: stream.local_addr().ok().map(|a| a.ip().to_string()),
                        to: Some(addr.ip().to_string()),
                        ..Connected::default()
                    };
                    return Ok(Relay {
                        reader: BufReader::new(TimedStream::new(stream, config.reply_timeout)),
                        writer: BufWriter::new(TimedStream::new(writer, config.reply_timeout)),
                        reply_timeout: config.reply_timeout,
                        send_timeout: config.send_timeout,
                        tracked: None,
                        connected,
                        sent_head: None,
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
        Err((Step::Connect, last))
    }

    /// One reply (all its lines) within `reply_timeout` for the whole
    /// reply, however the relay spreads its bytes; lines longer than
    /// [`LONGEST_REPLY_LINE`] or replies of more than [`MOST_REPLY_LINES`]
    /// lines are errors. `what` names the reply in errors ("the relay's
    /// reply to EHLO").
    pub(super) fn read_reply(&mut self, what: &str) -> Result<Reply, Broken> {
        self.reader.get_mut().limit(self.reply_timeout);
        let mut text = Vec::new();
        let mut lines = Vec::new();
        let mut extended = None;
        for _ in 0..MOST_REPLY_LINES {
            let mut line = Vec::new();
            let read = std::io::Read::take(&mut self.reader, LONGEST_REPLY_LINE as u64)
                .read_until(b'\n', &mut line);
            match read {
                Ok(0) => return Err(Broken::lost("the relay closed the connection")),
                Ok(_) if line.last() != Some(&b'\n') => {
                    if line.len() >= LONGEST_REPLY_LINE {
                        let e = "the relay sent a reply line that is too long";
                        return Err(Broken::invalid(e));
                    }
                    return Err(Broken::lost("the relay closed the connection"));
                }
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {
                    let came = self.reader.get_ref().moved();
                    let progress = format!("; {came} byte(s) of it had come");
                    let limit = self.reply_timeout;
                    return Err(Broken::timed_out(what, limit, "reply timeout", progress));
                }
                Err(e) => return Err(Broken::lost(format!("reading from the relay: {e}"))),
            }
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            let (code, more, rest) = parse_reply_line(line).ok_or_else(|| {
                Broken::invalid(format!("the relay sent a malformed reply: {line:?}"))
            })?;
            let (ext, rest) = split_extended(rest);
            if extended.is_none() {
                extended = ext;
            }
            if !rest.is_empty() {
                text.push(rest.to_owned());
            }
            lines.push(rest.to_owned());
            if !more {
                return Ok(Reply {
                    code,
                    extended,
                    text: text.join(" "),
                    lines,
                });
            }
        }
        let e = format!("the relay sent a reply of more than {MOST_REPLY_LINES} lines");
        Err(Broken::invalid(e))
    }

    /// What the result tells of this connection so far.
    pub(super) fn connected(&self) -> Connected {
        Connected {
            sent: self.writer.get_ref().total(),
            ..self.connected.clone()
        }
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
                    return Broken::lost(format!("writing to the relay: {e}"));
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
        self.sent_head = Some(super::attempt::mime_head(mime));
        let sent = self.send_data_bytes(mime);
        // All but the final `.` line is the message's data.
        let moved = self.writer.get_ref().moved();
        self.connected.data = match sent {
            Ok(()) => moved.saturating_sub(3),
            Err(_) => moved,
        };
        sent
    }

    fn send_data_bytes(&mut self, mime: &[u8]) -> Result<(), Broken> {
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
                return Broken::lost(format!("sending the message to the relay: {e}"));
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
