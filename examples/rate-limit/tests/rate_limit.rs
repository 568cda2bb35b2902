//! The rate limit as a client sees it, in the test host: over the limit a
//! sender gets 451 until its window passes; other senders go on; the
//! sweeper forgets idle senders on the worker's clock.
//!
//! The plugin reads its settings once per loaded copy, and tests in one
//! process share the environment: every test sets the same values.
//!
//! On the test host's virtual clock the worker jumps to its next timer
//! whenever it is idle — also *between* two steps of a test, when the test
//! thread is not waiting. The sweeper's timer is always pending, so there
//! an hour's window passes between any two steps: the limit itself is
//! tested on the real clock (no waiting either: the window is an hour),
//! and the virtual clock test shows the window passing.

use mq_plugin_test::{Flow, TestHost};
use std::time::{Duration, Instant};

fn configure() {
    std::env::set_var("MQ_RATE_LIMIT", "2");
    std::env::set_var("MQ_RATE_WINDOW_SECS", "3600");
    std::env::remove_var("MQ_RATE_MAX_SENDERS");
}

#[test]
fn over_the_limit_a_sender_is_deferred_and_others_go_on() {
    configure();
    let host = TestHost::builder().this_crate().virtual_time(false).start();
    let mut smtp = host.smtp();
    smtp.connect().assert_accepted();
    for _ in 0..2 {
        smtp.mail_from("shop@example.com")
            .assert_accepted()
            .assert_flow("mq-example-rate-limit", Flow::Continue);
    }
    // The same sender in other letters, on another connection: counted
    // together, and refused until the first leaves the window (an hour,
    // rounded up to whole seconds).
    let mut other = host.smtp();
    other
        .mail_from("Shop@EXAMPLE.com")
        .assert_reply(451, "4.7.1 sender rate limit exceeded, try again in 3600 s")
        .assert_flow("mq-example-rate-limit", Flow::Complete);
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
    configure();
    let host = TestHost::new();
    let mut smtp = host.smtp();
    smtp.mail_from("shop@example.com").assert_accepted();
    // Idle, the worker's clock jumps to the sweeper's next tick, an hour
    // later: the sender is forgotten (a real clock would take an hour).
    let started = Instant::now();
    let forgotten = || {
        host.plugin_log()
            .iter()
            .any(|l| l.contains("forgot 1 idle sender(s); 0 tracked"))
    };
    while !forgotten() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the sweeper never ran: {:?}",
            host.plugin_log()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    smtp.mail_from("shop@example.com").assert_accepted();
}
