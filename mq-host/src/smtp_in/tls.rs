//! A session's TLS (STARTTLS, rustls sans-io): decrypting what the client
//! sends, taking over the socket after the `220`, and writing records.

use super::session::{fail, flush, reply, Shared};
use crate::observe::Priority;
use crate::runtime::worker::Worker;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

/// Bytes from the socket: plaintext, or TLS records to decrypt.
pub(super) fn receive(s: &Shared, bytes: &[u8]) -> Result<(), rustls::Error> {
    let mut sess = s.borrow_mut();
    let sess = &mut *sess;
    let Some(tls) = sess.tls.as_mut() else {
        sess.input.extend(bytes);
        return Ok(());
    };
    let mut rest = bytes;
    while !rest.is_empty() {
        match tls.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(rustls::Error::General(e.to_string())),
        }
        tls.process_new_packets()?;
    }
    let mut plain = [0u8; 16 * 1024];
    loop {
        match tls.reader().read(&mut plain) {
            Ok(0) => break,
            Ok(n) => sess.input.extend(&plain[..n]),
            Err(_) => break,
        }
    }
    Ok(())
}

/// STARTTLS: the `220` goes out in plaintext, then TLS takes the socket.
/// Pipelined plaintext after the command is discarded and the session
/// starts over (RFC 3207), a login by AUTH included.
pub(super) fn start_tls(w: &Worker, s: &Shared) {
    let config = {
        let sess = s.borrow();
        match (&sess.tls, &sess.config.tls) {
            (Some(_), _) => Err("503 5.5.1 TLS is already active"),
            (None, None) => Err("502 5.5.1 TLS is not available"),
            (None, Some(c)) => Ok(Arc::clone(c)),
        }
    };
    // The borrow ends before replying.
    let config = match config {
        Ok(c) => c,
        Err(line) => return reply(w, s, line),
    };
    let conn = match rustls::ServerConnection::new(config) {
        Ok(c) => c,
        Err(e) => return reply(w, s, &format!("454 4.7.0 TLS not available now: {e}")),
    };
    reply(w, s, "220 2.0.0 ready to start TLS");
    // The 220 goes out in plaintext now, whatever batch it ends.
    flush(w, s);
    if !s.borrow().output.is_empty() {
        w.log(
            Priority::Warning,
            "smtp: a client that does not read its replies asked for STARTTLS; closing".to_owned(),
        );
        return fail(w, s);
    }
    let mut sess = s.borrow_mut();
    sess.tls = Some(conn);
    sess.secure_pending = true;
    sess.input.clear();
    sess.helo = None;
    sess.envelope = None;
    sess.recipients.clear();
    sess.data.clear();
    // A login made before TLS (`auth_insecure`) is knowledge from the
    // client that RFC 3207 says to discard: the client logs in again.
    if sess.user.take().is_some() {
        sess.conn.auth.set(Default::default());
    }
}

/// Writes to a socket with `send(2)` only: rustls writes its records with
/// `write_vectored`, which on a `TcpStream` is `writev(2)`, and that raises
/// SIGPIPE on a reset connection (std's `write` passes `MSG_NOSIGNAL`). A
/// program embedding the host under a C `main` does not ignore SIGPIPE.
pub(super) struct SendOnly<'a>(pub(super) &'a mut TcpStream);

impl Write for SendOnly<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
