//! The executor: one per `MQ_Context` (per plugin per worker thread), driven
//! only by the host's loop functions, so it works in MailerQ and `mq-host`.
//!
//! A hook's future lives in place in one [`Task`] allocation from its first
//! poll to its end (a future may not move once polled, so it is written to
//! its slot before that poll). The allocation comes from, and goes back to,
//! a per-hook cache, so neither the ready path nor a take-over allocates
//! once warm. The first poll happens inside the hook call, before the task
//! knows its executor: a future that is ready then never takes control and
//! never looks the executor up; only a pending one joins it.
//!
//! Wakers are `Send + Sync`. The framework's own loop callbacks (a sleep's
//! timer, an fd future's watcher) poll the task they wake at once, on the
//! loop, when no poll is running ([`wake_from_loop`]): one host timer per
//! resume. Any other wake on the owning thread queues the task and starts a
//! zero-delay host timer (if none is pending); a wake from another thread
//! queues it and writes to an eventfd the executor watches with
//! `MQ_ioWatch`. Either way the task is polled on the loop, at most
//! [`POLL_BUDGET`] tasks per loop callback, so one busy plugin cannot starve
//! the worker.

use crate::boundary::catch;
use crate::flow::{HookReturn, Outcome};
use crate::host::host;
use crate::sys::{MQ_Connection, MQ_Context};
use crate::{Context, FdWatcher, Interest};
use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::ffi::c_void;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, RawWaker, RawWakerVTable, Waker};
use std::thread::ThreadId;

mod cache;
mod hash;
mod hold;
mod hook;

pub use cache::TaskCache;
pub(crate) use hash::FxMap;
pub(crate) use hold::{cancel_hold, drop_pending_hook, RuntimeSlot};
pub(crate) use hook::run_hook;

/// Tasks polled per loop callback before the executor yields to the loop.
pub const POLL_BUDGET: usize = 64;

/// This thread's executor state, in one thread-local (a `dlopen`ed
/// library reaches each thread-local through `__tls_get_addr`).
struct Local {
    /// The context whose executor is polling on this thread right now.
    current: Cell<*mut MQ_Context>,
    /// Set by [`wake_from_loop`] for the one wake it makes: that wake may
    /// poll its task at once.
    direct: Cell<bool>,
    /// This thread's id, once asked for (cheaper than `thread::current`).
    thread: std::cell::OnceCell<ThreadId>,
    /// The last context data store looked up, by context: `join_executor`
    /// finds the executor without `MQ_contextData`. Cleared when that
    /// context's executor goes.
    last: Cell<(*mut MQ_Context, *const crate::data::DataStore)>,
}

impl Local {
    fn thread(&self) -> ThreadId {
        *self.thread.get_or_init(|| std::thread::current().id())
    }
}

thread_local! {
    static LOCAL: Local = const {
        Local {
            current: Cell::new(std::ptr::null_mut()),
            direct: Cell::new(false),
            thread: std::cell::OnceCell::new(),
            last: Cell::new((std::ptr::null_mut(), std::ptr::null())),
        }
    };
}

/// Wakes `waker` from one of the framework's own loop callbacks (a timer or
/// fd watcher it started for a future): if it is a task of this runtime on
/// its owning thread, not queued, and no poll is running on this thread,
/// the task is polled here and now instead of from a zero-delay timer.
/// Only this one wake is direct: a wake from inside that poll, or from a
/// hook the resume leads the host to call, is queued as usual.
pub(crate) fn wake_from_loop(waker: Waker) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            let _ = LOCAL.try_with(|l| l.direct.set(false));
        }
    }
    LOCAL.with(|l| l.direct.set(true));
    let _reset = Reset;
    waker.wake();
}

/// The context of the hook future being polled on this thread, if any.
pub(crate) fn current_context() -> Option<&'static Context> {
    let ctx = LOCAL.with(|l| l.current.get());
    // SAFETY: set only while an executor of this live context polls.
    (!ctx.is_null()).then(|| unsafe { Context::from_raw(ctx) })
}

struct CurrentGuard(*mut MQ_Context);

impl CurrentGuard {
    fn enter(ctx: *mut MQ_Context) -> CurrentGuard {
        CurrentGuard(LOCAL.with(|l| l.current.replace(ctx)))
    }
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let _ = LOCAL.try_with(|l| l.current.set(self.0));
    }
}

/// Sets the current context for a poll and restores it after, even if
/// something unwinds (with the thread-local already in hand).
struct Restore<'a>(&'a Cell<*mut MQ_Context>, *mut MQ_Context);

impl Restore<'_> {
    fn enter(current: &Cell<*mut MQ_Context>, ctx: *mut MQ_Context) -> Restore<'_> {
        Restore(current, current.replace(ctx))
    }
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        self.0.set(self.1);
    }
}

/// A counted pointer to a task, as held by the queue.
struct TaskRef(NonNull<Header>);

// SAFETY: a TaskRef only reaches the task's atomics from other threads; the
// future is touched on the owning thread alone (see `run_queue`).
unsafe impl Send for TaskRef {}

impl Drop for TaskRef {
    fn drop(&mut self) {
        // SAFETY: a TaskRef owns one reference.
        unsafe { release(self.0) }
    }
}

/// What wakers on any thread share with the executor.
struct Shared {
    queue: Mutex<VecDeque<TaskRef>>,
    owner: ThreadId,
    ctx: usize,
    eventfd: i32,
    /// A zero timer or an eventfd wake is on its way to `run_queue`.
    notified: AtomicBool,
    /// The pending zero timer (it holds a reference to this `Shared`), so
    /// that context cleanup can stop it. Touched on the owning thread only.
    timer: AtomicPtr<crate::sys::MQ_Timer>,
    closed: AtomicBool,
    /// The data store holding the executor (as the host keeps it), null
    /// once the executor is dropped. Read on the owning thread only.
    store: AtomicPtr<crate::data::DataStore>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the executor created the eventfd and nothing else closes it.
        unsafe { libc::close(self.eventfd) };
    }
}

impl Shared {
    fn schedule(self: &Arc<Self>, task: TaskRef) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(task);
        self.notify();
    }

    fn notify(self: &Arc<Self>) {
        if self.notified.swap(true, Ordering::AcqRel) {
            return;
        }
        if std::thread::current().id() == self.owner {
            let data = Arc::into_raw(Arc::clone(self)) as *mut c_void;
            // SAFETY: on the owning thread, with its live context; the
            // callback takes the Arc back.
            let timer = unsafe {
                host()
                    .api
                    .start_timer(self.ctx as *mut MQ_Context, 0.0, Some(run_from_timer), data)
            };
            if timer.is_null() {
                // SAFETY: the host kept nothing; fall back to the eventfd.
                drop(unsafe { Arc::from_raw(data as *const Shared) });
                self.ping_eventfd();
            } else {
                self.timer.store(timer, Ordering::Release);
            }
        } else {
            self.ping_eventfd();
        }
    }

    fn ping_eventfd(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(self.eventfd, (&one as *const u64).cast(), 8) };
    }
}

unsafe extern "C" fn run_from_timer(data: *mut c_void) {
    // SAFETY: the Arc given to MQ_startTimer in `notify`; fired once.
    let shared = unsafe { Arc::from_raw(data as *const Shared) };
    shared.timer.store(std::ptr::null_mut(), Ordering::Release);
    crate::boundary::guard_callback("the executor", || run_queue(&shared));
}

/// A task's end: `Some` with its outcome (or panic message) once complete.
type Finished = Option<Result<Outcome, String>>;

/// Type-erased operations of a `Task<F>`.
struct VTable {
    /// Polls the future; on completion drops it in place and returns its outcome.
    poll: unsafe fn(NonNull<Header>, &mut std::task::Context<'_>) -> Finished,
    /// Drops the future in place if it is still there.
    drop_future: unsafe fn(NonNull<Header>),
    /// Frees the allocation (the future is gone).
    dealloc: unsafe fn(NonNull<Header>),
}

#[repr(C)]
struct Header {
    refs: AtomicUsize,
    scheduled: AtomicBool,
    /// The executor's shared part, an `Arc` given up with `into_raw`; null
    /// while a hook's first poll runs (a wake then only sets `scheduled`,
    /// and `run_hook` queues the task once it has joined the executor).
    shared: AtomicPtr<Shared>,
    vtable: &'static VTable,
    /// Where the result goes once the task completes after its first poll.
    owner: Owner,
    ctx: *mut MQ_Context,
    id: Cell<u64>,
}

/// Whose task it is.
#[derive(Clone, Copy)]
enum Owner {
    /// A hook's future: its completion resumes the chain of `conn`.
    Hook {
        meta: &'static crate::__private_v1::HookMeta,
        conn: *mut MQ_Connection,
        /// Where the allocation goes when the task ends.
        cache: &'static std::thread::LocalKey<TaskCache>,
    },
    /// Background work from [`Context::spawn_local`].
    Background,
}

#[repr(C)]
struct Task<F: Future> {
    header: Header,
    future: UnsafeCell<ManuallyDrop<F>>,
    alive: Cell<bool>,
}

impl<F: Future<Output: HookReturn>> Task<F> {
    const VTABLE: VTable = VTable {
        poll: Self::poll,
        drop_future: Self::drop_future,
        dealloc: Self::dealloc,
    };

    unsafe fn poll(header: NonNull<Header>, cx: &mut std::task::Context<'_>) -> Finished {
        // SAFETY: `header` is the first field of a live Task<F> (repr(C)).
        let task = unsafe { header.cast::<Task<F>>().as_ref() };
        if !task.alive.get() {
            return None;
        }
        // SAFETY: the future stays in place until dropped below; only the
        // owning thread polls it.
        let future = unsafe { Pin::new_unchecked(&mut **task.future.get()) };
        // The outcome is made inside the boundary too: an `Err` whose
        // `Display` panics is a panic of the hook.
        let polled = catch(|| match future.poll(cx) {
            Poll::Pending => None,
            Poll::Ready(value) => Some(value.into_outcome()),
        });
        let outcome = match polled {
            Ok(None) => return None,
            Ok(Some(outcome)) => Ok(outcome),
            Err(panic) => Err(panic),
        };
        // SAFETY: complete: drop the future now, before anyone resumes the
        // host (which may free what the future borrowed).
        unsafe { Self::drop_future(header) };
        Some(outcome)
    }

    unsafe fn drop_future(header: NonNull<Header>) {
        // SAFETY: as in `poll`.
        let task = unsafe { header.cast::<Task<F>>().as_ref() };
        if task.alive.replace(false) {
            // A panicking Drop must not unwind into the loop.
            // SAFETY: alive until now; never dropped twice (flag).
            let _ = catch(|| unsafe { ManuallyDrop::drop(&mut *task.future.get()) });
        }
    }

    unsafe fn dealloc(header: NonNull<Header>) {
        // SAFETY: the last reference; the future is gone.
        let h = unsafe { header.as_ref() };
        let shared = h.shared.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !shared.is_null() {
            // SAFETY: the reference `run_hook` or `spawn_local` gave up.
            drop(unsafe { Arc::from_raw(shared) });
        }
        if let Owner::Hook { cache, .. } = h.owner {
            // This thread's cache of the same hook (any thread's fits: one
            // future type per hook); none while its thread-locals go away.
            let kept = cache
                .try_with(|c| c.keep(header.cast(), std::alloc::Layout::new::<Task<F>>()))
                .unwrap_or(false);
            if kept {
                return;
            }
        }
        // SAFETY: made by Box (or kept from one); nothing in it needs a drop.
        drop(unsafe { Box::from_raw(header.cast::<Task<F>>().as_ptr()) });
    }
}

/// Drops one reference; frees the task at the last.
unsafe fn release(header: NonNull<Header>) {
    // SAFETY: the caller owns a reference.
    let h = unsafe { header.as_ref() };
    if h.refs.fetch_sub(1, Ordering::AcqRel) == 1 {
        // SAFETY: no reference is left; the owner dropped the future before
        // giving its reference up, or drops it now on the last reference.
        unsafe {
            (h.vtable.drop_future)(header);
            (h.vtable.dealloc)(header);
        }
    }
}

fn acquire(header: NonNull<Header>) -> TaskRef {
    // SAFETY: called with a live task.
    unsafe { header.as_ref() }
        .refs
        .fetch_add(1, Ordering::Relaxed);
    TaskRef(header)
}

static WAKER_VTABLE: RawWakerVTable =
    RawWakerVTable::new(waker_clone, waker_wake, waker_wake_by_ref, waker_drop);

unsafe fn waker_clone(data: *const ()) -> RawWaker {
    let header = NonNull::new(data as *mut Header).expect("task waker");
    std::mem::forget(acquire(header));
    RawWaker::new(data, &WAKER_VTABLE)
}

unsafe fn waker_wake(data: *const ()) {
    // SAFETY: the waker owns one reference; wake_by_ref takes its own.
    unsafe {
        waker_wake_by_ref(data);
        waker_drop(data);
    }
}

unsafe fn waker_wake_by_ref(data: *const ()) {
    let header = NonNull::new(data as *mut Header).expect("task waker");
    // SAFETY: the waker keeps the task alive.
    let h = unsafe { header.as_ref() };
    // SeqCst with `join_executor`'s store of `shared` and load of
    // `scheduled`: one of the two sides sees the other's write (at worst
    // both do, and the task is polled once more than needed).
    if h.scheduled.swap(true, Ordering::SeqCst) {
        return;
    }
    let shared = h.shared.load(Ordering::SeqCst);
    if shared.is_null() {
        // The first poll is still running: `join_executor` queues the task.
        return;
    }
    // SAFETY: the task holds this reference until it is freed.
    let shared = ManuallyDrop::new(unsafe { Arc::from_raw(shared) });
    let task = acquire(header);
    // Poll at once only for the one wake of `wake_from_loop`, on the
    // task's own thread, outside any poll, with its executor alive.
    let direct = LOCAL
        .try_with(|l| {
            l.direct.replace(false)
                && l.current.get().is_null()
                && !shared.closed.load(Ordering::Acquire)
                && l.thread() == shared.owner
        })
        .unwrap_or(false);
    if direct {
        poll_task(&task);
    } else {
        shared.schedule(task);
    }
}

unsafe fn waker_drop(data: *const ()) {
    // SAFETY: the waker owns one reference.
    unsafe { release(NonNull::new_unchecked(data as *mut Header)) }
}

fn waker_for(header: NonNull<Header>) -> ManuallyDrop<Waker> {
    // SAFETY: a borrowed waker (ManuallyDrop: it owns no reference); clones
    // take their own through the vtable.
    ManuallyDrop::new(unsafe {
        Waker::from_raw(RawWaker::new(header.as_ptr() as *const (), &WAKER_VTABLE))
    })
}

/// The executor of one context.
pub(crate) struct Executor {
    shared: Arc<Shared>,
    /// Pending hook tasks by connection (a connection has at most one held
    /// hook per plugin), each holding the owner's reference.
    hooks: RefCell<FxMap<usize, TaskRef>>,
    /// Pending `spawn_local` tasks by id.
    background: RefCell<FxMap<u64, TaskRef>>,
    next_id: Cell<u64>,
    _watcher: FdWatcher,
}

impl Executor {
    /// The context's executor, created on first use.
    pub(crate) fn of(ctx: &Context) -> Result<&Executor, String> {
        // SAFETY: created on demand, so not null; live until cleanup.
        unsafe { Executor::in_store(ctx, ctx.store_ptr(true)) }
    }

    /// The executor in the context's data store `store`, created on first
    /// use.
    ///
    /// # Safety
    /// `store` is `ctx`'s live data store (from [`Context::store_ptr`]).
    unsafe fn in_store(
        ctx: &Context,
        store: *const crate::data::DataStore,
    ) -> Result<&Executor, String> {
        // SAFETY: the caller's promise.
        let slot = unsafe { &(*store).runtime };
        if let Some(e) = slot.executor.get() {
            return Ok(e);
        }
        let executor = Executor::new(ctx)?;
        let executor = slot.executor.get_or_init(|| executor);
        executor
            .shared
            .store
            .store(store.cast_mut(), Ordering::Release);
        Ok(executor)
    }

    /// The executor whose shared part is `shared`, if it is still there.
    ///
    /// # Safety
    /// On the owning thread; `shared` is live.
    unsafe fn from_shared<'a>(shared: *const Shared) -> Option<&'a Executor> {
        // SAFETY: the caller's promise; `store` is the live data store of
        // the executor's context while not null (cleared when it drops).
        unsafe {
            let store = (*shared).store.load(Ordering::Acquire);
            store.as_ref()?.runtime.executor.get()
        }
    }

    /// Drops the pending hook of `conn`, if there is one, without resuming
    /// the host: its future and every borrow in it are gone on return.
    /// Returns the cancelled task's hook.
    fn cancel_hook(
        &self,
        conn: *mut MQ_Connection,
    ) -> Option<&'static crate::__private_v1::HookMeta> {
        let task = self.hooks.borrow_mut().remove(&(conn as usize))?;
        let _guard = CurrentGuard::enter(self.shared.ctx as *mut MQ_Context);
        // SAFETY: on the owning thread; the queue's references (if any) see
        // the future gone and skip it.
        let header = unsafe { task.0.as_ref() };
        // SAFETY: as above; the future is dropped in place, in a boundary.
        unsafe { (header.vtable.drop_future)(task.0) };
        let meta = match header.owner {
            Owner::Hook { meta, .. } => Some(meta),
            Owner::Background => None,
        };
        drop(task);
        meta
    }

    fn new(ctx: &Context) -> Result<Executor, String> {
        // SAFETY: plain eventfd creation.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!(
                "eventfd failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            owner: std::thread::current().id(),
            ctx: ctx.as_raw() as usize,
            eventfd: fd,
            notified: AtomicBool::new(false),
            timer: AtomicPtr::new(std::ptr::null_mut()),
            closed: AtomicBool::new(false),
            store: AtomicPtr::new(std::ptr::null_mut()),
        });
        let for_watcher = Arc::clone(&shared);
        let watcher = ctx
            .watch_fd(fd, Interest::READ, move |_| {
                let mut counter = 0u64;
                // SAFETY: draining our eventfd into a valid u64.
                unsafe { libc::read(for_watcher.eventfd, (&mut counter as *mut u64).cast(), 8) };
                run_queue(&for_watcher);
            })
            .map_err(|e| format!("cannot watch the executor's eventfd: {e}"))?;
        Ok(Executor {
            shared,
            hooks: RefCell::new(FxMap::default()),
            background: RefCell::new(FxMap::default()),
            next_id: Cell::new(1),
            _watcher: watcher,
        })
    }
}

impl Drop for Executor {
    /// Context cleanup: every pending hook future is dropped here.
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared
            .store
            .store(std::ptr::null_mut(), Ordering::Release);
        let ctx = self.shared.ctx as *mut MQ_Context;
        let _ = LOCAL.try_with(|l| {
            if l.last.get().0 == ctx {
                l.last.set((std::ptr::null_mut(), std::ptr::null()));
            }
        });
        let _guard = CurrentGuard::enter(self.shared.ctx as *mut MQ_Context);
        let timer = self
            .shared
            .timer
            .swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !timer.is_null() {
            // SAFETY: the zero timer has not fired (it clears the pointer
            // when it does), so the host still knows it; stopped, it never
            // takes back the reference it was given: take it back here.
            unsafe {
                host().api.stop_timer(timer);
                drop(Arc::from_raw(Arc::as_ptr(&self.shared)));
            }
        }
        let mut tasks: Vec<TaskRef> = self.hooks.borrow_mut().drain().map(|(_, t)| t).collect();
        tasks.extend(self.background.borrow_mut().drain().map(|(_, t)| t));
        for task in tasks {
            // SAFETY: on the owning thread; the future is dropped in place.
            unsafe { (task.0.as_ref().vtable.drop_future)(task.0) };
        }
        let queued: Vec<TaskRef> = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        drop(queued);
    }
}

/// Polls queued tasks, at most [`POLL_BUDGET`] per call.
fn run_queue(shared: &Arc<Shared>) {
    shared.notified.store(false, Ordering::Release);
    let _guard = CurrentGuard::enter(shared.ctx as *mut MQ_Context);
    for _ in 0..POLL_BUDGET {
        let Some(task) = shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
        else {
            return;
        };
        if shared.closed.load(Ordering::Acquire) {
            continue;
        }
        poll_task(&task);
    }
    if !shared
        .queue
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_empty()
    {
        // Out of budget: let the loop breathe, then go on.
        shared.notify();
    }
}

/// Polls a task of a live executor, on its owning thread, outside any
/// other poll; resumes the host if the task completes.
fn poll_task(task: &TaskRef) {
    // SAFETY: the caller's reference keeps the task alive.
    let header = unsafe { task.0.as_ref() };
    LOCAL.with(|l| {
        let _restore = Restore::enter(&l.current, header.ctx);
        header.scheduled.store(false, Ordering::Release);
        let waker = waker_for(task.0);
        let mut cx = std::task::Context::from_waker(&waker);
        // SAFETY: polled on the owning thread only.
        if let Some(result) = unsafe { (header.vtable.poll)(task.0, &mut cx) } {
            complete(header, result);
        }
    });
}

/// A task finished after its first poll: release it and resume the host.
fn complete(header: &Header, result: Result<Outcome, String>) {
    let owner = header.owner;
    let shared = header.shared.load(Ordering::Acquire);
    // SAFETY: `shared`, when set, is the executor's shared part, kept alive
    // by the task; we are on the owning thread.
    let executor = (!shared.is_null())
        .then(|| unsafe { Executor::from_shared(shared) })
        .flatten();
    let task = executor.and_then(|e| match owner {
        Owner::Hook { conn, .. } => {
            let mut hooks = e.hooks.borrow_mut();
            let ours = hooks
                .get(&(conn as usize))
                .is_some_and(|t| std::ptr::eq(t.0.as_ptr(), header));
            ours.then(|| hooks.remove(&(conn as usize))).flatten()
        }
        Owner::Background => e.background.borrow_mut().remove(&header.id.get()),
    });
    drop(task);
    match owner {
        Owner::Hook { meta, conn, .. } => {
            crate::__private_v1::after_async_hook(meta, conn);
            if let Some(flow) = crate::__private_v1::flow_of(meta, result) {
                // SAFETY: this plugin holds the chain of `conn`; we are on its
                // loop, outside the hook call; the future is already dropped.
                unsafe { crate::raw::resume(conn, flow) };
            }
        }
        Owner::Background => {
            let problem = match result {
                Err(panic) => Some(format!("panicked: {panic}")),
                Ok(Outcome::Failed(e)) => Some(format!("failed: {e}")),
                Ok(_) => None,
            };
            if let Some(problem) = problem {
                let plugin = crate::log::plugin_name();
                crate::log::log_text(
                    crate::sys::MQ_CRIT,
                    &format!("[{plugin}] a spawn_local task {problem}"),
                );
            }
        }
    }
}

impl Context {
    /// Runs `future` on this worker's loop in the background. It is
    /// cancelled (dropped) at `mq_context_cleanup` if it has not finished;
    /// a panic or an `Err` is logged.
    ///
    /// ```no_run
    /// # use mq_plugin::prelude::*;
    /// # fn f(ctx: &Context) {
    /// ctx.spawn_local(async {
    ///     mq_plugin::time::sleep(std::time::Duration::from_secs(60)).await;
    ///     log::info!("a minute later");
    /// })
    /// .expect("the executor runs");
    /// # }
    /// ```
    pub fn spawn_local<F>(&self, future: F) -> Result<(), crate::HostError>
    where
        F: Future<Output: HookReturn> + 'static,
    {
        let executor =
            Executor::of(self).map_err(|_| crate::HostError("no executor for this context"))?;
        let id = executor.next_id.get();
        executor.next_id.set(id + 1);
        let task = Box::new(Task {
            header: Header {
                refs: AtomicUsize::new(1),
                scheduled: AtomicBool::new(true),
                shared: AtomicPtr::new(Arc::into_raw(Arc::clone(&executor.shared)).cast_mut()),
                vtable: &Task::<F>::VTABLE,
                owner: Owner::Background,
                ctx: self.as_raw(),
                id: Cell::new(id),
            },
            future: UnsafeCell::new(ManuallyDrop::new(future)),
            alive: Cell::new(true),
        });
        let header: NonNull<Header> = NonNull::from(Box::leak(task)).cast();
        executor.background.borrow_mut().insert(id, TaskRef(header));
        executor.shared.schedule(acquire(header));
        Ok(())
    }
}
