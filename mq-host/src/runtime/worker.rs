//! Worker threads: each owns an event loop, one context per plugin, and its
//! connections. Work reaches a worker as a task posted to its loop.
//!
//! A panic in the loop (a host bug in a callback) is caught, logged and
//! counted, and the loop goes on serving: the event loop stays consistent
//! when a callback panics.

use crate::observe::Counters;
use crate::observe::{HostLog, Priority, Source};
use crate::plugins::LoadedPlugin;
use crate::runtime::chain::{Chain, ChainReport};
use crate::runtime::connection::{id_map, ConnectionState, IdMap};
use crate::runtime::event_loop::{EventLoop, Interest, LoopRemote, TimerHandle, WatcherHandle};
use crate::runtime::misuse::Misuse;
use crate::runtime::watchdog::{CallGuard, CallSite, CallSlot};
use mq_abi::sys::MQ_Context;
use mq_hook_table::{Hook, HookId, HOOK_COUNT};
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::ffi::c_void;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// Limits of the guards.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// When a hold ends without a resume; `None`: never, as in MailerQ.
    pub(crate) hold_deadline: Option<Duration>,
    /// How often a long hold is reported; `None`: never.
    pub(crate) hold_report: Option<Duration>,
    pub(crate) retry_limit: u32,
    /// The workers' loops run on this clock (virtual in tests).
    pub(crate) clock: crate::runtime::event_loop::ClockMode,
}

/// What all workers share.
pub(crate) struct Shared {
    pub(crate) plugins: Vec<LoadedPlugin>,
    /// For each hook (table index), the plugins that define it, in order.
    pub(crate) by_hook: Vec<Vec<usize>>,
    /// Per plugin: its `mq_smtp_in_close` is mq-plugin's own housekeeping
    /// (a Rust plugin whose author wrote no such hook), which only drops
    /// the plugin's connection data and held hooks; see
    /// [`Shared::skips_close`].
    pub(crate) housekeeping_close: Vec<bool>,
    pub(crate) limits: Limits,
    pub(crate) counters: Arc<Counters>,
    pub(crate) log: Arc<HostLog>,
    pub(crate) next_connection: AtomicU64,
    /// The misuses already logged: `(plugin, function, kind)`.
    pub(crate) misuse_reported: Mutex<HashSet<(Option<usize>, &'static str, Misuse)>>,
    /// The `MQ_send` calls that returned 0 already logged: `(plugin, hook)`.
    pub(crate) send_undeliverable_reported: Mutex<HashSet<(usize, &'static str)>>,
}

impl Shared {
    pub(crate) fn new(plugins: Vec<LoadedPlugin>, limits: Limits, log: Arc<HostLog>) -> Shared {
        let by_hook = (0..HOOK_COUNT)
            .map(|h| {
                (0..plugins.len())
                    .filter(|&p| plugins[p].hooks[h].is_some())
                    .collect()
            })
            .collect();
        let housekeeping_close = plugins
            .iter()
            .map(|p| {
                matches!(p.info.kind, crate::plugins::PluginKind::Rust { .. })
                    && p.info
                        .authored_hooks
                        .as_ref()
                        .is_some_and(|a| a.iter().all(|h| h.id != HookId::SmtpInClose))
            })
            .collect();
        Shared {
            plugins,
            by_hook,
            housekeeping_close,
            limits,
            // One set of counters: the log counts its cuts and evictions too.
            counters: Arc::clone(log.counters()),
            log,
            next_connection: AtomicU64::new(1),
            misuse_reported: Mutex::new(HashSet::new()),
            send_undeliverable_reported: Mutex::new(HashSet::new()),
        }
    }

    /// Whether calling `plugin`'s `hook` on `conn` can be left out: an
    /// `smtp_in_close` that is only mq-plugin's housekeeping, on a
    /// connection where the plugin keeps no data (its data slot is null;
    /// a held hook ends before `smtp_in_close` runs, and its cancel goes
    /// through `cancel_hold`). A C plugin without the hook is not called
    /// either; this spares a Rust plugin the same call.
    pub(crate) fn skips_close(
        &self,
        plugin: usize,
        hook: &'static Hook,
        conn: &ConnectionState,
    ) -> bool {
        hook.id == HookId::SmtpInClose
            && self
                .housekeeping_close
                .get(plugin)
                .copied()
                .unwrap_or(false)
            && conn.data.get(plugin).is_some_and(|d| d.get().is_null())
            && !conn.expired.borrow().iter().any(|e| e.plugin == plugin)
    }

    /// The plugins defining `hook`, in call order.
    pub(crate) fn plugins_with(&self, hook: &'static Hook) -> &[usize] {
        &self.by_hook[hook.index()]
    }

    /// Calls lifecycle `hook` of `plugin` (with its context for context
    /// hooks), counted.
    pub(crate) fn call_lifecycle(
        &self,
        hook: &'static Hook,
        plugin: usize,
        ctx: Option<*mut MQ_Context>,
    ) {
        let Some(raw) = self.plugins[plugin].hooks[hook.index()] else {
            return;
        };
        self.counters.hook_called(hook);
        let _calling = Calling::enter(plugin);
        // SAFETY: the plugin's entry point for `hook`, with its own context.
        unsafe { crate::plugins::call::lifecycle(raw, ctx) };
    }

    /// A plugin's name for a log line (`(unknown)` for a bad index).
    pub(crate) fn plugin_name(&self, plugin: usize) -> &str {
        self.plugins
            .get(plugin)
            .map_or("(unknown)", |p| p.info.name.as_str())
    }
}

/// Workers by their handle registry id, so that a call from a thread the
/// host does not know (a plugin's own) can still be counted and logged by
/// the host whose handle it used.
static WORKERS_BY_REGISTRY: Mutex<Vec<(u16, Weak<Shared>)>> = Mutex::new(Vec::new());

/// The host of the worker whose handle registry has id `registry`.
pub(crate) fn shared_of_registry(registry: u16) -> Option<Arc<Shared>> {
    WORKERS_BY_REGISTRY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(id, _)| *id == registry)
        .and_then(|(_, s)| s.upgrade())
}

/// `MQ_Context`: one per plugin per worker.
pub(crate) struct ContextObj {
    pub(crate) data: Cell<*mut c_void>,
}

impl ContextObj {
    pub(crate) fn new() -> ContextObj {
        ContextObj {
            data: Cell::new(std::ptr::null_mut()),
        }
    }
}

/// Runs when a chain ends.
pub(crate) type Done = Box<dyn FnOnce(&Worker, &Rc<ConnectionState>, ChainReport)>;

/// A chain running on a connection, and what runs when it ends.
pub(crate) struct RunningChain {
    pub(crate) chain: Chain,
    pub(crate) done: Option<Done>,
}

/// One worker, on its own thread.
pub(crate) struct Worker {
    pub(crate) id: usize,
    pub(crate) ev: EventLoop,
    pub(crate) shared: Arc<Shared>,
    pub(crate) contexts: Box<[ContextObj]>,
    pub(crate) connections: RefCell<IdMap<Rc<ConnectionState>>>,
    /// Closed connections a plugin may still use: one holding its chain,
    /// or one whose hold expired uncancelled (it will resume late). They
    /// are let go when that is over.
    pub(crate) retired: RefCell<IdMap<Rc<ConnectionState>>>,
    /// The chain running on each connection that has one (by connection id).
    pub(crate) chains: RefCell<IdMap<RunningChain>>,
    takeovers: Cell<u64>,
    /// The call into a plugin running now, for the stall watchdog.
    pub(crate) calls: Arc<CallSlot>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Worker>>> = const { RefCell::new(None) };
    static CALLING: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker of the calling thread, if it is a worker thread.
pub(crate) fn current() -> Option<Rc<Worker>> {
    CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// Runs `f` with the worker of this thread (a loop callback, or a task
/// posted to a worker); nothing happens on a thread that is no worker.
pub(crate) fn with_current(f: impl FnOnce(&Worker)) {
    if let Some(w) = current() {
        f(&w);
    }
}

/// Posts `f` to the worker behind `remote`; false if it has stopped.
pub(crate) fn post(remote: &LoopRemote, f: impl FnOnce(&Worker) + Send + 'static) -> bool {
    remote.post(Box::new(move || with_current(f)))
}

/// The plugin the worker is calling into right now (a hook, a timer or fd
/// callback, a cancellation), for naming it in the host's log.
pub(crate) fn calling() -> Option<usize> {
    CALLING.try_with(Cell::get).ok().flatten()
}

/// Marks a call into a plugin for [`calling`] and, on a worker, for the
/// stall watchdog; restores on drop.
pub(crate) struct Calling<'a> {
    previous: Option<usize>,
    _watched: Option<CallGuard<'a>>,
}

impl Calling<'static> {
    /// A call the watchdog does not watch (lifecycle hooks, which may block).
    pub(crate) fn enter(plugin: usize) -> Calling<'static> {
        Calling {
            previous: CALLING.try_with(|c| c.replace(Some(plugin))).ok().flatten(),
            _watched: None,
        }
    }
}

impl<'a> Calling<'a> {
    /// A call of `plugin` at `site` on the worker whose slot is `slot`,
    /// watched for stalls.
    pub(crate) fn watched(slot: &'a CallSlot, plugin: usize, site: CallSite) -> Calling<'a> {
        Calling {
            previous: CALLING.try_with(|c| c.replace(Some(plugin))).ok().flatten(),
            _watched: Some(slot.enter(plugin, site)),
        }
    }
}

impl Drop for Calling<'_> {
    fn drop(&mut self) {
        let _ = CALLING.try_with(|c| c.set(self.previous));
    }
}

impl Worker {
    pub(crate) fn log(&self, priority: Priority, text: String) {
        self.shared
            .log
            .write(Some(self.id), priority, Source::Host, text);
    }

    /// Runs `f` with this worker on a later turn of its loop.
    pub(crate) fn defer(&self, f: impl FnOnce(&Worker) + 'static) {
        self.ev.defer(Box::new(move || with_current(f)));
    }

    /// Runs `f` with this worker when `after` has passed.
    pub(crate) fn start_timer(
        &self,
        after: Duration,
        f: impl FnOnce(&Worker) + 'static,
    ) -> TimerHandle {
        self.ev
            .start_timer(after, Box::new(move || with_current(f)))
    }

    /// Calls `f` with this worker while `fd` is ready for `interest`.
    pub(crate) fn watch_io(
        &self,
        fd: std::os::fd::RawFd,
        interest: Interest,
        mut f: impl FnMut(&Worker, Interest) + 'static,
    ) -> std::io::Result<WatcherHandle> {
        self.ev.watch_io(
            fd,
            interest,
            Box::new(move |_, _, ready| with_current(|w| f(w, ready))),
        )
    }

    /// Whether a chain runs on connection `id`.
    pub(crate) fn is_running(&self, id: u64) -> bool {
        self.chains
            .try_borrow()
            .map_or(true, |c| c.contains_key(&id))
    }

    /// Runs `f` on the chain of connection `id`; `None` if it has none (or
    /// the chains are borrowed: never while a plugin runs, a host bug).
    pub(crate) fn with_chain<R>(
        &self,
        id: u64,
        f: impl FnOnce(&mut RunningChain) -> R,
    ) -> Option<R> {
        let Ok(mut chains) = self.chains.try_borrow_mut() else {
            self.log(
                Priority::Critical,
                "the chains were busy during a chain step; ignored (host bug)".to_owned(),
            );
            return None;
        };
        chains.get_mut(&id).map(f)
    }

    /// A new take-over number (unique on this worker).
    pub(crate) fn next_takeover(&self) -> u64 {
        let n = self.takeovers.get() + 1;
        self.takeovers.set(n);
        n
    }

    /// Runs a lifecycle hook with a context (`context_initialize`,
    /// `context_cleanup`) in every plugin that defines it, in order.
    fn run_context_hook(&self, id: HookId) {
        let hook = id.hook();
        for &plugin in self.shared.plugins_with(hook) {
            if let Some(ctx) = crate::runtime::handles::context_handle(plugin) {
                self.shared.call_lifecycle(hook, plugin, Some(ctx.to_ptr()));
            }
        }
    }

    /// Removes a closed connection: host functions on it are refused from
    /// now on. It is kept (retired) while a plugin holds its chain or may
    /// still resume an expired take-over of it.
    pub(crate) fn close_connection(&self, id: u64) {
        let Some(conn) = self.connections.borrow_mut().remove(&id) else {
            return;
        };
        conn.closed.set(true);
        if self.is_running(id) || conn.has_expired_holds() {
            self.retired.borrow_mut().insert(id, conn);
        }
    }

    /// Lets a retired connection go (nothing of it is held any more).
    pub(crate) fn release_retired(&self, id: u64) {
        let conn = self.retired.borrow_mut().remove(&id);
        drop(conn);
    }

    /// Registers a new connection on this worker.
    pub(crate) fn open_connection(&self, fd: i32) -> Rc<ConnectionState> {
        let id = self
            .shared
            .next_connection
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let conn = ConnectionState::new(id, fd, self.shared.plugins.len());
        self.connections.borrow_mut().insert(id, Rc::clone(&conn));
        conn
    }
}

/// A running worker, seen from the host.
pub(crate) struct WorkerHandle {
    pub(crate) remote: LoopRemote,
    /// The worker's current call into a plugin, for the stall watchdog.
    pub(crate) calls: Arc<CallSlot>,
    id: usize,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Starts worker `id`: creates its contexts and runs every plugin's
    /// `mq_context_initialize` before returning.
    pub(crate) fn spawn(id: usize, shared: Arc<Shared>) -> Result<WorkerHandle, String> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let calls = Arc::new(CallSlot::new(id));
        let worker_calls = Arc::clone(&calls);
        let thread = std::thread::Builder::new()
            .name(format!("mq-worker-{id}"))
            .spawn(move || worker_main(id, shared, worker_calls, ready_tx))
            .map_err(|e| format!("cannot start worker thread {id}: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(remote)) => Ok(WorkerHandle {
                remote,
                calls,
                id,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("worker {id} stopped during start-up")),
        }
    }

    /// Stops the loop, runs `mq_context_cleanup` and waits for the thread;
    /// a thread that died is reported in `log`.
    pub(crate) fn stop(&mut self, log: &HostLog) {
        self.remote.stop();
        if let Some(thread) = self.thread.take() {
            if let Err(panic) = thread.join() {
                log.write(
                    Some(self.id),
                    Priority::Critical,
                    Source::Host,
                    format!(
                        "worker {} ended with a panic: {} (host bug)",
                        self.id,
                        crate::observe::panic_text(panic)
                    ),
                );
            }
        }
    }
}

fn worker_main(
    id: usize,
    shared: Arc<Shared>,
    calls: Arc<CallSlot>,
    ready: mpsc::Sender<Result<LoopRemote, String>>,
) {
    let loop_id = u16::try_from(id + 1).unwrap_or(u16::MAX);
    let ev = match EventLoop::with_clock(loop_id, shared.limits.clock) {
        Ok(ev) => ev,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "worker {id}: cannot create its event loop: {e}"
            )));
            return;
        }
    };
    if shared.limits.clock == crate::runtime::event_loop::ClockMode::Virtual {
        // A test host: no time passes between the test's steps.
        ev.gate_jumps_on_steps();
    }
    let Some(registry) = crate::runtime::handles::this_thread() else {
        let _ = ready.send(Err(format!("worker {id}: no handle registry")));
        return;
    };
    WORKERS_BY_REGISTRY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((registry, Arc::downgrade(&shared)));
    let contexts = (0..shared.plugins.len())
        .map(|_| ContextObj::new())
        .collect();
    let worker = Rc::new(Worker {
        id,
        ev,
        shared,
        contexts,
        connections: RefCell::new(id_map()),
        retired: RefCell::new(id_map()),
        chains: RefCell::new(id_map()),
        takeovers: Cell::new(0),
        calls,
    });
    CURRENT.with(|c| *c.borrow_mut() = Some(Rc::clone(&worker)));

    worker.run_context_hook(HookId::ContextInitialize);
    let _ = ready.send(Ok(worker.ev.remote()));
    run_loop(&worker);
    let open = worker.connections.borrow().len();
    if open > 0 {
        worker.log(
            Priority::Warning,
            format!("worker {id}: stopping with {open} connection(s) still open"),
        );
    }
    worker.run_context_hook(HookId::ContextCleanup);
    let connections: Vec<_> = worker.connections.borrow_mut().drain().collect();
    let retired: Vec<_> = worker.retired.borrow_mut().drain().collect();
    drop((connections, retired));
    CURRENT.with(|c| *c.borrow_mut() = None);
    WORKERS_BY_REGISTRY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(r, _)| *r != registry);
}

/// Runs the loop until it is stopped; a panic that escapes a callback (a
/// host bug) is logged and counted, and the loop goes on.
fn run_loop(worker: &Worker) {
    loop {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.ev.run())) {
            Ok(Ok(())) => return,
            Ok(Err(e)) => {
                worker.log(
                    Priority::Critical,
                    format!("worker {}: event loop failed: {e}", worker.id),
                );
                return;
            }
            Err(panic) => {
                Counters::bump(&worker.shared.counters.host_panics);
                worker.log(
                    Priority::Critical,
                    format!(
                        "worker {}: a loop callback panicked: {} (host bug); the worker goes on",
                        worker.id,
                        crate::observe::panic_text(panic)
                    ),
                );
                if worker.ev.is_stopped() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::LogEcho;

    fn shared() -> Arc<Shared> {
        let limits = Limits {
            hold_deadline: None,
            hold_report: None,
            retry_limit: 1,
            clock: Default::default(),
        };
        Arc::new(Shared::new(
            Vec::new(),
            limits,
            HostLog::new(LogEcho::None, Default::default()),
        ))
    }

    #[test]
    fn a_panicking_loop_callback_is_logged_and_the_worker_goes_on() {
        let shared = shared();
        let mut worker = WorkerHandle::spawn(0, Arc::clone(&shared)).unwrap();
        assert!(worker
            .remote
            .post(Box::new(|| panic!("a host bug in a task"))));
        let (tx, rx) = mpsc::channel();
        assert!(worker.remote.post(Box::new(move || {
            let _ = tx.send(current().is_some());
        })));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Ok(true),
            "the worker serves after the panic"
        );
        worker.stop(&shared.log);
        assert_eq!(shared.counters.snapshot().host_panics, 1);
        let log = shared.log.since(0, None);
        assert!(
            log.iter().any(|r| r.text.contains(
                "a loop callback panicked: a host bug in a task (host bug); the worker goes on"
            )),
            "{log:#?}"
        );
    }
}
