//! Connections on a worker, driven from any thread: a [`Session`] runs one
//! [`Event`]'s chain at a time and returns what it did ([`EventResult`]).

use super::Host;
use crate::observe::{LogRecord, Source};
use crate::runtime::chain::{ChainEnd, ChainReport, HookCall};
use crate::runtime::connection::ConnectionState;
use crate::runtime::dispatch;
use crate::runtime::message::{
    AddressObj, ChainArgs, Credentials, Direction, MessageObj, SmtpView,
};
use crate::runtime::worker::{self};
use mq_hook_table::{Hook, HookId, Stage};
use serde_json::Value;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// An event on a connection: one hook's chain.
#[derive(Debug, Clone)]
pub enum Event {
    /// `smtp_in_connect`.
    Connect,
    /// `smtp_in_secure` (the connection is marked secure first).
    Secure,
    /// `smtp_in_authenticate` with the client's credentials.
    Authenticate {
        /// The login.
        login: Vec<u8>,
        /// The password.
        password: Vec<u8>,
    },
    /// `smtp_in_mailfrom` (empty for `<>`).
    MailFrom(String),
    /// `smtp_in_rcptto`.
    RcptTo(String),
    /// `smtp_in_data` with the MIME data.
    Data(Vec<u8>),
    /// `smtp_in_message` for one recipient's MailerQ JSON message.
    Message(Value),
    /// `smtp_in_close`; the connection is closed afterwards.
    Close,
    /// `smtp_out_data` for a MailerQ JSON message; the message stays on the
    /// connection for [`Event::OutSent`].
    OutData(Value),
    /// `smtp_out_data` for a MailerQ JSON message whose MIME is given
    /// byte for byte (e.g. read from the MIME store by its `key`), not as
    /// its `mime` string; like [`Event::OutData`] otherwise.
    OutDataWithMime(Value, Vec<u8>),
    /// `smtp_out_sent` for the message of the last [`Event::OutData`].
    OutSent,
}

impl Event {
    /// The hook this event runs.
    pub fn hook(&self) -> &'static Hook {
        let id = match self {
            Event::Connect => HookId::SmtpInConnect,
            Event::Secure => HookId::SmtpInSecure,
            Event::Authenticate { .. } => HookId::SmtpInAuthenticate,
            Event::MailFrom(_) => HookId::SmtpInMailfrom,
            Event::RcptTo(_) => HookId::SmtpInRcptto,
            Event::Data(_) => HookId::SmtpInData,
            Event::Message(_) => HookId::SmtpInMessage,
            Event::Close => HookId::SmtpInClose,
            Event::OutData(_) | Event::OutDataWithMime(..) => HookId::SmtpOutData,
            Event::OutSent => HookId::SmtpOutSent,
        };
        id.hook()
    }

    fn direction(&self) -> Direction {
        match self.hook().stage {
            Stage::Outgoing => Direction::Outgoing,
            _ => Direction::Incoming,
        }
    }
}

/// What an event's chain did.
#[derive(Debug, Clone)]
pub struct EventResult {
    /// The hook that ran.
    pub hook: &'static Hook,
    /// How the chain ended.
    pub end: ChainEnd,
    /// Every hook call, in order (retries call plugins again).
    pub calls: Vec<HookCall>,
    /// How often the chain was retried.
    pub retries: u32,
    /// For message events: the message's JSON after the chain (for
    /// outgoing messages the stored JSON, which setters do not change).
    /// Its `mime` string replaces bytes that are not UTF-8: [`EventResult::mime`]
    /// has them as they are.
    pub message: Option<Value>,
    /// For message events: the MIME of [`EventResult::message`], byte for
    /// byte (8-bit data a plugin set with `MQ_setMime` included).
    pub mime: Option<Vec<u8>>,
    /// For outgoing messages: what would go over SMTP.
    pub smtp: Option<SmtpView>,
    /// For message and recipient events: whether it is local.
    pub local: Option<bool>,
    /// Whether the connection is authenticated after the chain.
    pub authenticated: bool,
    /// Bytes plugins sent to the peer with `MQ_send` during the chain.
    pub sent: Vec<u8>,
    /// The log records written on the worker during the chain.
    pub log: Vec<LogRecord>,
    /// How long the chain took, by the worker's clock (virtual time with
    /// [`HostBuilder::virtual_time`](crate::HostBuilder::virtual_time)).
    pub elapsed: Duration,
}

impl EventResult {
    /// The first reply line a plugin sent, if any.
    pub fn reply(&self) -> Option<String> {
        crate::inbound::reply_line(&self.sent)
    }

    /// Whether a plugin answered the command with a 4xx or 5xx reply,
    /// which replaces the host's own reply: the command is refused.
    pub fn refused(&self) -> bool {
        crate::inbound::refuses(&self.sent)
    }

    /// The plugin log lines (text only), for tests and tools.
    pub fn plugin_log(&self) -> Vec<String> {
        self.log
            .iter()
            .filter(|r| r.source == Source::Plugin)
            .map(|r| r.text.clone())
            .collect()
    }
}

/// Why an event could not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// There is no such worker.
    NoSuchWorker(usize),
    /// The worker stopped.
    WorkerGone,
    /// The connection was closed.
    Closed,
    /// A chain is already running on this connection.
    Busy,
    /// The event belongs to the other direction.
    WrongDirection {
        /// The event's hook.
        hook: &'static str,
        /// The connection's direction.
        direction: Direction,
    },
    /// A message event's JSON is not an object.
    NotAnObject,
    /// `OutSent` without a preceding `OutData`.
    NoOutgoingMessage,
    /// The message's MIME after the hooks is not UTF-8 (8-bit data a
    /// plugin set), so a JSON line cannot carry it byte for byte; `run`
    /// reports it rather than make it lossy.
    MimeNotUtf8 {
        /// The MIME's size in bytes.
        bytes: usize,
    },
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::NoSuchWorker(w) => write!(f, "there is no worker {w}"),
            RunError::WorkerGone => f.write_str("the worker has stopped"),
            RunError::Closed => f.write_str("the connection is closed"),
            RunError::Busy => f.write_str("a chain is already running on this connection"),
            RunError::WrongDirection { hook, direction } => {
                write!(f, "`{hook}` does not run on an {direction:?} connection")
            }
            RunError::NotAnObject => f.write_str("a MailerQ message must be a JSON object"),
            RunError::NoOutgoingMessage => {
                f.write_str("`smtp_out_sent` needs the message of a preceding `smtp_out_data`")
            }
            RunError::MimeNotUtf8 { bytes } => write!(
                f,
                "the MIME after the hooks ({bytes} bytes) is not UTF-8, so a JSON line cannot \
                 carry it byte for byte (mq-host does not make it lossy; `serve` stores such \
                 MIME under the message's `key`)"
            ),
        }
    }
}

impl std::error::Error for RunError {}

/// A connection on one worker.
pub struct Session<'h> {
    pub(super) host: &'h Host,
    pub(super) worker: usize,
    pub(super) id: u64,
    pub(super) direction: Direction,
    pub(super) open: bool,
}

/// An event whose chain runs; [`PendingEvent::wait`] for its result.
pub struct PendingEvent {
    rx: mpsc::Receiver<ChainOutcome>,
}

impl PendingEvent {
    /// Waits for the chain to end.
    pub fn wait(self) -> Result<EventResult, RunError> {
        self.rx.recv().map_or(Err(RunError::WorkerGone), |r| *r)
    }

    /// Waits at most `timeout`; `None` if the chain is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<EventResult, RunError>> {
        match self.rx.recv_timeout(timeout) {
            Ok(r) => Some(*r),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => Some(Err(RunError::WorkerGone)),
        }
    }
}

impl Session<'_> {
    /// The worker this connection lives on.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// Runs `event`'s chain and waits for it.
    pub fn run(&mut self, event: Event) -> Result<EventResult, RunError> {
        let closes = matches!(event, Event::Close);
        let result = self.submit(event)?.wait();
        if closes {
            self.open = false;
        }
        result
    }

    /// Starts `event`'s chain without waiting.
    pub fn submit(&self, event: Event) -> Result<PendingEvent, RunError> {
        if !self.open {
            return Err(RunError::Closed);
        }
        if event.direction() != self.direction {
            return Err(RunError::WrongDirection {
                hook: event.hook().name,
                direction: self.direction,
            });
        }
        let (tx, rx) = mpsc::channel();
        let id = self.id;
        let remote = &self.host.worker(self.worker)?.remote;
        let posted = worker::post(remote, move |w| {
            let conn = w.connections.borrow().get(&id).cloned();
            match conn {
                None => {
                    let _ = tx.send(Box::new(Err(RunError::Closed)));
                }
                Some(conn) => {
                    if let Err(e) = start_event(w, &conn, event, tx.clone()) {
                        let _ = tx.send(Box::new(Err(e)));
                    }
                }
            }
        });
        if !posted {
            return Err(RunError::WorkerGone);
        }
        Ok(PendingEvent { rx })
    }

    /// Closes the connection: incoming connections run the `smtp_in_close`
    /// chain first (its result is returned).
    pub fn close(mut self) -> Result<Option<EventResult>, RunError> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> Result<Option<EventResult>, RunError> {
        if !self.open {
            return Ok(None);
        }
        if self.direction == Direction::Incoming {
            match self.run(Event::Close) {
                // A chain still held (an event submitted but not awaited):
                // close without the close chain; the worker keeps the
                // connection alive while the plugin holds it.
                Err(RunError::Busy) => {}
                other => return other.map(Some),
            }
        }
        self.open = false;
        let id = self.id;
        let (tx, rx) = mpsc::channel();
        let remote = &self.host.worker(self.worker)?.remote;
        let posted = worker::post(remote, move |w| {
            w.close_connection(id);
            let _ = tx.send(());
        });
        if posted {
            let _ = rx.recv();
        }
        Ok(None)
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = self.close_inner();
    }
}

/// A chain's result, boxed: a channel's first send allocates and zeroes a
/// block of 31 slots, which for an unboxed `EventResult` was about 8 KiB
/// per chain run, two thirds of an empty chain's instructions on the worker
/// (measured by `cargo bench -p mq-bench --bench hook_cost`).
type ChainOutcome = Box<Result<EventResult, RunError>>;

type ResultSender = mpsc::Sender<ChainOutcome>;

/// On the worker: prepares the arguments and starts the chain.
fn start_event(
    w: &worker::Worker,
    conn: &Rc<ConnectionState>,
    event: Event,
    tx: ResultSender,
) -> Result<(), RunError> {
    if w.is_running(conn.id) {
        return Err(RunError::Busy);
    }
    let hook = event.hook();
    let object = |json: Value| match json {
        Value::Object(map) => Ok(map),
        _ => Err(RunError::NotAnObject),
    };
    let args = match event {
        Event::Connect | Event::Close => ChainArgs::None,
        Event::Secure => {
            conn.secure.set(true);
            ChainArgs::None
        }
        Event::Authenticate { login, password } => {
            conn.auth.set(Default::default());
            ChainArgs::Authenticate(Rc::new(Credentials { login, password }))
        }
        Event::MailFrom(email) | Event::RcptTo(email) => {
            ChainArgs::Address(Rc::new(AddressObj::new(Some(&email))))
        }
        Event::Data(mime) => ChainArgs::Data(mime.into()),
        Event::Message(json) => {
            ChainArgs::Message(MessageObj::new(Direction::Incoming, object(json)?))
        }
        Event::OutData(json) => {
            ChainArgs::Message(MessageObj::new(Direction::Outgoing, object(json)?))
        }
        Event::OutDataWithMime(json, mime) => {
            let mut json = object(json)?;
            json.remove("mime");
            let mime = Some(Rc::from(mime));
            ChainArgs::Message(MessageObj::with_mime(Direction::Outgoing, json, mime))
        }
        Event::OutSent => {
            let message = conn
                .outgoing_message
                .borrow_mut()
                .take()
                .ok_or(RunError::NoOutgoingMessage)?;
            ChainArgs::Message(message)
        }
    };
    conn.take_sent();
    let mark = w.shared.log.mark();
    let started = w.ev.now();
    // The step is in flight (its clock may jump) until its result is sent.
    let step = w.ev.clock_step();
    let log = Arc::clone(&w.shared.log);
    let worker_id = w.id;
    dispatch::start(
        w,
        conn,
        hook,
        args,
        Box::new(move |w, conn, report: ChainReport| {
            let calls = dispatch::named_calls(&w.shared, &report.calls);
            let mut result =
                event_result(hook, conn, report, calls, log.since(mark, Some(worker_id)));
            result.elapsed = w.ev.now().saturating_duration_since(started);
            if hook.id == HookId::SmtpInClose {
                w.close_connection(conn.id);
            }
            let _ = tx.send(Box::new(Ok(result)));
            drop(step);
        }),
    )
    .map_err(|dispatch::Busy| RunError::Busy)
}

fn event_result(
    hook: &'static Hook,
    conn: &ConnectionState,
    report: ChainReport,
    calls: Vec<HookCall>,
    log: Vec<LogRecord>,
) -> EventResult {
    let (mut message, mut mime, mut smtp, mut local) = (None, None, None, None);
    match report.args {
        ChainArgs::Address(address) => local = Some(address.local.get()),
        ChainArgs::Message(msg) => {
            message = Some(msg.json());
            mime = msg.parts().1.map(|m| m.to_vec());
            local = Some(msg.local.get());
            if msg.direction == Direction::Outgoing {
                smtp = Some(msg.smtp_view());
            }
            if hook.id == HookId::SmtpOutData {
                *conn.outgoing_message.borrow_mut() = Some(msg);
            }
        }
        _ => {}
    }
    EventResult {
        hook,
        end: report.end,
        calls,
        retries: report.retries,
        message,
        mime,
        smtp,
        local,
        authenticated: conn.auth.get().authenticated,
        sent: conn.take_sent(),
        log,
        elapsed: report.started.elapsed(),
    }
}
