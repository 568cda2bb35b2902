//! The client side: plays one [`Connection`] of a script against the
//! server and checks what came back. Every wait is bounded, so an input
//! never hangs; a wait that runs out where the server had to act is a
//! violation, reported with what the client saw.

use crate::replies::{self, Violation, TLS_READY};
use crate::script::{Connection, End, Flags};
use crate::server::Server;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// How long the server may take for what it must do (greet, close a
/// session): generous, so that a loaded CI machine is no false alarm.
pub const MUST_WITHIN: Duration = Duration::from_secs(2);

/// A reading client stops once the server is this long quiet.
const QUIET: Duration = Duration::from_millis(1);

/// The pause between writes (pause flag).
const PAUSE: Duration = Duration::from_micros(200);

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// The socket, before or after STARTTLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }
}

/// How a read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    /// The server closed the connection cleanly.
    Eof,
    /// The wanted bytes arrived.
    Found,
    /// The server was quiet (or the limit passed).
    TimedOut,
    /// A reset or a TLS error: the connection is over, maybe with bytes
    /// lost in flight.
    Broken,
}

/// A connection that has written its payload and waits to be ended.
pub struct Open {
    flags: Flags,
    conn: Option<Conn>,
    /// Replies before TLS (with the greeting).
    plain: Vec<u8>,
    /// Replies decrypted after the handshake.
    secure: Vec<u8>,
}

/// Connects, writes `c`'s payload (switching to TLS where its flags ask)
/// and returns the connection, not yet ended.
pub fn open(server: &Server, c: &Connection<'_>) -> Result<Open, Violation> {
    let tcp = TcpStream::connect_timeout(&server.addr, MUST_WITHIN)
        .map_err(|e| Violation(format!("cannot connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_write_timeout(Some(MUST_WITHIN));
    let mut open = Open {
        flags: c.flags,
        conn: Some(Conn::Plain(tcp)),
        plain: Vec::new(),
        secure: Vec::new(),
    };
    if c.flags.await_greeting && open.read(Some(b"\r\n"), MUST_WITHIN, None) != ReadEnd::Found {
        return Err(Violation("no greeting line on a new connection".into()));
    }
    let rest = match c.split_at_starttls() {
        Some((before, after)) => {
            open.write_all(c, before);
            if open.read(Some(TLS_READY), MUST_WITHIN, Some(QUIET)) == ReadEnd::Found {
                open.handshake(server);
            }
            after
        }
        None => c.payload,
    };
    open.write_all(c, rest);
    Ok(open)
}

impl Open {
    /// Ends the connection as its flags say, then checks the replies.
    pub fn finish(mut self) -> Result<(), Violation> {
        let end = match self.flags.end {
            End::HalfClose => {
                self.half_close();
                self.read(None, MUST_WITHIN, None)
            }
            End::Quiet => self.read(None, MUST_WITHIN, Some(QUIET)),
            End::IdleTimeout => self.read(None, MUST_WITHIN, None),
            End::Reset => {
                self.reset();
                ReadEnd::Broken
            }
        };
        let must_close = matches!(self.flags.end, End::HalfClose | End::IdleTimeout);
        if must_close && end == ReadEnd::TimedOut {
            return Err(Violation(format!(
                "the session is still open {MUST_WITHIN:?} after the client {}; replies so far: {:?}",
                if self.flags.end == End::HalfClose {
                    "half-closed"
                } else {
                    "fell idle"
                },
                String::from_utf8_lossy(self.replies()),
            )));
        }
        let complete = end == ReadEnd::Eof;
        replies::check_greeting(&self.plain)?;
        let in_tls = self.secure_started();
        replies::check(&self.plain, complete && !in_tls)?;
        replies::check(&self.secure, complete)
    }

    fn secure_started(&self) -> bool {
        matches!(self.conn, Some(Conn::Tls(_)))
    }

    fn replies(&self) -> &[u8] {
        if self.secure_started() {
            &self.secure
        } else {
            &self.plain
        }
    }

    /// Writes `bytes` as `c`'s flags say; a failed write (the server
    /// closed) ends the writing, not the input.
    fn write_all(&mut self, c: &Connection<'_>, bytes: &[u8]) {
        for chunk in c.writes(bytes) {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            let written = match conn {
                Conn::Plain(s) => s.write_all(chunk),
                Conn::Tls(s) => s.write_all(chunk).and_then(|()| s.flush()),
            };
            if written.is_err() {
                return;
            }
            if c.flags.pause {
                std::thread::sleep(PAUSE);
            }
        }
    }

    /// Reads replies until EOF, `want` shows up, `limit` passes or (with
    /// `quiet`) the server says nothing for that long.
    ///
    /// The waiting is `poll`'s, not a socket read timeout's: `SO_RCVTIMEO`
    /// counts in scheduler ticks (4 ms here), which would make every quiet
    /// wait cost as much as the server's idle timeout.
    fn read(&mut self, want: Option<&[u8]>, limit: Duration, quiet: Option<Duration>) -> ReadEnd {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return ReadEnd::Broken;
            };
            quick_ack(conn.tcp());
            // Non-blocking, so that a TLS stream hands out what it has
            // buffered before the socket is polled.
            let _ = conn.tcp().set_nonblocking(true);
            let (result, sink) = match conn {
                Conn::Plain(s) => (s.read(&mut buf), &mut self.plain),
                Conn::Tls(s) => (s.read(&mut buf), &mut self.secure),
            };
            let _ = conn.tcp().set_nonblocking(false);
            match result {
                Ok(0) => return ReadEnd::Eof,
                Ok(n) => {
                    sink.extend_from_slice(&buf[..n]);
                    if want.is_some_and(|w| contains(sink, w)) {
                        return ReadEnd::Found;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let wait = quiet.map_or(left, |q| q.min(left));
                    if wait.is_zero() || !readable_within(conn.tcp(), wait) {
                        return ReadEnd::TimedOut;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // A TLS server that closes without close_notify.
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return ReadEnd::Eof,
                Err(_) => return ReadEnd::Broken,
            }
        }
    }

    /// The server said it is ready for TLS: a real handshake. If it fails
    /// the connection is dropped (the server may have closed it).
    fn handshake(&mut self, server: &Server) {
        let Some(Conn::Plain(mut tcp)) = self.conn.take() else {
            return;
        };
        let name = "localhost".try_into().expect("a server name");
        let Ok(mut tls) = rustls::ClientConnection::new(server.client_tls.clone(), name) else {
            return;
        };
        let _ = tcp.set_read_timeout(Some(MUST_WITHIN));
        while tls.is_handshaking() {
            if tls.complete_io(&mut tcp).is_err() {
                return;
            }
        }
        self.conn = Some(Conn::Tls(Box::new(rustls::StreamOwned::new(tls, tcp))));
    }

    fn half_close(&mut self) {
        match self.conn.as_mut() {
            Some(Conn::Plain(s)) => {
                let _ = s.shutdown(Shutdown::Write);
            }
            Some(Conn::Tls(s)) => {
                s.conn.send_close_notify();
                let _ = s.flush();
                let _ = s.sock.shutdown(Shutdown::Write);
            }
            None => {}
        }
    }

    /// Closes with a TCP reset: `SO_LINGER` on with a zero timeout.
    fn reset(&mut self) {
        if let Some(conn) = self.conn.take() {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: the fd is open (owned by `conn`, closed only when it
            // drops below), and `linger` is a valid `struct linger` whose
            // size is passed with it.
            unsafe {
                libc::setsockopt(
                    conn.tcp().as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
        }
    }
}

/// ACKs what arrives at once instead of delaying the ACK (Linux resets
/// this after a while, so it is set before every read). The server writes
/// each reply of a pipelined group separately and without `TCP_NODELAY`,
/// so Nagle holds the second and later replies until the client ACKs the
/// first: with delayed ACKs that is about 40 ms per group, far beyond any
/// quiet wait here.
fn quick_ack(tcp: &TcpStream) {
    let on: libc::c_int = 1;
    // SAFETY: the fd is open (`tcp` is borrowed) and `on` is a valid
    // `c_int` whose size is passed with it.
    unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Whether `tcp` has input (or an error or EOF to report) within `wait`.
fn readable_within(tcp: &TcpStream, wait: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: tcp.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos().into(),
    };
    // SAFETY: one valid `pollfd` (the fd is open: `tcp` is borrowed) and a
    // valid timeout; no signal mask is passed.
    let ready = unsafe { libc::ppoll(&mut fd, 1, &timeout, std::ptr::null()) };
    ready != 0
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A fresh connection must be greeted with `220` in time: the worker is
/// alive and its loop turns.
pub fn check_alive(server: &Server) -> Result<(), Violation> {
    let mut probe = Open {
        flags: Flags::from_byte(0),
        conn: Some(Conn::Plain(
            TcpStream::connect_timeout(&server.addr, MUST_WITHIN)
                .map_err(|e| Violation(format!("cannot connect: {e}")))?,
        )),
        plain: Vec::new(),
        secure: Vec::new(),
    };
    if probe.read(Some(b"\r\n"), MUST_WITHIN, None) != ReadEnd::Found
        || !probe.plain.starts_with(b"220 ")
    {
        return Err(Violation(format!(
            "a fresh connection got no 220 greeting within {MUST_WITHIN:?} (got {:?}): the worker is dead or stuck",
            String::from_utf8_lossy(&probe.plain)
        )));
    }
    Ok(())
}
