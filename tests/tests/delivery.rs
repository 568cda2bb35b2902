//! Delivery: the outbox to a real SMTP server (aiosmtpd), with the
//! `smtp_out_data` / `smtp_out_sent` hooks, result JSON, retries, and a
//! host killed mid-delivery.

use mq_e2e::*;
use mq_host::delivery::{self, DeliveryConfig, Outbox, Outcome, Status, Until};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn config(sink: &Sink) -> DeliveryConfig {
    DeliveryConfig {
        relay: sink.relay(),
        helo: "mq-host.test".into(),
        reply_timeout: Duration::from_secs(20),
        retry_delay: Duration::from_millis(50),
        ..Default::default()
    }
}

/// Delivers everything in `outbox` with the out-trace example plugin;
/// returns every outcome (retries included), in order.
fn deliver_all(
    dir: &PluginDir,
    outbox: &Outbox,
    config: &DeliveryConfig,
) -> (Vec<Outcome>, mq_host::CounterSnapshot) {
    let host = dir.start();
    let outcomes = Mutex::new(Vec::new());
    delivery::run(&host, outbox, config, Until::Empty, &|o| {
        outcomes.lock().unwrap().push(o.clone())
    });
    let counters = host.shutdown().counters;
    let outcomes = outcomes.into_inner().unwrap();
    assert_eq!(counters.delivery_attempts, outcomes.len() as u64);
    (outcomes, counters)
}

fn traced(attempt: usize, mime: &str) -> Vec<u8> {
    format!("X-Out-Trace: mq-example-out-trace 0.1.0; attempt {attempt}\r\n{mime}").into_bytes()
}

#[test]
fn messages_reach_the_relay_byte_for_byte_with_the_out_hooks() {
    let dir = PluginDir::new("deliver-bytes");
    dir.add("40-out-trace.so", &plugin_so("mq-example-out-trace"), "");
    let sink = Sink::start(&dir.path().join("sink"), &[]);
    let (outbox, pickup) = Outbox::open(dir.path().join("data")).unwrap();
    assert_eq!(pickup.waiting, 0);
    let dotted = "Subject: dots\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\nend\r\n";
    outbox
        .add(
            &json!({"envelope": "a@shop.example", "recipient": "b@example.net",
                      "mime": dotted, "key": "k1"}),
        )
        .unwrap();
    // Bare LF and no final line end: sent as CRLF lines; keepmime keeps it.
    outbox
        .add(&json!({"envelope": "", "recipient": "c@example.net",
                      "mime": "Subject: lf\n\nonly lf", "keepmime": true}))
        .unwrap();

    let (outcomes, counters) = deliver_all(&dir, &outbox, &config(&sink));
    assert_eq!(outcomes.len(), 2);
    assert_eq!(counters.messages_delivered, 2);
    let calls = counters.calls_by_hook();
    assert!(calls.contains(&("smtp_out_data", 2)), "{calls:?}");
    assert!(calls.contains(&("smtp_out_sent", 2)), "{calls:?}");
    assert!(outcomes.iter().all(|o| o.status == Status::Success));

    let mut received = sink.received();
    received.sort_by(|a, b| a.rcpt_tos.cmp(&b.rcpt_tos));
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].mail_from, "a@shop.example");
    assert_eq!(received[0].rcpt_tos, ["b@example.net"]);
    assert_eq!(received[0].data, traced(1, dotted));
    assert_eq!(received[1].mail_from, "<>", "empty envelope: MAIL FROM:<>");
    assert_eq!(
        received[1].data,
        traced(1, "Subject: lf\r\n\r\nonly lf\r\n")
    );

    // Result JSON: the message with `results`; mime only with keepmime.
    let by_key = |rcpt: &str| {
        outcomes
            .iter()
            .find(|o| o.result["recipient"] == rcpt)
            .unwrap()
            .result
            .clone()
    };
    let first = by_key("b@example.net");
    assert_eq!(first["key"], "k1", "custom properties are kept");
    assert!(first.get("mime").is_none(), "mime stripped: {first}");
    let result = &first["results"][0];
    assert_eq!(result["result"], "accepted");
    assert_eq!(result["state"], "message");
    assert_eq!(result["code"], 250);
    assert_eq!(result["status"], "2.0.0");
    assert!(result["description"]
        .as_str()
        .unwrap()
        .starts_with("OK stored as"));
    assert_eq!(result["mta"], "sink.test");
    assert_eq!(result["to"], "127.0.0.1");
    assert_eq!(by_key("c@example.net")["mime"], "Subject: lf\n\nonly lf");

    let data = dir.path().join("data");
    assert_eq!(json_files(&data.join("success")).len(), 2);
    assert_eq!(json_files(&data.join("results")).len(), 2);
    assert!(json_files(&data.join("inbox")).is_empty(), "outbox empty");
}

#[test]
fn temporary_failures_are_retried_with_backoff_until_delivered() {
    let dir = PluginDir::new("deliver-retry");
    dir.add("40-out-trace.so", &plugin_so("mq-example-out-trace"), "");
    let sink = Sink::start(&dir.path().join("sink"), &["--fail-first", "2"]);
    let (outbox, _) = Outbox::open(dir.path().join("data")).unwrap();
    outbox
        .add(
            &json!({"envelope": "a@shop.example", "recipient": "b@example.net",
                      "mime": "Subject: again\r\n\r\nx\r\n"}),
        )
        .unwrap();
    let started = Instant::now();
    let (outcomes, _) = deliver_all(&dir, &outbox, &config(&sink));
    let statuses: Vec<_> = outcomes.iter().map(|o| o.status).collect();
    assert_eq!(statuses, [Status::Retry, Status::Retry, Status::Success]);
    // 50 ms, then 100 ms.
    assert!(started.elapsed() >= Duration::from_millis(150));
    let last = &outcomes[2].result;
    let results = last["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["result"], "error");
    assert_eq!(results[0]["code"], 451);
    assert_eq!(results[0]["status"], "4.3.0");
    assert_eq!(results[0]["state"], "message");
    assert_eq!(results[2]["result"], "accepted");
    // The plugin saw the earlier attempts in the message JSON.
    assert_eq!(
        sink.received()[0].data,
        traced(3, "Subject: again\r\n\r\nx\r\n")
    );
    let data = dir.path().join("data");
    let retries = json_files(&data.join("retry"));
    assert_eq!(retries.len(), 2);
    assert!(retries[0]["nextattempt"]["time"].is_string());
    assert!(retries.iter().all(|r| r.get("mime").is_none()));
}

#[test]
fn permanent_errors_and_used_up_attempts_are_failures() {
    let dir = PluginDir::new("deliver-fail");
    dir.add("40-out-trace.so", &plugin_so("mq-example-out-trace"), "");
    let sink = Sink::start(
        &dir.path().join("sink"),
        &["--reject", "gone.example", "--fail-first", "5"],
    );
    let (outbox, _) = Outbox::open(dir.path().join("data")).unwrap();
    outbox
        .add(&json!({"recipient": "x@gone.example", "mime": "a\r\n"}))
        .unwrap();
    outbox
        .add(&json!({"recipient": "y@example.net", "mime": "b\r\n", "maxattempts": 2}))
        .unwrap();
    outbox.add(&json!({"recipient": "z@example.net"})).unwrap();
    outbox
        .add(&json!({"recipient": "w@example.net>\r\nRCPT TO:<evil@example.net", "mime": "x\r\n"}))
        .unwrap();
    let (outcomes, _) = deliver_all(&dir, &outbox, &config(&sink));
    let finals: Vec<_> = outcomes
        .iter()
        .filter(|o| o.status != Status::Retry)
        .collect();
    assert_eq!(finals.len(), 4);
    assert!(finals.iter().all(|o| o.status == Status::Failure));
    let find = |rcpt: &str| {
        let r = &finals
            .iter()
            .find(|o| o.result["recipient"] == rcpt)
            .unwrap()
            .result["results"];
        r.as_array().unwrap().clone()
    };
    let rejected = find("x@gone.example");
    assert_eq!(rejected.len(), 1, "a 5xx is not retried");
    assert_eq!(rejected[0]["state"], "rcptto");
    assert_eq!(rejected[0]["code"], 550);
    assert_eq!(rejected[0]["status"], "5.1.1");
    assert_eq!(rejected[0]["result"], "error");
    let used_up = find("y@example.net");
    assert_eq!(used_up.len(), 3, "maxattempts 2, then the expiry");
    assert_eq!(used_up[1]["result"], "error");
    assert_eq!(used_up[2]["state"], "process");
    assert_eq!(used_up[2]["result"], "timeout");
    assert_eq!(
        used_up[2]["description"],
        "expired: 2 attempt(s) made, maxattempts is 2"
    );
    let no_mime = find("z@example.net");
    assert_eq!(no_mime[0]["state"], "storage");
    assert_eq!(no_mime[0]["result"], "error");
    assert!(no_mime[0]["description"]
        .as_str()
        .unwrap()
        .contains("no `mime`"));
    let injected = &finals
        .iter()
        .find(|o| o.result["recipient"].as_str().unwrap().contains("evil"))
        .unwrap()
        .result["results"][0];
    assert_eq!(injected["state"], "process");
    assert_eq!(injected["result"], "invalid");
    assert!(injected["description"]
        .as_str()
        .unwrap()
        .contains("which no SMTP address may"));
    assert!(sink.received().is_empty());
    let data = dir.path().join("data");
    assert_eq!(json_files(&data.join("failures")).len(), 4);
    assert!(json_files(&data.join("inbox")).is_empty());
}

#[test]
fn an_unreachable_relay_is_a_temporary_failure_and_broken_files_are_reported() {
    let dir = PluginDir::new("deliver-down");
    let data = dir.path().join("data");
    // A file in the outbox that is not a MailerQ message.
    std::fs::create_dir_all(data.join("inbox")).unwrap();
    std::fs::write(data.join("inbox/0-broken.json"), b"{not json").unwrap();
    let (outbox, pickup) = Outbox::open(&data).unwrap();
    assert_eq!(pickup.waiting, 1);
    outbox
        .add(&json!({"recipient": "b@example.net", "mime": "x\r\n"}))
        .unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = free.local_addr().unwrap().to_string();
    drop(free);
    let config = DeliveryConfig {
        relay,
        retry_delay: Duration::from_millis(10),
        max_attempts: 2,
        ..Default::default()
    };
    let host = dir.start();
    let outcomes = Mutex::new(Vec::new());
    delivery::run(&host, &outbox, &config, Until::Empty, &|o| {
        outcomes.lock().unwrap().push(o.clone())
    });
    drop(host);
    let outcomes = outcomes.into_inner().unwrap();
    let broken = outcomes
        .iter()
        .find(|o| o.result.get("file").is_some())
        .unwrap();
    assert_eq!(broken.status, Status::Failure);
    assert!(broken.file.ends_with("failures/0-broken.json.invalid"));
    assert_eq!(std::fs::read(&broken.file).unwrap(), b"{not json");
    let down: Vec<_> = outcomes
        .iter()
        .filter(|o| o.result.get("file").is_none())
        .collect();
    assert_eq!(down.len(), 2);
    assert_eq!(down[0].status, Status::Retry);
    assert_eq!(down[1].status, Status::Failure);
    let result = &down[1].result["results"][1];
    assert_eq!(result["state"], "connect");
    assert_eq!(result["result"], "error");
    assert!(
        result["description"]
            .as_str()
            .unwrap()
            .contains("cannot connect to relay"),
        "{result}"
    );
}

#[test]
fn deliver_command_prints_results_and_progress() {
    let dir = PluginDir::new("deliver-cli");
    let sink = Sink::start(&dir.path().join("sink"), &["--reject", "gone.example"]);
    let input = dir.path().join("batch.jsonl");
    let mut lines = String::new();
    for n in 0..5 {
        let msg = json!({"envelope": "a@shop.example", "recipient": format!("r{n}@example.net"),
                         "mime": format!("Subject: {n}\r\n\r\nbody {n}\r\n")});
        lines.push_str(&format!("{msg}\n"));
    }
    lines.push_str("{\"recipient\": \"x@gone.example\", \"mime\": \"no\\r\\n\"}\n");
    lines.push_str("not json\n");
    let mut lines = lines.into_bytes();
    lines.extend_from_slice(b"{\"recipient\": \"\xff@example.net\"}\n");
    std::fs::write(&input, lines).unwrap();
    let out = std::process::Command::new(host_binary())
        .args(["deliver", "--quiet", "--relay", &sink.relay()])
        .arg(&input)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("mq-host: 3 message(s) not delivered"),
        "{stderr}"
    );
    assert!(
        stderr.contains("deliver: 6/6 done: 5 delivered, 1 failed; 0 retries so far"),
        "{stderr}"
    );
    let results: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 8, "{stdout}");
    assert_eq!(
        results[0]["error"],
        "line 7: not JSON: expected ident at line 1 column 2"
    );
    // A line that is not UTF-8 is that line's error; the others go on.
    assert_eq!(
        results[1]["error"],
        "line 8: not UTF-8: invalid utf-8 sequence of 1 bytes from index 15"
    );
    assert_eq!(results[1]["line"], 8);
    let kinds: Vec<_> = results[2..]
        .iter()
        .map(|r| r["results"][0]["result"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|s| **s == "accepted").count(), 5);
    assert_eq!(kinds.iter().filter(|s| **s == "error").count(), 1);
    // The example plugins ran (no --plugins): out-trace added its header.
    let received = sink.received();
    assert_eq!(received.len(), 5);
    assert!(received
        .iter()
        .all(|r| r.data.starts_with(b"X-Out-Trace: mq-example-out-trace")));
}

fn send_with_smtplib(addr: std::net::SocketAddr, count: usize) {
    let script = r#"
import smtplib, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
with smtplib.SMTP("127.0.0.1", port) as s:
    for n in range(count):
        s.sendmail("a@shop.example", ["user%d@example.com" % n],
                   "Subject: crash %d\r\n\r\nbody %d\r\n" % (n, n))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &addr.port().to_string(), &count.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn subjects(received: &[Received]) -> Vec<String> {
    let mut subjects: Vec<_> = received
        .iter()
        .map(|r| {
            let text = String::from_utf8_lossy(&r.data);
            let line = text.lines().find(|l| l.starts_with("Subject:")).unwrap();
            line.to_owned()
        })
        .collect();
    subjects.sort();
    subjects.dedup();
    subjects
}

type Served = (
    std::process::Child,
    std::io::BufReader<std::process::ChildStderr>,
    std::net::SocketAddr,
);

/// `mq-host serve` (example plugins) storing under `data`, relaying to `sink`.
fn serve_relaying(data: &Path, sink: &Sink, extra: &[&str]) -> Served {
    let relay = sink.relay();
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--relay".as_ref(),
        relay.as_ref(),
    ];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    spawn_serve(&args)
}

/// SIGTERM: the host stops cleanly; its log after the "serving" line.
fn terminate(mut child: std::process::Child, mut stderr: impl std::io::Read) -> String {
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(mq_e2e::wait_bounded(&mut child, "serve after SIGTERM").success());
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    log
}

#[test]
fn serve_delivers_with_both_hook_sets_and_survives_a_kill_mid_delivery() {
    const COUNT: usize = 6;
    let dir = PluginDir::new("deliver-crash");
    let data = dir.path().join("data");
    let sink_dir = dir.path().join("sink");
    // A slow relay: each message takes 2 s after its data.
    let slow = Sink::start(&sink_dir, &["--delay", "2"]);
    let (mut child, _stderr, addr) = serve_relaying(&data, &slow, &["--quiet"]);
    send_with_smtplib(addr, COUNT);
    // Every message is stored (acknowledged) before its 250...
    assert_eq!(json_files(&data.join("inbox")).len(), COUNT);
    // ...and two are on their way to the slow relay: kill the host now.
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    let before = json_files(&data.join("success")).len();
    assert!(before < COUNT, "the kill came mid-delivery");
    drop(slow);

    // Restart with a working relay: the outbox is picked up again.
    let sink = Sink::start(&sink_dir, &[]);
    let (child, stderr, _) = serve_relaying(&data, &sink, &[]);
    wait_for("the outbox to empty", Duration::from_secs(60), || {
        json_files(&data.join("inbox")).is_empty()
    });
    let log = terminate(child, stderr);

    // Every accepted message was delivered (some maybe twice: the kill may
    // have come after the relay took one but before its result was kept);
    // each has exactly one success result, and nothing failed.
    let received = sink.received();
    let expected: Vec<_> = (0..COUNT).map(|n| format!("Subject: crash {n}")).collect();
    assert_eq!(subjects(&received), expected);
    assert!(
        received.len() <= COUNT + 2,
        "at most the in-flight ones twice"
    );
    assert_eq!(json_files(&data.join("success")).len(), COUNT);
    assert!(json_files(&data.join("failures")).is_empty());
    // Both hook sets ran on each message: stamp (in) and out-trace (out).
    for r in &received {
        let text = String::from_utf8_lossy(&r.data);
        assert!(
            text.starts_with("X-Out-Trace: mq-example-out-trace"),
            "{text}"
        );
        assert!(text.contains("X-Stamped-By: mq-example-stamp"), "{text}");
    }
    assert!(
        log.lines().next().unwrap().contains(&format!(
            "message(s) waiting; delivering to {}",
            sink.relay()
        )),
        "{log}"
    );
    assert!(log.contains("sent "), "smtp_out_sent logged: {log}");
}

#[test]
fn sigterm_lets_deliveries_on_their_way_finish() {
    let dir = PluginDir::new("deliver-sigterm");
    let data = dir.path().join("data");
    let sink = Sink::start(&dir.path().join("sink"), &["--delay", "0.4"]);
    let (child, stderr, addr) = serve_relaying(&data, &sink, &["--connections", "1"]);
    send_with_smtplib(addr, 3);
    std::thread::sleep(Duration::from_millis(300));
    let log = terminate(child, stderr);
    // The one on its way finished; the others wait for the next start.
    let delivered = json_files(&data.join("success")).len();
    let waiting = json_files(&data.join("inbox")).len();
    assert!(delivered >= 1, "{log}");
    assert_eq!(delivered + waiting, 3, "{log}");
    assert_eq!(sink.received().len(), delivered);
    assert!(
        log.contains("finishing the deliveries on their way"),
        "{log}"
    );
}

#[test]
fn sigterm_cuts_a_delivery_that_outlasts_the_grace_period() {
    let dir = PluginDir::new("deliver-cut");
    let data = dir.path().join("data");
    let sink = Sink::start(&dir.path().join("sink"), &["--delay", "30"]);
    let (child, stderr, addr) = serve_relaying(&data, &sink, &[]);
    send_with_smtplib(addr, 1);
    let stored = std::fs::read_dir(data.join("inbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap();
    let bytes = std::fs::read(&stored).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let log = terminate(child, stderr);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by --grace 1"
    );
    assert!(log.contains("1 delivery(ies) cut short"), "{log}");
    assert!(log.contains("was cut short by the shutdown"), "{log}");
    // The message waits, unchanged (no attempt recorded), for the next start.
    assert_eq!(std::fs::read(&stored).unwrap(), bytes);
    assert!(json_files(&data.join("retry")).is_empty());
    assert!(json_files(&data.join("success")).is_empty());
}

#[test]
fn a_plugin_holding_smtp_out_data_holds_only_its_delivery() {
    let dir = PluginDir::new("deliver-held");
    // async-probe's smtp_out_data never completes: the hold deadline moves
    // each chain on; out-trace runs after it.
    dir.add("10-async-probe.so", &plugin_so("mq-test-async-probe"), "");
    dir.add("40-out-trace.so", &plugin_so("mq-example-out-trace"), "");
    let sink = Sink::start(&dir.path().join("sink"), &[]);
    let (outbox, _) = Outbox::open(dir.path().join("data")).unwrap();
    for n in 0..3 {
        outbox
            .add(&json!({"recipient": format!("r{n}@example.net"), "mime": "Subject: held\r\n\r\nx\r\n"}))
            .unwrap();
    }
    let host = dir
        .builder()
        .hold_deadline(Some(Duration::from_millis(200)))
        .start()
        .unwrap();
    let config = DeliveryConfig {
        connections: 3,
        ..config(&sink)
    };
    let outcomes = Mutex::new(Vec::new());
    delivery::run(&host, &outbox, &config, Until::Empty, &|o| {
        outcomes.lock().unwrap().push(o.status)
    });
    let shutdown = host.shutdown();
    assert_eq!(outcomes.into_inner().unwrap(), [Status::Success; 3]);
    assert_eq!(shutdown.counters.held_past_deadline, 3);
    assert_eq!(shutdown.counters.messages_delivered, 3);
    let received = sink.received();
    assert_eq!(received.len(), 3);
    assert!(received
        .iter()
        .all(|r| r.data.starts_with(b"X-Out-Trace: mq-example-out-trace")));
}

/// How a [`misbehaving_relay`] stalls the client.
#[derive(Clone, Copy)]
enum Stall {
    /// Its greeting comes one byte at a time, and never ends.
    Greeting,
    /// Its reply to this command (`EHLO`, ..., `.` for the end of the
    /// data) comes one byte at a time, and never ends.
    ReplyTo(&'static str),
    /// After its `354` it reads the data a few bytes at a time.
    ReadingData,
}

/// The longest a misbehaving relay keeps at it: far past any test's own
/// watchdog, so an unbounded client fails the test instead of hanging it.
const STALL_LIMIT: Duration = Duration::from_secs(120);

/// Writes `text` (over and over, never its line end) one byte each 100 ms,
/// until the client goes or [`STALL_LIMIT`].
fn dribble(stream: &mut std::net::TcpStream, text: &str) {
    use std::io::Write;
    let started = Instant::now();
    for b in text.trim_end().bytes().cycle() {
        if started.elapsed() > STALL_LIMIT || stream.write_all(&[b]).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads a few bytes each 5 ms until the client goes or [`STALL_LIMIT`].
fn read_slowly(stream: &mut std::net::TcpStream) {
    use std::io::Read;
    let started = Instant::now();
    let mut buf = [0u8; 16];
    while started.elapsed() < STALL_LIMIT && matches!(stream.read(&mut buf), Ok(n) if n > 0) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Keeps the kernel from taking much data for a slow reader: a small,
/// fixed receive buffer.
fn small_receive_buffer(stream: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4096;
    // SAFETY: a live socket; the option value is a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt SO_RCVBUF");
}

/// A relay on a thread that serves one connection politely except for
/// `stall`; returns its address.
fn misbehaving_relay(stall: Stall) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        small_receive_buffer(&stream);
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let stalls = |verb: &str| matches!(stall, Stall::ReplyTo(v) if v == verb);
        if matches!(stall, Stall::Greeting) {
            return dribble(&mut stream, "220 slow.relay.test greeting");
        }
        stream.write_all(b"220 relay.test\r\n").unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let verb = line
                .split([' ', ':', '\r'])
                .next()
                .unwrap()
                .to_ascii_uppercase();
            if stalls(&verb) {
                return dribble(&mut stream, "250 slow reply");
            }
            let reply: &[u8] = match verb.as_str() {
                "DATA" if matches!(stall, Stall::ReadingData) => {
                    stream.write_all(b"354 go on\r\n").unwrap();
                    return read_slowly(&mut stream);
                }
                "DATA" => {
                    stream.write_all(b"354 go on\r\n").unwrap();
                    // The data, up to its end.
                    while line != ".\r\n" {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                    }
                    if stalls(".") {
                        return dribble(&mut stream, "250 2.0.0 slowly queued");
                    }
                    b"250 2.0.0 queued\r\n"
                }
                "QUIT" => b"221 bye\r\n",
                _ => b"250 ok\r\n",
            };
            if stream.write_all(reply).is_err() {
                return;
            }
        }
    });
    addr
}

/// Runs `f` on a thread; fails the test if it is not done within `limit`
/// (the thread is left behind, stuck).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| {
        panic!("still running after {limit:?}: the delivery attempt was not bounded")
    })
}

/// One delivery attempt of a message with `mime` to `relay`, with
/// one-second limits; its outcome and the host's counters.
fn one_attempt(name: &str, relay: String, mime: String) -> (Outcome, mq_host::CounterSnapshot) {
    let dir = PluginDir::new(name);
    within(Duration::from_secs(60), move || {
        let (outbox, _) = Outbox::open(dir.path().join("data")).unwrap();
        outbox
            .add(&json!({"envelope": "a@shop.example", "recipient": "b@example.net", "mime": mime}))
            .unwrap();
        let config = DeliveryConfig {
            relay,
            reply_timeout: Duration::from_secs(1),
            send_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let host = dir.start();
        let outcomes = Mutex::new(Vec::new());
        delivery::run(&host, &outbox, &config, Until::Stopped, &|o| {
            outcomes.lock().unwrap().push(o.clone());
            outbox.stop();
        });
        let counters = host.shutdown().counters;
        let mut outcomes = outcomes.into_inner().unwrap();
        assert_eq!(outcomes.len(), 1);
        (outcomes.remove(0), counters)
    })
}

/// The attempt was a retry at `state` whose description says it timed
/// out, and it was counted.
fn assert_timed_out(
    outcome: &Outcome,
    counters: &mq_host::CounterSnapshot,
    state: &str,
    what: &str,
) {
    assert_eq!(outcome.status, Status::Retry, "{}", outcome.result);
    let result = &outcome.result["results"][0];
    assert_eq!(result["state"], state, "{result}");
    assert_eq!(result["result"], "timeout", "{result}");
    let description = result["description"].as_str().unwrap();
    assert!(description.contains(what), "{description}");
    assert!(description.contains("timed out after 1 s"), "{description}");
    assert_eq!(counters.relay_timeouts, 1);
    assert_eq!(counters.messages_deferred, 1);
}

#[test]
fn a_relay_dribbling_its_greeting_is_a_retry_that_names_the_timeout() {
    let relay = misbehaving_relay(Stall::Greeting);
    let (outcome, counters) =
        one_attempt("stall-greeting", relay, "Subject: x\r\n\r\nx\r\n".into());
    assert_timed_out(&outcome, &counters, "intro", "the relay's greeting");
}

#[test]
fn a_relay_dribbling_a_reply_is_a_retry_that_names_the_timeout() {
    for (verb, state, what) in [
        ("EHLO", "ehlo", "the relay's reply to EHLO"),
        ("RCPT", "rcptto", "the relay's reply to RCPT"),
        (".", "message", "the relay's reply to the message's data"),
    ] {
        let relay = misbehaving_relay(Stall::ReplyTo(verb));
        let (outcome, counters) =
            one_attempt("stall-reply", relay, "Subject: x\r\n\r\nx\r\n".into());
        assert_timed_out(&outcome, &counters, state, what);
    }
}

#[test]
fn a_relay_reading_the_data_slowly_is_a_retry_that_names_the_timeout() {
    // Far more than the socket buffers take, at a few bytes each 5 ms.
    let line = format!("{}\r\n", "x".repeat(998));
    let mime = format!("Subject: big\r\n\r\n{}", line.repeat(8 * 1024));
    let relay = misbehaving_relay(Stall::ReadingData);
    let (outcome, counters) = one_attempt("stall-data", relay, mime);
    assert_timed_out(&outcome, &counters, "data", "sending the message's data");
}

/// The MIME an outgoing message sends after out-trace (Rust) put its
/// header in front of it in `smtp_out_data`, in a host of `mode`.
fn traced_smtp_mime(mode: mq_host::HostMode, mime: &str) -> Vec<u8> {
    let dir = PluginDir::new("mime-bytes");
    dir.add("40-out-trace.so", &plugin_so("mq-example-out-trace"), "");
    let host = dir.builder().mode(mode).start().unwrap();
    let mut session = host.open(mq_host::Direction::Outgoing).unwrap();
    let message = json!({"envelope": "a@shop.example", "recipient": "b@example.net", "mime": mime});
    let result = session.run(mq_host::Event::OutData(message)).unwrap();
    session.close().unwrap();
    result.smtp.unwrap().mime.unwrap()
}

#[test]
fn a_rust_plugin_rewriting_the_mime_keeps_nul_and_8bit_bytes() {
    // A NUL byte inside, and 8-bit bytes (UTF-8 é, ÿ) on both sides of it.
    let mime = "Subject: caf\u{e9}\r\n\r\nbefore\u{0}after \u{ff}\r\n";
    let sent = traced_smtp_mime(mq_host::HostMode::Table, mime);
    // Compared escaped: exact, and readable when it fails.
    assert_eq!(
        sent.escape_ascii().to_string(),
        traced(1, mime).escape_ascii().to_string()
    );
}

#[test]
fn without_the_host_table_a_rust_plugin_reads_an_outgoing_mime_from_the_json_every_byte() {
    // An outgoing message's MQ_mime is NULL until a plugin set one (as in
    // MailerQ): out-trace reads the JSON's `mime` through libfastjson,
    // whose strings have a length, so a NUL byte is kept here too.
    let mime = "Subject: x\r\n\r\nbefore\u{0}after\r\n";
    let sent = traced_smtp_mime(mq_host::HostMode::GlobalSymbolsOnly, mime);
    assert_eq!(
        sent.escape_ascii().to_string(),
        traced(1, mime).escape_ascii().to_string()
    );
}
