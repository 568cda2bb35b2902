//! The rate-limiting recipe (`examples/rate-limit`) in the real host: at
//! most N transactions per sender per window, `451 4.7.1` over it, the
//! sender admitted again once the window has passed, idle senders
//! forgotten by the plugin's timer so its memory stays bounded, and the
//! table's hard cap.

use mq_e2e::*;
use mq_host::{ChainEnd, Direction, Event, EventResult, Host};
use std::time::{Duration, Instant};

const LIMIT: usize = 3;
/// Long enough that the first four commands fit in it on a loaded machine.
const WINDOW: Duration = Duration::from_secs(3);

fn mail_from(host: &Host, sender: &str) -> EventResult {
    host.run_event(Direction::Incoming, Event::MailFrom(sender.into()))
        .expect("run smtp_in_mailfrom")
}

fn refused(r: &EventResult) -> bool {
    r.reply()
        .is_some_and(|reply| reply.starts_with("451 4.7.1 sender rate limit exceeded"))
}

/// The plugin's log lines so far.
fn plugin_log(host: &Host) -> Vec<String> {
    host.log()
        .into_iter()
        .map(|r| r.text)
        .filter(|t| t.contains("[mq-example-rate-limit]"))
        .collect()
}

/// Waits, 30 s at most (a bound for a loaded machine, not a timing
/// assertion), until `ready` holds for the plugin's log.
fn wait_for_log(host: &Host, what: &str, ready: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = plugin_log(host);
        if ready(&log) {
            return log;
        }
        assert!(Instant::now() < deadline, "no {what} in 30 s:\n{log:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn senders_are_limited_per_window_and_forgotten_when_idle() {
    std::env::set_var("MQ_RATE_LIMIT", LIMIT.to_string());
    std::env::set_var("MQ_RATE_WINDOW_SECS", WINDOW.as_secs_f64().to_string());
    let dir = PluginDir::new("rate-limit");
    dir.add("10-rate-limit.so", &plugin_so("mq-example-rate-limit"), "");
    dir.add("20-probe.so", &c_probe(), "");
    // One worker: the table is per worker (per context).
    let host = dir.start();

    let first = Instant::now();
    for n in 0..LIMIT {
        let r = mail_from(&host, "Shop@Example.com");
        assert_eq!(r.end, ChainEnd::Finished, "message {n}: {:#?}", r.log);
        assert_eq!(called(&r), ["10-rate-limit", "20-probe"]);
    }
    // Over the limit: a temporary failure, and the chain stops there. The
    // sender is the parsed address in lower case.
    let over = mail_from(&host, "shop@example.COM");
    assert!(refused(&over), "{:?}", over.reply());
    assert_eq!(
        over.end,
        ChainEnd::Completed {
            plugin: "10-rate-limit".into()
        }
    );
    assert_eq!(called(&over), ["10-rate-limit"]);
    // Another sender has a window of its own; so has the null sender.
    assert_eq!(mail_from(&host, "news@example.com").end, ChainEnd::Finished);
    assert_eq!(mail_from(&host, "").end, ChainEnd::Finished);

    // Once the window has passed the sender gets through again (refused
    // tries do not count). Retried like a client would, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = mail_from(&host, "shop@example.com");
        if !refused(&r) {
            assert_eq!(r.end, ChainEnd::Finished, "{:#?}", r.log);
            break;
        }
        assert!(Instant::now() < deadline, "still refused after 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Never before the window: the plugin measured at least WINDOW since
    // the first admission, which came after `first`.
    assert!(first.elapsed() >= WINDOW);

    // Memory: many senders, each forgotten by the timer once idle for a
    // window; the plugin logs how many it still tracks, down to none.
    let mark = plugin_log(&host).len();
    for n in 0..50 {
        assert_eq!(
            mail_from(&host, &format!("bulk{n}@example.net")).end,
            ChainEnd::Finished
        );
    }
    let log = wait_for_log(&host, "a sweep that leaves nobody tracked", |log| {
        log[mark..].iter().any(|l| l.ends_with("; 0 tracked"))
    });
    let forgotten: usize = log[mark..]
        .iter()
        .filter_map(|l| l.split("forgot ").nth(1))
        .map(|rest| rest.split(' ').next().unwrap().parse::<usize>().unwrap())
        .sum();
    // The 50 bulk senders and shop; news and <> too unless a sweep forgot
    // them before.
    assert!((51..=53).contains(&forgotten), "{forgotten}: {log:#?}");
    // The refusal was logged with the sender.
    assert!(
        log.iter()
            .any(|l| l.contains("\"shop@example.com\" is over 3 per 3s")),
        "{log:#?}"
    );
    drop(host);

    // A hard cap on the table: with room for two senders (and a window
    // long enough that no sweep makes room meanwhile), a third is deferred
    // while the two known ones go on. A new copy of the plugin reads the
    // environment anew.
    std::env::set_var("MQ_RATE_WINDOW_SECS", "3600");
    std::env::set_var("MQ_RATE_MAX_SENDERS", "2");
    let dir = PluginDir::new("rate-limit-cap");
    dir.add("10-rate-limit.so", &plugin_so("mq-example-rate-limit"), "");
    let host = dir.start();
    assert_eq!(mail_from(&host, "a@example.com").end, ChainEnd::Finished);
    assert_eq!(mail_from(&host, "b@example.com").end, ChainEnd::Finished);
    let full = mail_from(&host, "c@example.com");
    assert_eq!(
        full.reply().as_deref(),
        Some("451 4.7.1 too many senders at once, try again later")
    );
    assert_eq!(mail_from(&host, "a@example.com").end, ChainEnd::Finished);
    assert!(plugin_log(&host)
        .iter()
        .any(|l| l.contains("\"c@example.com\" deferred: already 2 senders tracked")));
}
