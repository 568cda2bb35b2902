//! Futures on the worker's loop timers: [`sleep`], [`timeout`], [`interval`];
//! and the worker's clock, [`now`].
//!
//! They use `MQ_startTimer` of the context whose hook future polls them, so
//! they work in MailerQ and in `mq-host` alike. Use them inside hook futures
//! (and futures those await); polled anywhere else they panic with a message
//! saying so.

use crate::executor::current_context;
use crate::timer::sleeps::{self, SleepTimer};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

fn loop_context(what: &str) -> &'static crate::Context {
    current_context().unwrap_or_else(|| {
        panic!("mq_plugin::{what} must be awaited inside a hook future (it runs on the worker's event loop)")
    })
}

/// The worker's clock: the `Instant` its timers and [`interval`] ticks
/// are measured on. Use it instead of [`Instant::now`] for anything
/// compared with time a hook has seen before (a rate window, a cache's
/// age), so that the plugin's tests can run it on a virtual clock.
///
/// In MailerQ, and in `mq-host serve` and `deliver`, it is the real clock:
/// [`Instant::now`]. In a test host on virtual time (`mq-plugin-test`'s
/// `TestHost`, `mq-host`'s `virtual_time`) it is that worker's virtual
/// clock, which jumps ahead when the worker is idle: a hook that slept
/// 30 s sees `now()` 30 s later, though no real time passed.
///
/// It knows the worker from the hook that runs: inside a hook future (and
/// the tasks `Context::spawn_local` started), and inside a synchronous
/// hook (`fn`, not `async fn`) while it runs. Anywhere else — another
/// thread, a `spawn_blocking` job, a plugin's own thread — it returns the
/// real clock, [`Instant::now`].
///
/// ```no_run
/// # use mq_plugin::prelude::*;
/// # mq_plugin::declare_plugin!();
/// #[mq_hook(smtp_in_mailfrom)]
/// fn note(ctx: &Context) -> Flow {
///     let at = mq_plugin::time::now(); // the worker's clock, virtual in tests
///     let _ = (ctx, at);
///     Flow::Continue
/// }
/// # fn main() {}
/// ```
pub fn now() -> Instant {
    crate::clock::now()
}

/// Completes after a duration; see [`sleep`].
///
/// Its timer is an entry of the worker thread's sleep slab (no allocation
/// once warm); when it fires, the framework polls the waiting hook future
/// right from the timer's callback (one host timer per wait).
#[must_use = "futures do nothing unless awaited"]
pub struct Sleep {
    duration: Duration,
    timer: Option<SleepTimer>,
    done: bool,
    /// Bound to the thread whose slab holds its timer.
    _not_send: PhantomData<*const ()>,
}

/// Waits for `duration` on the worker's loop, without blocking it.
///
/// ```no_run
/// # use mq_plugin::prelude::*;
/// # mq_plugin::declare_plugin!();
/// #[mq_hook(smtp_in_rcptto)]
/// async fn tarpit(rcpt: &Address) -> Flow {
///     mq_plugin::time::sleep(std::time::Duration::from_millis(200)).await;
///     Flow::Continue
/// }
/// # fn main() {}
/// ```
pub fn sleep(duration: Duration) -> Sleep {
    Sleep {
        duration,
        timer: None,
        done: false,
        _not_send: PhantomData,
    }
}

impl Unpin for Sleep {}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        if self.done {
            return Poll::Ready(());
        }
        if self.timer.is_none() {
            let ctx = loop_context("sleep").as_raw();
            match sleeps::start(ctx, self.duration, cx.waker()) {
                Some(timer) => self.timer = Some(timer),
                // No timer from the host: do not hang, finish at once.
                None => {
                    self.done = true;
                    return Poll::Ready(());
                }
            }
            return Poll::Pending;
        }
        let polled = sleeps::poll(&mut self.timer, cx.waker());
        if polled.is_ready() {
            self.done = true;
        }
        polled
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            sleeps::cancel(timer);
        }
    }
}

/// The error of [`timeout`]: the time ran out first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed(Duration);

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "timed out after {:?}", self.0)
    }
}

impl std::error::Error for Elapsed {}

/// Runs `future` for at most `limit`; see [`timeout`].
#[must_use = "futures do nothing unless awaited"]
pub struct Timeout<F> {
    future: F,
    sleep: Sleep,
}

/// Awaits `future`, or gives up with [`Elapsed`] after `limit` (dropping it).
///
/// ```no_run
/// # async fn f() {
/// use std::time::Duration;
/// let slow = mq_plugin::time::sleep(Duration::from_secs(10));
/// assert!(mq_plugin::time::timeout(Duration::from_millis(50), slow).await.is_err());
/// # }
/// ```
pub fn timeout<F: Future>(limit: Duration, future: F) -> Timeout<F> {
    Timeout {
        future,
        sleep: sleep(limit),
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        // SAFETY: structural pinning: `future` is never moved out of `self`.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: as above.
        if let Poll::Ready(value) = unsafe { Pin::new_unchecked(&mut this.future) }.poll(cx) {
            return Poll::Ready(Ok(value));
        }
        let limit = this.sleep.duration;
        // SAFETY: Sleep is Unpin (no self-references).
        match Pin::new(&mut this.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed(limit))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Ticks at a fixed period; see [`interval`].
pub struct Interval {
    period: Duration,
    /// `None` once the next tick is beyond what `Instant` can hold.
    next: Option<Instant>,
}

/// A ticker: the first [`Interval::tick`] completes at once, then one per
/// `period` (late ticks are not made up). Ticks follow the worker's clock:
/// on a test host's virtual clock (`mq-host`'s `virtual_time`) the returned
/// `Instant`s are that clock's.
/// A period too long for the clock (`Duration::MAX`) never ticks again.
pub fn interval(period: Duration) -> Interval {
    Interval {
        period,
        next: Some(crate::clock::now()),
    }
}

impl Interval {
    /// Waits for the next tick.
    pub async fn tick(&mut self) -> Instant {
        let Some(next) = self.next else {
            return std::future::pending().await;
        };
        let now = crate::clock::now();
        if next > now {
            sleep(next - now).await;
        }
        let tick = next.max(now);
        self.next = tick.checked_add(self.period);
        tick
    }
}
