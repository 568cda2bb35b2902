//! Example plugin: per-sender rate limiting at `MAIL FROM`.
//!
//! Each sender (the parsed envelope address, lower case; the null sender
//! `<>` is one sender too) may start at most `limit` transactions per
//! `window`, counted as a sliding window: a `MAIL FROM` is admitted if
//! fewer than `limit` of that sender's admitted ones lie within the last
//! `window`. Over the limit the command gets
//!
//! ```text
//! 451 4.7.1 sender rate limit exceeded, try again in 12 s
//! ```
//!
//! a temporary failure: a well-behaved client queues the message and
//! retries later, nothing is lost. `MAIL FROM` rather than `RCPT TO`: one
//! transaction is one message, however many recipients it has, and a
//! refused sender costs no further commands. Refused attempts do not
//! count, so a client that keeps retrying gets through as soon as the
//! window allows.
//!
//! The counts live in typed per-context data: each worker keeps its own
//! table, so no lock is taken and no worker waits for another. The price:
//! the limit holds per worker — with `W` workers a sender spread over
//! them could start up to `W × limit` transactions per window (keep the
//! count in Redis, as the `redis-allowlist` example does, for one exact
//! limit across workers and hosts).
//!
//! Memory stays bounded: a sender keeps at most `limit` timestamps, and a
//! background task on the worker's loop (an `interval` timer, started with
//! `Context::spawn_local` when the table is made) forgets every sender
//! idle for a whole window, logging how many it forgot and how many it
//! still tracks. The task and the table go with the context. Against a
//! flood of made-up senders the table also has a hard cap,
//! `max_senders`: while it is full, a sender it does not know yet gets
//!
//! ```text
//! 451 4.7.1 too many senders at once, try again later
//! ```
//!
//! until the timer makes room (fail closed: a flood delays new senders for
//! up to a window; the known ones go on).
//!
//! `MQ_RATE_LIMIT` (default 100), `MQ_RATE_WINDOW_SECS` (default 3600,
//! fractions allowed) and `MQ_RATE_MAX_SENDERS` (per worker, default
//! 100 000) configure it.

#![forbid(unsafe_code)]

use mq_plugin::prelude::*;
use mq_plugin::time::interval;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mq_plugin::declare_plugin!();

/// How many transactions per sender per window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Transactions admitted per sender within one window.
    pub limit: usize,
    /// The sliding window.
    pub window: Duration,
    /// Senders one worker's table may hold.
    pub max_senders: usize,
}

impl Config {
    /// From `MQ_RATE_LIMIT` and `MQ_RATE_WINDOW_SECS`; a value that does
    /// not parse is logged and the default taken.
    pub fn from_env() -> Config {
        let limit = match std::env::var("MQ_RATE_LIMIT") {
            Err(_) => 100,
            Ok(v) => v.parse().unwrap_or_else(|_| {
                log::warn!("MQ_RATE_LIMIT `{v}` is not a count; using 100");
                100
            }),
        };
        let window = match std::env::var("MQ_RATE_WINDOW_SECS") {
            Err(_) => Duration::from_secs(3600),
            Ok(v) => v
                .parse()
                .ok()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .filter(|d| !d.is_zero())
                .unwrap_or_else(|| {
                    log::warn!("MQ_RATE_WINDOW_SECS `{v}` is not a positive number; using 3600");
                    Duration::from_secs(3600)
                }),
        };
        let max_senders = match std::env::var("MQ_RATE_MAX_SENDERS") {
            Err(_) => 100_000,
            Ok(v) => v.parse().unwrap_or_else(|_| {
                log::warn!("MQ_RATE_MAX_SENDERS `{v}` is not a count; using 100000");
                100_000
            }),
        };
        Config {
            limit,
            window,
            max_senders,
        }
    }
}

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(Config::from_env)
}

/// Why a transaction was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The sender is over its limit; its oldest transaction in the window
    /// leaves it after this long.
    OverLimit(Duration),
    /// The table holds `max_senders` others already.
    TableFull,
}

/// The sliding windows of all senders seen within the last window.
#[derive(Debug)]
pub struct Limiter {
    config: Config,
    /// Per sender, the times of its admitted transactions in the window,
    /// oldest first (at most `limit`).
    senders: HashMap<String, VecDeque<Instant>>,
}

impl Limiter {
    /// An empty table.
    pub fn new(config: Config) -> Limiter {
        Limiter {
            config,
            senders: HashMap::new(),
        }
    }

    /// Admits a transaction of `sender` at `now`, or says why not.
    pub fn admit(&mut self, sender: &str, now: Instant) -> Result<(), Refusal> {
        let window = self.config.window;
        if self.senders.len() >= self.config.max_senders && !self.senders.contains_key(sender) {
            return Err(Refusal::TableFull);
        }
        let times = self.senders.entry(sender.to_owned()).or_default();
        while times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            times.pop_front();
        }
        if times.len() < self.config.limit {
            times.push_back(now);
            return Ok(());
        }
        let wait = match times.front() {
            Some(oldest) => window.saturating_sub(now.saturating_duration_since(*oldest)),
            None => window, // a limit of 0 admits nobody
        };
        if times.is_empty() {
            self.senders.remove(sender);
        }
        Err(Refusal::OverLimit(wait))
    }

    /// Forgets every sender with no admitted transaction within the window
    /// before `now`; returns how many it forgot.
    pub fn forget_idle(&mut self, now: Instant) -> usize {
        let window = self.config.window;
        let before = self.senders.len();
        self.senders.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.saturating_duration_since(*t) < window)
        });
        before - self.senders.len()
    }

    /// How many senders the table holds.
    pub fn tracked(&self) -> usize {
        self.senders.len()
    }
}

/// This worker's table (per-context data), shared with its sweeper task.
struct Senders(Rc<RefCell<Limiter>>);

/// The worker's table; made on first use, with the task that forgets idle
/// senders every window.
fn senders(ctx: &Context) -> &Senders {
    if let Some(senders) = ctx.data::<Senders>() {
        return senders;
    }
    let config = *config();
    let senders = ctx.data_or_insert_with(|| Senders(Rc::new(RefCell::new(Limiter::new(config)))));
    let table = Rc::clone(&senders.0);
    let sweeper = async move {
        let mut ticks = interval(config.window);
        ticks.tick().await; // the first tick is at once
                            // Until the context's data (the other owner) is gone.
        while Rc::strong_count(&table) > 1 {
            let now = ticks.tick().await;
            let mut table = table.borrow_mut();
            let forgot = table.forget_idle(now);
            if forgot > 0 {
                log::info!(
                    "forgot {forgot} idle sender(s); {} tracked",
                    table.tracked()
                );
            }
        }
    };
    if let Err(e) = ctx.spawn_local(sweeper) {
        log::warn!("cannot start the sweeper ({e}); idle senders stay in memory");
    }
    senders
}

/// The key a sender is counted under.
fn sender_key(from: &Address) -> String {
    match from.mailbox() {
        Ok(mailbox) => mailbox.as_str().to_ascii_lowercase(),
        Err(_) if from.email_bytes().is_none_or(<[u8]>::is_empty) => "<>".to_owned(),
        // Not a mailbox: counted under its bytes; refusing it is another
        // plugin's job.
        Err(_) => String::from_utf8_lossy(from.email_bytes().unwrap_or_default()).to_lowercase(),
    }
}

/// `d` in seconds, rounded up (a client told "0 s" would retry at once).
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[mq_hook(smtp_in_mailfrom)]
fn limit(ctx: &Context, conn: &Connection, from: &Address) -> Flow {
    let key = sender_key(from);
    let admitted = senders(ctx)
        .0
        .borrow_mut()
        .admit(&key, mq_plugin::time::now());
    match admitted {
        Ok(()) => Flow::Continue,
        Err(Refusal::OverLimit(wait)) => {
            log::info!(
                "{key:?} is over {} per {:?}",
                config().limit,
                config().window
            );
            conn.send(
                format!(
                    "451 4.7.1 sender rate limit exceeded, try again in {} s\r\n",
                    whole_seconds(wait)
                )
                .as_bytes(),
            );
            Flow::Complete
        }
        Err(Refusal::TableFull) => {
            log::warn!(
                "{key:?} deferred: already {} senders tracked",
                config().max_senders
            );
            conn.send(b"451 4.7.1 too many senders at once, try again later\r\n");
            Flow::Complete
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limit: usize, secs: u64) -> Limiter {
        Limiter::new(Config {
            limit,
            window: Duration::from_secs(secs),
            max_senders: usize::MAX,
        })
    }

    #[test]
    fn at_most_limit_per_window_per_sender() {
        let mut l = limiter(2, 10);
        let t0 = Instant::now();
        assert_eq!(l.admit("a", t0), Ok(()));
        assert_eq!(l.admit("a", t0 + Duration::from_secs(4)), Ok(()));
        assert_eq!(
            l.admit("a", t0 + Duration::from_secs(5)),
            Err(Refusal::OverLimit(Duration::from_secs(5)))
        );
        assert_eq!(l.admit("b", t0 + Duration::from_secs(5)), Ok(()));
        // The first leaves the window at 10 s; the refusal did not count.
        assert_eq!(l.admit("a", t0 + Duration::from_secs(10)), Ok(()));
        assert_eq!(
            l.admit("a", t0 + Duration::from_secs(11)),
            Err(Refusal::OverLimit(Duration::from_secs(3)))
        );
    }

    #[test]
    fn idle_senders_are_forgotten() {
        let mut l = limiter(3, 10);
        let t0 = Instant::now();
        l.admit("a", t0).unwrap();
        l.admit("b", t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(l.forget_idle(t0 + Duration::from_secs(9)), 0);
        assert_eq!(l.forget_idle(t0 + Duration::from_secs(10)), 1);
        assert_eq!(l.tracked(), 1);
        assert_eq!(l.forget_idle(t0 + Duration::from_secs(15)), 1);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn a_limit_of_zero_admits_nobody_and_keeps_nothing() {
        let mut l = limiter(0, 10);
        assert_eq!(
            l.admit("a", Instant::now()),
            Err(Refusal::OverLimit(Duration::from_secs(10)))
        );
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn a_full_table_defers_new_senders_only() {
        let mut l = Limiter::new(Config {
            limit: 5,
            window: Duration::from_secs(10),
            max_senders: 2,
        });
        let t0 = Instant::now();
        l.admit("a", t0).unwrap();
        l.admit("b", t0).unwrap();
        assert_eq!(l.admit("c", t0), Err(Refusal::TableFull));
        assert_eq!(l.tracked(), 2);
        // Known senders go on.
        assert_eq!(l.admit("a", t0 + Duration::from_secs(1)), Ok(()));
        // Once the timer forgot the idle ones, there is room again.
        assert_eq!(l.forget_idle(t0 + Duration::from_secs(10)), 1);
        assert_eq!(l.admit("c", t0 + Duration::from_secs(10)), Ok(()));
    }
}
