//! Example plugin: a tarpit for recipient harvesters, written as an async
//! hook.
//!
//! The n-th `RCPT TO` of a connection waits `(n - 1) × step` before the
//! host answers it, capped at `max`: one or two recipients go through at
//! once, a dictionary attack slows to a crawl. The wait is a timer on the
//! worker's event loop (`mq_plugin::time::sleep`), so the worker keeps
//! serving every other connection meanwhile.
//!
//! `MQ_TARPIT_STEP_MS` (default 100) and `MQ_TARPIT_MAX_MS` (default 2000)
//! set the step and the cap.

#![forbid(unsafe_code)]

use mq_plugin::prelude::*;
use mq_plugin::time::sleep;
use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Duration;

mq_plugin::declare_plugin!();

/// How the tarpit grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tarpit {
    /// Added per recipient.
    pub step: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Tarpit {
    /// From the environment, with the defaults above.
    pub fn from_env() -> Tarpit {
        let ms = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Tarpit {
            step: Duration::from_millis(ms("MQ_TARPIT_STEP_MS", 100)),
            max: Duration::from_millis(ms("MQ_TARPIT_MAX_MS", 2000)),
        }
    }

    /// The wait before answering the `n`-th recipient (from 1).
    pub fn delay(&self, n: u32) -> Duration {
        self.step.saturating_mul(n.saturating_sub(1)).min(self.max)
    }
}

fn tarpit() -> &'static Tarpit {
    static TARPIT: OnceLock<Tarpit> = OnceLock::new();
    TARPIT.get_or_init(Tarpit::from_env)
}

/// Recipients seen on this connection (freed by the framework at close).
#[derive(Default)]
struct Recipients(Cell<u32>);

#[mq_hook(smtp_in_rcptto)]
async fn slow_down(conn: &Connection, rcpt: &Address) -> Flow {
    let seen = conn.data_or_insert_with(Recipients::default);
    seen.0.set(seen.0.get() + 1);
    let delay = tarpit().delay(seen.0.get());
    if !delay.is_zero() {
        log::info!(
            "tarpit: {:?} waits {delay:?} (recipient #{})",
            rcpt.email(),
            seen.0.get()
        );
        sleep(delay).await;
    }
    Flow::Continue
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_are_capped() {
        let t = Tarpit {
            step: Duration::from_millis(100),
            max: Duration::from_millis(250),
        };
        let delays: Vec<u128> = (1..=5).map(|n| t.delay(n).as_millis()).collect();
        assert_eq!(delays, [0, 100, 200, 250, 250]);
        assert_eq!(t.delay(0), Duration::ZERO);
    }
}
