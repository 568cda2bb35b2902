//! The soundness suite: plugins that try to break the host — a Rust one in
//! safe code only (`tests/plugins/hostile`, `#![forbid(unsafe_code)]`) and
//! a C one (`tests/plugins/c-hostile`) — run in the `mq-host` binary under
//! valgrind memcheck with a leak check, in the table mode and in the
//! global-symbols-only mode (as in MailerQ). Every run must end normally,
//! with zero valgrind errors and no definite leak; each scenario also
//! checks what the host and the plugin reported. `docs/safety.md` says
//! which class of problem each scenario attacks.

use mq_e2e::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How Rust plugins reach the host's functions in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Table,
    GlobalSymbols,
}

const MODES: [Mode; 2] = [Mode::Table, Mode::GlobalSymbols];

/// One `mq-host run` under valgrind.
struct Scenario<'a> {
    name: &'a str,
    /// `(file name, plugin, plan)` for the plugin directory.
    plugins: Vec<(&'a str, PathBuf, String)>,
    direction: &'a str,
    hold_deadline: Duration,
    lines: Vec<Value>,
    /// How long stdin stays open after the lines (late timers fire meanwhile).
    keep_alive: Duration,
}

/// What a run left.
struct Outcome {
    success: bool,
    code: Option<i32>,
    results: Vec<Value>,
    stderr: String,
    valgrind: String,
}

impl Outcome {
    fn log_has(&self, text: &str) -> bool {
        self.stderr.contains(text)
    }

    #[track_caller]
    fn assert_log(&self, text: &str) {
        assert!(
            self.log_has(text),
            "no {text:?} in the log:\n{}",
            self.stderr
        );
    }

    #[track_caller]
    fn assert_no_log(&self, text: &str) {
        assert!(!self.log_has(text), "{text:?} in the log:\n{}", self.stderr);
    }

    /// The counter `name` that `--counters` printed.
    fn counter(&self, name: &str) -> u64 {
        self.stderr
            .lines()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some(name)).then(|| words.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no counter {name} in:\n{}", self.stderr))
    }
}

fn valgrind() -> &'static str {
    let ok = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the soundness suite needs valgrind: apt-get install valgrind"
    );
    "valgrind"
}

fn hostile() -> PathBuf {
    plugin_so("mq-test-hostile")
}

fn c_hostile() -> PathBuf {
    built().join("libmq_test_c_hostile.so")
}

fn message(recipient: &str) -> Value {
    json!({
        "envelope": "sender@example.com",
        "recipient": recipient,
        "mime": "From: sender@example.com\r\nSubject: test\r\n\r\nbody\r\n",
    })
}

/// Runs `scenario` in `mode` under valgrind; fails on a hang (60 s).
fn run(scenario: &Scenario<'_>, mode: Mode) -> Outcome {
    let dir = PluginDir::new(&format!("sound-{}", scenario.name));
    for (name, so, plan) in &scenario.plugins {
        dir.add(name, so, plan);
    }
    let vg_log = dir.path().join("valgrind.log");
    let mut cmd = Command::new(valgrind());
    cmd.args([
        "--error-exitcode=97",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite",
        "--show-leak-kinds=definite",
        "--num-callers=30",
    ])
    .arg(format!("--log-file={}", vg_log.display()))
    .arg(host_binary())
    .args(["run", "--workers", "1", "--counters", "--direction"])
    .arg(scenario.direction)
    .arg("--hold-deadline")
    .arg(scenario.hold_deadline.as_secs_f64().to_string())
    .arg("--plugins")
    .arg(dir.path());
    if mode == Mode::GlobalSymbols {
        cmd.arg("--global-symbols-only");
    }
    let mut child = cmd
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mq-host under valgrind");
    // Drained while the host runs: a full pipe would block it.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    // Result lines as they come: stdin stays open `keep_alive` after the
    // last one (under valgrind the host starts slowly).
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    for line in &scenario.lines {
        // A host that died early closes the pipe; the exit status tells.
        let _ = writeln!(stdin, "{line}");
    }
    let _ = stdin.flush();
    let mut lines = Vec::new();
    while lines.len() < scenario.lines.len() {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    std::thread::sleep(scenario.keep_alive);
    drop(stdin);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} ({mode:?}) hung; stderr:\n{}",
                scenario.name,
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let results = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("result lines are JSON"))
        .collect();
    let outcome = Outcome {
        success: status.success(),
        code: status.code(),
        results,
        stderr: stderr.join().unwrap(),
        valgrind: std::fs::read_to_string(&vg_log).unwrap_or_default(),
    };
    assert_ne!(
        outcome.code,
        Some(97),
        "{} ({mode:?}): valgrind found errors:\n{}\nhost log:\n{}",
        scenario.name,
        outcome.valgrind,
        outcome.stderr
    );
    assert!(
        outcome.code.is_some(),
        "{} ({mode:?}) was killed by a signal ({status}):\n{}\n{}",
        scenario.name,
        outcome.stderr,
        outcome.valgrind
    );
    outcome
}

/// A scenario of the hostile plugin alone, one message.
fn alone(name: &str, unit_ms: u64) -> Scenario<'_> {
    Scenario {
        name,
        plugins: vec![("10-hostile.so", hostile(), format!("{name} {unit_ms}"))],
        direction: "in",
        hold_deadline: Duration::from_millis(unit_ms),
        lines: vec![message("rcpt@example.org")],
        keep_alive: Duration::from_millis(4 * unit_ms),
    }
}

#[track_caller]
fn assert_accepted(o: &Outcome) {
    assert!(o.success, "the run failed:\n{}", o.stderr);
    assert_eq!(o.results.len(), 1, "{:?}\n{}", o.results, o.stderr);
    assert_eq!(o.results[0]["result"]["queue"], "inbox", "{}", o.results[0]);
}

// ---- class 2: the hold deadline ------------------------------------------

/// Per-connection data borrowed across an await that outlasts the hold
/// deadline: the hook is cancelled at the deadline (table) or dropped
/// before `smtp_in_close` frees the data (global symbols); never written
/// after it was freed.
#[test]
fn connection_data_is_never_used_after_it_was_freed() {
    for mode in MODES {
        let o = run(&alone("conn-data-across-await", 500), mode);
        assert_accepted(&o);
        o.assert_log("held control of mq_smtp_in_rcptto until the 500ms hold deadline passed");
        o.assert_no_log("connection data written after the deadline");
        match mode {
            Mode::Table => o.assert_log("its hook was cancelled"),
            Mode::GlobalSymbols => o.assert_log("was still pending when its connection closed"),
        }
    }
}

/// An outgoing message written after the deadline: cancelled (table), or
/// kept alive for the late plugin (global symbols), never freed under it.
#[test]
fn an_outgoing_message_outlives_a_late_plugin() {
    for mode in MODES {
        let mut scenario = alone("out-set-mime-late", 500);
        scenario.direction = "out";
        let o = run(&scenario, mode);
        assert!(o.success, "{}", o.stderr);
        assert_eq!(o.results.len(), 1, "{}", o.stderr);
        o.assert_no_log("refused:");
        match mode {
            Mode::Table => {
                o.assert_log("its hook was cancelled");
                o.assert_no_log("set the MIME after the deadline");
            }
            Mode::GlobalSymbols => {
                o.assert_log("what the hook was given stays alive until it resumes");
                o.assert_log("set the MIME after the deadline");
                o.assert_log("a take-over whose hold deadline had passed");
                assert_eq!(o.counter("late_resumes"), 1);
            }
        }
    }
}

/// Reads through `&Message` (the addresses, a JSON property that makes the
/// JSON a live libfastjson object, the addresses again) never free what an
/// earlier read returned, also when the JSON's address and the address's
/// C string differ (a NUL byte). Before, the second read re-synced the
/// address from the JSON and freed the buffer the plugin still borrowed.
#[test]
fn reads_of_a_message_keep_earlier_borrows_valid() {
    for mode in MODES {
        let o = run(&alone("json-borrows", 200), mode);
        assert_accepted(&o);
        o.assert_log(
            "json-borrows: envelope Some(\"sender\"), recipient Some(\"rcpt\"), property Some(25), \
             again (Some(\"sender\"), Some(\"rcpt\"))",
        );
    }
}

/// A plugin keeps `msg.mime()` across the deadline while the next plugin
/// replaces the MIME: the slice stays valid (the old buffer is kept while
/// the late plugin may read it), or the future is gone (cancelled at the
/// deadline; dropped before the connection closes).
#[test]
fn a_mime_slice_survives_the_next_plugins_set_mime() {
    for direction in ["in", "out"] {
        for mode in MODES {
            let unit = 500;
            let scenario = Scenario {
                name: "mime-slice",
                plugins: vec![
                    (
                        "10-first.so",
                        hostile(),
                        format!("mime-slice-across-await {unit}"),
                    ),
                    ("20-second.so", hostile(), format!("mime-setter {unit}")),
                ],
                direction,
                hold_deadline: Duration::from_millis(unit),
                lines: vec![message("rcpt@example.org")],
                keep_alive: Duration::from_millis(4 * unit),
            };
            let o = run(&scenario, mode);
            assert!(o.success, "{}", o.stderr);
            let result = &o.results[0];
            let mime = match direction {
                "in" => result["mime"].as_str(),
                _ => result["result"]["smtp"]["mime"].as_str(),
            };
            assert!(
                mime.unwrap().contains("replaced by the second plugin"),
                "{result}"
            );
            match (mode, direction) {
                (Mode::Table, _) => {
                    o.assert_log("its hook was cancelled");
                    o.assert_no_log("MIME bytes after the deadline");
                }
                (Mode::GlobalSymbols, "in") => {
                    o.assert_log("was still pending when its connection closed");
                    o.assert_no_log("MIME bytes after the deadline");
                }
                (Mode::GlobalSymbols, _) => {
                    o.assert_log("read 49 MIME bytes after the deadline");
                    o.assert_no_log("refused:");
                    assert_eq!(o.counter("late_resumes"), 1);
                }
            }
        }
    }
}

/// The late `Continue` of an expired `smtp_in_mailfrom` hold is never taken
/// as the resume of the same plugin's `smtp_in_rcptto` hold, whose 550
/// refuses the message.
#[test]
fn a_late_resume_is_credited_to_its_own_take_over() {
    for mode in MODES {
        let mut scenario = alone("late-resume", 1000);
        scenario.keep_alive = Duration::from_millis(3000);
        let o = run(&scenario, mode);
        assert!(o.success, "{}", o.stderr);
        assert_eq!(o.results.len(), 1, "{}", o.stderr);
        let result = &o.results[0]["result"];
        assert_eq!(result["queue"], "refused", "{}\n{}", o.results[0], o.stderr);
        assert_eq!(result["stage"], "smtp_in_rcptto");
        assert_eq!(result["reply"], "550 5.7.1 refused by the rcptto hook");
        o.assert_log("refusing Some(\"rcpt@example.org\")");
        if mode == Mode::GlobalSymbols {
            o.assert_log("mailfrom resumes late");
            assert_eq!(o.counter("late_resumes"), 1);
        }
    }
}

// ---- class 3: panics -------------------------------------------------------

/// `panic_any(Bomb)`, whose payload panics again when dropped, in every
/// kind of hook and callback: logged, the fallback taken, no abort.
#[test]
fn panics_whose_payload_panics_on_drop_stay_inside_the_plugin() {
    for scenario in [
        "bomb-sync",
        "bomb-first-poll",
        "bomb-after-await",
        "bomb-timer",
    ] {
        for mode in MODES {
            let mut s = alone(scenario, 200);
            // Forever, as in MailerQ: a hook that is never resumed hangs.
            s.hold_deadline = Duration::ZERO;
            let o = run(&s, mode);
            assert_accepted(&o);
            let what = if scenario == "bomb-timer" {
                "a timer callback panicked: a panic with a non-string payload"
            } else {
                "panicked: a panic with a non-string payload; taking fallback continue"
            };
            o.assert_log(what);
            // mq-host counts the panics a plugin caught (the table mode's
            // extension; MailerQ's global symbols have no such function).
            let counted = o.counter("plugin_panics");
            match mode {
                Mode::Table => assert!(counted >= 1, "{}", o.stderr),
                Mode::GlobalSymbols => assert_eq!(counted, 0),
            }
        }
    }
}

/// A failing `mq_initialize` (a bomb) refuses mq-host's start with a
/// message; where the plugin cannot tell the host (the global-symbols mode,
/// as in MailerQ), it is logged and the host runs.
#[test]
fn a_bomb_in_initialize_refuses_the_start() {
    for mode in MODES {
        let o = run(&alone("bomb-initialize", 200), mode);
        o.assert_log("hook initialize (fn initialize) panicked: a panic with a non-string payload");
        match mode {
            Mode::Table => {
                assert_eq!(o.code, Some(1), "{}", o.stderr);
                o.assert_log("mq_initialize failed, so the host does not start");
            }
            Mode::GlobalSymbols => assert_accepted(&o),
        }
    }
}

/// An `Err(e)` whose `Display` panics, from an async and a sync hook.
#[test]
fn an_error_whose_display_panics_takes_the_fallback() {
    for mode in MODES {
        let mut s = alone("display-panics", 200);
        s.hold_deadline = Duration::ZERO;
        let o = run(&s, mode);
        assert_accepted(&o);
        o.assert_log(
            "hook smtp_in_rcptto (fn rcptto) panicked: Display of the hook's error panics",
        );
        o.assert_log("hook smtp_in_data (fn data) panicked: Display of the hook's error panics");
    }
}

/// `Duration::MAX` everywhere a duration goes: no overflow in the host.
#[test]
fn huge_durations_saturate() {
    for mode in MODES {
        let o = run(&alone("duration-max", 200), mode);
        assert_accepted(&o);
        o.assert_log("hostile reset to Duration::MAX: true");
        o.assert_log("hostile stopped: true");
        o.assert_log("sleep(Duration::MAX) under a 20 ms timeout: Err");
        o.assert_log("timeout(Duration::MAX, ready): Ok(5)");
        o.assert_log("interval(Duration::MAX) second tick: false");
    }
}

/// Two per-connection and two per-context values whose `Drop` panics: each
/// is dropped in a boundary of its own ("panic in a destructor during
/// cleanup" would abort).
#[test]
fn data_whose_drop_panics_is_dropped_value_by_value() {
    for mode in MODES {
        let o = run(&alone("drop-panics", 200), mode);
        assert_accepted(&o);
        for value in [
            "connection value one",
            "connection value two",
            "context value one",
            "context value two",
        ] {
            o.assert_log(&format!("hostile dropping {value}"));
        }
        o.assert_log("dropping plugin data panicked: Drop of connection value one panics");
        o.assert_log("dropping plugin data panicked: Drop of context value two panics");
    }
}

// ---- class 5 and 9: the host's own resources ---------------------------------

/// Watching (and dropping watchers of) every fd number, the worker's own
/// wake-up descriptor included, leaves the host serving.
#[test]
fn watching_the_hosts_fds_does_not_stop_the_worker() {
    for mode in MODES {
        let mut s = alone("watch-host-fds", 200);
        s.lines = vec![message("a@example.org"), message("b@example.org")];
        let o = run(&s, mode);
        assert!(o.success, "{}", o.stderr);
        assert_eq!(o.results.len(), 2, "{}", o.stderr);
        o.assert_log("watched and dropped");
        o.assert_log("the event loop's own");
    }
}

/// A timer still running at context cleanup is stopped and its callback
/// dropped (valgrind's leak check would report it otherwise).
#[test]
fn timers_pending_at_cleanup_are_freed() {
    for mode in MODES {
        let o = run(&alone("timer-at-cleanup", 200), mode);
        assert_accepted(&o);
        o.assert_log("hostile forgotten timer started: true");
        o.assert_log("hostile the forgotten timer's callback dropped");
    }
}

// ---- class 9: the C API trusts no caller -------------------------------------

fn c_alone(name: &str, keep_alive_ms: u64) -> Scenario<'_> {
    Scenario {
        name,
        plugins: vec![("10-c-hostile.so", c_hostile(), name.to_owned())],
        direction: "in",
        hold_deadline: Duration::ZERO,
        lines: vec![message("rcpt@example.org")],
        keep_alive: Duration::from_millis(keep_alive_ms),
    }
}

/// Message, connection and context functions called from a plugin's own
/// thread while the worker changes the same message: every one refused
/// (and counted) before anything is touched.
#[test]
fn host_functions_called_off_the_worker_thread_are_refused() {
    let o = run(&c_alone("thread-calls", 300), Mode::Table);
    assert_accepted(&o);
    o.assert_log("c-hostile the thread is done");
    o.assert_log(
        "plugin 10-c-hostile: MQ_setMime refused: called with an MQ_Message off the worker thread",
    );
    assert_eq!(o.counter("wrong_thread_calls"), 50 * 14);
    let result = &o.results[0];
    assert!(
        result["mime"]
            .as_str()
            .unwrap()
            .starts_with("Subject: tick"),
        "{result}"
    );
    assert_eq!(result["recipient"], "rcpt@example.org");
}

/// A timer started in `smtp_in_close` uses the connection, its message and
/// its address after the connection closed: refused as stale handles.
#[test]
fn handles_of_a_closed_connection_are_refused() {
    let o = run(&c_alone("use-after-close", 500), Mode::Table);
    assert_accepted(&o);
    o.assert_log("c-hostile used the closed connection's handles");
    o.assert_log("MQ_send refused: the MQ_Connection is no longer valid");
    o.assert_log("MQ_setMime refused: the MQ_Message is no longer valid");
    assert_eq!(o.counter("invalid_handles"), 7);
}

/// NULL, made-up values and handles of the wrong kind.
#[test]
fn garbage_handles_are_refused() {
    let o = run(&c_alone("garbage-handles", 100), Mode::Table);
    assert_accepted(&o);
    o.assert_log("c-hostile passed garbage handles");
    o.assert_log("MQ_send refused: the MQ_Connection is NULL");
    o.assert_log("MQ_email refused: the argument is not an MQ_Address");
    assert_eq!(o.counter("invalid_handles"), 6);
}
