//! Worker threads: each owns an event loop, one context per plugin, and its
//! connections. Work reaches a worker as a task posted to its loop.

use crate::counters::Counters;
use crate::event_loop::{EventLoop, LoopRemote};
use crate::hostlog::{HostLog, Priority, Source};
use crate::loader::{HookFn, LoadedPlugin};
use crate::objects::{ConnectionState, ContextObj};
use mq_hook_table::{by_name, HOOK_COUNT};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

/// Limits of the guards.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) hold_deadline: Option<Duration>,
    pub(crate) retry_limit: u32,
}

/// What all workers share.
pub(crate) struct Shared {
    pub(crate) plugins: Vec<LoadedPlugin>,
    /// For each hook (table index), the plugins that define it, in order.
    pub(crate) by_hook: Vec<Vec<usize>>,
    pub(crate) limits: Limits,
    pub(crate) counters: Counters,
    pub(crate) log: Arc<HostLog>,
    pub(crate) next_connection: AtomicU64,
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
        Shared {
            plugins,
            by_hook,
            limits,
            counters: Counters::default(),
            log,
            next_connection: AtomicU64::new(1),
        }
    }

    /// The plugins defining hook `name`, with their entry points.
    pub(crate) fn hook_fns(&self, name: &str) -> Vec<(usize, HookFn)> {
        let index = by_name(name).expect("hook in the table").index();
        self.by_hook[index]
            .iter()
            .map(|&p| (p, self.plugins[p].hooks[index].expect("indexed")))
            .collect()
    }
}

/// One worker, on its own thread.
pub(crate) struct Worker {
    pub(crate) id: usize,
    pub(crate) ev: EventLoop,
    pub(crate) shared: Arc<Shared>,
    pub(crate) contexts: Box<[ContextObj]>,
    pub(crate) connections: RefCell<HashMap<u64, Rc<ConnectionState>>>,
    /// Closed connections whose last take-over expired: the plugin still
    /// holds a pointer it will resume, so the objects stay alive until it
    /// does (the late resume is then counted and the connection freed).
    pub(crate) retired: RefCell<HashMap<u64, Rc<ConnectionState>>>,
    /// Arguments (messages, addresses) of chains whose hold expired, per
    /// connection: how many expired plugins may still use them, and them.
    pub(crate) retained_args: RefCell<HashMap<u64, (usize, Vec<crate::chain::ChainArgs>)>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Worker>>> = const { RefCell::new(None) };
}

/// The worker of the calling thread, if it is a worker thread.
pub(crate) fn current() -> Option<Rc<Worker>> {
    CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
}

impl Worker {
    pub(crate) fn log(&self, priority: Priority, text: String) {
        self.shared
            .log
            .write(Some(self.id), priority, Source::Host, text);
    }

    /// Runs a lifecycle hook with a context (`context_initialize`,
    /// `context_cleanup`) in every plugin that defines it, in order.
    fn run_context_hook(&self, name: &str) {
        for (plugin, hook) in self.shared.hook_fns(name) {
            let HookFn::Context(f) = hook else {
                unreachable!("context hooks have the context shape")
            };
            self.shared
                .counters
                .hook_called(by_name(name).expect("in the table"));
            // SAFETY: the plugin's hook of this shape, with its own live context.
            unsafe { f(self.contexts[plugin].as_raw()) };
        }
    }

    /// Removes a closed connection; keeps it (retired) while a plugin whose
    /// hold expired may still resume it.
    pub(crate) fn close_connection(&self, id: u64) {
        let Some(conn) = self.connections.borrow_mut().remove(&id) else {
            return;
        };
        let expired = matches!(
            conn.last_takeover.get(),
            Some((_, crate::objects::TakeoverEnd::Expired))
        );
        // A plugin still holding the chain keeps its pointers: keep the
        // connection (and the chain's arguments inside it) alive.
        let held = conn.chain.borrow().is_some();
        if expired || held || self.retained_args.borrow().contains_key(&id) {
            self.retired.borrow_mut().insert(id, conn);
        }
    }

    /// Registers a new connection on this worker.
    pub(crate) fn open_connection(&self, fd: i32) -> Rc<ConnectionState> {
        let id = self
            .shared
            .next_connection
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let conn =
            ConnectionState::new(id, fd, self.shared.plugins.len(), Arc::as_ptr(&self.shared));
        self.connections.borrow_mut().insert(id, Rc::clone(&conn));
        conn
    }
}

/// A running worker, seen from the host.
pub(crate) struct WorkerHandle {
    pub(crate) remote: LoopRemote,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Starts worker `id`: creates its contexts and runs every plugin's
    /// `mq_context_initialize` before returning.
    pub(crate) fn spawn(id: usize, shared: Arc<Shared>) -> Result<WorkerHandle, String> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("mq-worker-{id}"))
            .spawn(move || worker_main(id, shared, ready_tx))
            .map_err(|e| format!("cannot start worker thread {id}: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(remote)) => Ok(WorkerHandle {
                remote,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("worker {id} stopped during start-up")),
        }
    }

    /// Stops the loop, runs `mq_context_cleanup` and waits for the thread.
    pub(crate) fn stop(&mut self) {
        self.remote.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn worker_main(id: usize, shared: Arc<Shared>, ready: mpsc::Sender<Result<LoopRemote, String>>) {
    let loop_id = u16::try_from(id + 1).unwrap_or(u16::MAX);
    let ev = match EventLoop::new(loop_id) {
        Ok(ev) => ev,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "worker {id}: cannot create its event loop: {e}"
            )));
            return;
        }
    };
    let contexts = (0..shared.plugins.len())
        .map(|p| ContextObj::new(id, p))
        .collect();
    let worker = Rc::new(Worker {
        id,
        ev,
        shared,
        contexts,
        connections: RefCell::new(HashMap::new()),
        retired: RefCell::new(HashMap::new()),
        retained_args: RefCell::new(HashMap::new()),
    });
    CURRENT.with(|c| *c.borrow_mut() = Some(Rc::clone(&worker)));

    worker.run_context_hook("context_initialize");
    let _ = ready.send(Ok(worker.ev.remote()));
    if let Err(e) = worker.ev.run() {
        worker.log(
            Priority::Critical,
            format!("worker {id}: event loop failed: {e}"),
        );
    }
    let open = worker.connections.borrow().len();
    if open > 0 {
        worker.log(
            Priority::Warning,
            format!("worker {id}: stopping with {open} connection(s) still open"),
        );
    }
    worker.run_context_hook("context_cleanup");
    worker.connections.borrow_mut().clear();
    worker.retired.borrow_mut().clear();
    worker.retained_args.borrow_mut().clear();
    CURRENT.with(|c| *c.borrow_mut() = None);
}
