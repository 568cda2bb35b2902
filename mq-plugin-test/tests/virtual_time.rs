//! The virtual clock: hooks that wait end at once, by the worker's clock
//! as long as they waited (`mq-test-async-probe` sleeps a message's
//! `delay_ms`).

use mq_plugin_test::{Flow, Plugin, Resume, TestHost};
use serde_json::json;
use std::time::Duration;

fn probe() -> mq_plugin_test::TestHostBuilder {
    TestHost::builder().plugin(Plugin::package("mq-test-async-probe"))
}

fn delayed(ms: u64) -> serde_json::Value {
    json!({"envelope": "a@example.com", "recipient": "b@example.org",
           "mime": "Subject: hi\r\n\r\nhello\r\n", "delay_ms": ms})
}

#[test]
fn a_thirty_second_sleep_takes_thirty_seconds_of_virtual_time() {
    let host = probe().start();
    let mut smtp = host.smtp();
    let step = smtp.message(delayed(30_000));
    step.assert_accepted()
        .assert_flow("mq-test-async-probe", Flow::Continue);
    assert!(step.took_control("mq-test-async-probe"));
    assert!(
        step.elapsed() >= Duration::from_secs(30) && step.elapsed() < Duration::from_secs(31),
        "{:?}",
        step.elapsed()
    );
    assert_eq!(step.header("X-Async").as_deref(), Some("30000"));
}

#[test]
fn a_long_hold_is_reported_at_each_interval_of_the_virtual_clock() {
    // The host's own hold watch (reports every 60 s by default) follows
    // the worker's clock: a 150 s hold is reported at 60 s and 120 s.
    let host = probe().start();
    host.smtp().message(delayed(150_000)).assert_accepted();
    assert_eq!(host.counters().hold_reports, 2);
    assert!(
        host.host_log()
            .iter()
            .any(|l| l.contains("has held control of mq_smtp_in_message for 60.0 s")),
        "{:?}",
        host.host_log()
    );
}

#[test]
fn the_hold_deadline_cancels_a_sleep_after_five_virtual_seconds() {
    let host = probe()
        .configure(|b| b.hold_deadline(Some(Duration::from_secs(5))))
        .start();
    let step = host.smtp().message(delayed(30_000));
    let call = &step.calls()[0];
    assert_eq!(call.resumed, Some(Resume::Cancelled), "{call:?}");
    assert_eq!(step.flow_of("mq-test-async-probe"), None);
    assert!(
        step.elapsed() >= Duration::from_secs(5) && step.elapsed() < Duration::from_secs(6),
        "{:?}",
        step.elapsed()
    );
    assert_eq!(host.counters().held_past_deadline, 1);
}

#[test]
fn a_timeout_around_a_long_sleep_fires_first() {
    // `smtp_in_authenticate`: a 20 ms timeout around a 10 s sleep.
    let host = probe().start();
    let step = host.smtp().authenticate("user", "secret");
    assert!(
        step.elapsed() >= Duration::from_millis(20) && step.elapsed() < Duration::from_secs(10),
        "{:?}",
        step.elapsed()
    );
}

#[test]
fn a_spawn_blocking_job_holds_the_virtual_clock() {
    // While the job runs on another thread the clock may not jump: were it
    // to, the hold watch would report the hold (60 s) before the job ends.
    let host = probe().start();
    let mut message = delayed(0);
    message["blocking"] = json!(20_000_000u64);
    let step = host.smtp().message(message);
    assert!(
        step.plugin_log()
            .iter()
            .any(|l| l.contains("blocking sum 200000010000000")),
        "{:?}",
        step.plugin_log()
    );
    assert_eq!(host.counters().hold_reports, 0);
    assert!(
        step.elapsed() < Duration::from_secs(60),
        "{:?}",
        step.elapsed()
    );
}

#[test]
fn an_interval_ticks_on_the_workers_clock() {
    // `mq-test-ticker`: an interval of 10 s around a 35 s sleep.
    let host = TestHost::builder()
        .plugin(Plugin::package("mq-test-ticker"))
        .start();
    let step = host.smtp().message(delayed(0));
    assert_eq!(step.plugin_log(), ["[mq-test-ticker] ticks at 0, 35, 45 s"]);
    assert!(
        step.elapsed() >= Duration::from_secs(45) && step.elapsed() < Duration::from_secs(46),
        "{:?}",
        step.elapsed()
    );
}

#[test]
fn the_real_clock_is_kept_when_asked() {
    let host = probe().virtual_time(false).start();
    let step = host.smtp().message(delayed(30));
    assert!(step.elapsed() >= Duration::from_millis(30));
    assert!(
        step.elapsed() < Duration::from_secs(30),
        "{:?}",
        step.elapsed()
    );
}
