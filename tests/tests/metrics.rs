//! `mq-host serve --metrics ADDR`: the counters in Prometheus' text format,
//! scraped over HTTP from a running serve that takes and delivers mail.

use mq_e2e::served::Served;
use mq_e2e::*;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One scrape: the status line and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut client = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(client, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// Checks the text exposition format and returns the samples by series
/// (`name` or `name{labels}`).
fn parse_exposition(text: &str) -> HashMap<String, u64> {
    let valid_name = |name: &str| {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut help = HashSet::new();
    let mut kind = HashMap::new();
    let mut samples = HashMap::new();
    assert!(text.ends_with('\n'), "the text ends with a line feed");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').expect("HELP name text");
            assert!(valid_name(name), "{line}");
            assert!(!text.trim().is_empty(), "{line}");
            assert!(help.insert(name.to_owned()), "HELP twice: {line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, t) = rest.split_once(' ').expect("TYPE name type");
            assert!(valid_name(name), "{line}");
            assert!(
                ["counter", "gauge", "untyped", "histogram", "summary"].contains(&t),
                "{line}"
            );
            assert!(
                kind.insert(name.to_owned(), t.to_owned()).is_none(),
                "{line}"
            );
        } else {
            assert!(!line.starts_with('#'), "an unknown comment: {line}");
            let (series, value) = line.rsplit_once(' ').expect("a sample: series value");
            let name = series.split('{').next().unwrap();
            assert!(valid_name(name), "{line}");
            if let Some(labels) = series.strip_prefix(name) {
                if !labels.is_empty() {
                    let inner = labels
                        .strip_prefix('{')
                        .and_then(|l| l.strip_suffix('}'))
                        .unwrap_or_else(|| panic!("labels in braces: {line}"));
                    for pair in inner.split(',') {
                        let (label, value) = pair.split_once('=').expect("label=value");
                        assert!(valid_name(label) && !label.contains(':'), "{line}");
                        assert!(value.starts_with('"') && value.ends_with('"'), "{line}");
                    }
                }
            }
            assert!(name.starts_with("mqhost_"), "{line}");
            assert!(help.contains(name), "a sample without HELP: {line}");
            match kind.get(name).map(String::as_str) {
                Some("counter") => {
                    assert!(name.ends_with("_total"), "a counter ends in _total: {line}")
                }
                Some("gauge") => assert!(!name.ends_with("_total"), "{line}"),
                _ => panic!("a sample without a counter or gauge TYPE: {line}"),
            }
            let value: u64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            assert!(samples.insert(series.to_owned(), value).is_none(), "{line}");
        }
    }
    samples
}

/// Sends one message with one recipient over plain SMTP.
fn send_mail(addr: SocketAddr, rcpt: &str) {
    let script = format!(
        "import smtplib, sys\n\
         s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=30)\n\
         s.sendmail('shop@example.com', ['{rcpt}'], 'Subject: metrics\\r\\n\\r\\nhello\\r\\n')\n\
         s.quit()\n"
    );
    python_client(&script, addr.port());
}

#[test]
fn serve_exposes_its_counters_to_prometheus() {
    let dir = PluginDir::new("metrics");
    let sink = Sink::start(&dir.path().join("sink"), &[]);
    let data = dir.path().join("data");
    let relay = sink.relay();
    let args: Vec<&OsStr> = vec![
        "--metrics".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--relay".as_ref(),
        relay.as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--no-tls".as_ref(),
    ];
    // No --plugins: the example plugins (allow-list, stamp, out-trace).
    let served = Served::start(&[], &args);
    let mut metrics = None;
    served.wait_for_log("the metrics address", |log| {
        metrics = log
            .lines()
            .find_map(|l| l.strip_prefix("mq-host: metrics on http://"))
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .and_then(|addr| addr.parse::<SocketAddr>().ok());
        metrics.is_some()
    });
    let metrics = metrics.unwrap();

    let (status, body) = get(metrics, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let before = parse_exposition(&body);
    assert_eq!(before["mqhost_smtp_sessions_total"], 0, "{body}");
    assert_eq!(before["mqhost_outbox_messages"], 0, "{body}");
    assert_eq!(
        before["mqhost_hook_calls_total{hook=\"smtp_in_rcptto\"}"],
        0
    );
    // Every hook of the table has its sample, and every counter its family.
    assert!(before.contains_key("mqhost_hook_calls_total{hook=\"smtp_out_data\"}"));
    for name in [
        "mqhost_messages_stored_total",
        "mqhost_delivery_attempts_total",
        "mqhost_messages_delivered_total",
        "mqhost_double_resumes_total",
        "mqhost_api_misuse_total",
        "mqhost_connections_refused_total",
    ] {
        assert!(before.contains_key(name), "{name} missing:\n{body}");
    }

    send_mail(served.addr, "alice@example.com");
    send_mail(served.addr, "bob@example.org");
    // Wait (a generous bound, not a timing assertion) until both messages
    // are delivered, reading the metrics endpoint itself.
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let samples = parse_exposition(&get(metrics, "/metrics").1);
        // Delivered, and the outbox gauge back to nothing left.
        if samples["mqhost_messages_delivered_total"] == 2 && samples["mqhost_outbox_messages"] == 0
        {
            break samples;
        }
        assert!(
            Instant::now() < deadline,
            "not delivered within 60 s: {samples:?}\n{}",
            served.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(after["mqhost_smtp_sessions_total"], 2);
    assert_eq!(after["mqhost_messages_stored_total"], 2);
    assert!(after["mqhost_delivery_attempts_total"] >= 2);
    // Two plugins define smtp_in_rcptto (the C and the Rust allow-list);
    // out-trace defines smtp_out_data.
    assert_eq!(after["mqhost_hook_calls_total{hook=\"smtp_in_rcptto\"}"], 4);
    assert_eq!(after["mqhost_hook_calls_total{hook=\"smtp_out_data\"}"], 2);
    assert_eq!(sink.received().len(), 2);

    // Only /metrics is served.
    let (status, _) = get(metrics, "/");
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // The endpoint closes with serve.
    let (status, log) = served.stop();
    assert!(status.success(), "{log}");
    assert!(
        TcpStream::connect(metrics).is_err(),
        "the metrics endpoint is closed after serve stopped"
    );
    // What was scraped last is what serve printed at its end.
    let counters = served::Counters::last(&log).expect("--counters printed at the end");
    assert_eq!(counters.get("messages_delivered"), 2);
}

#[test]
fn a_metrics_address_in_use_stops_serve_with_its_cause() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = PluginDir::new("metrics-taken");
    let out = std::process::Command::new(host_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--no-tls"])
        .args(["--metrics", &addr.to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("mq-host: cannot serve metrics on {addr}: ")),
        "{stderr}"
    );
}
