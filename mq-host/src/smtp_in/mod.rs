//! SMTP in: real ESMTP sessions on the workers' event loops, with the
//! `smtp_in_*` hooks at their MailerQ moments.
//!
//! One acceptor thread hands each accepted socket to a worker (round
//! robin); the session then lives on that worker's loop: an fd watcher
//! feeds smtp-proto's request parser, each command that has a hook runs its
//! chain, and the session goes on from the chain's end. While a plugin holds
//! control the session simply waits (pipelined commands stay buffered), so
//! it never blocks other sessions.
//!
//! A reply a plugin writes with `MQ_send` during a step replaces the host's
//! own reply to that command; a 4xx/5xx reply refuses the command. This is
//! mq-host's reading of `MQ_send` writing raw bytes straight onto the SMTP
//! connection: a plugin that sends its reply and then completes has
//! answered the command. In `smtp_in_close` no client gets anything more
//! (`MQ_send` returns 0 there; see `capi`'s `MQ_send`).
//!
//! It speaks ESMTP with pipelining: EHLO/HELO, STARTTLS (rustls;
//! `smtp_in_secure` after the handshake), AUTH PLAIN and LOGIN
//! (`smtp_in_authenticate`; on a secure connection only, unless
//! [`ServeConfig::auth_insecure`]), MAIL, RCPT, DATA, BDAT (CHUNKING), RSET, NOOP,
//! QUIT. A panic in a session's handling (a host bug) ends that session,
//! never the worker. An accepted
//! message is written durably (fsync, atomic rename) under the data
//! directory — `inbox/` or, for local messages, `local/` — before the 250:
//! the listener's store thread commits the files of all sessions waiting
//! at once (`crate::store::commit`), while each session waits without
//! blocking its worker.

//!
//! The files: this one the server (configuration, acceptor, shutdown);
//! `session` a session's socket, life and steps (`tls` its STARTTLS,
//! `deadline` its deadlines); `commands` what each command does;
//! `transaction` the end of DATA through the message hooks to durable
//! storage, and the incoming JSON.

mod accept;
mod commands;
mod deadline;
mod input;
mod session;
#[cfg(test)]
mod tests;
mod tls;
mod transaction;

use crate::runtime::dispatch;
use crate::runtime::worker::{self, Worker};
use session::{close, reply, Ending, Shared, SESSIONS};
use std::collections::HashMap;
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How `mq-host serve` behaves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where accepted messages are stored (`inbox/`, `local/`).
    pub data_dir: PathBuf,
    /// The name the server greets with.
    pub hostname: String,
    /// The largest message accepted, in bytes.
    pub max_message_size: usize,
    /// How long an idle client (not a byte sent) may stay connected.
    pub idle_timeout: Duration,
    /// How long a client may take to send one command line (or AUTH
    /// line) from its first byte: a client that trickles bytes gets a
    /// `421` at this deadline, whatever the idle timeout.
    pub command_timeout: Duration,
    /// How long a client may take to send a message's data (from the
    /// `354`, or each BDAT chunk).
    pub data_timeout: Duration,
    /// The most recipients in one transaction: more get `452 4.5.3`.
    pub max_recipients: usize,
    /// The most sessions open at once: more clients get `421 4.7.0` and
    /// are closed at once.
    pub max_connections: usize,
    /// The most sessions open at once from one client address.
    pub max_connections_per_ip: usize,
    /// The most unhandled input a session buffers: beyond it the host
    /// stops reading from the client (TCP flow control holds the rest)
    /// until the session has handled what it has.
    pub max_input_buffer: usize,
    /// The most bytes of replies a session buffers for a client that does
    /// not read them: the session stops handling input while its replies
    /// wait, and a plugin's `MQ_send` beyond this is cut (and reported).
    pub max_output_buffer: usize,
    /// TLS for STARTTLS; `None` does not offer it.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Offer and accept AUTH on a connection that is not secure (no
    /// STARTTLS yet). Off by default, as in MailerQ, whose documentation
    /// makes authentication depend on secure connections: on a plain
    /// connection EHLO does not list AUTH and `AUTH` gets
    /// `538 5.7.11 Encryption required for requested authentication
    /// mechanism` (RFC 4954). MailerQ has no key for this; it is an mq-host
    /// addition for development and tests (`mq-host serve
    /// --auth-insecure`).
    pub auth_insecure: bool,
    /// Where messages stored in `inbox/` are queued for delivery (an
    /// [`Outbox`](crate::delivery::Outbox) opened on the same data
    /// directory); `None`: they wait in `inbox/`.
    pub outbox: Option<crate::delivery::Outbox>,
}

/// A TLS configuration with a self-signed certificate for `hostname`, for
/// development when no certificate is configured.
pub fn self_signed_tls(hostname: &str) -> Result<Arc<rustls::ServerConfig>, String> {
    let certified = rcgen::generate_simple_self_signed(vec![hostname.to_owned()])
        .map_err(|e| format!("cannot generate a self-signed certificate: {e}"))?;
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
    tls_config(vec![certified.cert.der().clone()], key.into())
}

/// A TLS configuration from PEM files (certificate chain, private key).
pub fn tls_from_pem(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read the certificate: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: cannot read the key: {e}", key.display()))?;
    tls_config(chain, key)
}

fn tls_config(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
    .map_err(|e| format!("bad TLS certificate or key: {e}"))?;
    Ok(Arc::new(config))
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            data_dir: PathBuf::from("mq-data"),
            hostname: "localhost".to_owned(),
            max_message_size: 25 * 1024 * 1024,
            idle_timeout: Duration::from_secs(300),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            max_recipients: 1000,
            max_connections: 1000,
            max_connections_per_ip: 100,
            max_input_buffer: 256 * 1024,
            max_output_buffer: 1024 * 1024,
            tls: None,
            auth_insecure: false,
            outbox: None,
        }
    }
}

/// The sessions open on a listener, in total and per client address: for
/// the connection limits, and for a graceful shutdown to wait on.
#[derive(Default)]
pub(super) struct OpenSessions {
    state: std::sync::Mutex<OpenState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct OpenState {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Which connection limit refused a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnectionLimit {
    /// [`ServeConfig::max_connections`].
    Total(usize),
    /// [`ServeConfig::max_connections_per_ip`].
    PerAddress(usize),
}

impl OpenSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, OpenState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a client from `address` in, unless a limit is reached.
    pub(super) fn admit(
        self: &Arc<Self>,
        address: IpAddr,
        config: &ServeConfig,
    ) -> Result<Admission, ConnectionLimit> {
        let mut state = self.lock();
        if state.total >= config.max_connections {
            return Err(ConnectionLimit::Total(config.max_connections));
        }
        let from_address = state.by_address.entry(address).or_default();
        if *from_address >= config.max_connections_per_ip {
            return Err(ConnectionLimit::PerAddress(config.max_connections_per_ip));
        }
        *from_address += 1;
        state.total += 1;
        Ok(Admission {
            open: Arc::clone(self),
            address,
            released: false,
        })
    }

    fn release(&self, address: IpAddr) {
        let mut state = self.lock();
        state.total = state.total.saturating_sub(1);
        if let Some(n) = state.by_address.get_mut(&address) {
            *n -= 1;
            if *n == 0 {
                state.by_address.remove(&address);
            }
        }
        self.changed.notify_all();
    }

    fn count(&self) -> usize {
        self.lock().total
    }

    /// Waits until no session is open or `limit` passed; true if none is.
    fn wait_idle(&self, limit: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, limit, |s| s.total > 0)
            .unwrap_or_else(|e| e.into_inner());
        state.total == 0
    }
}

/// A session's place in [`OpenSessions`]: released when the session ends
/// (or, whatever happens, when this is dropped).
pub(super) struct Admission {
    open: Arc<OpenSessions>,
    address: IpAddr,
    released: bool,
}

impl Admission {
    /// The session ended: it no longer counts.
    pub(super) fn release(&mut self) {
        if !std::mem::replace(&mut self.released, true) {
            self.open.release(self.address);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.release();
    }
}

/// On a worker: tells every session of this worker the server goes away.
fn close_all_sessions(w: &Worker) {
    let sessions: Vec<Shared> = SESSIONS.with(|m| m.borrow().values().cloned().collect());
    for s in sessions {
        if s.borrow().ending == Ending::No {
            reply(w, &s, "421 4.3.2 the server is shutting down");
            close(w, &s);
        }
    }
}

/// On a worker, at the end of a shutdown: the holds of this worker's
/// sessions end now, as at their hold deadline (Rust plugins' holds are
/// cancelled), so that every session gets to `smtp_in_close`.
fn expire_session_holds(w: &Worker) {
    let sessions: Vec<Shared> = SESSIONS.with(|m| m.borrow().values().cloned().collect());
    for s in sessions {
        let conn = Rc::clone(&s.borrow().conn);
        dispatch::expire_hold(w, &conn, None, "the host shut down");
    }
}

/// A running SMTP listener; stops accepting when dropped.
pub struct Listener {
    addr: std::net::SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// A second descriptor of the listening socket, made while descriptors
    /// were to be had: shutting it down wakes the acceptor's blocking
    /// `accept` without needing a new descriptor (the process may have
    /// none left when it stops).
    wake: std::net::TcpStream,
    thread: Option<std::thread::JoinHandle<()>>,
    open: Arc<OpenSessions>,
    remotes: Vec<crate::runtime::event_loop::LoopRemote>,
    /// The store thread committing this listener's messages (it ends once
    /// its last session is gone); tests hold its commits.
    #[cfg(test)]
    store: Arc<crate::store::commit::Committer>,
}

impl Listener {
    /// The address it listens on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Graceful shutdown: stops accepting, lets open sessions finish for up
    /// to `grace`, then sends the rest `421` and closes them (running
    /// `smtp_in_close`). Returns how many had to be cut.
    pub fn shutdown(mut self, grace: Duration) -> usize {
        self.stop_accepting();
        if self.open.wait_idle(grace) {
            return 0;
        }
        let left = self.open.count();
        for remote in &self.remotes {
            worker::post(remote, close_all_sessions);
        }
        // Their close chains run; give them the same bound again.
        if self.open.wait_idle(grace) {
            return left;
        }
        // Plugins still hold steps: end those holds as the hold deadline
        // would, so that every session runs `smtp_in_close` (a close chain
        // that holds again is ended the same way).
        for _ in 0..3 {
            for remote in &self.remotes {
                worker::post(remote, expire_session_holds);
            }
            if self.open.wait_idle(Duration::from_millis(500)) {
                break;
            }
        }
        left
    }

    fn stop_accepting(&mut self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the blocking accept: shutting the listening socket down
        // makes it return (EINVAL); where that is refused, a connection of
        // our own does.
        if self.wake.shutdown(std::net::Shutdown::Read).is_err() {
            let _ = TcpStream::connect(self.addr);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop_accepting();
    }
}

impl crate::api::Host {
    /// Serves SMTP on `listener` with the plugins' `smtp_in_*` hooks until
    /// the returned [`Listener`] is dropped.
    pub fn serve(
        &self,
        listener: std::net::TcpListener,
        config: ServeConfig,
    ) -> std::io::Result<Listener> {
        accept::listen(listener, self.worker_remotes(), self.shared_state(), config)
    }
}
