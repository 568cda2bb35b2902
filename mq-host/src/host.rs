//! The host: loads plugins, starts workers, runs events through chains,
//! and shuts down with MailerQ's lifecycle order.

use crate::chain::{self, ChainEnd, ChainReport, HookCall};
use crate::counters::{CounterSnapshot, Counters};
use crate::hostlog::{HostLog, LogEcho, LogRecord, Priority, Source};
use crate::loader::{self, HookFn, HostMode, LoadError, PluginInfo};
use crate::objects::{
    AddressObj, ChainArgs, ConnectionState, Credentials, Direction, MessageObj, SmtpView,
};
use crate::worker::{self, Limits, Shared, WorkerHandle};
use mq_hook_table::{by_name, Hook};
use serde_json::Value;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Builds a [`Host`].
#[derive(Debug, Clone)]
pub struct HostBuilder {
    plugin_dir: Option<PathBuf>,
    plugin_files: Vec<PathBuf>,
    workers: usize,
    hold_deadline: Option<Duration>,
    retry_limit: u32,
    mode: HostMode,
    echo: LogEcho,
}

impl Default for HostBuilder {
    fn default() -> Self {
        HostBuilder {
            plugin_dir: None,
            plugin_files: Vec::new(),
            workers: 2,
            hold_deadline: Some(Duration::from_secs(60)),
            retry_limit: 100,
            mode: HostMode::Table,
            echo: LogEcho::None,
        }
    }
}

impl HostBuilder {
    /// Loads every shared object in `dir`, in byte order of file name.
    pub fn plugin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.plugin_dir = Some(dir.into());
        self
    }

    /// Loads this file (after the directory's plugins, in the order given).
    pub fn plugin_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.plugin_files.push(file.into());
        self
    }

    /// Number of worker threads (at least 1; default 2).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// How long a plugin may hold control before the host reports it and
    /// goes on (default 60 s; `None`: forever, as in MailerQ).
    pub fn hold_deadline(mut self, deadline: Option<Duration>) -> Self {
        self.hold_deadline = deadline;
        self
    }

    /// How many retries a chain may make before it is cut (default 100).
    pub fn retry_limit(mut self, limit: u32) -> Self {
        self.retry_limit = limit;
        self
    }

    /// How Rust plugins reach the host's functions (default: the table).
    pub fn mode(mut self, mode: HostMode) -> Self {
        self.mode = mode;
        self
    }

    /// Whether log records are also printed to stderr (default: no).
    pub fn log_echo(mut self, echo: LogEcho) -> Self {
        self.echo = echo;
        self
    }

    /// Loads and checks every plugin, runs `mq_initialize` in plugin
    /// order, then starts the workers (each runs `mq_context_initialize`
    /// before taking traffic). Any refused plugin stops the start.
    pub fn start(self) -> Result<Host, StartError> {
        let log = HostLog::new(self.echo);
        log.install_as_fallback();
        let mut files = match &self.plugin_dir {
            Some(dir) => loader::discover(dir).map_err(StartError::Load)?,
            None => Vec::new(),
        };
        files.extend(self.plugin_files.iter().cloned());
        let api = crate::capi::host_api();
        let mut plugins = Vec::with_capacity(files.len());
        for file in &files {
            let plugin = loader::load(file, self.mode, Some(api)).map_err(StartError::Load)?;
            log.write(
                None,
                Priority::Info,
                Source::Host,
                format!(
                    "loaded {} ({}) from {}",
                    plugin.info.name,
                    kind_label(&plugin.info),
                    file.display()
                ),
            );
            plugins.push(plugin);
        }
        if plugins.len() > crate::handles::MAX_PLUGINS {
            return Err(StartError::TooManyPlugins(plugins.len()));
        }
        let limits = Limits {
            hold_deadline: self.hold_deadline,
            retry_limit: self.retry_limit,
        };
        let shared = Arc::new(Shared::new(plugins, limits, log));
        if let Err((plugin, reason)) = initialize(&shared) {
            let info = &shared.plugins[plugin].info;
            return Err(StartError::Refused {
                file: info.file.clone(),
                plugin: info.name.clone(),
                reason,
            });
        }
        let mut workers = Vec::with_capacity(self.workers);
        for id in 0..self.workers {
            match WorkerHandle::spawn(id, Arc::clone(&shared)) {
                Ok(w) => workers.push(w),
                Err(e) => {
                    let mut host = Host {
                        shared,
                        workers,
                        next_worker: AtomicUsize::new(0),
                        stopped: false,
                    };
                    host.stop();
                    return Err(StartError::Worker(e));
                }
            }
        }
        Ok(Host {
            shared,
            workers,
            next_worker: AtomicUsize::new(0),
            stopped: false,
        })
    }
}

fn kind_label(info: &PluginInfo) -> &'static str {
    match info.kind {
        loader::PluginKind::Rust { .. } => "Rust",
        loader::PluginKind::RustWithoutRootModule => "Rust, global symbols only",
        loader::PluginKind::C => "C",
    }
}

/// Why a host did not start.
#[derive(Debug)]
pub enum StartError {
    /// A plugin was refused.
    Load(LoadError),
    /// A worker thread could not start.
    Worker(String),
    /// More plugins than a host can load.
    TooManyPlugins(usize),
    /// A plugin's `mq_initialize` failed and refused the start.
    Refused {
        /// The plugin's file.
        file: PathBuf,
        /// The plugin's name.
        plugin: String,
        /// Its reason.
        reason: String,
    },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Load(e) => write!(f, "{e}"),
            StartError::Worker(e) => write!(f, "{e}"),
            StartError::TooManyPlugins(n) => write!(
                f,
                "{n} plugins: a host loads at most {} (merge plugins, or load fewer)",
                crate::handles::MAX_PLUGINS
            ),
            StartError::Refused { file, reason, .. } => {
                write!(
                    f,
                    "{}: mq_initialize failed, so the host does not start: {reason}",
                    file.display()
                )
            }
        }
    }
}

impl std::error::Error for StartError {}

/// A running host: plugins loaded, workers running.
pub struct Host {
    shared: Arc<Shared>,
    workers: Vec<WorkerHandle>,
    next_worker: AtomicUsize,
    stopped: bool,
}

impl Host {
    /// A builder with the defaults.
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// The loaded plugins, in call order.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        self.shared.plugins.iter().map(|p| p.info.clone()).collect()
    }

    /// The number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The counters (guards and traffic).
    pub fn counters(&self) -> CounterSnapshot {
        self.shared.counters.snapshot()
    }

    /// The log records so far (the most recent 100 000).
    pub fn log(&self) -> Vec<LogRecord> {
        self.shared.log.since(0, None)
    }

    pub(crate) fn counters_live(&self) -> &Counters {
        &self.shared.counters
    }

    /// Writes a host log record (not from a worker).
    pub(crate) fn host_log(&self, priority: Priority, text: String) {
        self.shared.log.write(None, priority, Source::Host, text);
    }

    /// Opens a connection on the next worker (round robin).
    pub fn open(&self, direction: Direction) -> Result<Session<'_>, RunError> {
        let worker = self.next_worker.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        self.open_on(worker, direction)
    }

    /// Opens a connection on worker `worker`. No hook runs yet: send
    /// [`Event::Connect`] for `smtp_in_connect`.
    pub fn open_on(&self, worker: usize, direction: Direction) -> Result<Session<'_>, RunError> {
        let (tx, rx) = mpsc::channel();
        let posted = self.worker(worker)?.remote.post(Box::new(move || {
            if let Some(w) = worker::current() {
                let _ = tx.send(w.open_connection(-1).id);
            }
        }));
        if !posted {
            return Err(RunError::WorkerGone);
        }
        let id = rx.recv().map_err(|_| RunError::WorkerGone)?;
        Ok(Session {
            host: self,
            worker,
            id,
            direction,
            open: true,
        })
    }

    /// Runs one event's chain on a fresh connection and closes it again
    /// (incoming connections with the `smtp_in_close` chain, so that
    /// plugins free their connection data).
    pub fn run_event(&self, direction: Direction, event: Event) -> Result<EventResult, RunError> {
        let mut session = self.open(direction)?;
        let result = session.run(event);
        session.close()?;
        result
    }

    /// Serves SMTP on `listener` with the plugins' `smtp_in_*` hooks until
    /// the returned [`Listener`](crate::smtp_in::Listener) is dropped.
    pub fn serve(
        &self,
        listener: std::net::TcpListener,
        config: crate::smtp_in::ServeConfig,
    ) -> std::io::Result<crate::smtp_in::Listener> {
        let remotes = self.workers.iter().map(|w| w.remote.clone()).collect();
        crate::smtp_in::listen(listener, remotes, config)
    }

    fn worker(&self, worker: usize) -> Result<&WorkerHandle, RunError> {
        self.workers
            .get(worker)
            .ok_or(RunError::NoSuchWorker(worker))
    }

    /// Stops the workers (`mq_context_cleanup` on each) and runs
    /// `mq_cleanup`, in plugin order; returns the final counters and log.
    pub fn shutdown(mut self) -> Shutdown {
        self.stop();
        Shutdown {
            counters: self.counters(),
            log: self.log(),
        }
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        for w in &mut self.workers {
            w.stop(&self.shared.log);
        }
        run_global_hook(&self.shared, "cleanup");
    }
}

/// Runs `mq_initialize` or `mq_cleanup` of every plugin, in order, on this
/// thread; their `MQ_log` lines go to this host's log.
/// Runs every plugin's `mq_initialize` in order; stops at the first that
/// refuses the start (a Rust plugin whose `initialize` hook failed) and runs
/// `mq_cleanup` of those initialized before it.
fn initialize(shared: &Shared) -> Result<(), (usize, String)> {
    let _scope = crate::hostlog::CallerScope::enter(&shared.log);
    crate::capi::take_start_refusal();
    let hooks = shared.hook_fns("initialize");
    for (done, &(plugin, hook)) in hooks.iter().enumerate() {
        let HookFn::Global(f) = hook else {
            unreachable!("initialize has the global shape")
        };
        shared
            .counters
            .hook_called(by_name("initialize").expect("in the table"));
        // SAFETY: the plugin's `void mq_initialize(void)`.
        unsafe { f() };
        if let Some(reason) = crate::capi::take_start_refusal() {
            let initialized: Vec<usize> = hooks[..done].iter().map(|(p, _)| *p).collect();
            for (p, cleanup) in shared.hook_fns("cleanup") {
                if initialized.contains(&p) {
                    let HookFn::Global(f) = cleanup else {
                        unreachable!("cleanup has the global shape")
                    };
                    // SAFETY: the plugin's `void mq_cleanup(void)`.
                    unsafe { f() };
                }
            }
            return Err((plugin, reason));
        }
    }
    Ok(())
}

fn run_global_hook(shared: &Shared, name: &str) {
    let _scope = crate::hostlog::CallerScope::enter(&shared.log);
    for (_, hook) in shared.hook_fns(name) {
        let HookFn::Global(f) = hook else {
            unreachable!("{name} has the global shape")
        };
        shared
            .counters
            .hook_called(by_name(name).expect("in the table"));
        // SAFETY: the plugin's `void mq_<name>(void)`.
        unsafe { f() };
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a host leaves behind when it shuts down.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// The final counters.
    pub counters: CounterSnapshot,
    /// The whole log, cleanups included.
    pub log: Vec<LogRecord>,
}

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
    /// `smtp_out_sent` for the message of the last [`Event::OutData`].
    OutSent,
}

impl Event {
    /// The hook this event runs.
    pub fn hook(&self) -> &'static Hook {
        let name = match self {
            Event::Connect => "smtp_in_connect",
            Event::Secure => "smtp_in_secure",
            Event::Authenticate { .. } => "smtp_in_authenticate",
            Event::MailFrom(_) => "smtp_in_mailfrom",
            Event::RcptTo(_) => "smtp_in_rcptto",
            Event::Data(_) => "smtp_in_data",
            Event::Message(_) => "smtp_in_message",
            Event::Close => "smtp_in_close",
            Event::OutData(_) => "smtp_out_data",
            Event::OutSent => "smtp_out_sent",
        };
        by_name(name).expect("events name table hooks")
    }

    fn direction(&self) -> Direction {
        match self {
            Event::OutData(_) | Event::OutSent => Direction::Outgoing,
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
    pub message: Option<Value>,
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
    /// How long the chain took.
    pub elapsed: Duration,
}

impl EventResult {
    /// The first reply line a plugin sent, if any.
    pub fn reply(&self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.sent);
        text.lines()
            .next()
            .map(|l| l.trim_end().to_owned())
            .filter(|l| !l.is_empty())
    }

    /// Whether a plugin answered the command with a 4xx or 5xx reply,
    /// which replaces the host's own reply: the command is refused.
    pub fn refused(&self) -> bool {
        self.reply()
            .is_some_and(|r| r.starts_with('4') || r.starts_with('5'))
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
        }
    }
}

impl std::error::Error for RunError {}

/// A connection on one worker.
pub struct Session<'h> {
    host: &'h Host,
    worker: usize,
    id: u64,
    direction: Direction,
    open: bool,
}

/// An event whose chain runs; [`PendingEvent::wait`] for its result.
pub struct PendingEvent {
    rx: mpsc::Receiver<Result<EventResult, RunError>>,
}

impl PendingEvent {
    /// Waits for the chain to end.
    pub fn wait(self) -> Result<EventResult, RunError> {
        self.rx.recv().unwrap_or(Err(RunError::WorkerGone))
    }

    /// Waits at most `timeout`; `None` if the chain is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<EventResult, RunError>> {
        match self.rx.recv_timeout(timeout) {
            Ok(r) => Some(r),
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
        let posted = self
            .host
            .worker(self.worker)?
            .remote
            .post(Box::new(move || {
                let Some(w) = worker::current() else { return };
                let conn = w.connections.borrow().get(&id).cloned();
                match conn {
                    None => {
                        let _ = tx.send(Err(RunError::Closed));
                    }
                    Some(conn) => {
                        if let Err(e) = start_event(&w, &conn, event, tx.clone()) {
                            let _ = tx.send(Err(e));
                        }
                    }
                }
            }));
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
        let posted = self
            .host
            .worker(self.worker)?
            .remote
            .post(Box::new(move || {
                if let Some(w) = worker::current() {
                    w.close_connection(id);
                }
                let _ = tx.send(());
            }));
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

type ResultSender = mpsc::Sender<Result<EventResult, RunError>>;

/// On the worker: prepares the arguments and starts the chain.
fn start_event(
    w: &worker::Worker,
    conn: &Rc<ConnectionState>,
    event: Event,
    tx: ResultSender,
) -> Result<(), RunError> {
    if chain::is_running(conn) {
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
    let log = Arc::clone(&w.shared.log);
    let worker_id = w.id;
    chain::start(
        w,
        conn,
        hook,
        args,
        Box::new(move |conn, report: ChainReport| {
            let calls = worker::current()
                .map(|w| chain::named_calls(&w.shared, &report.calls))
                .unwrap_or_default();
            let result = event_result(hook, conn, report, calls, log.since(mark, Some(worker_id)));
            if hook.name == "smtp_in_close" {
                if let Some(w) = worker::current() {
                    w.close_connection(conn.id);
                }
            }
            let _ = tx.send(Ok(result));
        }),
    )
    .map_err(|chain::Busy| RunError::Busy)
}

fn event_result(
    hook: &'static Hook,
    conn: &ConnectionState,
    report: ChainReport,
    calls: Vec<HookCall>,
    log: Vec<LogRecord>,
) -> EventResult {
    let (mut message, mut smtp, mut local) = (None, None, None);
    match report.args {
        ChainArgs::Address(address) => local = Some(address.local.get()),
        ChainArgs::Message(msg) => {
            message = Some(msg.json());
            local = Some(msg.local.get());
            if msg.direction == Direction::Outgoing {
                smtp = Some(msg.smtp_view());
            }
            if hook.name == "smtp_out_data" {
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
        smtp,
        local,
        authenticated: conn.auth.get().authenticated,
        sent: conn.take_sent(),
        log,
        elapsed: report.started.elapsed(),
    }
}
