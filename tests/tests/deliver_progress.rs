//! `mq-host deliver`'s progress line on a long run (stderr not a
//! terminal): a line at each tenth of the batch, and lines while nothing
//! finishes, so a run that waits on its relay still shows it is alive.

use mq_e2e::*;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A progress line's numbers: done, total, delivered, failed, retries.
fn progress(line: &str) -> Option<[usize; 5]> {
    let rest = line.strip_prefix("deliver: ")?;
    let numbers: Vec<usize> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(
        numbers.len(),
        6,
        "done/total, delivered, failed, retries, seconds: {line}"
    );
    assert!(
        rest.contains(" done: ") && rest.contains(" delivered, ") && rest.contains(" so far; "),
        "{line}"
    );
    Some([numbers[0], numbers[1], numbers[2], numbers[3], numbers[4]])
}

fn batch(dir: &std::path::Path, count: usize) -> std::path::PathBuf {
    let input = dir.join("batch.jsonl");
    let mut lines = String::new();
    for n in 0..count {
        let msg = json!({"envelope": "a@shop.example", "recipient": format!("r{n}@example.net"),
                         "mime": format!("Subject: {n}\r\n\r\nbody {n}\r\n")});
        lines.push_str(&format!("{msg}\n"));
    }
    std::fs::write(&input, lines).unwrap();
    input
}

#[test]
fn a_long_run_prints_a_line_at_each_tenth() {
    let dir = PluginDir::new("deliver-progress");
    let sink = Sink::start(&dir.path().join("sink"), &[]);
    let input = batch(dir.path(), 40);
    let out = Command::new(host_binary())
        .args(["deliver", "--quiet", "--relay", &sink.relay()])
        .arg(&input)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<[usize; 5]> = stderr.lines().filter_map(progress).collect();
    // Whatever else the clock added, a line at 4, 8, ... 36, then the last.
    for tenth in (4..40).step_by(4) {
        assert!(
            lines.iter().any(|l| l[0] == tenth),
            "no line at {tenth}/40:\n{stderr}"
        );
    }
    assert_eq!(lines.last(), Some(&[40, 40, 40, 0, 0]), "{stderr}");
    // In order, each consistent: done = delivered + failed, of 40.
    for pair in lines.windows(2) {
        assert!(pair[0][0] <= pair[1][0], "{stderr}");
    }
    assert!(lines.iter().all(|l| l[1] == 40 && l[0] == l[2] + l[3]));
    assert_eq!(sink.received().len(), 40);
}

#[test]
fn a_run_waiting_on_its_relay_keeps_printing() {
    // A relay that takes the connection and says nothing until the test
    // has seen a progress line with nothing done, then hangs up.
    let relay = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = relay.local_addr().unwrap();
    let (seen_tx, seen_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let (client, _) = relay.accept().unwrap();
        let _ = seen_rx.recv_timeout(Duration::from_secs(60));
        drop(client);
    });
    let dir = PluginDir::new("deliver-progress-wait");
    let input = batch(dir.path(), 1);
    let mut child = Command::new(host_binary())
        .args(["deliver", "--quiet", "--progress-interval", "0.2"])
        .args(["--max-attempts", "1", "--relay", &addr.to_string()])
        .arg(&input)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (line_tx, line_rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Lines while the message is still on its way (bounded wait).
    while log
        .iter()
        .filter(|l: &&String| progress(l).is_some_and(|p| p[0] == 0))
        .count()
        < 2
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match line_rx.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(_) => panic!("no progress line while waiting:\n{}", log.join("\n")),
        }
    }
    seen_tx.send(()).unwrap();
    let status = wait_bounded(&mut child, "mq-host deliver");
    log.extend(line_rx.iter());
    holder.join().unwrap();
    assert_eq!(status.code(), Some(1), "{}", log.join("\n"));
    let last = log.iter().rev().find_map(|l| progress(l)).unwrap();
    assert_eq!(&last[..4], &[1, 1, 0, 1], "{}", log.join("\n"));
}

/// A new pseudo-terminal: (master, slave).
fn openpty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors into the two ints; the
    // name, termios and window size pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both are open descriptors that nothing else owns.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    }
}

/// What a terminal shows of `bytes`: each line as its text after the last
/// carriage return, without the erase-line sequence.
fn rendered(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split('\n')
        .map(|line| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let shown = line.rsplit('\r').next().unwrap_or("");
            shown.trim_start_matches("\x1b[K").to_owned()
        })
        .filter(|line| !line.is_empty())
        .collect()
}

#[test]
fn on_a_terminal_log_lines_scroll_above_the_progress_line() {
    use std::io::Read;
    let dir = PluginDir::new("deliver-progress-tty");
    let sink = Sink::start(&dir.path().join("sink"), &[]);
    let input = batch(dir.path(), 10);
    let (master, slave) = openpty();
    // Not --quiet: the host's log and the plugins' (out-trace logs each
    // message) are echoed on the terminal too.
    let mut child = Command::new(host_binary())
        .args(["deliver", "--relay", &sink.relay()])
        .arg(&input)
        .stdout(Stdio::null())
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    // The terminal's output until the last writer closes it (EIO).
    let reader = std::thread::spawn(move || {
        let mut master = std::fs::File::from(master);
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = master.read(&mut chunk) {
            out.extend_from_slice(&chunk[..n]);
        }
        out
    });
    let status = wait_bounded(&mut child, "mq-host deliver on a terminal");
    let raw = reader.join().unwrap();
    let screen = rendered(&raw);
    let text = screen.join("\n");
    assert!(status.success(), "{text}");
    // Every log line stands on its own line, whole; no progress text is
    // glued to it.
    let traced: Vec<_> = screen
        .iter()
        .filter(|l| l.contains("[mq-example-out-trace] sent "))
        .collect();
    assert_eq!(traced.len(), 10, "{text}");
    for line in &screen {
        if line.contains("deliver: ") {
            assert!(line.starts_with("deliver: "), "{line:?}\n{text}");
            assert!(!line.contains("[INFO]"), "{line:?}\n{text}");
        }
    }
    // The line was redrawn in place as messages finished, and its last
    // state stays on screen.
    let drawn = String::from_utf8_lossy(&raw)
        .matches("\r\x1b[Kdeliver: ")
        .count();
    assert!(drawn >= 10, "drawn {drawn} times:\n{text}");
    let last = screen
        .iter()
        .rev()
        .find(|l| l.starts_with("deliver: "))
        .unwrap();
    assert!(
        last.starts_with("deliver: 10/10 done: 10 delivered, 0 failed; 0 retries so far; "),
        "{text}"
    );
}

#[test]
fn a_progress_interval_must_be_a_positive_number_of_seconds() {
    for bad in ["0", "-1", "NaN"] {
        let out = Command::new(host_binary())
            .arg("deliver")
            .arg(format!("--progress-interval={bad}"))
            .args(["--relay", "127.0.0.1:9"])
            .arg("/dev/null")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "mq-host: --progress-interval {bad}: not a positive number of seconds"
            )),
            "{stderr}"
        );
    }
}
