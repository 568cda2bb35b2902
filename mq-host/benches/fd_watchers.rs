//! Watching and unwatching many io watchers on one fd.
//!
//! `cargo bench -p mq-host --bench fd_watchers` prints, for a few watcher
//! counts n, the time to watch n watchers on one socket and to unwatch them
//! again (in watch order, in reverse, and from inside their own callbacks),
//! and the cost per unwatch relative to the smallest n. With O(1) unwatches
//! the ratio stays near 1; a quadratic unwatch makes it grow like n.
//!
//! Not a test: the numbers depend on the machine. Give `--quick` for one
//! small round (CI smoke run).

use mq_host::event_loop::{EventLoop, Interest, WatcherHandle};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy)]
enum Order {
    Watch,
    Reverse,
    FromCallbacks,
}

impl Order {
    fn name(self) -> &'static str {
        match self {
            Order::Watch => "watch order",
            Order::Reverse => "reverse",
            Order::FromCallbacks => "from callbacks",
        }
    }
}

/// (time to watch n, time to unwatch them all).
fn round(n: usize, order: Order) -> (Duration, Duration) {
    let lp = Rc::new(EventLoop::new(1).expect("event loop"));
    let (a, b) = UnixStream::pair().expect("socket pair");
    a.set_nonblocking(true).expect("non-blocking");
    let fd = a.as_raw_fd();
    let started = Instant::now();
    let handles: Vec<WatcherHandle> = (0..n)
        .map(|i| {
            let interest = if i % 2 == 0 {
                Interest::READ
            } else {
                Interest::WRITE
            };
            let weak = Rc::downgrade(&lp);
            let unwatch_self = matches!(order, Order::FromCallbacks);
            lp.watch_io(
                fd,
                interest,
                Box::new(move |me, _, _| {
                    if unwatch_self {
                        if let Some(lp) = weak.upgrade() {
                            lp.unwatch_io(me);
                        }
                    }
                }),
            )
            .expect("watch")
        })
        .collect();
    let watched = started.elapsed();
    let started = Instant::now();
    match order {
        Order::Watch => handles.iter().for_each(|&h| {
            lp.unwatch_io(h);
        }),
        Order::Reverse => handles.iter().rev().for_each(|&h| {
            lp.unwatch_io(h);
        }),
        Order::FromCallbacks => {
            // Both directions ready: every watcher fires once and unwatches itself.
            (&b).write_all(b"x").expect("write");
            while lp.active_watchers() > 0 {
                lp.run_once(Some(Duration::from_millis(100))).expect("turn");
            }
        }
    }
    let unwatched = started.elapsed();
    (watched, unwatched)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[usize] = if quick {
        &[1_000, 4_000]
    } else {
        &[1_000, 5_000, 20_000]
    };
    println!("watchers on one fd: watch n, then unwatch all");
    for order in [Order::Watch, Order::Reverse, Order::FromCallbacks] {
        let mut base = None;
        for &n in sizes {
            // Best of five, each phase on its own: the least disturbed runs.
            let rounds: Vec<_> = (0..5).map(|_| round(n, order)).collect();
            let watched = rounds.iter().map(|r| r.0).min().expect("rounds");
            let unwatched = rounds.iter().map(|r| r.1).min().expect("rounds");
            let per_op = unwatched.as_secs_f64() / n as f64;
            let base_per_op = *base.get_or_insert(per_op);
            println!(
                "{:>15} n={n:>6}: watch {:>9.3} ms, unwatch {:>9.3} ms ({:>8.1} ns each, {:>6.2}x the n={} cost per unwatch)",
                order.name(),
                watched.as_secs_f64() * 1e3,
                unwatched.as_secs_f64() * 1e3,
                per_op * 1e9,
                per_op / base_per_op,
                sizes[0],
            );
        }
    }
}
