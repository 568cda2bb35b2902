//! The tarpit on the test host's virtual clock: every recipient after the
//! first waits 100 ms more, up to 2 s, and the test still runs in no time.

use mq_plugin_test::{Flow, TestHost};
use std::time::Duration;

#[test]
fn each_further_recipient_waits_longer_up_to_the_cap() {
    let host = TestHost::new();
    let mut smtp = host.smtp();
    smtp.connect().assert_accepted();
    let mut waited = Vec::new();
    for n in 1..=30 {
        let step = smtp.rcpt_to(&format!("user{n}@example.com"));
        step.assert_accepted()
            .assert_flow("mq-example-tarpit", Flow::Continue);
        // The first recipient is answered at once: no take-over.
        assert_eq!(step.took_control("mq-example-tarpit"), n > 1, "#{n}");
        waited.push(step.elapsed());
    }
    let expected = |n: u64| Duration::from_millis((100 * (n - 1)).min(2000));
    for (n, elapsed) in (1..).zip(&waited) {
        assert!(
            *elapsed >= expected(n) && *elapsed < expected(n) + Duration::from_millis(100),
            "recipient #{n} waited {elapsed:?}, expected {:?}",
            expected(n)
        );
    }
    // 19 s for the first twenty, 2 s for each of the other ten: none of
    // it a hold worth reporting.
    let total: Duration = waited.iter().sum();
    assert!(total >= Duration::from_secs(39), "{total:?}");
    assert_eq!(host.counters().hold_reports, 0);
}

#[test]
fn every_connection_counts_its_own_recipients() {
    let host = TestHost::new();
    let mut first = host.smtp();
    first.rcpt_to("a@example.com");
    let second_of_first = first.rcpt_to("b@example.com");
    assert!(second_of_first.elapsed() >= Duration::from_millis(100));
    let mut other = host.smtp();
    let first_of_other = other.rcpt_to("c@example.com");
    assert!(!first_of_other.took_control("mq-example-tarpit"));
    assert!(
        second_of_first.plugin_log()[0].contains("waits 100ms (recipient #2)"),
        "{:?}",
        second_of_first.plugin_log()
    );
}
