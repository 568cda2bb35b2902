//! Misuse of the host's functions that MailerQ's documentation calls
//! illegal but a host can survive: each is refused or clamped, reported in
//! the log once per plugin, function and kind (naming the plugin and the
//! function), and every occurrence is counted (`api_misuse`). Safe Rust
//! plugins cannot make any of them.

use mq_e2e::*;
use mq_host::{ChainEnd, Direction, Event, Host};
use std::time::{Duration, Instant};

/// Every `(function, kind)` the C plugin's `misuse` scenario makes, with
/// how often: each must be logged exactly once.
const MISUSES: &[(&str, &str, u64)] = &[
    ("MQ_setMime", "refused: a NULL buffer with size 5", 2),
    ("MQ_setRecipient", "refused: a NULL buffer with size 5", 2),
    ("MQ_setEnvelope", "refused: a NULL buffer with size 5", 2),
    ("MQ_send", "refused: a NULL buffer with size 3", 2),
    ("MQ_startTimer", "longer than the host supports", 4),
    ("MQ_startTimer", "a delay that is not a number", 2),
    ("MQ_startTimer", "got a negative delay", 2),
    ("MQ_resetTimer", "longer than the host supports", 1),
    ("MQ_stopTimer", "on a timer that was already stopped", 1),
    ("MQ_resetTimer", "on a timer that was already stopped", 1),
    (
        "MQ_stopTimer",
        "on NULL, which is not a timer of this worker",
        1,
    ),
    ("MQ_stopTimer", "on a timer that already fired (", 1),
    ("MQ_resetTimer", "on a timer that already fired (", 1),
    ("MQ_ioUnwatch", "on a watcher that was already unwatched", 2),
    (
        "MQ_ioUnwatch",
        "on NULL, which is not a watcher of this worker",
        1,
    ),
    ("MQ_ioWatch", "refused: no callback", 1),
    ("MQ_ev", "returns NULL: mq-host runs its own event loop", 2),
    (
        "MQ_ioWatch",
        "refused: events is neither MQ_READ nor MQ_WRITE",
        1,
    ),
    ("MQ_startTimer", "refused: no callback", 1),
];

/// Waits (at most 10 s) until `host`'s log has a line containing `needle`.
fn wait_for_log(host: &Host, needle: &str) {
    let start = Instant::now();
    while !host.log().iter().any(|l| l.text.contains(needle)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no {needle:?} in the log:\n{:#?}",
            host.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn each_misuse_is_reported_once_and_counted_every_time() {
    let dir = PluginDir::new("misuse");
    dir.add("10-misuse.so", &plugin_so("mq-test-c-misuse"), "misuse\n");
    let host = dir.start();
    let before = message();
    let r = run_message(&host);
    assert_eq!(r.end, ChainEnd::Finished);
    // NULL buffers changed nothing.
    let after = r.message.as_ref().expect("the message");
    for field in ["mime", "recipient", "envelope"] {
        assert_eq!(after[field], before[field], "{field}");
    }
    assert!(r.sent.is_empty(), "{:?}", r.sent);
    let plugin: Vec<String> = r.plugin_log();
    for line in [
        "c-misuse mime unchanged: yes",
        "c-misuse recipient unchanged: yes",
        "c-misuse envelope unchanged: yes",
        "c-misuse NaN timer fired",
        "c-misuse negative timer fired",
        "c-misuse stopped and reset a fired timer",
        "c-misuse stopping the infinite and the huge timer",
    ] {
        assert!(
            plugin.iter().any(|l| l == line),
            "no {line:?} in {plugin:#?}"
        );
    }
    for never in [
        "infinite timer fired",
        "huge timer fired",
        "non-zero",
        "without",
        "returned a loop",
    ] {
        assert!(
            !plugin.iter().any(|l| l.contains(never)),
            "{never:?} in {plugin:#?}"
        );
    }
    // The fired timer's callback ran before the resume; a few more turns
    // for anything late.
    wait_for_log(&host, "stopped and reset a fired timer");
    std::thread::sleep(Duration::from_millis(50));

    let log = host.log();
    let reports: Vec<&str> = log
        .iter()
        .filter(|l| l.text.contains("api_misuse"))
        .map(|l| l.text.as_str())
        .collect();
    for (function, kind, _) in MISUSES {
        let lines: Vec<&&str> = reports
            .iter()
            .filter(|l| {
                l.starts_with(&format!("plugin 10-misuse: {function} ")) && l.contains(kind)
            })
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "{function} {kind:?}: {lines:#?}\nall reports: {reports:#?}"
        );
    }
    assert_eq!(reports.len(), MISUSES.len(), "{reports:#?}");
    let counters = host.counters();
    let total: u64 = MISUSES.iter().map(|(_, _, n)| n).sum();
    assert_eq!(counters.api_misuse, total, "{counters}");
    assert_eq!(counters.invalid_handles, 0, "{counters}");
}

/// Every misuse of `MISUSES` a plugin makes is reported once per host:
/// the same plugin again on the other worker adds counts, not lines.
#[test]
fn a_second_round_on_another_worker_is_only_counted() {
    let dir = PluginDir::new("misuse-twice");
    dir.add("10-misuse.so", &plugin_so("mq-test-c-misuse"), "misuse\n");
    let host = dir.builder().workers(2).start().expect("host start");
    for worker in 0..2 {
        let mut session = host.open_on(worker, Direction::Incoming).unwrap();
        let r = session.run(Event::Message(message())).unwrap();
        assert_eq!(r.end, ChainEnd::Finished);
        session.close().unwrap();
    }
    wait_for_log(&host, "stopped and reset a fired timer");
    let start = Instant::now();
    let total: u64 = MISUSES.iter().map(|(_, _, n)| n).sum();
    while host.counters().api_misuse < 2 * total {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(host.counters().api_misuse, 2 * total);
    let reports = host
        .log()
        .iter()
        .filter(|l| l.text.contains("api_misuse"))
        .count();
    assert_eq!(reports, MISUSES.len());
}

/// What `mq-plugin` hands the host from safe code is never a misuse:
/// `Duration::MAX` timers and resets (clamped by the framework to the
/// longest delay the host supports), and watchers of every fd number
/// dropped at once.
#[test]
fn safe_rust_plugins_make_no_misuse() {
    for scenario in ["duration-max", "watch-host-fds", "timer-at-cleanup"] {
        let dir = PluginDir::new(&format!("rust-{scenario}"));
        dir.add(
            "10-hostile.so",
            &plugin_so("mq-test-hostile"),
            &format!("{scenario} 200\n"),
        );
        let host = dir.start();
        let mut session = host.open(Direction::Incoming).unwrap();
        for event in [
            Event::Connect,
            Event::MailFrom("sender@example.com".into()),
            Event::RcptTo("rcpt@example.org".into()),
            Event::Data(b"Subject: test\r\n\r\nbody\r\n".to_vec()),
            Event::Message(message()),
        ] {
            let r = session.run(event).unwrap();
            assert_eq!(r.end, ChainEnd::Finished, "{scenario}");
        }
        session.close().unwrap();
        let report = host.shutdown();
        let plugin: Vec<&str> = report
            .log
            .iter()
            .filter_map(|l| l.text.strip_prefix("hostile "))
            .collect();
        if scenario == "duration-max" {
            assert!(
                plugin.contains(&"reset to Duration::MAX: true"),
                "{plugin:#?}"
            );
            assert!(plugin.contains(&"stopped: true"), "{plugin:#?}");
        }
        assert_eq!(
            report.counters.api_misuse, 0,
            "{scenario}: {:#?}",
            report.log
        );
    }
}
