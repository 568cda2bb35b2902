//! Work off the event loop: [`spawn_blocking`] runs a closure on a small
//! plugin-owned thread pool and resolves on the loop. (Background work on
//! the loop itself is [`Context::spawn_local`](crate::Context::spawn_local).)

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll, Waker};

type Job = Box<dyn FnOnce() + Send>;

/// The pool: a few threads sharing one job queue, started on first use and
/// living as long as the plugin (plugins are never unloaded).
fn pool() -> &'static Mutex<mpsc::Sender<Job>> {
    static POOL: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 4);
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("mq-plugin-blocking-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    job();
                });
            if let Err(e) = spawned {
                crate::log::log_text(
                    crate::sys::MQ_CRIT,
                    &format!("mq-plugin: cannot start a blocking thread: {e}"),
                );
            }
        }
        Mutex::new(tx)
    })
}

struct Slot<T> {
    result: Option<std::thread::Result<T>>,
    waker: Option<Waker>,
}

/// The result of [`spawn_blocking`]: resolves on the loop once the closure
/// has run.
#[must_use = "futures do nothing unless awaited"]
pub struct Blocking<T> {
    slot: Arc<Mutex<Slot<T>>>,
    /// Holds a test host's virtual clock until the result is taken.
    clock: Option<crate::clock::ClockHold>,
}

/// The closure of [`spawn_blocking`] panicked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinError(String);

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the blocking task panicked: {}", self.0)
    }
}

impl std::error::Error for JoinError {}

/// Runs `work` on the plugin's blocking thread pool (for CPU work or
/// blocking calls that must not stall the worker's loop); the returned
/// future resolves on the loop with its result.
///
/// ```no_run
/// # async fn f() -> Result<(), mq_plugin::task::JoinError> {
/// let digest = mq_plugin::task::spawn_blocking(|| expensive_hash(b"mime")).await?;
/// # Ok(()) }
/// # fn expensive_hash(_: &[u8]) -> u64 { 0 }
/// ```
pub fn spawn_blocking<T, W>(work: W) -> Blocking<T>
where
    T: Send + 'static,
    W: FnOnce() -> T + Send + 'static,
{
    let slot = Arc::new(Mutex::new(Slot {
        result: None,
        waker: None,
    }));
    let done = Arc::clone(&slot);
    let clock = Some(crate::clock::ClockHold::take());
    let job: Job = Box::new(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        let waker = {
            let mut slot = done.lock().unwrap_or_else(|e| e.into_inner());
            slot.result = Some(result);
            slot.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    });
    if let Err(mpsc::SendError(job)) = pool().lock().unwrap_or_else(|e| e.into_inner()).send(job) {
        // No pool thread is left: run it here rather than never.
        job();
    }
    Blocking { slot, clock }
}

impl<T> Future for Blocking<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let result = {
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            let result = slot.result.take();
            if result.is_none() {
                slot.waker = Some(cx.waker().clone());
            }
            result
        };
        let result = match result {
            Some(result) => result,
            None => return Poll::Pending,
        };
        self.clock = None;
        match result {
            Ok(value) => Poll::Ready(Ok(value)),
            Err(panic) => Poll::Ready(Err(JoinError(crate::boundary::panic_message(panic)))),
        }
    }
}
