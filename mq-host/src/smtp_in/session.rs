//! One SMTP session on a worker's loop: its socket (watcher, idle timer,
//! TLS, replies), its steps (a hook's chain, then what the command does
//! next), and its end — however it ends, `smtp_in_close` runs exactly
//! once, after a held step is over, then the socket goes.

pub(super) use super::deadline::update_deadline;
use super::input::InputBuffer;
use super::tls::SendOnly;
pub(super) use super::tls::{receive, start_tls};
use super::{Admission, ServeConfig};
use crate::inbound::refuses as refused;
use crate::observe::Priority;
use crate::runtime::chain::ChainReport;
use crate::runtime::connection::{id_map, ConnectionState, IdMap};
use crate::runtime::dispatch;
use crate::runtime::event_loop::{Interest, TimerHandle, WatcherHandle};
use crate::runtime::message::ChainArgs;
use crate::runtime::worker::Worker;
use crate::store::commit::Committer;
use mq_hook_table::HookId;
use smtp_proto::request::receiver::{
    BdatReceiver, DataReceiver, DummyDataReceiver, RequestReceiver,
};
use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;

pub(super) enum Phase {
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
pub(super) enum Ending {
    /// Serving.
    No,
    /// The session is to end once the running chain ends.
    Pending,
    /// The `smtp_in_close` chain runs.
    Closing,
    /// `smtp_in_close` ran; the reply is flushed, then the session goes.
    Closed,
}

pub(super) struct Session {
    /// This session's place among the listener's open sessions.
    pub(super) admission: Admission,
    pub(super) conn: Rc<ConnectionState>,
    pub(super) stream: TcpStream,
    /// The TLS layer after STARTTLS.
    pub(super) tls: Option<rustls::ServerConnection>,
    /// `smtp_in_secure` is due once the TLS handshake completes.
    pub(super) secure_pending: bool,
    /// The listener's configuration, shared by all its sessions.
    pub(super) config: Arc<ServeConfig>,
    pub(super) watcher: Option<WatcherHandle>,
    pub(super) watching_write: bool,
    pub(super) watching_read: bool,
    pub(super) idle: Option<TimerHandle>,
    /// The running deadline: a command line, an AUTH line, or a message's
    /// data must be complete before it fires (`command_timeout`,
    /// `data_timeout`).
    pub(super) deadline: Option<(Deadline, TimerHandle)>,
    /// The current command line is partly received.
    pub(super) partial_line: bool,
    pub(super) input: InputBuffer,
    pub(super) output: Vec<u8>,
    /// Replies are collected while a batch of input is handled, and
    /// written once at its end.
    pub(super) corked: bool,
    /// An over-long AUTH line is being skipped up to its line end.
    pub(super) skipping_line: bool,
    pub(super) parser: RequestReceiver,
    pub(super) phase: Phase,
    /// A chain is running: input waits.
    pub(super) busy: bool,
    /// Handles buffered input (the commands' interpreter).
    pub(super) on_input: InputHandler,
    /// The client closed its side: no more input will come.
    pub(super) eof: bool,
    pub(super) ending: Ending,
    /// The socket failed: nothing more is written to it.
    pub(super) broken: bool,
    /// The end of DATA is being handled (several chains, then storage):
    /// pipelined input waits for its reply.
    pub(super) finishing_data: bool,
    pub(super) envelope: Option<String>,
    pub(super) recipients: Vec<Recipient>,
    pub(super) data: Vec<u8>,
    pub(super) too_big: bool,
    pub(super) helo: Option<String>,
    /// The login of the last successful AUTH (the incoming JSON's
    /// `connection.user`).
    pub(super) user: Option<String>,
    /// Both ends' addresses (local, remote), asked of the socket once per
    /// connection, for the incoming JSON's `connection`.
    pub(super) addresses: std::cell::OnceCell<(Option<SocketAddr>, Option<SocketAddr>)>,
    /// The listener's store thread, which commits accepted messages.
    pub(super) store: Arc<Committer>,
}

pub(super) type Shared = Rc<RefCell<Session>>;

/// Replies waiting beyond this stop a session from handling more input.
const OUTPUT_PAUSE: usize = 64 * 1024;

/// A deadline the client must meet (see [`Session::deadline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deadline {
    /// A command or AUTH line, from its first byte.
    Line,
    /// A message's data, from the `354` or the BDAT command.
    Data,
}

/// A recipient the plugins accepted.
#[derive(Debug, Clone)]
pub(super) struct Recipient {
    pub(super) address: String,
    /// Set by a plugin in `smtp_in_rcptto` (`MQ_address_set_local`): the
    /// message for it goes to `local/`, not to delivery.
    pub(super) local: bool,
}

/// Handles a session's buffered input: what its commands ask for.
pub(super) type InputHandler = fn(&Worker, &Shared);

/// Goes on with the session's buffered input.
pub(super) fn go_on(w: &Worker, s: &Shared) {
    let on_input = s.borrow().on_input;
    on_input(w, s);
}

impl Session {
    /// Input is not read while this holds: unhandled input at its limit,
    /// or replies waiting for a client that does not read them.
    pub(super) fn input_full(&self) -> bool {
        self.input.len() >= self.config.max_input_buffer || self.output_waiting()
    }

    /// Replies wait to be written: input is not handled meanwhile.
    pub(super) fn output_waiting(&self) -> bool {
        self.output.len() >= OUTPUT_PAUSE.min(self.config.max_output_buffer)
    }

    /// A message over the size limit is dropped as it arrives (and refused
    /// with 552 at its end), so it never occupies memory.
    pub(super) fn enforce_size_limit(&mut self) {
        if self.data.len() > self.config.max_message_size {
            self.too_big = true;
            self.data.clear();
        }
    }
}

thread_local! {
    pub(super) static SESSIONS: RefCell<IdMap<Shared>> = RefCell::new(id_map());
}

/// Runs a session's event handling; a panic (a host bug) is logged and
/// ends only this session, never the worker.
pub(super) fn guarded(w: &Worker, s: &Shared, f: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        let what = crate::observe::panic_text(panic);
        w.log(
            Priority::Critical,
            format!("smtp: a session failed ({what}); closing it"),
        );
        crate::observe::Counters::bump(&w.shared.counters.host_panics);
        fail(w, s);
    }
}

/// On the worker: takes over an accepted socket.
pub(super) fn start_session(
    w: &Worker,
    stream: TcpStream,
    config: Arc<ServeConfig>,
    admission: Admission,
    store: Arc<Committer>,
    on_input: InputHandler,
) {
    if let Err(e) = stream.set_nonblocking(true) {
        w.log(
            Priority::Warning,
            format!("smtp: cannot make a client socket non-blocking: {e}"),
        );
        return;
    }
    // Replies go out as they are written: no Nagle delay after a write
    // that the client waits on.
    let _ = stream.set_nodelay(true);
    let conn = w.open_connection(stream.as_raw_fd());
    conn.send_limit.set(config.max_output_buffer);
    let id = conn.id;
    crate::observe::Counters::bump(&w.shared.counters.smtp_sessions);
    let session = Rc::new(RefCell::new(Session {
        admission,
        conn,
        stream,
        tls: None,
        secure_pending: false,
        config,
        watcher: None,
        watching_write: false,
        watching_read: false,
        idle: None,
        deadline: None,
        partial_line: false,
        input: InputBuffer::default(),
        output: Vec::new(),
        corked: false,
        skipping_line: false,
        parser: RequestReceiver::default(),
        phase: Phase::Connecting,
        busy: false,
        on_input,
        eof: false,
        ending: Ending::No,
        broken: false,
        finishing_data: false,
        envelope: None,
        recipients: Vec::new(),
        data: Vec::new(),
        too_big: false,
        helo: None,
        user: None,
        addresses: std::cell::OnceCell::new(),
        store,
    }));
    SESSIONS.with(|s| s.borrow_mut().insert(id, Rc::clone(&session)));
    watch(w, &session, false);
    touch(w, &session);
    step(
        w,
        &session,
        HookId::SmtpInConnect,
        ChainArgs::None,
        |w, s, sent| {
            if refused(&sent) {
                reply_raw(w, s, &sent);
                close(w, s);
            } else {
                let greeting = format!("220 {} ESMTP mq-host\r\n", s.borrow().config.hostname);
                reply_raw(
                    w,
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

/// (Re)registers the socket's watcher with read, and write if output waits.
pub(super) fn watch(w: &Worker, s: &Shared, want_write: bool) {
    let (fd, old, reading) = {
        let mut sess = s.borrow_mut();
        // Once the session ends, input is no longer read: a hung-up
        // socket would otherwise report itself readable on every turn.
        // Nor while its buffers are full: the client waits (TCP flow
        // control) until the session has handled what it has.
        let reading = sess.ending == Ending::No && !sess.eof && !sess.input_full();
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
    let handle = w.watch_io(fd, interest, move |w, ready| {
        let Some(s) = weak.upgrade() else { return };
        guarded(w, &s, || {
            if ready.write {
                flush(w, &s);
            }
            if ready.read {
                read(w, &s);
            }
        });
    });
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

pub(super) fn touch(w: &Worker, s: &Shared) {
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
    let timer = w.start_timer(after, move |w| {
        let Some(s) = weak.upgrade() else { return };
        s.borrow_mut().idle = None;
        crate::observe::Counters::bump(&w.shared.counters.sessions_idle);
        reply(w, &s, "421 4.4.2 idle for too long, closing");
        close(w, &s);
    });
    s.borrow_mut().idle = Some(timer);
}

thread_local! {
    /// The buffer sessions read their sockets into, one per worker: a
    /// buffer on the stack was zeroed (16 KiB) on every read.
    static READ_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// How much one `read(2)` of a session's socket takes at most.
const READ_SIZE: usize = 16 * 1024;

pub(super) fn read(w: &Worker, s: &Shared) {
    // Taken out while in use: a nested read (none today) would find it
    // empty and make its own.
    let mut buf = READ_BUFFER.with(|b| std::mem::take(&mut *b.borrow_mut()));
    buf.resize(READ_SIZE, 0);
    read_into(w, s, &mut buf);
    READ_BUFFER.with(|b| *b.borrow_mut() = buf);
}

fn read_into(w: &Worker, s: &Shared, buf: &mut [u8]) {
    loop {
        if s.borrow().input_full() {
            // Read again once the session has handled its input.
            crate::observe::Counters::bump(&w.shared.counters.input_paused);
            let want_write = s.borrow().watching_write;
            watch(w, s, want_write);
            break;
        }
        let result = s.borrow_mut().stream.read(buf);
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
        return step(w, s, HookId::SmtpInSecure, ChainArgs::None, |w, s, sent| {
            if refused(&sent) {
                reply_raw(w, s, &sent);
                close(w, s);
            } else if !sent.is_empty() {
                reply_raw(w, s, &sent);
            }
        });
    }
    go_on(w, s);
}

/// Runs `hook`'s chain; `then` gets the bytes plugins sent.
pub(super) fn step(
    w: &Worker,
    s: &Shared,
    hook: HookId,
    args: ChainArgs,
    then: impl FnOnce(&Worker, &Shared, Vec<u8>) + 'static,
) {
    step_with(w, s, hook, args, move |w, s, sent, _| then(w, s, sent));
}

/// Runs `hook`'s chain; `then` gets the bytes plugins sent and the
/// chain's arguments. Once the session is ending, no chain but
/// `smtp_in_close` starts, and `then` of a chain that ends after the
/// session was told to end is skipped: `smtp_in_close` runs instead.
pub(super) fn step_with(
    w: &Worker,
    s: &Shared,
    hook: HookId,
    args: ChainArgs,
    then: impl FnOnce(&Worker, &Shared, Vec<u8>, ChainArgs) + 'static,
) {
    let hook = hook.hook();
    let ending = s.borrow().ending;
    match ending {
        Ending::No => {}
        Ending::Closing if hook.id == HookId::SmtpInClose => {}
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
    let started = dispatch::start(
        w,
        &conn,
        hook,
        args,
        Box::new(move |w, conn, report: ChainReport| {
            let sent = conn.take_sent();
            let Some(s) = weak.upgrade() else {
                return;
            };
            s.borrow_mut().busy = false;
            if s.borrow().ending == Ending::Pending {
                // The client went away (or is sent away) during the step.
                return start_close(w, &s);
            }
            then(w, &s, sent, report.args);
            // Go on with buffered (pipelined) input on the next turn.
            w.defer(move |w| go_on(w, &s));
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

pub(super) fn reply(w: &Worker, s: &Shared, line: &str) {
    let mut bytes = line.as_bytes().to_vec();
    bytes.extend_from_slice(b"\r\n");
    reply_raw(w, s, &bytes);
}

/// A plugin's own reply, else the host's default.
pub(super) fn reply_or(w: &Worker, s: &Shared, sent: &[u8], default: &str) {
    if sent.is_empty() {
        reply(w, s, default);
    } else {
        reply_raw(w, s, sent);
    }
}

pub(super) fn reply_raw(w: &Worker, s: &Shared, bytes: &[u8]) {
    let corked = {
        let mut sess = s.borrow_mut();
        sess.output.extend_from_slice(bytes);
        sess.corked
    };
    if !corked {
        flush(w, s);
    }
}

pub(super) fn flush(w: &Worker, s: &Shared) {
    loop {
        // Under TLS, replies are encrypted first, as far as rustls takes
        // them (it bounds what it buffers); the records go out below.
        {
            let mut sess = s.borrow_mut();
            let sess = &mut *sess;
            if let Some(tls) = sess.tls.as_mut() {
                while !sess.output.is_empty() {
                    match tls.writer().write(&sess.output) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            sess.output.drain(..n);
                        }
                    }
                }
            }
        }
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
        return;
    }
    let input_waits = !s.borrow().input.is_empty();
    watch(w, s, false);
    if input_waits {
        // The replies are out: input held back behind them goes on.
        let s = Rc::clone(s);
        w.defer(move |w| go_on(w, &s));
    }
}

/// The client left or is sent away: once no chain is running,
/// `smtp_in_close`, then the socket goes.
pub(super) fn close(w: &Worker, s: &Shared) {
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

pub(super) fn start_close(w: &Worker, s: &Shared) {
    s.borrow_mut().ending = Ending::Closing;
    step(w, s, HookId::SmtpInClose, ChainArgs::None, |w, s, _| {
        s.borrow_mut().ending = Ending::Closed;
        flush(w, s)
    });
}

/// The session cannot go on (a broken socket, a TLS failure, a host bug):
/// it ends as any session does, with `smtp_in_close` once no chain runs.
pub(super) fn fail(w: &Worker, s: &Shared) {
    if s.borrow().ending == Ending::Closed {
        drop_session(w, s);
    } else {
        close(w, s);
    }
}

pub(super) fn drop_session(w: &Worker, s: &Shared) {
    let id = s.borrow().conn.id;
    // Once per session, however it ends.
    if SESSIONS.with(|m| m.borrow_mut().remove(&id)).is_none() {
        return;
    }
    let (watcher, idle, deadline) = {
        let mut sess = s.borrow_mut();
        (sess.watcher.take(), sess.idle.take(), sess.deadline.take())
    };
    if let Some(h) = watcher {
        w.ev.unwatch_io(h);
    }
    for t in idle.into_iter().chain(deadline.map(|(_, t)| t)) {
        w.ev.stop_timer(t);
    }
    w.close_connection(id);
    s.borrow_mut().admission.release();
}

/// Forgets the open transaction (envelope, recipients, data).
pub(super) fn reset(s: &Shared) {
    let mut sess = s.borrow_mut();
    sess.envelope = None;
    sess.recipients.clear();
    sess.data.clear();
}
