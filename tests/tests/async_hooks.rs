//! Async hooks in the real host: exactly one resume, from the loop, for
//! thousands of concurrent futures; wakes from other threads; no take-over
//! (and no allocation) for a future ready on its first poll; errors and
//! panics take the fallback; timeouts fire; pending futures are dropped at
//! cleanup; and the same plugin runs on MailerQ's global symbols alone.

use mq_e2e::*;
use mq_host::{ChainEnd, Direction, Event, Flow, Host, HostMode, Resume};
use serde_json::json;
use std::time::Duration;

fn async_probe() -> std::path::PathBuf {
    plugin_so("mq-test-async-probe")
}

fn host_with(dir: &PluginDir, mode: HostMode) -> Host {
    dir.builder().workers(2).mode(mode).start().unwrap()
}

fn lines(r: &mq_host::EventResult) -> Vec<String> {
    r.plugin_log()
        .into_iter()
        .filter_map(|l| l.strip_prefix("async-probe ").map(str::to_owned))
        .collect()
}

fn thousands_of_concurrent_hooks_resume_exactly_once(mode: HostMode) {
    let dir = PluginDir::new("async-many");
    dir.add("10-async.so", &async_probe(), "");
    dir.add("20-c.so", &c_probe(), "");
    let host = host_with(&dir, mode);
    let total = 2000u64;
    let mut sessions = Vec::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..total {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = seed % 20;
        let flow = if i % 3 == 0 { "complete" } else { "continue" };
        let session = host.open(Direction::Incoming).unwrap();
        let message = json!({"recipient": format!("r{i}@example.org"), "mime": "x", "delay_ms": delay, "flow": flow});
        let pending = session.submit(Event::Message(message)).unwrap();
        sessions.push((session, pending, delay, flow));
    }
    for (session, pending, delay, flow) in sessions {
        let r = pending.wait().unwrap();
        let expected = if flow == "complete" {
            Flow::Complete
        } else {
            Flow::Continue
        };
        assert_eq!(
            r.calls[0].took_control,
            delay > 0 || flow == "complete",
            "delay {delay}"
        );
        if delay > 0 {
            assert_eq!(r.calls[0].resumed, Some(Resume::Flow(expected)));
        }
        match flow {
            "complete" => assert_eq!(
                r.end,
                ChainEnd::Completed {
                    plugin: "10-async".into()
                }
            ),
            _ => {
                assert_eq!(r.end, ChainEnd::Finished);
                assert_eq!(called(&r), ["10-async", "20-c"]);
            }
        }
        assert!(r.message.unwrap()["mime"]
            .as_str()
            .unwrap()
            .starts_with(&format!("X-Async: {delay}\r\n")));
        drop(session);
    }
    let c = host.counters();
    assert_eq!(
        (
            c.double_resumes,
            c.stray_resumes,
            c.wrong_thread_resumes,
            c.inline_resumes
        ),
        (0, 0, 0, 0),
        "{c:?}"
    );
    assert_eq!(c.held_past_deadline, 0);
}

#[test]
fn thousands_of_concurrent_hooks_resume_exactly_once_with_the_table() {
    thousands_of_concurrent_hooks_resume_exactly_once(HostMode::Table);
}

#[test]
fn thousands_of_concurrent_hooks_resume_exactly_once_on_global_symbols() {
    thousands_of_concurrent_hooks_resume_exactly_once(HostMode::GlobalSymbolsOnly);
}

#[test]
fn a_future_ready_at_once_takes_no_control_and_no_allocation() {
    let dir = PluginDir::new("async-ready");
    dir.add("10-async.so", &async_probe(), "");
    let host = dir.builder().workers(1).start().unwrap();
    let mut s = host.open(Direction::Incoming).unwrap();
    let mut counts = Vec::new();
    for _ in 0..3 {
        s.run(Event::MailFrom("a@example.com".into())).unwrap();
        let r = s.run(Event::RcptTo("b@example.org".into())).unwrap();
        assert!(
            !r.calls[0].took_control,
            "ready on the first poll: no take-over"
        );
        assert_eq!(r.end, ChainEnd::Finished);
        let r = s.run(Event::Data(b"x".to_vec())).unwrap();
        counts.push(
            lines(&r)
                .iter()
                .find_map(|l| {
                    l.strip_prefix("allocations ")
                        .map(|n| n.parse::<u64>().unwrap())
                })
                .unwrap(),
        );
    }
    // The first call creates the context's executor and the hook's cached
    // task; after that the ready path allocates nothing.
    assert_eq!(&counts[1..], [0, 0], "allocations per call: {counts:?}");
    // Ready with Complete takes control and resumes from the loop.
    let r = s.run(Event::RcptTo("complete@example.org".into())).unwrap();
    assert!(r.calls[0].took_control);
    assert_eq!(
        r.end,
        ChainEnd::Completed {
            plugin: "10-async".into()
        }
    );
}

#[test]
fn a_wake_from_another_thread_reaches_the_loop() {
    let dir = PluginDir::new("async-thread");
    dir.add("10-async.so", &async_probe(), "");
    let host = host_with(&dir, HostMode::Table);
    let r = host.run_event(Direction::Incoming, Event::Secure).unwrap();
    assert_eq!(r.calls[0].resumed, Some(Resume::Flow(Flow::Continue)));
    assert!(
        lines(&r).contains(&"woken from another thread with 42".to_owned()),
        "{:#?}",
        r.log
    );
    assert_eq!(host.counters().wrong_thread_resumes, 0);
}

#[test]
fn errors_and_panics_take_the_fallback() {
    let dir = PluginDir::new("async-errors");
    dir.add("10-async.so", &async_probe(), "");
    dir.add("20-c.so", &c_probe(), "");
    let host = host_with(&dir, HostMode::Table);
    // An Err after an await: logged, default fallback (continue).
    let r = host.run_event(Direction::Incoming, Event::Connect).unwrap();
    assert_eq!(called(&r), ["10-async", "20-c"]);
    assert_eq!(r.calls[0].resumed, Some(Resume::Flow(Flow::Continue)));
    assert!(r.log.iter().any(|l| l.text.contains("hook smtp_in_connect (fn connect) failed: connect fails as planned; taking fallback continue")), "{:#?}", r.log);
    // A panic after an await: logged, the hook's fallback (complete).
    let r = host
        .run_event(
            Direction::Incoming,
            Event::Message(json!({"delay_ms": 3, "panic": true, "mime": "x"})),
        )
        .unwrap();
    assert_eq!(
        r.end,
        ChainEnd::Completed {
            plugin: "10-async".into()
        }
    );
    assert!(
        r.log.iter().any(|l| l.text.contains(
            "(fn message) panicked: message panics as planned; taking fallback complete"
        )),
        "{:#?}",
        r.log
    );
    // The executor keeps working.
    let r = host
        .run_event(
            Direction::Incoming,
            Event::Message(json!({"delay_ms": 1, "mime": "x"})),
        )
        .unwrap();
    assert_eq!(r.end, ChainEnd::Finished);
}

#[test]
fn timeout_fires_and_credentials_live_in_the_future() {
    let dir = PluginDir::new("async-timeout");
    dir.add("10-async.so", &async_probe(), "");
    let host = host_with(&dir, HostMode::Table);
    let r = host
        .run_event(
            Direction::Incoming,
            Event::Authenticate {
                login: b"alice".to_vec(),
                password: b"secret".to_vec(),
            },
        )
        .unwrap();
    let l = lines(&r);
    assert!(
        l.contains(&"timeout fired: timed out after 20ms".to_owned()),
        "{l:#?}"
    );
    assert!(l.contains(&"login alice".to_owned()), "{l:#?}");
    assert!(r.authenticated);
    assert!(r.elapsed >= Duration::from_millis(20) && r.elapsed < Duration::from_secs(5));
}

#[test]
fn connection_data_outlives_an_async_close_hook_then_is_freed() {
    let dir = PluginDir::new("async-close");
    dir.add("10-async.so", &async_probe(), "");
    let host = dir.builder().workers(1).start().unwrap();
    let mut s = host.open(Direction::Incoming).unwrap();
    s.run(Event::Connect).unwrap();
    let r = s.run(Event::Close).unwrap();
    let l = lines(&r);
    let seen = l
        .iter()
        .position(|x| x == "close sees connection data 7")
        .expect("data alive in the close hook");
    let dropped = l
        .iter()
        .position(|x| x == "connection data 7 dropped")
        .expect("freed after it");
    assert!(seen < dropped, "{l:#?}");
}

#[test]
fn pending_futures_are_dropped_at_context_cleanup() {
    let dir = PluginDir::new("async-cleanup");
    dir.add("10-async.so", &async_probe(), "");
    let host = dir
        .builder()
        .workers(1)
        .hold_deadline(None)
        .start()
        .unwrap();
    {
        let session = host.open(Direction::Outgoing).unwrap();
        let pending = session.submit(Event::OutData(message())).unwrap();
        assert!(
            pending.wait_timeout(Duration::from_millis(50)).is_none(),
            "never completes"
        );
        drop(session); // closing while the chain is held: the worker keeps it alive
    }
    let report = host.shutdown();
    assert!(
        report
            .log
            .iter()
            .any(|l| l.text == "async-probe pending future dropped"),
        "{:#?}",
        report.log
    );
}

#[test]
fn spawn_blocking_runs_off_the_loop_and_resolves_on_it() {
    let dir = PluginDir::new("async-blocking");
    dir.add("10-async.so", &async_probe(), "");
    let host = dir.builder().workers(1).start().unwrap();
    let r = host
        .run_event(
            Direction::Incoming,
            Event::Message(json!({"blocking": 1000, "mime": "x"})),
        )
        .unwrap();
    let l = lines(&r);
    let line = l
        .iter()
        .find(|x| x.starts_with("blocking sum"))
        .expect("blocking line");
    assert!(
        line.starts_with("blocking sum 500500 on mq-plugin-blocking-"),
        "{line}"
    );
    assert!(line.ends_with("back on the loop: true"), "{line}");
}

#[test]
fn spawn_local_runs_in_the_background_and_is_cancelled_at_cleanup() {
    let dir = PluginDir::new("async-background");
    dir.add("10-async.so", &async_probe(), "");
    let host = dir.builder().workers(1).start().unwrap();
    let r = host
        .run_event(
            Direction::Incoming,
            Event::Message(json!({"background_ms": 20, "mime": "x"})),
        )
        .unwrap();
    assert_eq!(
        r.end,
        ChainEnd::Finished,
        "the hook does not wait for its background task"
    );
    std::thread::sleep(Duration::from_millis(150));
    let done = |log: &[mq_host::LogRecord], text: &str| {
        log.iter()
            .filter(|l| l.text == format!("async-probe {text}"))
            .count()
    };
    assert_eq!(
        done(&host.log(), "background task done"),
        1,
        "{:#?}",
        host.log()
    );
    // A task still running at shutdown is dropped then.
    host.run_event(
        Direction::Incoming,
        Event::Message(json!({"background_ms": 60000, "mime": "x"})),
    )
    .unwrap();
    let report = host.shutdown();
    assert_eq!(done(&report.log, "background task done"), 1);
    assert_eq!(
        done(&report.log, "background task dropped"),
        2,
        "one finished, one cancelled: {:#?}",
        report.log
    );
}
