//! Delivery results as MailerQ publishes them (its result JSON, field by
//! field), its four result queues, `nextattempt`, `maxdelivertime` and
//! `maxattempts`, the message properties mq-host implements (`smarthost`,
//! `headers`) or reports, and `MQ_fileDescriptor` on the delivery
//! connection — against a real SMTP server (aiosmtpd) and scripted relays.

use mq_e2e::*;
use mq_host::delivery::{self, DeliveryConfig, Outbox, Outcome, Status, Until};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn config(relay: String) -> DeliveryConfig {
    DeliveryConfig {
        relay,
        helo: "mq-host.test".into(),
        reply_timeout: Duration::from_secs(20),
        retry_delay: Duration::from_millis(10),
        ..Default::default()
    }
}

/// Delivers `messages` until each has its final result; every outcome
/// (retries included) in order, the host's counters and log.
fn deliver(
    dir: &PluginDir,
    config: &DeliveryConfig,
    messages: &[Value],
) -> (Vec<Outcome>, mq_host::CounterSnapshot, Vec<String>) {
    let (outbox, _) = Outbox::open(dir.path().join("data")).unwrap();
    for message in messages {
        outbox.add(message).unwrap();
    }
    let host = dir.start();
    let outcomes = Mutex::new(Vec::new());
    delivery::run(&host, &outbox, config, Until::Empty, &|o| {
        outcomes.lock().unwrap().push(o.clone())
    });
    let log = host.log().into_iter().map(|r| r.text).collect();
    let counters = host.shutdown().counters;
    (outcomes.into_inner().unwrap(), counters, log)
}

/// `text` is a time as MailerQ writes it: `YYYY-MM-DD HH:MM:SS`.
fn assert_mailerq_time(text: &Value) {
    let text = text
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {text}"));
    let shape: String = text
        .chars()
        .map(|c| if c.is_ascii_digit() { 'D' } else { c })
        .collect();
    assert_eq!(shape, "DDDD-DD-DD DD:DD:DD", "{text}");
}

/// `time` in MailerQ's form (UTC), computed independently of the host:
/// by `date -u`.
fn mailerq_time(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%d %H:%M:%S"])
        .output()
        .expect("date runs");
    assert!(out.status.success(), "date -u failed");
    String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_delivered_message_has_mailerqs_result_field_by_field_in_results_and_success() {
    let dir = PluginDir::new("results-accepted");
    let sink = Sink::start(&dir.path().join("sink"), &[]);
    let mime = "Subject: x\r\n\r\nbody\r\n";
    let message = json!({"envelope": "a@shop.example", "recipient": "b@example.net",
                         "mime": mime, "custom": {"id": 7}});
    let (outcomes, counters, _) = deliver(&dir, &config(sink.relay()), &[message]);
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].status, Status::Success);
    assert_eq!(counters.messages_delivered, 1);
    let result = &outcomes[0].result;
    assert_eq!(result["custom"], json!({"id": 7}), "custom properties stay");
    // What MailerQ extracts from the MIME as sent, for logging.
    assert_eq!(
        result["extracted"],
        json!({"subject": "x", "headers": {"subject": "x"},
               "envelope": {"domain": "shop.example", "local": "a"},
               "recipient": {"domain": "example.net", "local": "b"}})
    );
    assert!(result.get("mime").is_none(), "mime stripped");
    let results = result["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    let entry = results[0].as_object().unwrap();
    let mut keys: Vec<&str> = entry.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "code",
            "description",
            "dsn",
            "from",
            "messages",
            "mta",
            "result",
            "sent",
            "state",
            "status",
            "time",
            "to"
        ],
        "exactly MailerQ's fields: {result}"
    );
    assert_eq!(entry["state"], "message");
    assert_eq!(entry["result"], "accepted");
    assert_mailerq_time(&entry["time"]);
    assert_eq!(
        entry["mta"], "sink.test",
        "the name in the relay's greeting"
    );
    assert_eq!(entry["from"], "127.0.0.1");
    assert_eq!(entry["to"], "127.0.0.1");
    assert_eq!(entry["messages"], 1);
    assert_eq!(entry["code"], 250);
    assert_eq!(entry["status"], "2.0.0");
    assert_eq!(entry["description"], "OK stored as 0001");
    assert_eq!(entry["dsn"], false, "aiosmtpd announces no DSN");
    let commands = [
        "EHLO mq-host.test",
        "MAIL FROM:<a@shop.example>",
        "RCPT TO:<b@example.net>",
        "DATA",
        ".",
    ];
    let command_bytes: usize = commands.iter().map(|c| c.len() + 2).sum();
    assert_eq!(
        entry["sent"],
        json!({"connection": command_bytes + mime.len(), "data": mime.len()})
    );
    // The four queues: a delivery is in `results` and `success`.
    let data = dir.path().join("data");
    let stored = json_files(&data.join("results"));
    assert_eq!(stored, std::slice::from_ref(result));
    assert_eq!(
        json_files(&data.join("success")),
        std::slice::from_ref(result)
    );
    assert!(names(&data.join("failures")).is_empty());
    assert!(names(&data.join("retry")).is_empty());
    assert!(names(&data.join("inbox")).is_empty());
}

/// A relay on a thread, serving any number of connections: `greeting`,
/// then for each command the reply its verb has in `replies` (`354 go on`
/// to `DATA`, `250 ok` to others, if none; `CLOSE` closes the connection). After `DATA`'s `354`, the data
/// is read and `.` answered from `replies` (`250 2.0.0 queued` if none).
fn scripted_relay(
    greeting: &'static str,
    replies: &'static [(&'static str, &'static str)],
) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let answer = |verb: &str, default: &'static str| {
                    replies
                        .iter()
                        .find(|(v, _)| *v == verb)
                        .map_or(default, |(_, reply)| *reply)
                };
                let _ = write!(stream, "{greeting}\r\n");
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
                    let default = if verb == "DATA" {
                        "354 go on"
                    } else {
                        "250 ok"
                    };
                    let mut reply = answer(&verb, default);
                    if verb == "QUIT" {
                        reply = "221 bye";
                    }
                    if reply == "CLOSE" {
                        return;
                    }
                    if stream.write_all(format!("{reply}\r\n").as_bytes()).is_err() {
                        return;
                    }
                    if verb == "DATA" && reply.starts_with("354") {
                        while line != ".\r\n" {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                        }
                        let end = answer(".", "250 2.0.0 queued");
                        if stream.write_all(format!("{end}\r\n").as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// One attempt at `relay` (one allowed); its first result entry and
/// status.
fn one_attempt(name: &str, relay: String) -> (Value, Status) {
    let dir = PluginDir::new(name);
    let message = json!({"envelope": "a@shop.example", "recipient": "b@example.net",
                         "mime": "Subject: x\r\n\r\nbody\r\n"});
    let config = DeliveryConfig {
        max_attempts: 1,
        ..config(relay)
    };
    let (outcomes, _, _) = deliver(&dir, &config, &[message]);
    assert_eq!(outcomes.len(), 1);
    let outcome = &outcomes[0];
    (outcome.result["results"][0].clone(), outcome.status)
}

#[test]
fn each_step_of_the_conversation_reports_mailerqs_state_and_result() {
    // A refused greeting: state intro; the relay's name is still known.
    let relay = scripted_relay("421 busy.relay.test closing", &[]);
    let (entry, status) = one_attempt("results-intro", relay);
    assert_eq!(status, Status::Failure, "one attempt allowed");
    assert_eq!(entry["state"], "intro", "{entry}");
    assert_eq!(entry["result"], "error");
    assert_eq!(entry["code"], 421);
    assert_eq!(entry["mta"], "busy.relay.test");
    assert!(
        entry.get("dsn").is_none(),
        "dsn only on a delivery: {entry}"
    );

    // EHLO refused, HELO used: its refusal has state helo.
    let relay = scripted_relay(
        "220 old.relay.test",
        &[("EHLO", "502 5.5.1 no EHLO"), ("HELO", "451 4.7.1 later")],
    );
    let (entry, _) = one_attempt("results-helo", relay);
    assert_eq!(entry["state"], "helo", "{entry}");
    assert_eq!(entry["result"], "error");
    assert_eq!(entry["code"], 451);
    assert_eq!(entry["status"], "4.7.1");
    assert_eq!(entry["description"], "later");

    // An answer that is not SMTP: invalid.
    let relay = scripted_relay("220 odd.relay.test", &[("MAIL", "what?")]);
    let (entry, _) = one_attempt("results-invalid", relay);
    assert_eq!(entry["state"], "mailfrom", "{entry}");
    assert_eq!(entry["result"], "invalid");

    // A 2xx where DATA's 354 was due: not a valid answer there.
    let relay = scripted_relay("220 odd.relay.test", &[("DATA", "250 sure")]);
    let (entry, _) = one_attempt("results-data", relay);
    assert_eq!(entry["state"], "data", "{entry}");
    assert_eq!(entry["result"], "invalid");

    // The connection lost while waiting for an answer: lost.
    let relay = scripted_relay("220 rude.relay.test", &[("RCPT", "CLOSE")]);
    let (entry, _) = one_attempt("results-lost", relay);
    assert_eq!(entry["state"], "rcptto", "{entry}");
    assert_eq!(entry["result"], "lost");
    assert_eq!(entry["mta"], "rude.relay.test");

    // Refused after the data: state message, result error.
    let relay = scripted_relay("220 strict.relay.test", &[(".", "554 5.7.1 spam")]);
    let (entry, status) = one_attempt("results-refused", relay);
    assert_eq!(status, Status::Failure);
    assert_eq!(entry["state"], "message", "{entry}");
    assert_eq!(entry["result"], "error");
    assert_eq!(entry["status"], "5.7.1");

    // A relay that announces DSN: dsn true on the delivery.
    let relay = scripted_relay(
        "220 dsn.relay.test ESMTP",
        &[("EHLO", "250-dsn.relay.test\r\n250-DSN\r\n250 8BITMIME")],
    );
    let (entry, status) = one_attempt("results-dsn", relay);
    assert_eq!(status, Status::Success);
    assert_eq!(entry["result"], "accepted", "{entry}");
    assert_eq!(entry["dsn"], true);
    assert_eq!(entry["mta"], "dsn.relay.test");

    // Nothing listening: state connect, no connection fields.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = free.local_addr().unwrap().to_string();
    drop(free);
    let (entry, _) = one_attempt("results-connect", relay);
    assert_eq!(entry["state"], "connect", "{entry}");
    assert_eq!(entry["result"], "error");
    for absent in ["mta", "from", "to", "messages", "sent", "code"] {
        assert!(entry.get(absent).is_none(), "{absent}: {entry}");
    }
}

#[test]
fn retries_go_to_retry_with_a_nextattempt_object_and_used_up_attempts_expire() {
    let dir = PluginDir::new("results-retry");
    let sink = Sink::start(&dir.path().join("sink"), &["--fail-first", "5"]);
    let message = json!({"recipient": "b@example.net", "mime": "x\r\n",
                         "maxattempts": 2, "retries": [0]});
    let (outcomes, counters, _) = deliver(&dir, &config(sink.relay()), &[message]);
    let statuses: Vec<_> = outcomes.iter().map(|o| o.status).collect();
    assert_eq!(statuses, [Status::Retry, Status::Failure]);
    assert_eq!(counters.messages_expired, 1);
    assert_eq!(counters.delivery_attempts, 2);

    let retry = &outcomes[0].result;
    assert_mailerq_time(&retry["nextattempt"]["time"]);
    assert_eq!(retry["nextattempt"].as_object().unwrap().len(), 1);
    let first = &retry["results"][0];
    assert_eq!(first["state"], "message");
    assert_eq!(first["result"], "error");
    assert_eq!(first["code"], 451);
    assert_eq!(first["status"], "4.3.0");

    let results = outcomes[1].result["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "two attempts, then the expiry");
    assert_eq!(results[1]["code"], 451);
    assert_eq!(results[2]["state"], "process");
    assert_eq!(results[2]["result"], "timeout");
    assert_eq!(
        results[2]["description"],
        "expired: 2 attempt(s) made, maxattempts is 2"
    );
    assert_mailerq_time(&results[2]["time"]);

    let data = dir.path().join("data");
    assert_eq!(names(&data.join("retry")).len(), 1);
    assert_eq!(
        json_files(&data.join("failures")),
        [outcomes[1].result.clone()]
    );
    assert_eq!(
        json_files(&data.join("results")),
        [outcomes[1].result.clone()]
    );
    assert!(names(&data.join("success")).is_empty());
    assert!(sink.received().is_empty());
}

#[test]
fn a_message_past_its_delivery_time_expires_without_an_attempt() {
    let dir = PluginDir::new("results-expired");
    let sink = Sink::start(&dir.path().join("sink"), &["--fail-first", "1"]);
    let an_hour = SystemTime::now() + Duration::from_secs(3600);
    let messages = [
        // Its own maxdelivertime has passed.
        json!({"recipient": "past@example.net", "mime": "x\r\n",
               "maxdelivertime": "2000-01-01 00:00:00"}),
        // No maxdelivertime: a day after its first attempt (long ago).
        json!({"recipient": "old@example.net", "mime": "x\r\n",
               "results": [{"state": "message", "result": "error",
                            "time": "2000-01-01 00:00:00", "code": 451}]}),
        // A retry whose next attempt would come after its delivery time.
        json!({"recipient": "soon@example.net", "mime": "x\r\n",
               "maxdelivertime": mailerq_time(an_hour), "retries": [7200]}),
    ];
    let (outcomes, counters, _) = deliver(&dir, &config(sink.relay()), &messages);
    assert_eq!(outcomes.len(), 3, "no retries");
    assert!(outcomes.iter().all(|o| o.status == Status::Failure));
    assert_eq!(counters.messages_expired, 3);
    assert_eq!(counters.delivery_attempts, 1, "only soon@ was tried");
    let last = |rcpt: &str| {
        let outcome = outcomes
            .iter()
            .find(|o| o.result["recipient"] == rcpt)
            .unwrap();
        let results = outcome.result["results"].as_array().unwrap().clone();
        let last = results.last().unwrap().clone();
        assert_eq!(last["state"], "process", "{last}");
        assert_eq!(last["result"], "timeout", "{last}");
        (
            results.len(),
            last["description"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(
        last("past@example.net"),
        (
            1,
            "expired: its delivery time ended at 2000-01-01 00:00:00 (maxdelivertime)".into()
        )
    );
    assert_eq!(
        last("old@example.net"),
        (
            2,
            "expired: its delivery time ended at 2000-01-02 00:00:00 (maxdelivertime)".into()
        )
    );
    let (n, why) = last("soon@example.net");
    assert_eq!(n, 2, "its one attempt, then the expiry");
    assert_eq!(
        why,
        format!(
            "expired: its next attempt would come after its delivery time ends at {} (maxdelivertime)",
            mailerq_time(an_hour)
        )
    );
}

#[test]
fn a_nextattempt_in_mailerqs_form_is_honoured() {
    let dir = PluginDir::new("results-nextattempt");
    let sink = Sink::start(&dir.path().join("sink"), &[]);
    let (outbox, _) = Outbox::open(dir.path().join("data")).unwrap();
    let later = mailerq_time(SystemTime::now() + Duration::from_secs(3600));
    outbox
        .add(&json!({"recipient": "later@example.net", "mime": "x\r\n",
                     "nextattempt": {"time": later}}))
        .unwrap();
    outbox
        .add(&json!({"recipient": "now@example.net", "mime": "x\r\n"}))
        .unwrap();
    let host = dir.start();
    let outcomes = Mutex::new(Vec::new());
    delivery::run(
        &host,
        &outbox,
        &config(sink.relay()),
        Until::Stopped,
        &|o| {
            outcomes.lock().unwrap().push(o.clone());
            outbox.stop();
        },
    );
    drop(host);
    let outcomes = outcomes.into_inner().unwrap();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].result["recipient"], "now@example.net");
    let received = sink.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].rcpt_tos, ["now@example.net"]);
    // The later one waits in the outbox, untouched.
    let waiting = json_files(&dir.path().join("data/inbox"));
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0]["nextattempt"]["time"], later);
    assert!(waiting[0].get("results").is_none());
}

#[test]
fn smarthost_and_headers_change_the_delivery() {
    let dir = PluginDir::new("results-smarthost");
    let sink = Sink::start(&dir.path().join("sink"), &[]);
    // The configured relay is down; the smarthost is the sink.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = free.local_addr().unwrap().to_string();
    drop(free);
    let message = json!({
        "recipient": "b@example.net",
        "mime": "From: ex@ex.com\r\nDummy: xyz\r\nSubject: s\r\n\r\nbody\r\n",
        "smarthost": {"hostname": "127.0.0.1", "port": sink.port},
        "headers": {"remove": "dummy", "prepend": {"x-first": "1"},
                    "append": {"x-last": ["a", "b"]}, "replace": {"from": "xe@xe.com"}},
    });
    let (outcomes, _, _) = deliver(&dir, &config(down), &[message]);
    assert_eq!(outcomes.len(), 1);
    assert_eq!(
        outcomes[0].status,
        Status::Success,
        "{}",
        outcomes[0].result
    );
    let received = sink.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        String::from_utf8(received[0].data.clone()).unwrap(),
        "x-first: 1\r\nfrom: xe@xe.com\r\nSubject: s\r\nx-last: a\r\nx-last: b\r\n\r\nbody\r\n"
    );
}

#[test]
fn unimplemented_properties_are_reported_once_and_counted() {
    let dir = PluginDir::new("results-unimplemented");
    let sink = Sink::start(&dir.path().join("sink"), &[]);
    let signed = |rcpt: &str| {
        json!({"recipient": rcpt, "mime": "x\r\n", "tags": ["t"],
               "dkim": {"domain": "example.com", "selector": "x", "key": "k"},
               "inlinecss": false})
    };
    let messages = [
        signed("a@example.net"),
        signed("b@example.net"),
        json!({"recipient": "c@example.net", "mime": "x\r\n", "security": "required"}),
        json!({"recipient": "d@example.net", "mime": {"subject": "s", "text": "t"}}),
    ];
    let (outcomes, counters, log) = deliver(&dir, &config(sink.relay()), &messages);
    // dkim and tags twice each; security and mime once each.
    assert_eq!(counters.properties_not_implemented, 6);
    let warnings = |property: &str| {
        let named = format!("the message property `{property}` is not implemented");
        log.iter().filter(|l| l.contains(&named)).count()
    };
    assert_eq!(warnings("dkim"), 1, "{log:#?}");
    assert_eq!(warnings("tags"), 1);
    assert_eq!(warnings("security"), 1);
    assert_eq!(warnings("mime"), 1);
    assert_eq!(warnings("inlinecss"), 0, "false asks for nothing");
    // Signed messages still go (unsigned); the two that cannot, fail.
    assert_eq!(sink.received().len(), 2);
    let entry = |rcpt: &str| {
        let outcome = outcomes
            .iter()
            .find(|o| o.result["recipient"] == rcpt)
            .unwrap();
        assert_eq!(outcome.status, Status::Failure);
        outcome.result["results"][0].clone()
    };
    let insecure = entry("c@example.net");
    assert_eq!(
        (&insecure["state"], &insecure["result"]),
        (&json!("process"), &json!("error"))
    );
    let responsive = entry("d@example.net");
    assert_eq!(
        (&responsive["state"], &responsive["result"]),
        (&json!("responsive"), &json!("error"))
    );
}

#[test]
fn mq_file_descriptor_on_a_delivery_is_the_relay_socket() {
    let dir = PluginDir::new("results-fd");
    dir.add("50-out-socket.so", &plugin_so("mq-test-c-out-socket"), "");
    let sink = Sink::start(&dir.path().join("sink"), &[]);
    let message = json!({"recipient": "b@example.net", "mime": "x\r\n"});
    let (outcomes, _, log) = deliver(&dir, &config(sink.relay()), &[message]);
    assert_eq!(outcomes[0].status, Status::Success);
    for hook in ["smtp_out_data", "smtp_out_sent"] {
        let prefix = format!("out-socket {hook} fd ");
        let line = log
            .iter()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {hook} line: {log:#?}"));
        // out-socket <hook> fd <n> local <ip> <port> peer <ip> <port>
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words.len(), 10, "{line}");
        assert!(words[3].parse::<i32>().unwrap() >= 0, "{line}");
        assert_eq!(words[4..6], ["local", "127.0.0.1"], "{line}");
        assert_eq!(
            words[7..],
            ["peer", "127.0.0.1", &sink.port.to_string()],
            "{line}"
        );
    }
}

#[test]
fn deliver_takes_the_delivery_time_from_max_delivertime() {
    let dir = PluginDir::new("results-cli-delivertime");
    let sink = Sink::start(&dir.path().join("sink"), &[]);
    // First tried two hours ago.
    let tried = mailerq_time(SystemTime::now() - Duration::from_secs(7200));
    let input = dir.path().join("one.jsonl");
    let message = json!({"recipient": "b@example.net", "mime": "x\r\n",
                         "results": [{"state": "message", "result": "error", "time": tried}]});
    std::fs::write(&input, format!("{message}\n")).unwrap();
    let run = |extra: &[&str]| -> Value {
        let out = std::process::Command::new(host_binary())
            .args(["deliver", "--quiet", "--relay", &sink.relay()])
            .args(extra)
            .arg(&input)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
    };
    // An hour: it expired an hour ago, without an attempt.
    let expired = run(&["--max-delivertime", "3600"]);
    let last = &expired["results"][1];
    assert_eq!(
        (&last["state"], &last["result"]),
        (&json!("process"), &json!("timeout"))
    );
    assert!(sink.received().is_empty());
    // The default, a day: it is delivered.
    let delivered = run(&[]);
    assert_eq!(delivered["results"][1]["result"], "accepted", "{delivered}");
    assert_eq!(sink.received().len(), 1);
}
