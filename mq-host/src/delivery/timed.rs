//! The relay's socket with deadlines: a read or write never waits past
//! the deadline of the step it belongs to.
//!
//! A socket timeout alone bounds one `read`/`write` call, and restarts with
//! each: a relay that sends one byte every half second (or reads one at a
//! time) would keep a reply or the message's data going forever. So before
//! every call, [`TimedStream`] sets the socket's timeout to what is left of
//! its deadline, and once nothing is left it fails with
//! [`std::io::ErrorKind::TimedOut`] without touching the socket.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One direction of the relay connection (reads, or writes), each call
/// bounded by the current deadline.
pub(super) struct TimedStream {
    stream: TcpStream,
    deadline: Instant,
    /// Bytes moved since the deadline was set.
    moved: u64,
    /// Bytes moved in all.
    total: u64,
}

impl TimedStream {
    /// `stream`, with a deadline `limit` from now.
    pub(super) fn new(stream: TcpStream, limit: Duration) -> TimedStream {
        let mut timed = TimedStream {
            stream,
            deadline: Instant::now(),
            moved: 0,
            total: 0,
        };
        timed.limit(limit);
        timed
    }

    /// A new deadline, `limit` from now (saturating: a limit too far ahead
    /// to represent is no limit in practice).
    pub(super) fn limit(&mut self, limit: Duration) {
        let now = Instant::now();
        self.deadline = now
            .checked_add(limit)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        self.moved = 0;
    }

    /// Bytes read or written since the deadline was last set.
    pub(super) fn moved(&self) -> u64 {
        self.moved
    }

    /// Bytes read or written in all.
    pub(super) fn total(&self) -> u64 {
        self.total
    }

    /// The socket.
    pub(super) fn socket(&self) -> &TcpStream {
        &self.stream
    }

    /// What is left of the deadline, or `TimedOut`.
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        Ok(left)
    }
}

/// Whether `e` is a socket timeout (Linux reports an expired `SO_RCVTIMEO`
/// or `SO_SNDTIMEO` as `EAGAIN`).
pub(super) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

impl Read for TimedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        let n = self.stream.read(buf)?;
        self.moved += n as u64;
        self.total += n as u64;
        Ok(n)
    }
}

impl Write for TimedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        let n = self.stream.write(buf)?;
        self.moved += n as u64;
        self.total += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// `5 s`, `0.25 s`: a duration for a result's description.
pub(super) fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    /// Once the deadline has passed nothing is read, even what is there:
    /// no peer can stretch a step past it.
    #[test]
    fn nothing_is_read_past_the_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let mut timed = std::io::BufReader::new(TimedStream::new(client, Duration::ZERO));
        peer.write_all(b"250 ok\r\n").unwrap();
        // No time left: refused before reading, though the reply is there.
        let mut line = Vec::new();
        let e = timed.read_until(b'\n', &mut line).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(line.is_empty());
        timed.get_mut().limit(Duration::from_secs(60));
        timed.read_until(b'\n', &mut line).unwrap();
        assert_eq!(line, b"250 ok\r\n");
        assert_eq!(timed.get_ref().moved(), 8);
    }

    #[test]
    fn durations_read_as_seconds() {
        assert_eq!(seconds(Duration::from_secs(5)), "5 s");
        assert_eq!(seconds(Duration::from_millis(250)), "0.25 s");
    }
}
