//! # mq-plugin-test: test a MailerQ plugin from its own crate
//!
//! Add this crate as the one dev-dependency of a plugin crate
//! (`crate-type = ["cdylib"]`) and write ordinary `#[test]`s in its
//! `tests/*.rs`: cargo builds the plugin's `.so` before the integration
//! tests, and a [`TestHost`] loads it into a real mq-host inside the test
//! process — the host `serve` runs, with MailerQ's control-flow rules, its
//! guards and its log. No `.so` to handle, no network, no sleeps:
//!
//! ```no_run
//! use mq_plugin_test::{message, TestHost};
//!
//! #[test]
//! fn strangers_are_refused_and_friends_stamped() {
//!     let host = TestHost::new(); // this crate's plugin, on a virtual clock
//!     let mut smtp = host.smtp();
//!     smtp.connect().assert_accepted();
//!     smtp.mail_from("shop@example.com").assert_accepted();
//!     smtp.rcpt_to("victim@evil.example")
//!         .assert_reply(550, "not on the allow-list");
//!     smtp.rcpt_to("alice@example.org").assert_accepted();
//!     smtp.data("Subject: hi\r\n\r\nhello\r\n").assert_accepted();
//!     let stored = smtp.message(message("shop@example.com", "alice@example.org",
//!                                       "Subject: hi\r\n\r\nhello\r\n"));
//!     assert_eq!(stored.header("X-Stamped-By").as_deref(), Some("my-plugin"));
//!     assert_eq!(host.counters().double_resumes, 0);
//! }
//! # fn main() {}
//! ```
//!
//! - **Steps** ([`Smtp`], [`Delivery`]): each runs one hook's chain
//!   through every loaded plugin and returns a [`Step`]: the reply a
//!   client would see ([`Step::reply`]), the flow each plugin took
//!   ([`Step::flow_of`], [`Step::calls`]), the message JSON and MIME after
//!   the chain ([`Step::message`], [`Step::mime`], [`Step::header`]), what
//!   goes over SMTP for outgoing mail ([`Step::smtp`]), the plugins' log
//!   ([`Step::plugin_log`]) and the time it took ([`Step::elapsed`]).
//! - **The host**: [`TestHost::counters`] (hook calls and every guard:
//!   double and late resumes, hold reports, misuse, panics),
//!   [`TestHost::host_log`] (the host's reports), [`TestHost::plugin_log`].
//! - **Virtual time** (on by default): a worker with nothing to do but wait
//!   for a timer jumps to it, so a hook that sleeps 30 s, or a timeout of
//!   5 s, ends at once, timers firing in order; [`Step::elapsed`] says 30 s.
//!   While a plugin watches a socket (a Redis call in flight) or runs a
//!   `spawn_blocking` job, the clock runs at the real rate, so real peers
//!   still answer before their timeouts. Between steps the clock stands
//!   still; [`TestHost::advance`] lets time pass there (a rate window
//!   ends, a sweeper ticks).
//! - **Chains**: [`TestHostBuilder::plugin`] adds plugins in order —
//!   [`Plugin::this_crate`], another package of the workspace
//!   ([`Plugin::package`], built with cargo), or any `.so`
//!   ([`Plugin::file`]), C plugins too (their test binary must export the
//!   host's functions; see [`TestHostBuilder::start`]).
//! - **Failures explain themselves**: an `assert_*` of a [`Step`] prints
//!   the chain and what the plugins logged during the step; any failing
//!   test prints the host's whole log as its [`TestHost`] is dropped.
//! - **Real peers**: [`redis::RedisServer`] starts a real `redis-server`
//!   on a free loopback port for a plugin that talks to Redis (the test
//!   fails, saying what to install, where it is missing).
//!
//! Each [`TestHost`] loads its own copies of the plugin files, so every
//! test starts with fresh plugin statics, and tests run in parallel.
//! The repository's `docs/testing.md` walks through it all.

mod host;
mod locate;
mod report;
mod session;
mod step;

pub mod redis;
pub use host::{TestHost, TestHostBuilder, DEFAULT_STEP_LIMIT};
pub use locate::Plugin;
pub use mq_host::{ChainEnd, CounterSnapshot, Flow, HookCall, Resume};
/// serde_json, for messages (`serde_json::json!`), so that a plugin's tests
/// need no dependency but this crate.
pub use serde_json;
pub use session::{message, Delivery, Smtp};
pub use step::{Reply, Step};
