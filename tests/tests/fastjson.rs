//! `MQ_json` is a live libfastjson object, as in MailerQ: a C plugin
//! written from MailerQ's documentation only (`tests/plugins/c-fastjson`:
//! its own declarations, libfastjson for the JSON) and a Rust plugin using
//! `Message::property` / `set_property` (`tests/plugins/json-props`) read
//! and change messages in both directions, and the host keeps what they
//! changed: in the stored message (incoming, also through `mq-host serve`
//! and a real client) and in what the delivery sends (outgoing, to a real
//! relay). One run under valgrind checks the object's ownership.

use mq_e2e::*;
use mq_host::delivery::{self, DeliveryConfig, Outbox, Status, Until};
use mq_host::{Direction, Event, EventResult, Host, HostMode};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn c_fastjson() -> std::path::PathBuf {
    built().join("libmq_test_c_fastjson.so")
}

fn json_props() -> std::path::PathBuf {
    plugin_so("mq-test-json-props")
}

/// A message with something to read, to change and to remove.
fn incoming() -> Value {
    json!({
        "envelope": "sender@example.com",
        "recipient": "rcpt@example.org",
        "mime": "From: sender@example.com\r\nSubject: test\r\n\r\nbody\r\n",
        "custom": {"kept": true},
        "connection": {"helo": "client.example"},
        "x-change": "original",
        "x-remove": "gone soon",
    })
}

/// The plugin's log lines starting with `prefix `, without it.
fn lines(r: &EventResult, prefix: &str) -> Vec<String> {
    r.plugin_log()
        .into_iter()
        .filter_map(|l| l.strip_prefix(&format!("{prefix} ")).map(str::to_owned))
        .collect()
}

/// Asserts every check in `expected` passed and none failed.
#[track_caller]
fn assert_checks(lines: &[String], expected: &[&str]) {
    let failed: Vec<_> = lines.iter().filter(|l| l.starts_with("fail ")).collect();
    assert!(failed.is_empty(), "failed checks: {failed:#?}");
    for name in expected {
        assert!(
            lines.contains(&format!("ok {name}")),
            "no `ok {name}` in {lines:#?}"
        );
    }
}

fn host_with(
    test: &str,
    mode: HostMode,
    plugins: &[(&str, std::path::PathBuf)],
) -> (PluginDir, Host) {
    let dir = PluginDir::new(test);
    for (name, so) in plugins {
        dir.add(name, so, "");
    }
    let host = dir.builder().mode(mode).start().unwrap();
    (dir, host)
}

#[test]
fn a_c_plugin_from_the_docs_changes_the_incoming_json_through_libfastjson() {
    let (_dir, host) = host_with("fj-c-in", HostMode::Table, &[("10-c.so", c_fastjson())]);
    let r = host
        .run_event(Direction::Incoming, Event::Message(incoming()))
        .unwrap();
    assert_checks(
        &lines(&r, "fastjson"),
        &[
            "in-same-object",
            "in-recipient-alias",
            "in-recipient-synced",
            "in-envelope-from-json",
            "in-mime-alias",
            "in-mime-from-json",
        ],
    );
    let m = r.message.expect("the message");
    assert_eq!(
        m["fastjson-in"],
        json!({"recipient": "rcpt@example.org", "hook": "smtp_in_message"}),
        "a property added with fjson_object_object_add: {m}"
    );
    assert_eq!(m["connection"]["checked-by"], "c-fastjson", "nested change");
    assert_eq!(m["connection"]["helo"], "client.example");
    assert_eq!(m["x-change"], "changed");
    assert!(m.get("x-remove").is_none(), "fjson_object_object_del");
    assert_eq!(m["custom"], json!({"kept": true}), "the rest is kept");
    assert_eq!(
        m["recipient"], "fastjson.rcpt@example.org",
        "MQ_setRecipient"
    );
    assert_eq!(m["envelope"], "json-envelope@example.org");
    assert_eq!(
        m["mime"], "X-Fastjson: in\r\nFrom: sender@example.com\r\nSubject: test\r\n\r\nbody\r\n",
        "`mime` changed through the object is the MIME"
    );
}

#[test]
fn a_c_plugin_from_the_docs_reads_and_extends_the_outgoing_json() {
    let (_dir, host) = host_with("fj-c-out", HostMode::Table, &[("10-c.so", c_fastjson())]);
    let mut out = host.open(Direction::Outgoing).unwrap();
    let r = out.run(Event::OutData(incoming())).unwrap();
    assert_checks(&lines(&r, "fastjson"), &["out-mime-null", "out-mime-set"]);
    assert!(r
        .plugin_log()
        .contains(&"fastjson out recipient rcpt@example.org".to_owned()));
    let m = r.message.as_ref().expect("the message");
    assert_eq!(
        m["fastjson-out"],
        json!({"recipient": "rcpt@example.org", "hook": "smtp_out_data"})
    );
    assert_eq!(
        m["mime"],
        incoming()["mime"],
        "MQ_setMime leaves the JSON alone"
    );
    let sent = r.smtp.expect("smtp view").mime.expect("a MIME to send");
    let expected = format!(
        "X-Fastjson: out\r\n{}",
        incoming()["mime"].as_str().unwrap()
    );
    assert_eq!(String::from_utf8(sent).unwrap(), expected);
}

#[test]
fn the_c_and_the_rust_plugin_share_one_object_along_the_chain() {
    for mode in [HostMode::Table, HostMode::GlobalSymbolsOnly] {
        let (_dir, host) = host_with(
            "fj-chain",
            mode,
            &[("10-c.so", c_fastjson()), ("20-rust.so", json_props())],
        );
        let r = host
            .run_event(Direction::Incoming, Event::Message(incoming()))
            .unwrap();
        assert_checks(&lines(&r, "fastjson"), &["in-recipient-synced"]);
        assert!(
            r.plugin_log()
                .contains(&"json-props in recipient fastjson.rcpt@example.org".to_owned()),
            "{mode:?}: the Rust plugin read what the C plugin set: {:#?}",
            r.plugin_log()
        );
        let m = r.message.unwrap();
        assert!(
            m.get("fastjson-in").is_some() && m.get("rust-in").is_some(),
            "{m}"
        );
        assert_eq!(m["x-change"], "changed-by-rust", "{mode:?}");
        assert_eq!(m["recipient"], "json.fastjson.rcpt@example.org", "{mode:?}");
        assert!(m["mime"]
            .as_str()
            .unwrap()
            .starts_with("X-Rust: in\r\nX-Fastjson: in\r\nFrom: "));
    }
}

#[test]
fn a_rust_plugin_reads_and_writes_typed_properties_in_both_directions() {
    for mode in [HostMode::Table, HostMode::GlobalSymbolsOnly] {
        let (_dir, host) = host_with("fj-rust", mode, &[("10-rust.so", json_props())]);
        let r = host
            .run_event(Direction::Incoming, Event::Message(incoming()))
            .unwrap();
        assert_checks(
            &lines(&r, "json-props"),
            &[
                "in-typed",
                "in-wrong-type",
                "in-absent",
                "in-set",
                "in-change",
                "in-remove",
                "in-recipient-synced",
                "in-recipient-from-json",
                "in-mime-from-json",
            ],
        );
        let m = r.message.unwrap();
        assert_eq!(
            m["rust-in"],
            json!({"recipient": "rcpt@example.org", "nested": [1, "two"]}),
            "{mode:?}"
        );
        assert_eq!(m["x-change"], "changed-by-rust");
        assert!(m.get("x-remove").is_none());
        assert_eq!(m["recipient"], "json.rcpt@example.org");
        assert!(m["mime"]
            .as_str()
            .unwrap()
            .starts_with("X-Rust: in\r\nFrom: "));

        let mut out = host.open(Direction::Outgoing).unwrap();
        let r = out.run(Event::OutData(incoming())).unwrap();
        assert_checks(
            &lines(&r, "json-props"),
            &[
                "out-mime-none",
                "out-set",
                "out-mime-json",
                "out-mime-set",
                "out-json-unchanged",
            ],
        );
        let m = r.message.as_ref().unwrap();
        assert_eq!(
            m["rust-out"],
            json!({"recipient": "rcpt@example.org"}),
            "{mode:?}"
        );
        assert_eq!(
            m["recipient"], "rcpt@example.org",
            "outgoing setters leave the JSON"
        );
        let smtp = r.smtp.unwrap();
        assert_eq!(smtp.recipient, "smtp-only@example.net");
        let expected = format!("X-Rust: out\r\n{}", incoming()["mime"].as_str().unwrap());
        assert_eq!(smtp.mime.as_deref(), Some(expected.as_bytes()), "{mode:?}");
    }
}

#[test]
fn served_messages_are_stored_with_the_c_plugins_changes() {
    let dir = PluginDir::new("fj-serve");
    let plugin = dir.add("10-c.so", &c_fastjson(), "");
    let data = dir.path().join("data");
    let (mut child, _stderr, addr) = spawn_serve(&[
        "--plugin".as_ref(),
        plugin.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    let out = Command::new("swaks")
        .args(["--server", &addr.to_string(), "--from", "a@shop.example"])
        .args([
            "--to",
            "alice@example.com,bob@example.com",
            "--body",
            "hello fastjson",
        ])
        .output()
        .expect("swaks must be installed (.ci/run installs it)");
    let _ = child.kill();
    let _ = child.wait();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{transcript}");
    let mut stored = json_files(&data.join("inbox"));
    stored.sort_by_key(|m| m["recipient"].as_str().unwrap_or_default().to_owned());
    assert_eq!(stored.len(), 2, "one message per recipient");
    for (m, rcpt) in stored.iter().zip(["alice@example.com", "bob@example.com"]) {
        assert_eq!(m["recipient"], format!("fastjson.{rcpt}"), "{m}");
        assert_eq!(m["fastjson-in"]["recipient"], rcpt);
        assert_eq!(m["connection"]["checked-by"], "c-fastjson");
        let mime = m["mime"].as_str().expect("the MIME");
        assert!(mime.starts_with("X-Fastjson: in\r\n"), "{mime}");
        assert!(mime.contains("hello fastjson"));
    }
}

#[test]
fn the_delivery_sends_the_mime_the_c_plugin_made_from_the_json() {
    let dir = PluginDir::new("fj-deliver");
    dir.add("10-c.so", &c_fastjson(), "");
    let sink = Sink::start(&dir.path().join("sink"), &[]);
    let (outbox, _) = Outbox::open(dir.path().join("data")).unwrap();
    let mime = "Subject: out\r\n\r\nvia libfastjson\r\n";
    outbox
        .add(&json!({"envelope": "a@shop.example", "recipient": "b@example.net", "mime": mime}))
        .unwrap();
    let config = DeliveryConfig {
        relay: sink.relay(),
        helo: "mq-host.test".into(),
        reply_timeout: Duration::from_secs(20),
        retry_delay: Duration::from_millis(50),
        ..Default::default()
    };
    let host = dir.start();
    let statuses = std::sync::Mutex::new(Vec::new());
    delivery::run(&host, &outbox, &config, Until::Empty, &|o| {
        statuses.lock().unwrap().push(o.status)
    });
    let report = host.shutdown();
    assert_eq!(statuses.into_inner().unwrap(), [Status::Success]);
    let failed: Vec<_> = report
        .log
        .iter()
        .filter(|l| l.text.starts_with("fastjson fail"))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    let received = sink.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        String::from_utf8_lossy(&received[0].data),
        format!("X-Fastjson: out\r\n{mime}")
    );
    // The result carries the message as smtp_out_data left it.
    let data = dir.path().join("data");
    for queue in ["results", "success"] {
        let results = json_files(&data.join(queue));
        assert_eq!(results.len(), 1, "{queue}");
        let result = &results[0];
        assert_eq!(
            result["fastjson-out"],
            json!({"recipient": "b@example.net", "hook": "smtp_out_data"}),
            "{queue}: {result}"
        );
        assert_eq!(
            result["results"][0]["result"], "accepted",
            "{queue}: {result}"
        );
    }
}

#[test]
fn the_live_object_is_owned_and_freed_by_the_host_under_valgrind() {
    let dir = PluginDir::new("fj-valgrind");
    dir.add("10-c.so", &c_fastjson(), "");
    dir.add("20-rust.so", &json_props(), "");
    for direction in ["in", "out"] {
        let vg_log = dir.path().join(format!("valgrind-{direction}.log"));
        let mut child = Command::new("valgrind")
            .args([
                "--error-exitcode=97",
                "--leak-check=full",
                "--errors-for-leak-kinds=definite",
                "--show-leak-kinds=definite",
            ])
            .arg(format!("--log-file={}", vg_log.display()))
            .arg(host_binary())
            .args([
                "run",
                "--workers",
                "1",
                "--direction",
                direction,
                "--plugins",
            ])
            .arg(dir.path())
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the valgrind run needs valgrind: apt-get install valgrind");
        {
            let mut stdin = child.stdin.take().unwrap();
            for _ in 0..3 {
                writeln!(stdin, "{}", incoming()).unwrap();
            }
        }
        let status = wait_bounded(&mut child, "mq-host run under valgrind");
        let mut stdout = String::new();
        let mut stderr = String::new();
        use std::io::Read;
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let valgrind = std::fs::read_to_string(&vg_log).unwrap_or_default();
        assert_eq!(status.code(), Some(0), "{direction}: {stderr}\n{valgrind}");
        assert_eq!(stdout.lines().count(), 3, "{direction}: {stdout}");
        // After the C plugin, `x-remove` is gone and the MIME is set when
        // the Rust one looks: those two checks fail by design here.
        let after_c = ["fail in-remove:", "fail out-mime-none:"];
        let failed: Vec<_> = stderr
            .lines()
            .filter(|l| l.contains(" fail ") && !after_c.iter().any(|c| l.contains(c)))
            .collect();
        assert!(failed.is_empty(), "{direction}: {failed:#?}");
        let key = if direction == "in" {
            "rust-in"
        } else {
            "rust-out"
        };
        assert!(stdout.contains(key), "{direction}: {stdout}");
    }
}
