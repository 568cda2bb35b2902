//! The host's guards beyond MailerQ: double resume, resume from another
//! thread, resume inside the hook call, long-hold reports and the hold
//! deadline, and panics and
//! errors in Rust hooks — each logged and counted, none crashing the host.

use mq_e2e::*;
use mq_host::{ChainEnd, Direction, Event, Resume};
use std::time::Duration;

fn log_has(r: &mq_host::EventResult, needle: &str) -> bool {
    r.log.iter().any(|l| l.text.contains(needle))
}

#[test]
fn a_second_resume_is_ignored_and_logged() {
    for so in [rust_probe(), c_probe()] {
        let dir = PluginDir::new("double");
        dir.add("10-a.so", &so, "smtp_in_message double\n");
        dir.add("20-b.so", &so, "");
        let host = dir.start();
        let r = run_message(&host);
        assert_eq!(called(&r), ["10-a", "20-b"], "the chain went on once");
        assert_eq!(r.end, ChainEnd::Finished);
        // The second resume arrives in the same loop callback as the first.
        std::thread::sleep(Duration::from_millis(50));
        let c = host.counters();
        assert_eq!(c.double_resumes, 1, "{c:?}");
        assert!(
            host.log().iter().any(|l| l.text.contains("a second time")),
            "{:#?}",
            host.log()
        );
    }
}

#[test]
fn a_resume_from_another_thread_is_refused() {
    for so in [rust_probe(), c_probe()] {
        let dir = PluginDir::new("thread");
        dir.add("10-a.so", &so, "smtp_in_rcptto thread\n");
        dir.add("20-b.so", &so, "");
        let host = dir.start();
        let r = host
            .run_event(Direction::Incoming, Event::RcptTo("x@example.org".into()))
            .unwrap();
        assert_eq!(
            called(&r),
            ["10-a", "20-b"],
            "the loop's own resume went through"
        );
        assert_eq!(host.counters().wrong_thread_resumes, 1);
        assert!(host
            .log()
            .iter()
            .any(|l| l.text.contains("MQ_continue refused") && l.text.contains("10-a")));
    }
}

#[test]
fn a_resume_inside_the_hook_is_applied_after_it_returns() {
    for so in [rust_probe(), c_probe()] {
        let dir = PluginDir::new("inline");
        dir.add("10-a.so", &so, "smtp_in_connect inline\n");
        dir.add("20-b.so", &so, "");
        let host = dir.start();
        let r = host.run_event(Direction::Incoming, Event::Connect).unwrap();
        assert_eq!(called(&r), ["10-a", "20-b"]);
        assert_eq!(
            r.calls[0].resumed,
            Some(Resume::Flow(mq_host::Flow::Continue))
        );
        assert!(log_has(&r, "inside the hook call"));
        assert_eq!(host.counters().inline_resumes, 1);
    }
}

#[test]
fn holding_past_the_deadline_is_reported_and_the_chain_goes_on() {
    for so in [rust_probe(), c_probe()] {
        let dir = PluginDir::new("deadline");
        dir.add("10-a.so", &so, "smtp_in_message never\n");
        dir.add("20-b.so", &so, "");
        let host = dir
            .builder()
            .hold_deadline(Some(Duration::from_millis(100)))
            .start()
            .unwrap();
        let r = run_message(&host);
        assert_eq!(called(&r), ["10-a", "20-b"]);
        assert_eq!(r.calls[0].resumed, Some(Resume::Expired));
        assert!(r.elapsed >= Duration::from_millis(100));
        assert!(
            log_has(
                &r,
                "held control of mq_smtp_in_message until the 100ms hold deadline passed"
            ),
            "{:#?}",
            r.log
        );
        assert_eq!(host.counters().held_past_deadline, 1);
    }
}

#[test]
fn by_default_a_long_hold_is_reported_and_its_resume_still_applied() {
    // MailerQ waits for a plugin that holds control; so does the host by
    // default (no hold deadline), reporting the hold at each interval.
    for so in [rust_probe(), c_probe()] {
        let dir = PluginDir::new("long-hold");
        dir.add("10-a.so", &so, "smtp_in_message delay 0.3\n");
        dir.add("20-b.so", &so, "");
        // The report's timer (50 ms) is due before the resume's (300 ms)
        // on the same loop, so it fires first.
        let host = dir
            .builder()
            .hold_report(Some(Duration::from_millis(50)))
            .start()
            .unwrap();
        let r = run_message(&host);
        assert_eq!(called(&r), ["10-a", "20-b"]);
        assert_eq!(
            r.calls[0].resumed,
            Some(Resume::Flow(mq_host::Flow::Continue)),
            "the plugin's own resume was applied"
        );
        assert!(
            log_has(&r, "plugin 10-a has held control of mq_smtp_in_message for")
                && log_has(&r, "the host waits for it, as MailerQ does"),
            "{:#?}",
            r.log
        );
        let c = host.counters();
        assert!(c.hold_reports >= 1, "{c:?}");
        assert_eq!(c.held_past_deadline, 0, "not moved on");
        assert_eq!(c.late_resumes, 0);
    }
}

#[test]
fn a_hold_deadline_after_reports_still_ends_the_hold() {
    let dir = PluginDir::new("report-then-deadline");
    dir.add("10-a.so", &c_probe(), "smtp_in_message never\n");
    let host = dir
        .builder()
        .hold_report(Some(Duration::from_millis(20)))
        .hold_deadline(Some(Duration::from_millis(70)))
        .start()
        .unwrap();
    let r = run_message(&host);
    assert_eq!(r.calls[0].resumed, Some(Resume::Expired));
    let c = host.counters();
    assert_eq!(c.hold_reports, 3, "at 20, 40 and 60 ms: {:#?}", r.log);
    assert_eq!(c.held_past_deadline, 1);
    assert!(
        log_has(&r, "its hold deadline of 70ms ends it"),
        "{:#?}",
        r.log
    );
}

#[test]
fn a_late_resume_after_the_deadline_is_ignored() {
    let dir = PluginDir::new("late");
    dir.add("10-a.so", &c_probe(), "smtp_in_message delay 0.3\n");
    let host = dir
        .builder()
        .hold_deadline(Some(Duration::from_millis(50)))
        .start()
        .unwrap();
    let r = run_message(&host);
    assert_eq!(r.calls[0].resumed, Some(Resume::Expired));
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(host.counters().late_resumes, 1, "{:#?}", host.log());
}

#[test]
fn a_plugin_may_use_its_message_after_the_deadline_until_it_resumes() {
    let dir = PluginDir::new("late-message");
    dir.add(
        "10-a.so",
        &rust_probe(),
        "smtp_in_message late-exercise 0.2\n",
    );
    let host = dir
        .builder()
        .hold_deadline(Some(Duration::from_millis(50)))
        .start()
        .unwrap();
    let mut s = host.open(Direction::Incoming).unwrap();
    let r = s.run(Event::Message(message())).unwrap();
    assert_eq!(r.calls[0].resumed, Some(Resume::Expired));
    s.close().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let late: Vec<String> = host
        .log()
        .iter()
        .map(|l| l.text.clone())
        .filter(|t| t.contains("ok set-"))
        .collect();
    assert_eq!(
        late.len(),
        4,
        "the late plugin used the retained message: {:#?}",
        host.log()
    );
    assert_eq!(host.counters().late_resumes, 1);
}

#[test]
fn a_panicking_hook_takes_its_fallback() {
    let dir = PluginDir::new("panic");
    dir.add(
        "10-a.so",
        &rust_probe(),
        "smtp_in_message panic\nsmtp_in_data panic\n",
    );
    dir.add("20-b.so", &c_probe(), "");
    let host = dir.start();
    // smtp_in_message: default fallback, continue.
    let r = run_message(&host);
    assert_eq!(called(&r), ["10-a", "20-b"]);
    assert!(log_has(&r, "hook smtp_in_message (fn message) panicked: probe 10-a panics in smtp_in_message as planned; taking fallback continue"), "{:#?}", r.log);
    // smtp_in_data is declared with `fallback = complete`.
    let r = host
        .run_event(Direction::Incoming, Event::Data(b"x".to_vec()))
        .unwrap();
    assert_eq!(called(&r), ["10-a"]);
    assert_eq!(
        r.end,
        ChainEnd::Completed {
            plugin: "10-a".into()
        }
    );
    assert!(log_has(&r, "taking fallback complete"));
    // The host and the plugin keep working.
    let r = run_message(&host);
    assert_eq!(r.calls.len(), 2);
}

#[test]
fn an_error_is_logged_and_takes_the_fallback() {
    let dir = PluginDir::new("error");
    dir.add("10-a.so", &rust_probe(), "smtp_in_rcptto error\n");
    dir.add("20-b.so", &c_probe(), "");
    let host = dir.start();
    let r = host
        .run_event(Direction::Incoming, Event::RcptTo("x@y".into()))
        .unwrap();
    assert_eq!(called(&r), ["10-a", "20-b"]);
    assert!(log_has(&r, "hook smtp_in_rcptto (fn rcptto) failed: probe 10-a fails in smtp_in_rcptto as planned; taking fallback continue"), "{:#?}", r.log);
}
