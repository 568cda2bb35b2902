//! The rate limit as a client sees it, in the test host: over the limit a
//! sender gets 451 until its window passes; other senders go on; the
//! sweeper forgets idle senders on the worker's clock.
//!
//! The plugin reads its settings once per loaded copy, at its first hook,
//! and tests in one process share the environment: each test holds `ENV`
//! from setting them to its first step.
//!
//! On the test host's virtual clock no time passes between two steps
//! (the clock stands still while the test thread works), and
//! `TestHost::advance` lets a window pass in no real time.

use mq_plugin_test::{Flow, TestHost};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static ENV: Mutex<()> = Mutex::new(());

/// Two per sender per hour, for the hosts whose first step runs while the
/// guard lives; `max_senders` per worker if given.
fn configure(max_senders: Option<usize>) -> MutexGuard<'static, ()> {
    let guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("MQ_RATE_LIMIT", "2");
    std::env::set_var("MQ_RATE_WINDOW_SECS", "3600");
    match max_senders {
        Some(n) => std::env::set_var("MQ_RATE_MAX_SENDERS", n.to_string()),
        None => std::env::remove_var("MQ_RATE_MAX_SENDERS"),
    }
    guard
}

#[test]
fn over_the_limit_a_sender_is_deferred_and_others_go_on() {
    let env = configure(None);
    let host = TestHost::builder().this_crate().virtual_time(false).start();
    let mut smtp = host.smtp();
    smtp.connect().assert_accepted();
    smtp.mail_from("shop@example.com")
        .assert_accepted()
        .assert_flow("mq-example-rate-limit", Flow::Continue);
    drop(env);
    smtp.mail_from("shop@example.com").assert_accepted();
    // The same sender in other letters, on another connection: counted
    // together, and refused until the first leaves the window (an hour
    // after it, in whole seconds).
    let mut other = host.smtp();
    let refused = other.mail_from("Shop@EXAMPLE.com");
    refused
        .assert_reply(451, "4.7.1 sender rate limit exceeded, try again in ")
        .assert_flow("mq-example-rate-limit", Flow::Complete);
    let text = refused.reply().unwrap().text;
    let wait: u64 = text
        .trim_end()
        .strip_suffix(" s")
        .and_then(|t| t.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no wait in `{text}`"));
    assert!((3500..=3600).contains(&wait), "{text}");
    // A refusal does not count, and other senders have their own windows.
    smtp.mail_from("news@example.com").assert_accepted();
    smtp.mail_from("").assert_accepted();
    smtp.mail_from("").assert_accepted();
    smtp.mail_from("").assert_refused(451);
    smtp.mail_from("shop@example.com").assert_refused(451);
    assert!(
        host.plugin_log()
            .iter()
            .any(|l| l.contains("\"shop@example.com\" is over 2 per 3600s")),
        "{:?}",
        host.plugin_log()
    );
    assert_eq!(host.counters().double_resumes, 0);
}

#[test]
fn an_hours_window_passes_on_the_virtual_clock_in_no_real_time() {
    let env = configure(None);
    let host = TestHost::new();
    let mut smtp = host.smtp();
    smtp.mail_from("shop@example.com").assert_accepted();
    drop(env);
    smtp.mail_from("shop@example.com").assert_accepted();
    // Between steps the clock stands still: the third is over the limit
    // however long the test thread took in between.
    smtp.mail_from("shop@example.com").assert_refused(451);
    // An hour later (in microseconds of real time) the sender's window is
    // over.
    let started = Instant::now();
    host.advance(Duration::from_secs(3600));
    smtp.mail_from("shop@example.com").assert_accepted();
    // Two more idle hours: the sweeper's ticks have forgotten the sender.
    host.advance(Duration::from_secs(7200));
    assert!(
        host.plugin_log()
            .iter()
            .any(|l| l.contains("forgot 1 idle sender(s); 0 tracked")),
        "{:?}",
        host.plugin_log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(600),
        "an hour of virtual time took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_full_table_defers_new_senders_only() {
    let env = configure(Some(1));
    let host = TestHost::builder().this_crate().virtual_time(false).start();
    let mut smtp = host.smtp();
    smtp.mail_from("shop@example.com").assert_accepted();
    drop(env);
    smtp.mail_from("news@example.com")
        .assert_reply(451, "4.7.1 too many senders at once, try again later");
    // The sender it knows goes on.
    smtp.mail_from("shop@example.com").assert_accepted();
}
