//! The stall watchdog: a call into a plugin that blocks its worker longer
//! than the threshold is reported once, naming the plugin, the hook (or
//! the kind of callback) and the worker, counted (`worker_stalls`), and
//! its duration logged when it returns; the other workers go on serving.
//!
//! The C plugin blocks until the test creates its release file, so nothing
//! here depends on how fast the machine is: the test releases it only
//! after it has seen the warning.

use mq_e2e::*;
use mq_host::{ChainEnd, Direction, Event, Host};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const THRESHOLD: Duration = Duration::from_millis(500);

/// Waits (at most 20 s) until `host`'s log has a line containing `needle`.
fn wait_for_log(host: &Host, needle: &str) {
    let start = Instant::now();
    while !host.log().iter().any(|l| l.text.contains(needle)) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no {needle:?} in the log:\n{:#?}",
            host.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn lines_with(host: &Host, needle: &str) -> Vec<String> {
    host.log()
        .into_iter()
        .filter(|l| l.text.contains(needle))
        .map(|l| l.text)
        .collect()
}

/// Creates the release file when dropped, so that a failing test does not
/// leave a worker blocked (and the host's stop waiting) for a minute.
/// Declare it after the host: it must drop first.
struct ReleaseOnDrop(PathBuf);

impl ReleaseOnDrop {
    fn release(&self) {
        std::fs::write(&self.0, b"").unwrap();
    }
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, b"");
    }
}

fn blocked_message() -> serde_json::Value {
    let mut message = message();
    message["recipient"] = "block@example.org".into();
    message
}

/// A host with the C plugin in `scenario` on two workers; the path of
/// the plugin's release file.
fn blocking_host(dir: &PluginDir, scenario: &str) -> (Host, PathBuf) {
    let so = dir.add(
        "10-block.so",
        &plugin_so("mq-test-c-misuse"),
        &format!("{scenario}\n"),
    );
    let host = dir
        .builder()
        .workers(2)
        .stall_report(Some(THRESHOLD))
        .start()
        .expect("host start");
    (host, PathBuf::from(format!("{}.release", so.display())))
}

/// Blocks worker 0 in `site` of the `scenario`, checks the report and
/// that worker 1 serves meanwhile, then releases it.
fn blocked_call_is_reported(scenario: &str, site: &str) {
    let dir = PluginDir::new(&format!("watchdog-{scenario}"));
    let (host, release) = blocking_host(&dir, scenario);
    let release = ReleaseOnDrop(release);
    let blocked = host.open_on(0, Direction::Incoming).unwrap();
    let pending = blocked.submit(Event::Message(blocked_message())).unwrap();
    let warning = format!("worker 0: plugin 10-block has been inside {site} for");
    wait_for_log(&host, &warning);

    // Worker 0 is still blocked (it waits for the release file); worker 1
    // serves whole sessions meanwhile.
    for _ in 0..3 {
        let mut other = host.open_on(1, Direction::Incoming).unwrap();
        assert_eq!(other.worker(), 1);
        let r = other.run(Event::Message(message())).unwrap();
        assert_eq!(r.end, ChainEnd::Finished, "{scenario}");
        other.close().unwrap();
    }
    assert!(
        pending.wait_timeout(Duration::ZERO).is_none(),
        "{scenario}: worker 0 is blocked until released"
    );

    release.release();
    let r = pending.wait().unwrap();
    assert_eq!(r.end, ChainEnd::Finished, "{scenario}");
    blocked.close().unwrap();
    let returned = format!("worker 0: plugin 10-block returned from {site} after");
    wait_for_log(&host, &returned);

    let warnings = lines_with(&host, "has been inside");
    assert_eq!(
        warnings.len(),
        1,
        "{scenario}: once per stall: {warnings:#?}"
    );
    assert!(
        warnings[0].contains("stall report threshold 0.5 s"),
        "{}",
        warnings[0]
    );
    let report = host.shutdown();
    assert_eq!(report.counters.worker_stalls, 1, "{scenario}");
    let record = report
        .log
        .iter()
        .find(|l| l.text.contains(&warning))
        .unwrap();
    assert_eq!(record.worker, Some(0));
    assert_eq!(record.priority, mq_host::Priority::Warning);
}

#[test]
fn a_blocking_hook_is_reported_and_the_other_worker_goes_on() {
    blocked_call_is_reported("block-hook", "mq_smtp_in_message");
}

#[test]
fn a_blocking_timer_callback_is_reported() {
    blocked_call_is_reported("block-timer", "a timer callback");
}

#[test]
fn a_blocking_fd_callback_is_reported() {
    blocked_call_is_reported("block-fd", "an fd callback");
}

/// Without a watchdog nothing is reported, and a host stops normally.
#[test]
fn the_watchdog_can_be_turned_off() {
    let dir = PluginDir::new("watchdog-off");
    let so = dir.add(
        "10-block.so",
        &plugin_so("mq-test-c-misuse"),
        "block-hook\n",
    );
    let host = dir
        .builder()
        .stall_report(None)
        .start()
        .expect("host start");
    let release = ReleaseOnDrop(PathBuf::from(format!("{}.release", so.display())));
    let session = host.open(Direction::Incoming).unwrap();
    let pending = session.submit(Event::Message(blocked_message())).unwrap();
    wait_for_log(&host, "c-misuse blocking in the hook");
    // Blocked for at least twice the default threshold before release.
    std::thread::sleep(Duration::from_secs(2));
    release.release();
    assert_eq!(pending.wait().unwrap().end, ChainEnd::Finished);
    session.close().unwrap();
    let report = host.shutdown();
    assert_eq!(report.counters.worker_stalls, 0);
    assert!(!report
        .log
        .iter()
        .any(|l| l.text.contains("has been inside")));
}
