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
//! own reply to that command; a 4xx/5xx reply refuses the command.
//!
//! It speaks ESMTP with pipelining: EHLO/HELO, STARTTLS (rustls;
//! `smtp_in_secure` after the handshake), AUTH PLAIN and LOGIN
//! (`smtp_in_authenticate`), MAIL, RCPT, DATA, BDAT (CHUNKING), RSET, NOOP,
//! QUIT. A panic in a session's handling (a host bug) ends that session,
//! never the worker. An accepted
//! message is written durably (fsync, atomic rename) under the data
//! directory — `inbox/` or, for local messages, `local/` — before the 250.

use crate::chain::{self, ChainReport};
use crate::event_loop::{Interest, TimerHandle, WatcherHandle};
use crate::hostlog::Priority;
use crate::objects::{AddressObj, ChainArgs, ConnectionState, Credentials, Direction, MessageObj};
use crate::store::{now_rfc3339, store};
use crate::worker::{self, Worker};
use mq_hook_table::by_name;
use serde_json::{json, Value};
use smtp_proto::request::receiver::{
    BdatReceiver, DataReceiver, DummyDataReceiver, RequestReceiver,
};
use smtp_proto::{Error as ParseError, Request};
use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How `mq-host serve` behaves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where accepted messages are stored (`inbox/`, `local/`).
    pub data_dir: PathBuf,
    /// The name the server greets with.
    pub hostname: String,
    /// The largest message accepted, in bytes.
    pub max_message_size: usize,
    /// How long an idle client may stay connected.
    pub idle_timeout: Duration,
    /// TLS for STARTTLS; `None` does not offer it.
    pub tls: Option<Arc<rustls::ServerConfig>>,
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
            tls: None,
            outbox: None,
        }
    }
}

enum Phase {
    /// Waiting for `smtp_in_connect` before the greeting.
    Connecting,
    Commands,
    /// AUTH PLAIN without an initial response: the next line is it.
    AuthPlain,
    /// AUTH LOGIN: the next line is the user name.
    AuthLoginUser,
    /// AUTH LOGIN: the next line is the password for this user name.
    AuthLoginPassword(Vec<u8>),
    Data(DataReceiver),
    /// A BDAT chunk being read (CHUNKING).
    Bdat(BdatReceiver),
    /// A BDAT chunk of a refused command being skipped, then this reply.
    SkipBdat(DummyDataReceiver, String),
}

/// How far a session's end has got. Every session, however it ends,
/// runs the `smtp_in_close` chain exactly once, and only after the step a
/// plugin holds is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Serving.
    No,
    /// The session is to end once the running chain ends.
    Pending,
    /// The `smtp_in_close` chain runs.
    Closing,
    /// `smtp_in_close` ran; the reply is flushed, then the session goes.
    Closed,
}

struct Session {
    /// Open sessions of this listener (shared with its accept thread).
    open: Arc<OpenSessions>,
    conn: Rc<ConnectionState>,
    stream: TcpStream,
    /// The TLS layer after STARTTLS.
    tls: Option<rustls::ServerConnection>,
    /// `smtp_in_secure` is due once the TLS handshake completes.
    secure_pending: bool,
    config: Rc<ServeConfig>,
    watcher: Option<WatcherHandle>,
    watching_write: bool,
    watching_read: bool,
    idle: Option<TimerHandle>,
    input: Vec<u8>,
    output: Vec<u8>,
    parser: RequestReceiver,
    phase: Phase,
    /// A chain is running: input waits.
    busy: bool,
    /// The client closed its side: no more input will come.
    eof: bool,
    ending: Ending,
    /// The socket failed: nothing more is written to it.
    broken: bool,
    /// The end of DATA is being handled (several chains, then storage):
    /// pipelined input waits for its reply.
    finishing_data: bool,
    envelope: Option<String>,
    recipients: Vec<(String, bool)>,
    data: Vec<u8>,
    too_big: bool,
    helo: Option<String>,
}

type Shared = Rc<RefCell<Session>>;

impl Session {
    /// A message over the size limit is dropped as it arrives (and refused
    /// with 552 at its end), so it never occupies memory.
    fn enforce_size_limit(&mut self) {
        if self.data.len() > self.config.max_message_size {
            self.too_big = true;
            self.data.clear();
        }
    }
}

/// How many sessions are open, for a graceful shutdown to wait on.
#[derive(Default)]
struct OpenSessions {
    count: std::sync::Mutex<usize>,
    changed: std::sync::Condvar,
}

impl OpenSessions {
    fn add(&self, delta: isize) {
        let mut count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        *count = count.saturating_add_signed(delta);
        self.changed.notify_all();
    }

    /// Waits until no session is open or `limit` passed; true if none is.
    fn wait_idle(&self, limit: Duration) -> bool {
        let count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        let (count, _) = self
            .changed
            .wait_timeout_while(count, limit, |c| *c > 0)
            .unwrap_or_else(|e| e.into_inner());
        *count == 0
    }
}

thread_local! {
    static SESSIONS: RefCell<std::collections::HashMap<u64, Shared>> = RefCell::new(Default::default());
}

/// Runs a session's event handling; a panic (a host bug) is logged and
/// ends only this session, never the worker.
fn guarded(w: &Worker, s: &Shared, f: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        let what = panic
            .downcast_ref::<&str>()
            .map(|m| m.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        w.log(
            Priority::Critical,
            format!("smtp: a session failed ({what}); closing it"),
        );
        crate::counters::Counters::bump(&w.shared.counters.host_panics);
        fail(w, s);
    }
}

/// On the worker: takes over an accepted socket.
fn start_session(stream: TcpStream, config: Rc<ServeConfig>, open: Arc<OpenSessions>) {
    let Some(w) = worker::current() else { return };
    if let Err(e) = stream.set_nonblocking(true) {
        w.log(
            Priority::Warning,
            format!("smtp: cannot make a client socket non-blocking: {e}"),
        );
        return;
    }
    let conn = w.open_connection(stream.as_raw_fd());
    let id = conn.id;
    open.add(1);
    crate::counters::Counters::bump(&w.shared.counters.smtp_sessions);
    let session = Rc::new(RefCell::new(Session {
        open,
        conn,
        stream,
        tls: None,
        secure_pending: false,
        config,
        watcher: None,
        watching_write: false,
        watching_read: false,
        idle: None,
        input: Vec::new(),
        output: Vec::new(),
        parser: RequestReceiver::default(),
        phase: Phase::Connecting,
        busy: false,
        eof: false,
        ending: Ending::No,
        broken: false,
        finishing_data: false,
        envelope: None,
        recipients: Vec::new(),
        data: Vec::new(),
        too_big: false,
        helo: None,
    }));
    SESSIONS.with(|s| s.borrow_mut().insert(id, Rc::clone(&session)));
    watch(&w, &session, false);
    touch(&w, &session);
    step(
        &w,
        &session,
        "smtp_in_connect",
        ChainArgs::None,
        |w, s, sent| {
            if refused(&sent) {
                reply_raw(s, &sent);
                close(w, s);
            } else {
                let greeting = format!("220 {} ESMTP mq-host\r\n", s.borrow().config.hostname);
                reply_raw(
                    s,
                    if sent.is_empty() {
                        greeting.as_bytes()
                    } else {
                        &sent
                    },
                );
                s.borrow_mut().phase = Phase::Commands;
            }
        },
    );
}

fn refused(sent: &[u8]) -> bool {
    matches!(sent.first(), Some(b'4' | b'5'))
}

/// (Re)registers the socket's watcher with read, and write if output waits.
fn watch(w: &Worker, s: &Shared, want_write: bool) {
    let (fd, old, reading) = {
        let mut sess = s.borrow_mut();
        // Once the session ends, input is no longer read: a hung-up
        // socket would otherwise report itself readable on every turn.
        let reading = sess.ending == Ending::No && !sess.eof;
        let current = (
            sess.watcher.is_some(),
            sess.watching_write,
            sess.watching_read,
        );
        if current == (true, want_write, reading) {
            return;
        }
        sess.watching_write = want_write;
        sess.watching_read = reading;
        (sess.stream.as_raw_fd(), sess.watcher.take(), reading)
    };
    if let Some(old) = old {
        w.ev.unwatch_io(old);
    }
    let interest = match (reading, want_write) {
        (true, true) => Interest::BOTH,
        (true, false) => Interest::READ,
        (false, true) => Interest::WRITE,
        (false, false) => return,
    };
    let weak = Rc::downgrade(s);
    let handle = w.ev.watch_io(
        fd,
        interest,
        Box::new(move |_, _, ready| {
            let (Some(s), Some(w)) = (weak.upgrade(), worker::current()) else {
                return;
            };
            guarded(&w, &s, || {
                if ready.write {
                    flush(&w, &s);
                }
                if ready.read {
                    read(&w, &s);
                }
            });
        }),
    );
    match handle {
        Ok(h) => s.borrow_mut().watcher = Some(h),
        Err(e) => {
            w.log(
                Priority::Warning,
                format!("smtp: cannot watch a client socket: {e}"),
            );
            fail(w, s);
        }
    }
}

fn touch(w: &Worker, s: &Shared) {
    let (old, after) = {
        let sess = s.borrow();
        (sess.idle, sess.config.idle_timeout)
    };
    if let Some(t) = old {
        if w.ev.reset_timer(t, after) {
            return;
        }
    }
    let weak = Rc::downgrade(s);
    let timer = w.ev.start_timer(
        after,
        Box::new(move || {
            let (Some(s), Some(w)) = (weak.upgrade(), worker::current()) else {
                return;
            };
            s.borrow_mut().idle = None;
            reply(&s, "421 4.4.2 idle for too long, closing");
            close(&w, &s);
        }),
    );
    s.borrow_mut().idle = Some(timer);
}

fn read(w: &Worker, s: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let result = s.borrow_mut().stream.read(&mut buf);
        match result {
            Ok(0) => {
                // End of input: what is buffered is still served (as a
                // client that half-closes after QUIT expects), then the
                // session ends.
                s.borrow_mut().eof = true;
                let want_write = s.borrow().watching_write;
                watch(w, s, want_write);
                break;
            }
            Ok(n) => {
                if let Err(e) = receive(s, &buf[..n]) {
                    w.log(Priority::Warning, format!("smtp: TLS failed: {e}"));
                    flush(w, s);
                    fail(w, s);
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => {
                close(w, s);
                return;
            }
        }
    }
    touch(w, s);
    // Handshake records to send, if any.
    flush(w, s);
    let handshake_done = {
        let mut sess = s.borrow_mut();
        let done = sess.secure_pending && sess.tls.as_ref().is_some_and(|t| !t.is_handshaking());
        if done {
            sess.secure_pending = false;
        }
        done
    };
    if handshake_done {
        s.borrow().conn.secure.set(true);
        return step(w, s, "smtp_in_secure", ChainArgs::None, |w, s, sent| {
            if refused(&sent) {
                reply_raw(s, &sent);
                close(w, s);
            } else if !sent.is_empty() {
                reply_raw(s, &sent);
            }
        });
    }
    process(w, s);
}

/// Bytes from the socket: plaintext, or TLS records to decrypt.
fn receive(s: &Shared, bytes: &[u8]) -> Result<(), rustls::Error> {
    let mut sess = s.borrow_mut();
    let sess = &mut *sess;
    let Some(tls) = sess.tls.as_mut() else {
        sess.input.extend_from_slice(bytes);
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
            Ok(n) => sess.input.extend_from_slice(&plain[..n]),
            Err(_) => break,
        }
    }
    Ok(())
}

/// STARTTLS: the `220` goes out in plaintext, then TLS takes the socket.
/// Pipelined plaintext after the command is discarded and the session
/// starts over (RFC 3207).
fn start_tls(s: &Shared) {
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
        Err(line) => return reply(s, line),
    };
    let conn = match rustls::ServerConnection::new(config) {
        Ok(c) => c,
        Err(e) => return reply(s, &format!("454 4.7.0 TLS not available now: {e}")),
    };
    reply(s, "220 2.0.0 ready to start TLS");
    let mut sess = s.borrow_mut();
    sess.tls = Some(conn);
    sess.secure_pending = true;
    sess.input.clear();
    sess.helo = None;
    sess.envelope = None;
    sess.recipients.clear();
    sess.data.clear();
}

/// A parsed command, owning its text.
enum Cmd {
    Ehlo(String),
    Helo(String),
    Mail(String),
    Rcpt(String),
    Data,
    Rset,
    Noop,
    Quit,
    /// AUTH with its mechanism and initial response (may be empty).
    Auth(u64, String),
    /// BDAT with the chunk size and whether it is the last.
    Bdat(usize, bool),
    StartTls,
    Other(&'static str),
}

fn to_cmd(r: Request<std::borrow::Cow<'_, str>>) -> Cmd {
    match r {
        Request::Ehlo { host } | Request::Lhlo { host } => Cmd::Ehlo(host.into_owned()),
        Request::Helo { host } => Cmd::Helo(host.into_owned()),
        Request::Mail { from } => Cmd::Mail(from.address.into_owned()),
        Request::Rcpt { to } => Cmd::Rcpt(to.address.into_owned()),
        Request::Data => Cmd::Data,
        Request::Rset => Cmd::Rset,
        Request::Noop { .. } => Cmd::Noop,
        Request::Quit => Cmd::Quit,
        Request::Auth {
            mechanism,
            initial_response,
        } => Cmd::Auth(mechanism, initial_response.into_owned()),
        Request::Bdat {
            chunk_size,
            is_last,
        } => Cmd::Bdat(chunk_size, is_last),
        Request::StartTls => Cmd::StartTls,
        other => Cmd::Other(other.name()),
    }
}

/// What buffered input asks for next.
enum Action {
    EndOfData,
    /// A BDAT chunk that is not the last was read.
    ChunkDone(usize),
    Command(Cmd),
    Reply(String),
    /// A line answering an AUTH challenge.
    AuthLine(Vec<u8>),
}

/// Handles buffered input until it runs out or a chain takes over. The
/// session is borrowed only to decide; acting happens without the borrow.
fn process(w: &Worker, s: &Shared) {
    process_input(w, s);
    let input_done = {
        let sess = s.borrow();
        sess.eof && !sess.busy && !sess.finishing_data && sess.ending == Ending::No
    };
    if input_done {
        close(w, s);
    }
}

fn process_input(w: &Worker, s: &Shared) {
    loop {
        let action = {
            let mut guard = s.borrow_mut();
            let sess = &mut *guard;
            if sess.busy
                || sess.finishing_data
                || sess.ending != Ending::No
                || sess.input.is_empty()
            {
                return;
            }
            let input = std::mem::take(&mut sess.input);
            let mut bytes = input.iter();
            match &mut sess.phase {
                Phase::Connecting => {
                    sess.input = input;
                    return;
                }
                Phase::Data(receiver) => {
                    let done = receiver.ingest(&mut bytes, &mut sess.data);
                    let left = bytes.as_slice().len();
                    sess.input = keep_tail(input, left);
                    sess.enforce_size_limit();
                    if !done {
                        return;
                    }
                    sess.phase = Phase::Commands;
                    Action::EndOfData
                }
                Phase::Bdat(receiver) => {
                    let done = receiver.ingest(&mut bytes, &mut sess.data);
                    let last = receiver.is_last;
                    let left = bytes.as_slice().len();
                    sess.input = keep_tail(input, left);
                    sess.enforce_size_limit();
                    if !done {
                        return;
                    }
                    sess.phase = Phase::Commands;
                    if last {
                        Action::EndOfData
                    } else {
                        Action::ChunkDone(sess.data.len())
                    }
                }
                Phase::SkipBdat(receiver, _) => {
                    let done = receiver.ingest(&mut bytes);
                    let left = bytes.as_slice().len();
                    sess.input = keep_tail(input, left);
                    if !done {
                        return;
                    }
                    let Phase::SkipBdat(_, line) =
                        std::mem::replace(&mut sess.phase, Phase::Commands)
                    else {
                        unreachable!("matched above")
                    };
                    Action::Reply(line)
                }
                Phase::AuthPlain | Phase::AuthLoginUser | Phase::AuthLoginPassword(_) => {
                    let Some(end) = input.iter().position(|b| *b == b'\n') else {
                        sess.input = input;
                        return;
                    };
                    let line = input[..end]
                        .strip_suffix(b"\r")
                        .unwrap_or(&input[..end])
                        .to_vec();
                    let mut input = input;
                    input.drain(..=end);
                    sess.input = input;
                    Action::AuthLine(line)
                }
                Phase::Commands => {
                    let parsed = sess.parser.ingest(&mut bytes).map(to_cmd);
                    let left = bytes.as_slice().len();
                    sess.input = keep_tail(input, left);
                    match parsed {
                        Ok(cmd) => Action::Command(cmd),
                        Err(ParseError::NeedsMoreData { .. }) => return,
                        Err(e) => Action::Reply(parse_error(&e)),
                    }
                }
            }
        };
        match action {
            Action::EndOfData => end_of_data(w, s),
            Action::ChunkDone(total) => {
                reply(s, &format!("250 2.0.0 {total} octets received so far"))
            }
            Action::Command(cmd) => command(w, s, cmd),
            Action::Reply(line) => reply(s, &line),
            Action::AuthLine(line) => auth_line(w, s, line),
        }
    }
}

/// `input` without what was consumed, keeping its allocation (no copy per
/// pipelined command).
fn keep_tail(mut input: Vec<u8>, left: usize) -> Vec<u8> {
    let consumed = input.len() - left;
    input.drain(..consumed);
    input
}

fn parse_error(e: &ParseError) -> String {
    match e {
        ParseError::UnknownCommand => "500 5.5.1 unknown command".into(),
        ParseError::InvalidSenderAddress => "501 5.1.7 invalid sender address".into(),
        ParseError::InvalidRecipientAddress => "501 5.1.3 invalid recipient address".into(),
        ParseError::SyntaxError { syntax } => format!("501 5.5.4 syntax: {syntax}"),
        ParseError::InvalidParameter { param } => format!("501 5.5.4 invalid parameter {param}"),
        ParseError::UnsupportedParameter { param } => {
            format!("504 5.5.4 unsupported parameter {param}")
        }
        ParseError::ResponseTooLong => "500 5.5.6 line too long".into(),
        other => format!("500 5.5.2 cannot parse the command ({other:?})"),
    }
}

fn command(w: &Worker, s: &Shared, cmd: Cmd) {
    match cmd {
        Cmd::Ehlo(host) => {
            s.borrow_mut().helo = Some(host);
            reset(s);
            let (name, max, offers_tls) = {
                let sess = s.borrow();
                (
                    sess.config.hostname.clone(),
                    sess.config.max_message_size,
                    sess.config.tls.is_some() && sess.tls.is_none(),
                )
            };
            let starttls = if offers_tls { "250-STARTTLS\r\n" } else { "" };
            reply(
                s,
                &format!("250-{name} greets you\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n{starttls}250-AUTH PLAIN LOGIN\r\n250 SIZE {max}"),
            );
        }
        Cmd::Helo(host) => {
            s.borrow_mut().helo = Some(host);
            reset(s);
            let name = s.borrow().config.hostname.clone();
            reply(s, &format!("250 {name}"));
        }
        Cmd::Mail(from) => {
            if s.borrow().helo.is_none() {
                return reply(s, "503 5.5.1 say EHLO or HELO first");
            }
            if s.borrow().envelope.is_some() {
                return reply(s, "503 5.5.1 a transaction is already open; RSET first");
            }
            let address = Rc::new(AddressObj::new(Some(&from)));
            step(
                w,
                s,
                "smtp_in_mailfrom",
                ChainArgs::Address(address),
                move |_, s, sent| {
                    if refused(&sent) {
                        reply_raw(s, &sent);
                    } else {
                        s.borrow_mut().envelope = Some(from);
                        reply_or(s, &sent, "250 2.1.0 sender ok");
                    }
                },
            );
        }
        Cmd::Rcpt(to) => {
            if s.borrow().envelope.is_none() {
                return reply(s, "503 5.5.1 MAIL FROM first");
            }
            let address = Rc::new(AddressObj::new(Some(&to)));
            let email = to;
            step_with(
                w,
                s,
                "smtp_in_rcptto",
                ChainArgs::Address(address),
                move |_, s, sent, args| {
                    if refused(&sent) {
                        reply_raw(s, &sent);
                    } else {
                        let local = matches!(&args, ChainArgs::Address(a) if a.local.get());
                        s.borrow_mut().recipients.push((email, local));
                        reply_or(s, &sent, "250 2.1.5 recipient ok");
                    }
                },
            );
        }
        Cmd::Data => {
            if s.borrow().recipients.is_empty() {
                return reply(s, "554 5.5.1 no valid recipients");
            }
            {
                let mut sess = s.borrow_mut();
                sess.data.clear();
                sess.too_big = false;
                sess.phase = Phase::Data(DataReceiver::new());
            }
            reply(s, "354 end data with <CR><LF>.<CR><LF>");
        }
        Cmd::Rset => {
            reset(s);
            reply(s, "250 2.0.0 reset");
        }
        Cmd::Noop => reply(s, "250 2.0.0 ok"),
        Cmd::Quit => {
            reply(s, "221 2.0.0 bye");
            close(w, s);
        }
        Cmd::Auth(mechanism, initial) => auth(w, s, mechanism, initial),
        Cmd::Bdat(0, last) if !s.borrow().recipients.is_empty() => {
            // An empty chunk: nothing to read.
            if last {
                end_of_data(w, s);
            } else {
                let total = s.borrow().data.len();
                reply(s, &format!("250 2.0.0 {total} octets received so far"));
            }
        }
        Cmd::Bdat(0, _) => reply(s, "554 5.5.1 no valid recipients"),
        Cmd::Bdat(size, last) => {
            let mut sess = s.borrow_mut();
            sess.phase = if sess.recipients.is_empty() {
                // The chunk's bytes still arrive: skip them, then refuse.
                Phase::SkipBdat(
                    DummyDataReceiver::new_bdat(size),
                    "554 5.5.1 no valid recipients".into(),
                )
            } else {
                if !matches!(sess.phase, Phase::Bdat(_)) && sess.data.is_empty() {
                    sess.too_big = false;
                }
                Phase::Bdat(BdatReceiver::new(size, last))
            };
        }
        Cmd::StartTls => start_tls(s),
        Cmd::Other(name) => reply(s, &format!("502 5.5.1 {name} is not implemented")),
    }
}

fn auth(w: &Worker, s: &Shared, mechanism: u64, initial: String) {
    if s.borrow().helo.is_none() {
        return reply(s, "503 5.5.1 say EHLO first");
    }
    if s.borrow().conn.auth.get().authenticated {
        return reply(s, "503 5.5.1 already authenticated");
    }
    match mechanism {
        smtp_proto::AUTH_PLAIN if initial.is_empty() => {
            s.borrow_mut().phase = Phase::AuthPlain;
            reply(s, "334 ");
        }
        smtp_proto::AUTH_PLAIN => plain(w, s, initial.as_bytes()),
        smtp_proto::AUTH_LOGIN if initial.is_empty() => {
            s.borrow_mut().phase = Phase::AuthLoginUser;
            reply(s, "334 VXNlcm5hbWU6");
        }
        smtp_proto::AUTH_LOGIN => match decode(initial.as_bytes()) {
            Some(user) => {
                s.borrow_mut().phase = Phase::AuthLoginPassword(user);
                reply(s, "334 UGFzc3dvcmQ6");
            }
            None => reply(s, "501 5.5.2 the initial response is not base64"),
        },
        _ => reply(
            s,
            "504 5.5.4 unrecognized authentication mechanism (PLAIN and LOGIN are offered)",
        ),
    }
}

fn decode(line: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(line.trim_ascii())
        .ok()
}

/// A line answering an AUTH challenge (`*` cancels, RFC 4954).
fn auth_line(w: &Worker, s: &Shared, line: Vec<u8>) {
    let phase = std::mem::replace(&mut s.borrow_mut().phase, Phase::Commands);
    if line == b"*" {
        return reply(s, "501 5.0.0 authentication cancelled");
    }
    match phase {
        Phase::AuthPlain => plain(w, s, &line),
        Phase::AuthLoginUser => match decode(&line) {
            Some(user) => {
                s.borrow_mut().phase = Phase::AuthLoginPassword(user);
                reply(s, "334 UGFzc3dvcmQ6");
            }
            None => reply(s, "501 5.5.2 not base64"),
        },
        Phase::AuthLoginPassword(user) => match decode(&line) {
            Some(password) => authenticate(w, s, user, password),
            None => reply(s, "501 5.5.2 not base64"),
        },
        other => s.borrow_mut().phase = other,
    }
}

/// AUTH PLAIN's response: `[authzid] NUL authcid NUL password`.
fn plain(w: &Worker, s: &Shared, response: &[u8]) {
    let Some(decoded) = decode(response) else {
        return reply(s, "501 5.5.2 not base64");
    };
    let mut parts = decoded.splitn(3, |b| *b == 0);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(user), Some(password)) => {
            authenticate(w, s, user.to_vec(), password.to_vec())
        }
        _ => reply(s, "501 5.5.2 malformed PLAIN response"),
    }
}

/// `smtp_in_authenticate`: accepted only if a plugin set authenticated
/// and none refused (the connection's auth state, reset per attempt).
fn authenticate(w: &Worker, s: &Shared, login: Vec<u8>, password: Vec<u8>) {
    s.borrow().conn.auth.set(Default::default());
    step(
        w,
        s,
        "smtp_in_authenticate",
        ChainArgs::Authenticate(Rc::new(Credentials { login, password })),
        |_, s, sent| {
            let ok = s.borrow().conn.auth.get().authenticated;
            match (ok, sent.is_empty()) {
                (_, false) => reply_raw(s, &sent),
                (true, true) => reply(s, "235 2.7.0 authentication succeeded"),
                (false, true) => reply(s, "535 5.7.8 authentication credentials invalid"),
            }
        },
    );
}

fn reset(s: &Shared) {
    let mut sess = s.borrow_mut();
    sess.envelope = None;
    sess.recipients.clear();
    sess.data.clear();
}

/// The end of DATA: `smtp_in_data`, then `smtp_in_message` per recipient,
/// then durable storage, then the reply.
fn end_of_data(w: &Worker, s: &Shared) {
    s.borrow_mut().finishing_data = true;
    if s.borrow().too_big {
        data_done(s);
        reset(s);
        let max = s.borrow().config.max_message_size;
        return reply(s, &format!("552 5.3.4 message larger than {max} bytes"));
    }
    let mime = s.borrow().data.clone();
    step(
        w,
        s,
        "smtp_in_data",
        ChainArgs::Data(mime.into()),
        |w, s, sent| {
            if refused(&sent) {
                data_done(s);
                reset(s);
                return reply_raw(s, &sent);
            }
            let recipients = s.borrow().recipients.clone();
            message_for(w, s, recipients, 0, Vec::new());
        },
    );
}

/// Runs `smtp_in_message` for recipient `i`, then the next; stores all.
fn message_for(
    w: &Worker,
    s: &Shared,
    recipients: Vec<(String, bool)>,
    i: usize,
    mut done: Vec<(Value, bool, Option<String>)>,
) {
    if s.borrow().ending != Ending::No {
        // The client went away before the reply: nothing was accepted.
        return;
    }
    if i == recipients.len() {
        return store_all(s, done);
    }
    let json = {
        let sess = s.borrow();
        let peer = sess
            .stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        json!({
            "envelope": sess.envelope.clone().unwrap_or_default(),
            "recipient": recipients[i].0,
            "mime": String::from_utf8_lossy(&sess.data),
            "hostname": sess.config.hostname,
            "received": now_rfc3339(),
            "message-id": message_id(&sess.config.hostname),
            "connection": {"peer": peer, "helo": sess.helo.clone().unwrap_or_default()},
        })
    };
    let Value::Object(map) = json else {
        unreachable!("an object")
    };
    let message = MessageObj::new(Direction::Incoming, map);
    message.local.set(recipients[i].1);
    step_with(
        w,
        s,
        "smtp_in_message",
        ChainArgs::Message(message),
        move |w, s, sent, args| {
            if let ChainArgs::Message(m) = &args {
                let reason =
                    refused(&sent).then(|| String::from_utf8_lossy(&sent).trim_end().to_owned());
                done.push((m.json(), m.local.get(), reason));
            }
            let s2 = Rc::clone(s);
            // Next recipient on a fresh turn (not inside this chain's end).
            w.ev.defer(Box::new(move || {
                if let Some(w) = worker::current() {
                    message_for(&w, &s2, recipients, i + 1, done);
                }
            }));
        },
    );
}

/// The end of DATA is answered: pipelined input may go on.
fn data_done(s: &Shared) {
    s.borrow_mut().finishing_data = false;
    let s2 = Rc::clone(s);
    if let Some(w) = worker::current() {
        w.ev.defer(Box::new(move || {
            if let Some(w) = worker::current() {
                process(&w, &s2);
            }
        }));
    }
}

/// Stores a transaction's messages (one per recipient) all or none: if one
/// cannot be stored, those already written are removed again and the
/// client is told 451, so its retry does not duplicate them. Only then are
/// the outbox's ones queued for delivery.
fn store_all(s: &Shared, done: Vec<(Value, bool, Option<String>)>) {
    data_done(s);
    let dir = s.borrow().config.data_dir.clone();
    let mut stored: Vec<(PathBuf, bool)> = Vec::new();
    let mut refusals = Vec::new();
    let mut failure = None;
    for (mut message, local, reason) in done {
        if let Some(reason) = reason {
            message["result"] =
                json!({"queue": "refused", "stage": "smtp_in_message", "reply": reason});
            refusals.push((reason, message));
            continue;
        }
        let queue = if local { "local" } else { "inbox" };
        match store(&dir.join(queue), &message) {
            Ok(path) => stored.push((path, local)),
            Err(e) => {
                failure = Some(format!("451 4.3.0 cannot store the message: {e}"));
                break;
            }
        }
    }
    if let Some(failure) = failure {
        for (path, _) in &stored {
            let _ = crate::store::remove(path);
        }
        return reply(s, &failure);
    }
    // Refusal reports: kept even if the accepted part is later retried.
    for (_, report) in &refusals {
        if let Err(e) = store(&dir.join("refused"), report) {
            log_store_error(&format!("cannot store a refusal report: {e}"));
        }
        count(|c| &c.messages_refused);
    }
    if let Some(outbox) = &s.borrow().config.outbox {
        for (path, local) in &stored {
            if !local {
                outbox.push(path.clone());
            }
        }
    }
    for _ in &stored {
        count(|c| &c.messages_stored);
    }
    reset(s);
    if stored.is_empty() {
        let reason = refusals
            .into_iter()
            .next()
            .map(|(reason, _)| reason)
            .unwrap_or_else(|| "554 5.7.1 refused".into());
        reply(s, &reason);
    } else {
        reply(
            s,
            &format!("250 2.0.0 queued for {} recipient(s)", stored.len()),
        );
    }
}

fn log_store_error(text: &str) {
    if let Some(w) = worker::current() {
        w.log(Priority::Critical, text.to_owned());
    }
}

fn count(counter: impl FnOnce(&crate::counters::Counters) -> &AtomicU64) {
    if let Some(w) = worker::current() {
        crate::counters::Counters::bump(counter(&w.shared.counters));
    }
}

fn message_id(host: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "<{stamp}.{}.{}@{host}>",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `hook`'s chain; `then` gets the bytes plugins sent.
fn step(
    w: &Worker,
    s: &Shared,
    hook: &str,
    args: ChainArgs,
    then: impl FnOnce(&Worker, &Shared, Vec<u8>) + 'static,
) {
    step_with(w, s, hook, args, move |w, s, sent, _| then(w, s, sent));
}

/// Runs `hook`'s chain; `then` gets the bytes plugins sent and the
/// chain's arguments. Once the session is ending, no chain but
/// `smtp_in_close` starts, and `then` of a chain that ends after the
/// session was told to end is skipped: `smtp_in_close` runs instead.
fn step_with(
    w: &Worker,
    s: &Shared,
    hook: &str,
    args: ChainArgs,
    then: impl FnOnce(&Worker, &Shared, Vec<u8>, ChainArgs) + 'static,
) {
    let hook = by_name(hook).expect("hook in the table");
    let ending = s.borrow().ending;
    match ending {
        Ending::No => {}
        Ending::Closing if hook.name == "smtp_in_close" => {}
        Ending::Pending => return start_close(w, s),
        Ending::Closing | Ending::Closed => return,
    }
    let conn = {
        let mut sess = s.borrow_mut();
        sess.busy = true;
        Rc::clone(&sess.conn)
    };
    conn.take_sent();
    let weak = Rc::downgrade(s);
    let started = chain::start(
        w,
        &conn,
        hook,
        args,
        Box::new(move |conn, report: ChainReport| {
            let sent = conn.take_sent();
            let Some(s) = weak.upgrade() else {
                return;
            };
            let Some(w) = worker::current() else {
                return;
            };
            s.borrow_mut().busy = false;
            if s.borrow().ending == Ending::Pending {
                // The client went away (or is sent away) during the step.
                return start_close(&w, &s);
            }
            then(&w, &s, sent, report.args);
            // Go on with buffered (pipelined) input on the next turn.
            let s2 = Rc::clone(&s);
            w.ev.defer(Box::new(move || {
                if let Some(w) = worker::current() {
                    process(&w, &s2);
                }
            }));
        }),
    );
    if started.is_err() {
        s.borrow_mut().busy = false;
        w.log(
            Priority::Critical,
            format!(
                "smtp: {} could not start: another chain runs on the connection (host bug); closing the session",
                hook.symbol
            ),
        );
        let ending = s.borrow().ending;
        if ending == Ending::No {
            close(w, s);
        }
    }
}

fn reply(s: &Shared, line: &str) {
    let mut bytes = line.as_bytes().to_vec();
    bytes.extend_from_slice(b"\r\n");
    reply_raw(s, &bytes);
}

/// A plugin's own reply, else the host's default.
fn reply_or(s: &Shared, sent: &[u8], default: &str) {
    if sent.is_empty() {
        reply(s, default);
    } else {
        reply_raw(s, sent);
    }
}

fn reply_raw(s: &Shared, bytes: &[u8]) {
    s.borrow_mut().output.extend_from_slice(bytes);
    if let Some(w) = worker::current() {
        flush(&w, s);
    }
}

fn flush(w: &Worker, s: &Shared) {
    // Under TLS, replies are encrypted first; the records go out below.
    {
        let mut sess = s.borrow_mut();
        let sess = &mut *sess;
        if let Some(tls) = sess.tls.as_mut() {
            if !sess.output.is_empty() {
                let _ = tls.writer().write_all(&sess.output);
                sess.output.clear();
            }
        }
    }
    loop {
        let result = {
            let mut sess = s.borrow_mut();
            let Session {
                stream,
                output,
                tls,
                ..
            } = &mut *sess;
            match tls {
                Some(tls) if tls.wants_write() => tls.write_tls(&mut SendOnly(stream)),
                Some(_) => break,
                None if output.is_empty() => break,
                None => stream.write(output),
            }
        };
        match result {
            Ok(n) => {
                let mut sess = s.borrow_mut();
                if sess.tls.is_none() {
                    sess.output.drain(..n);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return watch(w, s, true),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                {
                    let mut sess = s.borrow_mut();
                    sess.broken = true;
                    sess.output.clear();
                }
                return fail(w, s);
            }
        }
    }
    if s.borrow().ending == Ending::Closed {
        drop_session(w, s);
    } else {
        watch(w, s, false);
    }
}

/// Writes to a socket with `send(2)` only: rustls writes its records with
/// `write_vectored`, which on a `TcpStream` is `writev(2)`, and that raises
/// SIGPIPE on a reset connection (std's `write` passes `MSG_NOSIGNAL`). A
/// program embedding the host under a C `main` does not ignore SIGPIPE.
struct SendOnly<'a>(&'a mut TcpStream);

impl Write for SendOnly<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// The client left or is sent away: once no chain is running,
/// `smtp_in_close`, then the socket goes.
fn close(w: &Worker, s: &Shared) {
    let busy = {
        let mut sess = s.borrow_mut();
        if sess.ending != Ending::No {
            return;
        }
        if sess.busy {
            sess.ending = Ending::Pending;
        }
        sess.busy
    };
    // No more input is read.
    let want_write = s.borrow().watching_write;
    watch(w, s, want_write);
    if !busy {
        start_close(w, s);
    }
}

fn start_close(w: &Worker, s: &Shared) {
    s.borrow_mut().ending = Ending::Closing;
    step(w, s, "smtp_in_close", ChainArgs::None, |w, s, _| {
        s.borrow_mut().ending = Ending::Closed;
        flush(w, s)
    });
}

/// The session cannot go on (a broken socket, a TLS failure, a host bug):
/// it ends as any session does, with `smtp_in_close` once no chain runs.
fn fail(w: &Worker, s: &Shared) {
    if s.borrow().ending == Ending::Closed {
        drop_session(w, s);
    } else {
        close(w, s);
    }
}

fn drop_session(w: &Worker, s: &Shared) {
    let id = s.borrow().conn.id;
    // Once per session, however it ends.
    if SESSIONS.with(|m| m.borrow_mut().remove(&id)).is_none() {
        return;
    }
    let (watcher, idle) = {
        let mut sess = s.borrow_mut();
        (sess.watcher.take(), sess.idle.take())
    };
    if let Some(h) = watcher {
        w.ev.unwatch_io(h);
    }
    if let Some(t) = idle {
        w.ev.stop_timer(t);
    }
    w.close_connection(id);
    let open = Arc::clone(&s.borrow().open);
    open.add(-1);
}

/// On a worker: tells every session of this worker the server goes away.
fn close_all_sessions() {
    let Some(w) = worker::current() else { return };
    let sessions: Vec<Shared> = SESSIONS.with(|m| m.borrow().values().cloned().collect());
    for s in sessions {
        if s.borrow().ending == Ending::No {
            reply(&s, "421 4.3.2 the server is shutting down");
            close(&w, &s);
        }
    }
}

/// On a worker, at the end of a shutdown: the holds of this worker's
/// sessions end now, as at their hold deadline (Rust plugins' holds are
/// cancelled), so that every session gets to `smtp_in_close`.
fn expire_session_holds() {
    let Some(w) = worker::current() else { return };
    let sessions: Vec<Shared> = SESSIONS.with(|m| m.borrow().values().cloned().collect());
    for s in sessions {
        let conn = Rc::clone(&s.borrow().conn);
        chain::expire_hold(&w, &conn, None, "the host shut down");
    }
}

/// A running SMTP listener; stops accepting when dropped.
pub struct Listener {
    addr: std::net::SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    open: Arc<OpenSessions>,
    remotes: Vec<crate::event_loop::LoopRemote>,
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
        let left = *self.open.count.lock().unwrap_or_else(|e| e.into_inner());
        for remote in &self.remotes {
            remote.post(Box::new(close_all_sessions));
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
                remote.post(Box::new(expire_session_holds));
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
        // Wake the blocking accept with a connection of our own.
        let _ = TcpStream::connect(self.addr);
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

/// Accepts on `listener` and hands each client to a worker, round robin.
pub(crate) fn listen(
    listener: std::net::TcpListener,
    remotes: Vec<crate::event_loop::LoopRemote>,
    config: ServeConfig,
) -> std::io::Result<Listener> {
    let addr = listener.local_addr()?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let open = Arc::new(OpenSessions::default());
    let open_for_thread = Arc::clone(&open);
    let remotes_for_thread = remotes.clone();
    let thread = std::thread::Builder::new()
        .name("mq-smtp-accept".into())
        .spawn(move || {
            let mut next = 0usize;
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let config = config.clone();
                let open = Arc::clone(&open_for_thread);
                let remote = &remotes_for_thread[next % remotes_for_thread.len()];
                next += 1;
                remote.post(Box::new(move || {
                    start_session(stream, Rc::new(config), open)
                }));
            }
        })?;
    Ok(Listener {
        addr,
        stop,
        thread: Some(thread),
        open,
        remotes,
    })
}
