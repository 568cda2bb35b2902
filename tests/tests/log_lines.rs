//! The host's log under hostile text: whatever a client, a message or a
//! plugin writes, a record is one line with its control characters escaped,
//! and the in-memory log stays within its bounds.

use mq_e2e::*;
use mq_host::{Direction, Event, DEFAULT_LOG_MAX_BYTES, DEFAULT_LOG_RECORD_MAX};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The characters no log line may carry raw: controls (a line feed only as
/// the line's end), separators, bidi controls.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| {
            c != '\n'
                && (c.is_control()
                    || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}'))
        })
        .collect()
}

/// A plugin directory with the C probe logging the addresses and messages
/// it sees (`probe 10-probe email <address>`, `... json <message>`).
fn probe_dir(test: &str) -> PluginDir {
    let dir = PluginDir::new(test);
    dir.add(
        "10-probe.so",
        &c_probe(),
        "smtp_in_rcptto exercise\nsmtp_in_message exercise\n",
    );
    dir
}

/// SIGTERM: the host stops cleanly; the rest of its log.
fn terminate(mut child: std::process::Child, mut stderr: impl Read) -> String {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(mq_e2e::wait_bounded(&mut child, "serve after SIGTERM").success());
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    log
}

#[test]
fn a_client_address_with_esc_is_one_escaped_log_line() {
    let dir = probe_dir("log-esc");
    let data = dir.path().join("data");
    let (child, stderr, addr) = spawn_serve(&[
        "--workers".as_ref(),
        "1".as_ref(),
        "--plugins".as_ref(),
        dir.path().as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut reply = || {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line
    };
    assert!(reply().starts_with("220 "));
    // One command at a time: the ESC is inside a quoted local part, which
    // the SMTP parser takes.
    for command in [
        "HELO client\r\n",
        "MAIL FROM:<a@b.example>\r\n",
        "RCPT TO:<\"a\x1b[31mRED\x1b[0m\"@example.com>\r\n",
        "QUIT\r\n",
    ] {
        writer.write_all(command.as_bytes()).unwrap();
        assert!(!reply().is_empty(), "after {command:?}");
    }
    let log = terminate(child, stderr);
    assert_eq!(raw_controls(&log), [], "{log}");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("RED")).collect();
    assert_eq!(
        lines,
        [r"[INFO] [worker 0] [plugin] probe 10-probe email a\x1b[31mRED\x1b[0m@example.com"],
        "{log}"
    );
}

/// `mq-host run` on `input` with the probe; its stderr.
fn run_mode(dir: &PluginDir, format: &str, input: &str) -> String {
    let mut child = Command::new(host_binary())
        .args(["run", "--workers", "1", "--log-format", format, "--plugins"])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn a_json_recipient_with_a_line_feed_is_one_escaped_log_line() {
    let dir = probe_dir("log-json-lf");
    let recipient = "victim@evil.net\n[INFO] [worker 0] [plugin] probe 10-probe email FORGED@example.com\u{2028}\u{202e}moc\u{85}";
    let input = format!(
        "{}\n",
        serde_json::json!({"envelope": "a@b.example", "recipient": recipient, "mime": "x"})
    );
    let escaped = r"victim@evil.net\n[INFO] [worker 0] [plugin] probe 10-probe email FORGED@example.com\u{2028}\u{202e}moc\u{85}";

    let log = run_mode(&dir, "text", &input);
    assert_eq!(raw_controls(&log), [], "{log}");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("FORGED") && !l.contains(" json "))
        .collect();
    assert_eq!(
        lines,
        [
            format!("[INFO] [worker 0] [plugin] probe 10-probe email {escaped}"),
            format!("[INFO] [worker 0] [plugin] probe 10-probe recipient {escaped}"),
        ],
        "{log}"
    );

    // The JSON format: one object per line, whose text is escaped the same
    // way (JSON itself would carry U+2028 and U+202E raw).
    let log = run_mode(&dir, "json", &input);
    assert_eq!(raw_controls(&log), [], "{log}");
    let texts: Vec<String> = log
        .lines()
        .filter(|l| !l.starts_with("mq-host: "))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .map(|r| r["text"].as_str().unwrap().to_owned())
        .filter(|t| t.contains("FORGED") && !t.contains(" json "))
        .collect();
    assert_eq!(
        texts,
        [
            format!("probe 10-probe email {escaped}"),
            format!("probe 10-probe recipient {escaped}"),
        ]
    );
}

#[test]
fn the_delivery_line_of_a_crlf_recipient_is_one_escaped_line() {
    let dir = PluginDir::new("log-delivery");
    // A relay that refuses connections: the attempt fails at once.
    let relay = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let input = format!(
        "{}\n",
        serde_json::json!({"envelope": "a@b.example", "recipient": "rcpt@example.org\r\nFORGED", "mime": "x"})
    );
    let mut child = Command::new(host_binary())
        .args(["deliver", "--max-attempts", "1", "--plugin"])
        .arg(c_probe())
        .arg("--relay")
        .arg(relay.to_string())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8(out.stderr).unwrap();
    assert_eq!(raw_controls(&log), [], "{log}");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("FORGED")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains(r" to rcpt@example.org\r\nFORGED: failure"),
        "{log}"
    );
}

/// A message whose MIME is `size` bytes: the probe logs its whole JSON.
fn big_message(size: usize) -> serde_json::Value {
    let mut message = message();
    message["mime"] = format!("Subject: big\r\n\r\n{}", "x".repeat(size)).into();
    message
}

/// The marker that ends a cut record.
fn cut_marker(text: &str) -> Option<u64> {
    let (_, tail) = text.rsplit_once(" [... ")?;
    tail.strip_suffix(" bytes cut]")?.parse().ok()
}

#[test]
fn huge_records_are_cut_and_the_log_keeps_its_default_bound() {
    const MIME: usize = 8 << 20;
    let dir = probe_dir("log-huge");
    let host = dir.start();
    for _ in 0..3 {
        let r = host
            .run_event(Direction::Incoming, Event::Message(big_message(MIME)))
            .unwrap();
        let json = r
            .plugin_log()
            .into_iter()
            .find(|l| l.starts_with("probe 10-probe json {"))
            .unwrap();
        let cut = cut_marker(&json).unwrap_or_else(|| panic!("not cut: {} bytes", json.len()));
        assert!(cut > MIME as u64 - DEFAULT_LOG_RECORD_MAX as u64, "{cut}");
    }
    let log = host.log();
    for record in &log {
        assert!(
            record.text.len() <= DEFAULT_LOG_RECORD_MAX + " [... 99999999999 bytes cut]".len(),
            "a record of {} bytes",
            record.text.len()
        );
    }
    let kept: usize = log.iter().map(|r| r.text.len()).sum();
    assert!(kept <= DEFAULT_LOG_MAX_BYTES, "{kept} bytes of text kept");
    assert!(host.counters().log_records_cut >= 3);
}

#[test]
fn the_log_keeps_its_configured_byte_bound() {
    const BOUND: usize = 256 << 10;
    let dir = probe_dir("log-bound");
    let host = dir.builder().log_max_bytes(BOUND).start().unwrap();
    for _ in 0..40 {
        host.run_event(Direction::Incoming, Event::Message(big_message(64 << 10)))
            .unwrap();
    }
    let log = host.log();
    let kept: usize = log.iter().map(|r| r.text.len()).sum();
    assert!(kept <= BOUND, "{kept} bytes of text kept");
    let counters = host.counters();
    assert!(counters.log_records_cut >= 40, "{counters:?}");
    assert!(counters.log_records_evicted > 0, "{counters:?}");
    // The newest records are the ones kept, numbered on.
    let last = log.last().unwrap();
    assert_eq!(
        last.seq + 1,
        log.len() as u64 + counters.log_records_evicted
    );
}
