//! The host as a library: [`Host`] loads plugins, starts workers, runs
//! events through chains (`session`: connections and events), and shuts
//! down in MailerQ's lifecycle order.

mod session;

pub use session::{Event, EventResult, PendingEvent, RunError, Session};

use crate::observe::{CounterSnapshot, Counters};
use crate::observe::{HostLog, LogEcho, LogLimits, LogRecord, Priority, Source};
use crate::plugins::{self, HostMode, LoadError, PluginInfo};
use crate::runtime::event_loop::{ClockMode, LoopRemote};
use crate::runtime::message::Direction;
use crate::runtime::watchdog::Watchdog;
use crate::runtime::worker::{self, Limits, Shared, WorkerHandle};
use mq_hook_table::HookId;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// How often a long hold is reported by default ([`HostBuilder::hold_report`]).
pub const DEFAULT_HOLD_REPORT: Duration = Duration::from_secs(60);

/// Builds a [`Host`].
#[derive(Debug, Clone)]
pub struct HostBuilder {
    plugin_dir: Option<PathBuf>,
    plugin_files: Vec<PathBuf>,
    workers: usize,
    hold_deadline: Option<Duration>,
    hold_report: Option<Duration>,
    api_version: i32,
    retry_limit: u32,
    mode: HostMode,
    echo: LogEcho,
    log_limits: LogLimits,
    stall_report: Option<Duration>,
    clock: ClockMode,
}

impl Default for HostBuilder {
    fn default() -> Self {
        HostBuilder {
            plugin_dir: None,
            plugin_files: Vec::new(),
            workers: 2,
            hold_deadline: None,
            hold_report: Some(DEFAULT_HOLD_REPORT),
            api_version: mq_hook_table::MQ_API_VERSION,
            retry_limit: 100,
            mode: HostMode::Table,
            echo: LogEcho::None,
            log_limits: LogLimits::default(),
            stall_report: Some(Duration::from_secs(1)),
            clock: ClockMode::Real,
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

    /// How long a plugin may hold control before the host ends the hold
    /// and the chain goes on with the next plugin (default `None`: the
    /// host waits for the resume however long it takes, as MailerQ does).
    ///
    /// An mq-host option MailerQ lacks. Ending a hold is safe: a Rust
    /// plugin's held hook is cancelled (its future dropped with every
    /// borrow of the hook's arguments); a C plugin's take-over keeps its
    /// objects alive until its late resume, which is then ignored.
    pub fn hold_deadline(mut self, deadline: Option<Duration>) -> Self {
        self.hold_deadline = deadline;
        self
    }

    /// How often a plugin that holds control is reported while the host
    /// waits for it (default [`DEFAULT_HOLD_REPORT`], 60 s; `None` or zero:
    /// never). Each report is a warning naming the plugin, the hook and
    /// how long it has held, counted in `hold_reports`; the hold goes on.
    pub fn hold_report(mut self, interval: Option<Duration>) -> Self {
        self.hold_report = interval.filter(|i| !i.is_zero());
        self
    }

    /// The `MQ_API_VERSION` this host runs as (default
    /// [`MQ_API_VERSION`](mq_hook_table::MQ_API_VERSION), this project's
    /// number): a plugin whose `mq_version()` returns another is refused,
    /// as MailerQ refuses one built for another release. Set it to your
    /// MailerQ's number to test plugins built for it.
    pub fn api_version(mut self, version: i32) -> Self {
        self.api_version = version;
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

    /// How long one call into a plugin (a hook, a timer or fd callback) may
    /// keep its worker busy before the stall watchdog reports it (default
    /// 1 s; `None` or zero: no watchdog).
    ///
    /// Such a call blocks every other connection of its worker. The
    /// watchdog, a thread of the host, logs a warning naming the plugin,
    /// the hook or callback and the worker once per call, counts it
    /// (`worker_stalls`), and logs how long the call took when it returns.
    /// It cannot interrupt the call. Lifecycle hooks are not watched
    /// (MailerQ lets them block).
    pub fn stall_report(mut self, threshold: Option<Duration>) -> Self {
        self.stall_report = threshold.filter(|t| !t.is_zero());
        self
    }

    /// Runs the workers' loops on a virtual clock (default `false`: the real
    /// clock, which `serve` and `deliver` always use). For tests: a worker
    /// with nothing to do but wait for a timer jumps its clock to that
    /// timer instead, so a hook that sleeps 30 s or times out after 5 s
    /// completes at once, its timers firing in order. The clock waits for
    /// real while the worker watches an fd an outside peer may make ready
    /// (a plugin's socket) or a plugin's `spawn_blocking` job runs; see
    /// [`event_loop::clock`](crate::event_loop::clock) for the exact rule.
    /// It jumps only while a chain started through a [`Session`] is in
    /// flight or [`Host::advance`] runs: between steps it stands still.
    /// Hold reports, the hold deadline and [`EventResult::elapsed`] follow
    /// the worker's clock; the stall watchdog keeps the real one.
    ///
    /// ```
    /// # fn main() -> Result<(), mq_host::StartError> {
    /// let host = mq_host::Host::builder().virtual_time(true).start()?;
    /// # host.shutdown();
    /// # Ok(()) }
    /// ```
    pub fn virtual_time(mut self, on: bool) -> Self {
        self.clock = if on {
            ClockMode::Virtual
        } else {
            ClockMode::Real
        };
        self
    }

    /// Whether log records are also printed to stderr (default: no).
    pub fn log_echo(mut self, echo: LogEcho) -> Self {
        self.echo = echo;
        self
    }

    /// The bytes the in-memory log ([`Host::log`]) may take: the texts of
    /// its records plus a fixed cost per record (default
    /// [`DEFAULT_LOG_MAX_BYTES`](crate::DEFAULT_LOG_MAX_BYTES), 16 MiB). The
    /// oldest records are dropped beyond it, or beyond 100 000 records
    /// (counted: `log_records_evicted`); the newest record is always kept,
    /// and the stderr echo prints every record.
    pub fn log_max_bytes(mut self, bytes: usize) -> Self {
        self.log_limits.max_bytes = bytes;
        self
    }

    /// The bytes one log record's text may take, after escaping (default
    /// [`DEFAULT_LOG_RECORD_MAX`](crate::DEFAULT_LOG_RECORD_MAX), 16 KiB). A
    /// longer text is cut at a character and ends with
    /// ` [... N bytes cut]`, N being the bytes of the original text left
    /// out (counted: `log_records_cut`).
    pub fn log_record_max(mut self, bytes: usize) -> Self {
        self.log_limits.max_record = bytes;
        self
    }

    /// Loads and checks every plugin, runs `mq_initialize` in plugin
    /// order, then starts the workers (each runs `mq_context_initialize`
    /// before taking traffic). Any refused plugin stops the start.
    pub fn start(self) -> Result<Host, StartError> {
        let log = HostLog::new(self.echo, self.log_limits);
        log.install_as_fallback();
        let mut files = match &self.plugin_dir {
            Some(dir) => plugins::discover(dir).map_err(StartError::Load)?,
            None => Vec::new(),
        };
        files.extend(self.plugin_files.iter().cloned());
        let api = crate::capi::host_api();
        let mut plugins = Vec::with_capacity(files.len());
        for file in &files {
            let plugin = plugins::load(file, self.mode, Some(api), Some(self.api_version))
                .map_err(StartError::Load)?;
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
        if plugins.len() > crate::runtime::handles::MAX_PLUGINS {
            return Err(StartError::TooManyPlugins(plugins.len()));
        }
        let limits = Limits {
            hold_deadline: self.hold_deadline,
            hold_report: self.hold_report,
            retry_limit: self.retry_limit,
            clock: self.clock,
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
                        watchdog: None,
                        next_worker: AtomicUsize::new(0),
                        stopped: false,
                    };
                    host.stop();
                    return Err(StartError::Worker(e));
                }
            }
        }
        let mut host = Host {
            shared,
            workers,
            watchdog: None,
            next_worker: AtomicUsize::new(0),
            stopped: false,
        };
        if let Some(threshold) = self.stall_report {
            let slots = host.workers.iter().map(|w| Arc::clone(&w.calls)).collect();
            match Watchdog::start(Arc::clone(&host.shared), slots, threshold) {
                Ok(watchdog) => host.watchdog = Some(watchdog),
                Err(e) => {
                    host.stop();
                    return Err(StartError::Worker(e));
                }
            }
        }
        Ok(host)
    }
}

fn kind_label(info: &PluginInfo) -> &'static str {
    match info.kind {
        plugins::PluginKind::Rust { .. } => "Rust",
        plugins::PluginKind::RustWithoutRootModule => "Rust, global symbols only",
        plugins::PluginKind::C => "C",
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
                crate::runtime::handles::MAX_PLUGINS
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
    /// Stopped after the workers, so that it still reports a call that
    /// blocks a worker's stop.
    watchdog: Option<Watchdog>,
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

    /// The log records so far: the most recent, within the log's bounds
    /// ([`HostBuilder::log_max_bytes`], 100 000 records).
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
        self.open_fd(worker, direction, -1)
    }

    /// Opens a connection on the next worker whose `MQ_fileDescriptor` is
    /// `fd` (a delivery's relay socket), which must stay open until the
    /// session is closed.
    pub(crate) fn open_socket(
        &self,
        direction: Direction,
        fd: std::os::fd::RawFd,
    ) -> Result<Session<'_>, RunError> {
        let worker = self.next_worker.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        self.open_fd(worker, direction, fd)
    }

    fn open_fd(
        &self,
        worker: usize,
        direction: Direction,
        fd: std::os::fd::RawFd,
    ) -> Result<Session<'_>, RunError> {
        let (tx, rx) = mpsc::channel();
        let posted = worker::post(&self.worker(worker)?.remote, move |w| {
            let _ = tx.send(w.open_connection(fd).id);
        });
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

    /// Lets `by` of time pass on every worker, and returns when it has.
    ///
    /// On a virtual clock ([`HostBuilder::virtual_time`]) no time passes
    /// between steps, so this is how a test lets a plugin's own timers
    /// (a periodic sweeper, a cache's expiry) fire: every worker's clock
    /// jumps from timer to timer, in order, up to `by` later, in about the
    /// real time the timers' callbacks take. On the real clock it waits
    /// `by` for real.
    pub fn advance(&self, by: Duration) -> Result<(), RunError> {
        let (tx, rx) = mpsc::channel();
        for handle in &self.workers {
            let tx = tx.clone();
            let posted = worker::post(&handle.remote, move |w| {
                let step = w.ev.clock_step();
                w.ev.start_timer(
                    by,
                    Box::new(move || {
                        drop(step);
                        let _ = tx.send(());
                    }),
                );
            });
            if !posted {
                return Err(RunError::WorkerGone);
            }
        }
        drop(tx);
        for _ in &self.workers {
            rx.recv().map_err(|_| RunError::WorkerGone)?;
        }
        Ok(())
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

    /// The state the workers share (log, counters), for the acceptor of
    /// `serve`.
    pub(crate) fn shared_state(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// The workers' loops, for the acceptor of `serve`.
    pub(crate) fn worker_remotes(&self) -> Vec<LoopRemote> {
        self.workers.iter().map(|w| w.remote.clone()).collect()
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
        if let Some(mut watchdog) = self.watchdog.take() {
            watchdog.stop();
        }
        cleanup(&self.shared);
    }
}

/// Runs `mq_initialize` or `mq_cleanup` of every plugin, in order, on this
/// thread; their `MQ_log` lines go to this host's log.
/// Runs every plugin's `mq_initialize` in order; stops at the first that
/// refuses the start (a Rust plugin whose `initialize` hook failed) and runs
/// `mq_cleanup` of those initialized before it.
fn initialize(shared: &Shared) -> Result<(), (usize, String)> {
    let _scope = crate::observe::CallerScope::enter(&shared.log);
    crate::capi::take_start_refusal();
    let (initialize, cleanup) = (HookId::Initialize.hook(), HookId::Cleanup.hook());
    let plugins = shared.plugins_with(initialize);
    for (done, &plugin) in plugins.iter().enumerate() {
        shared.call_lifecycle(initialize, plugin, None);
        if let Some(reason) = crate::capi::take_start_refusal() {
            let initialized = &plugins[..done];
            for &p in shared.plugins_with(cleanup) {
                if initialized.contains(&p) {
                    shared.call_lifecycle(cleanup, p, None);
                }
            }
            return Err((plugin, reason));
        }
    }
    Ok(())
}

/// Runs `mq_cleanup` of every plugin, in order, on this thread.
fn cleanup(shared: &Shared) {
    let _scope = crate::observe::CallerScope::enter(&shared.log);
    let hook = HookId::Cleanup.hook();
    for &plugin in shared.plugins_with(hook) {
        shared.call_lifecycle(hook, plugin, None);
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
