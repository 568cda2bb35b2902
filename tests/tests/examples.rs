//! The example plugins, as a newcomer would use them.

use mq_e2e::*;
use mq_host::batch::run_jsonl;
use mq_host::{ChainEnd, Direction, Event};

#[test]
fn stamp_prepends_headers_and_counts_per_worker() {
    let dir = PluginDir::new("stamp");
    dir.add("10-stamp.so", &plugin_so("mq-example-stamp"), "");
    let host = dir.start();
    for n in 1..=3 {
        let r = run_message(&host);
        let mime = r.message.as_ref().unwrap()["mime"]
            .as_str()
            .unwrap()
            .to_owned();
        let expected = format!("X-Stamped-By: mq-example-stamp 0.1.0\r\nX-Stamp-Sequence: {n}\r\nFrom: sender@example.com\r\n");
        assert!(mime.starts_with(&expected), "{mime}");
        assert!(r
            .plugin_log()
            .iter()
            .any(|l| l.contains(&format!("stamped message #{n} for rcpt@example.org"))));
    }
}

/// Recipients that are no mailbox, and the cause both allow-lists give.
/// The first ones end in `@example.com`: a suffix match took them.
const NOT_MAILBOXES: &[(&str, &str)] = &[
    (
        "victim@evil.net\n[INFO] [worker 0] [plugin] x@example.com",
        "a control character (0x0a) at byte 15",
    ),
    (
        "victim@evil.net\r\n@example.com",
        "a control character (0x0d) at byte 15",
    ),
    (
        "a\x1b[31mRED@example.com",
        "a control character (0x1b) at byte 1",
    ),
    // `"victim@evil.net"@example.com` as an SMTP parser that drops the
    // quotes hands it on.
    (
        "victim@evil.net@example.com",
        "the domain is not dot-separated labels of letters, digits and inner hyphens (byte 15)",
    ),
    (
        "victim@evil.net>@example.com",
        "the domain is not dot-separated labels of letters, digits and inner hyphens (byte 15)",
    ),
    (
        "victim@evil.net\u{202e}@example.com",
        "a byte outside ASCII at byte 15 (internationalized addresses are not supported)",
    ),
    ("", "the address is empty"),
    ("postmaster", "no `@` after the local part"),
    ("@example.com", "nothing before the `@`"),
    ("a@", "nothing after the `@`"),
    (
        "a..b@example.com",
        "the local part is neither dot-separated atoms nor a quoted string (byte 2)",
    ),
    (
        "\"a\"b@example.com",
        "the local part is neither dot-separated atoms nor a quoted string (byte 3)",
    ),
    (
        "\"ab@example.com",
        "the quoted local part has no closing quote",
    ),
    (
        "a@example.com.",
        "the domain is not dot-separated labels of letters, digits and inner hyphens (byte 13)",
    ),
    (
        "a@-example.com",
        "the domain is not dot-separated labels of letters, digits and inner hyphens (byte 2)",
    ),
    (
        "a@[1.2.3]",
        "the address literal is not [IPv4], [IPv6:address] or [tag:text]",
    ),
    (
        "a@[IPv6:zz]",
        "the address literal is not [IPv4], [IPv6:address] or [tag:text]",
    ),
];

#[test]
fn both_allowlists_accept_and_refuse_the_same() {
    let long_local = format!("{}@example.com", "l".repeat(65));
    let long_label = format!("a@{}.example.com", "d".repeat(64));
    let too_long = format!("a@{}example.com", "d.".repeat(125));
    let limits = [
        (
            long_local.as_str(),
            "the local part is 65 bytes long, more than 64",
        ),
        (
            long_label.as_str(),
            "a domain label is longer than 63 bytes (byte 2)",
        ),
        (
            too_long.as_str(),
            "the address is 263 bytes long, more than 254",
        ),
    ];
    for package in ["mq-example-allowlist", "mq-example-c-allowlist"] {
        let dir = PluginDir::new("allowlist");
        dir.add("10-allow.so", &plugin_so(package), "");
        dir.add("20-probe.so", &c_probe(), "");
        let host = dir.start();
        let rcpt = |email: &str| {
            host.run_event(Direction::Incoming, Event::RcptTo(email.into()))
                .unwrap()
        };
        for ok in [
            "a@example.com",
            "B@EXAMPLE.ORG",
            "postmaster@localhost",
            "POSTMASTER@LocalHost",
            "\"victim@evil.net\"@example.com",
            "\"john doe\"@example.org",
            "x.y+z@example.com",
        ] {
            let r = rcpt(ok);
            assert_eq!(r.end, ChainEnd::Finished, "{package}: {ok}");
            assert!(!r.refused(), "{package}: {ok}");
            assert_eq!(called(&r), ["10-allow", "20-probe"]);
        }
        let refused = |email: &str, reply: String| {
            let r = rcpt(email);
            assert_eq!(
                r.end,
                ChainEnd::Completed {
                    plugin: "10-allow".into()
                },
                "{package}: {email:?}"
            );
            assert_eq!(r.reply(), Some(reply), "{package}: {email:?}");
            assert_eq!(
                called(&r),
                ["10-allow"],
                "{package}: later plugins are skipped"
            );
        };
        for bad in [
            "x@example.net",
            "postmaster@example.net",
            "victim@example.com.evil.net",
            "victim@sub.example.com",
            "victim@evilexample.com",
            "a@[192.0.2.1]",
        ] {
            refused(
                bad,
                format!("550 5.7.1 <{bad}>: recipient not on the allow-list"),
            );
        }
        for (bad, why) in NOT_MAILBOXES.iter().chain(&limits) {
            refused(
                bad,
                format!("553 5.1.3 recipient is not a valid mailbox: {why}"),
            );
        }
    }
}

#[test]
fn the_run_mode_refuses_forged_recipients_with_both_allowlists() {
    // Through the binary, with MailerQ JSON: a recipient is any string.
    let mut input = String::new();
    for recipient in [
        "alice@example.com",
        "victim@evil.net\n[INFO] [worker 0] [plugin] c-allowlist: accepted x@example.com",
        "victim@evil.net\r\n@example.com",
    ] {
        input +=
            &serde_json::json!({"envelope": "a@b.example", "recipient": recipient, "mime": "x"})
                .to_string();
        input.push('\n');
    }
    for package in ["mq-example-c-allowlist", "mq-example-allowlist"] {
        let mut child = std::process::Command::new(host_binary())
            .args(["run", "--workers", "1", "--plugin"])
            .arg(plugin_so(package))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{package}");
        let results: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let outcome: Vec<(&str, Option<&str>)> = results
            .iter()
            .map(|r| {
                (
                    r["result"]["queue"].as_str().unwrap(),
                    r["result"]["reply"].as_str(),
                )
            })
            .collect();
        assert_eq!(
            outcome,
            [
                ("inbox", None),
                (
                    "refused",
                    Some("553 5.1.3 recipient is not a valid mailbox: a control character (0x0a) at byte 15")
                ),
                (
                    "refused",
                    Some("553 5.1.3 recipient is not a valid mailbox: a control character (0x0d) at byte 15")
                ),
            ],
            "{package}"
        );
        // Each decision is one log line: no forged "accepted" line.
        let log = String::from_utf8(out.stderr).unwrap();
        let decisions: Vec<&str> = log.lines().filter(|l| l.contains("[plugin]")).collect();
        assert_eq!(decisions.len(), 3, "{package}: {log}");
        assert!(
            decisions[0].ends_with("accepted alice@example.com"),
            "{log}"
        );
        for line in &decisions[1..] {
            assert!(line.contains("rejected"), "{package}: {log}");
        }
    }
}

#[test]
fn allowlist_file_and_fail_closed() {
    // Through the binary: the list is read from the environment at start.
    let dir = PluginDir::new("allowlist-file");
    let list = dir.path().join("allow.txt");
    std::fs::write(&list, "# ours\n@ours.example\nboss@partner.example\n").unwrap();
    let out = std::process::Command::new(host_binary())
        .env("MQ_ALLOWLIST_FILE", &list)
        .args(["run", "--quiet", "--plugin"])
        .arg(plugin_so("mq-example-allowlist"))
        .arg("--plugin")
        .arg(plugin_so("mq-example-c-allowlist"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            writeln!(
                stdin,
                r#"{{"envelope":"a@b","recipient":"x@ours.example","mime":"x"}}"#
            )?;
            writeln!(
                stdin,
                r#"{{"envelope":"a@b","recipient":"boss@partner.example","mime":"x"}}"#
            )?;
            writeln!(
                stdin,
                r#"{{"envelope":"a@b","recipient":"a@example.com","mime":"x"}}"#
            )?;
            drop(stdin);
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let queues: Vec<&str> = lines
        .iter()
        .map(|l| l["result"]["queue"].as_str().unwrap())
        .collect();
    assert_eq!(queues, ["inbox", "inbox", "refused"]);

    let out = std::process::Command::new(host_binary())
        .env("MQ_ALLOWLIST_FILE", dir.path().join("missing.txt"))
        .args(["run", "--plugin"])
        .arg(plugin_so("mq-example-c-allowlist"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing.txt"),
        "the log names the file: {stderr}"
    );
}

#[test]
fn the_run_mode_writes_one_line_per_input_line() {
    let dir = PluginDir::new("runmode");
    dir.add(
        "10-c-allowlist.so",
        &plugin_so("mq-example-c-allowlist"),
        "",
    );
    dir.add("30-stamp.so", &plugin_so("mq-example-stamp"), "");
    let host = dir.start();
    let input = concat!(
        r#"{"envelope":"a@shop.example","recipient":"alice@example.com","mime":"Subject: hi\r\n\r\nhello","tags":["x"]}"#,
        "\n",
        r#"{"envelope":"a@shop.example","recipient":"eve@example.net","mime":"Subject: hi\r\n\r\nhello"}"#,
        "\nnot json\n[1,2]\n\n",
    );
    let mut out = Vec::new();
    let summary = run_jsonl(&host, Direction::Incoming, input.as_bytes(), &mut out).unwrap();
    assert_eq!(
        (
            summary.messages,
            summary.accepted,
            summary.refused,
            summary.errors
        ),
        (2, 1, 1, 2)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["result"]["queue"], "inbox");
    assert_eq!(lines[0]["tags"][0], "x");
    assert!(lines[0]["mime"]
        .as_str()
        .unwrap()
        .starts_with("X-Stamped-By: "));
    assert_eq!(lines[1]["result"]["queue"], "refused");
    assert_eq!(lines[1]["result"]["stage"], "smtp_in_rcptto");
    assert_eq!(
        lines[1]["result"]["reply"],
        "550 5.7.1 <eve@example.net>: recipient not on the allow-list"
    );
    assert_eq!(lines[2]["line"], 3);
    assert!(lines[2]["error"].as_str().unwrap().starts_with("not JSON"));
    assert_eq!(lines[3]["error"], "a MailerQ message must be a JSON object");
}

#[test]
fn the_run_mode_outgoing() {
    let dir = PluginDir::new("runmode-out");
    dir.add("10-p.so", &c_probe(), "smtp_out_data exercise\n");
    let host = dir.start();
    let input = format!("{}\n", message());
    let mut out = Vec::new();
    run_jsonl(&host, Direction::Outgoing, input.as_bytes(), &mut out).unwrap();
    let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        line["recipient"], "rcpt@example.org",
        "the stored JSON is unchanged"
    );
    assert_eq!(
        line["result"]["smtp"]["recipient"],
        "probe-recipient@example.org"
    );
}

#[test]
fn tarpit_slows_down_every_further_recipient() {
    let dir = PluginDir::new("tarpit");
    dir.add("10-tarpit.so", &plugin_so("mq-example-tarpit"), "");
    dir.add("20-probe.so", &c_probe(), "");
    let host = dir.start();
    let mut s = host.open(Direction::Incoming).unwrap();
    let first = s.run(Event::RcptTo("a@example.org".into())).unwrap();
    assert!(
        !first.calls[0].took_control,
        "the first recipient goes through at once"
    );
    let second = s.run(Event::RcptTo("b@example.org".into())).unwrap();
    let third = s.run(Event::RcptTo("c@example.org".into())).unwrap();
    for (r, at_least) in [(&second, 100), (&third, 200)] {
        assert!(r.calls[0].took_control);
        assert!(
            r.elapsed >= std::time::Duration::from_millis(at_least),
            "{:?}",
            r.elapsed
        );
        assert_eq!(
            called(r),
            ["10-tarpit", "20-probe"],
            "then the chain goes on"
        );
    }
    assert!(third
        .plugin_log()
        .iter()
        .any(|l| l.contains("waits 200ms (recipient #3)")));
    // A new connection starts over.
    let r = host
        .run_event(Direction::Incoming, Event::RcptTo("d@example.org".into()))
        .unwrap();
    assert!(!r.calls[0].took_control);
}

#[test]
fn body_hash_stamps_the_sha256_computed_off_the_loop() {
    let dir = PluginDir::new("body-hash");
    dir.add("10-hash.so", &plugin_so("mq-example-body-hash"), "");
    let host = dir.start();
    let r = run_message(&host);
    assert!(
        r.calls[0].took_control,
        "the hash runs on the blocking pool"
    );
    let mime = r.message.unwrap()["mime"].as_str().unwrap().to_owned();
    assert_eq!(
        mime,
        "X-Body-SHA256: 4abbd0c3b88185ff440f37e2bbe2cf097bf9791bb5c2bbec7c6e6388d9596a81\r\n"
            .to_owned()
            + message()["mime"].as_str().unwrap()
    );
}

#[test]
fn a_failed_initialize_stops_the_host_with_the_reason() {
    let missing = std::env::temp_dir().join("mq-e2e-no-such-allowlist.txt");
    let out = std::process::Command::new(host_binary())
        .env("MQ_ALLOWLIST_FILE", &missing)
        .args(["run", "--quiet", "--plugin"])
        .arg(plugin_so("mq-example-allowlist"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "libmq_example_allowlist.so: mq_initialize failed, so the host does not start: cannot read allow-list {}: No such file or directory",
        missing.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
}
