//! The input format: a fuzz input is a small script of client connections.
//!
//! ```text
//! input      := connection ( 0x00 connection )*
//! connection := flags payload        (an empty one is skipped)
//! ```
//!
//! At most [`MAX_CONNECTIONS`] are run, in order. The payload is what the
//! client writes: SMTP text, message data, anything. NUL is the one byte a
//! payload cannot carry; SMTP commands have no use for it and the parser
//! refuses it, so little is lost, and the split stays trivial for
//! libFuzzer's mutations (a separator byte, not a length prefix to keep in
//! step).
//!
//! The flags byte, bit by bit:
//!
//! | bits | meaning |
//! |------|---------|
//! | 0–1  | how the client ends, see [`End`] |
//! | 2    | write line by line (one `write` per `\n`) instead of all at once |
//! | 3    | pause briefly between writes (the server reads between them) |
//! | 4    | wait for the `220` greeting before writing |
//! | 5    | at a `STARTTLS` line, wait for its `220`, do a real TLS handshake and write the rest over TLS |
//! | 6    | linger: end this connection only after the later ones of the input ran (sessions overlap on the worker) |
//! | 7    | with bits 0–1 both set: end by idling (else those bits mean half-close) |
//!
//! Idling costs the server's idle timeout, far more than any other end,
//! so it takes three bits: an eighth of random flag bytes, not a quarter.
//! `0x80` is all defaults (half-close, one write, no waits).

/// More connections per input only slow libFuzzer down.
pub const MAX_CONNECTIONS: usize = 6;

/// Separates the connections of an input.
pub const SEPARATOR: u8 = 0x00;

/// How a client ends its connection once the payload is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `shutdown(Write)`, then read until the server closes.
    HalfClose,
    /// Read until the server is quiet for a moment, then close.
    Quiet,
    /// Close at once with a TCP reset (`SO_LINGER` 0), reading nothing.
    Reset,
    /// Keep the connection open and idle: the server's idle timeout must
    /// send `421` and close it.
    IdleTimeout,
}

/// One connection's flags (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    /// How the connection ends.
    pub end: End,
    /// One write per line.
    pub by_line: bool,
    /// A short pause between writes.
    pub pause: bool,
    /// Wait for the greeting before writing.
    pub await_greeting: bool,
    /// Switch to TLS at a `STARTTLS` line.
    pub tls: bool,
    /// End only after the later connections of the input.
    pub linger: bool,
}

impl Flags {
    /// Decodes a flags byte.
    pub fn from_byte(b: u8) -> Flags {
        Flags {
            end: match (b & 0b11, b & 1 << 7 != 0) {
                (1, _) => End::Quiet,
                (2, _) => End::Reset,
                (3, true) => End::IdleTimeout,
                _ => End::HalfClose,
            },
            by_line: b & 1 << 2 != 0,
            pause: b & 1 << 3 != 0,
            await_greeting: b & 1 << 4 != 0,
            tls: b & 1 << 5 != 0,
            linger: b & 1 << 6 != 0,
        }
    }
}

/// One client connection of an input.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// How to write and end it.
    pub flags: Flags,
    /// What the client writes.
    pub payload: &'a [u8],
}

impl<'a> Connection<'a> {
    /// `bytes` (the payload or a part of it) as the writes the client
    /// makes, in order.
    pub fn writes<'b>(&self, bytes: &'b [u8]) -> Vec<&'b [u8]> {
        if self.flags.by_line {
            bytes.split_inclusive(|b| *b == b'\n').collect()
        } else {
            vec![bytes]
        }
    }

    /// With the TLS flag: the payload up to and including the first
    /// `STARTTLS` line, and the rest (written after the handshake).
    pub fn split_at_starttls(&self) -> Option<(&'a [u8], &'a [u8])> {
        if !self.flags.tls {
            return None;
        }
        let mut start = 0;
        for line in self.payload.split_inclusive(|b| *b == b'\n') {
            let end = start + line.len();
            let text = line.strip_suffix(b"\n").unwrap_or(line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if line.ends_with(b"\n") && text.eq_ignore_ascii_case(b"STARTTLS") {
                return Some(self.payload.split_at(end));
            }
            start = end;
        }
        None
    }
}

/// Splits an input into its connections.
pub fn parse(input: &[u8]) -> Vec<Connection<'_>> {
    input
        .split(|b| *b == SEPARATOR)
        .filter_map(|chunk| {
            let (&flags, payload) = chunk.split_first()?;
            Some(Connection {
                flags: Flags::from_byte(flags),
                payload,
            })
        })
        .take(MAX_CONNECTIONS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_split_at_nul_and_empty_ones_are_skipped() {
        let conns = parse(b"\x80EHLO a\r\n\0\0\x41QUIT\r\n\0\x83\0\x03");
        assert_eq!(conns.len(), 4);
        assert_eq!(conns[0].flags.end, End::HalfClose);
        assert_eq!(conns[0].payload, b"EHLO a\r\n");
        assert_eq!(conns[1].flags.end, End::Quiet);
        assert!(conns[1].flags.linger);
        assert_eq!(conns[1].payload, b"QUIT\r\n");
        assert_eq!(conns[2].flags.end, End::IdleTimeout);
        assert_eq!(conns[3].flags.end, End::HalfClose);
    }

    #[test]
    fn at_most_max_connections() {
        assert_eq!(parse(&[0x80, 0].repeat(20)).len(), MAX_CONNECTIONS);
    }

    #[test]
    fn by_line_keeps_line_ends_and_a_partial_tail() {
        let c = parse(b"\x84A\r\nB\nC").remove(0);
        assert_eq!(c.writes(c.payload), [&b"A\r\n"[..], b"B\n", b"C"]);
    }

    #[test]
    fn starttls_split_needs_the_flag_and_a_whole_line() {
        let c = parse(b"\xa0EHLO a\r\nstarttls\r\nEHLO b\r\n").remove(0);
        let (before, after) = c.split_at_starttls().unwrap();
        assert_eq!(before, b"EHLO a\r\nstarttls\r\n");
        assert_eq!(after, b"EHLO b\r\n");
        assert!(parse(b"\x80STARTTLS\r\n")[0].split_at_starttls().is_none());
        assert!(parse(b"\xa0STARTTLS")[0].split_at_starttls().is_none());
    }
}
