//! Waiting for file descriptor readiness on the worker's loop
//! (`MQ_ioWatch`): [`readable`] and [`writable`].

use crate::executor::current_context;
use crate::{FdWatcher, Interest};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};

#[derive(Default)]
struct ReadyState {
    ready: Cell<Option<Interest>>,
    waker: RefCell<Option<Waker>>,
}

/// Completes when a descriptor is ready; see [`readable`] and [`writable`].
#[must_use = "futures do nothing unless awaited"]
pub struct Ready {
    fd: RawFd,
    interest: Interest,
    state: Rc<ReadyState>,
    watcher: Option<FdWatcher>,
}

/// Waits until `fd` is readable (or hung up). The plugin keeps owning `fd`.
pub fn readable(fd: RawFd) -> Ready {
    ready(fd, Interest::READ)
}

/// Waits until `fd` is writable.
pub fn writable(fd: RawFd) -> Ready {
    ready(fd, Interest::WRITE)
}

/// Waits until `fd` is ready for any of `interest`; yields what is ready.
pub fn ready(fd: RawFd, interest: Interest) -> Ready {
    Ready {
        fd,
        interest,
        state: Rc::default(),
        watcher: None,
    }
}

impl Future for Ready {
    type Output = std::io::Result<Interest>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        if let Some(ready) = self.state.ready.get() {
            self.watcher = None;
            return Poll::Ready(Ok(ready));
        }
        *self.state.waker.borrow_mut() = Some(cx.waker().clone());
        if self.watcher.is_none() {
            let ctx = current_context().unwrap_or_else(|| {
                panic!("mq_plugin::io futures must be awaited inside a hook future (they run on the worker's event loop)")
            });
            let state = Rc::clone(&self.state);
            let watched = ctx.watch_fd(self.fd, self.interest, move |ready| {
                state.ready.set(Some(ready));
                // Taken before the wake: the wake may poll the future here.
                let waker = state.waker.borrow_mut().take();
                if let Some(waker) = waker {
                    crate::executor::wake_from_loop(waker);
                }
            });
            match watched {
                Ok(w) => self.watcher = Some(w),
                Err(e) => return Poll::Ready(Err(std::io::Error::other(e))),
            }
        }
        Poll::Pending
    }
}
