//! Incoming messages as MailerQ's `json-incoming` describes them, checked
//! field by field with real clients (python smtplib) against `Host::serve`:
//! `received`, the per-recipient `message-id` the client is given in the
//! `250` after DATA, the `connection` object (both ends, `secure`, `user`),
//! 8-bit MIME kept byte for byte; and where `MQ_send`'s bytes can reach a
//! client and where they cannot.

use mq_e2e::*;
use mq_host::smtp_in::{Listener, ServeConfig};
use mq_host::{Direction, Event};
use serde_json::Value;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

/// Runs a Python script (a real smtplib client) against `server`; its
/// stdout, after checking it succeeded.
fn python(script: &str, server: &Listener) -> String {
    mq_e2e::python_client(script, server.local_addr().port())
}

/// Serves with STARTTLS (self-signed) from `host`, storing under `data`.
fn serve(host: &mq_host::Host, data: &Path) -> Listener {
    let config = ServeConfig {
        data_dir: data.to_owned(),
        tls: Some(mq_host::smtp_in::self_signed_tls("localhost").unwrap()),
        hostname: "mx.test.example".to_owned(),
        ..Default::default()
    };
    host.serve(TcpListener::bind("127.0.0.1:0").unwrap(), config)
        .unwrap()
}

/// The stored message for `recipient`.
fn stored_for<'a>(stored: &'a [Value], recipient: &str) -> &'a Value {
    stored
        .iter()
        .find(|m| m["recipient"] == recipient)
        .unwrap_or_else(|| panic!("no message for {recipient} in {stored:#?}"))
}

/// Whether `text` is MailerQ's time form `YYYY-MM-DD HH:MM:SS`.
fn is_mailerq_time(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        })
}

/// A session without TLS, two recipients: each gets its own message-id,
/// given to the client in the 250 after DATA; the connection object has
/// MailerQ's properties and nothing else.
#[test]
fn plain_session_json_field_by_field() {
    let dir = PluginDir::new("incoming-plain");
    let host = dir.start();
    let data = dir.path().join("data");
    let server = serve(&host, &data);
    let script = r#"
import smtplib, sys
port = int(sys.argv[1])
s = smtplib.SMTP("127.0.0.1", port, timeout=10)
s.ehlo("client.example")
print("client-port", s.sock.getsockname()[1])
s.mail("sender@shop.example")
s.rcpt("alice@example.com")
s.rcpt("bob@example.com")
code, text = s.data(b"Subject: two\r\n\r\nfor both\r\n")
print("data", code)
for line in text.decode().splitlines():
    print("reply", line)
s.quit()
"#;
    let stdout = python(script, &server);
    let lines: Vec<&str> = stdout.lines().collect();
    let client_port: u64 = lines[0]
        .strip_prefix("client-port ")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(lines[1], "data 250", "{stdout}");
    assert_eq!(lines[2], "reply 2.0.0 queued with these identifiers:");
    let given: Vec<(&str, &str)> = lines[3..]
        .iter()
        .map(|l| {
            let rest = l.strip_prefix("reply 2.0.0 ").expect("an id line");
            rest.split_once(" for ").expect("<id> for <recipient>")
        })
        .collect();
    assert_eq!(given.len(), 2, "{stdout}");
    assert_ne!(given[0].0, given[1].0, "one id per recipient");

    let stored = json_files(&data.join("inbox"));
    assert_eq!(stored.len(), 2);
    for (id, recipient) in &given {
        let m = stored_for(&stored, recipient);
        assert_eq!(m["message-id"], *id, "the id the client was given");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "{id}"
        );
        assert_eq!(m["envelope"], "sender@shop.example");
        assert_eq!(m["hostname"], "mx.test.example");
        let received = m["received"].as_str().unwrap();
        assert!(is_mailerq_time(received), "received {received:?}");
        // One DATA for two recipients: written once, each message with
        // its own key to it.
        let key = m["key"].as_str().expect("a key");
        assert_eq!(
            std::fs::read(data.join("mime").join(key)).unwrap(),
            b"Subject: two\r\n\r\nfor both\r\n"
        );
        let expected = serde_json::json!({
            "local-ip": "127.0.0.1",
            "local-port": server.local_addr().port(),
            "remote-ip": "127.0.0.1",
            "remote-port": client_port,
            "secure": false,
        });
        assert_eq!(m["connection"], expected, "exactly these properties");
    }
}

/// After STARTTLS and AUTH, `secure` is true and `user` is the login.
#[test]
fn secure_and_authenticated_session_json() {
    let dir = PluginDir::new("incoming-secure");
    dir.add("10-probe.so", &c_probe(), "smtp_in_authenticate exercise\n");
    let host = dir.start();
    let data = dir.path().join("data");
    let server = serve(&host, &data);
    let script = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10)
s.starttls(context=ctx)
s.ehlo()
s.login("good", "secret")
print("refused", s.sendmail("a@shop.example", ["carol@example.com"], "Subject: s\r\n\r\nsecret\r\n"))
s.quit()
"#;
    assert_eq!(python(script, &server).trim(), "refused {}");
    let stored = json_files(&data.join("inbox"));
    assert_eq!(stored.len(), 1);
    let connection = &stored[0]["connection"];
    assert_eq!(connection["secure"], true, "{connection}");
    assert_eq!(connection["user"], "good", "{connection}");
    assert_eq!(connection["local-ip"], "127.0.0.1");
    assert!(connection["remote-port"].is_u64(), "{connection}");
}

/// 8-bit MIME that is not UTF-8 is stored byte for byte (under the
/// message's `key`), never made lossy.
#[test]
fn non_utf8_mime_is_kept_byte_for_byte() {
    let dir = PluginDir::new("incoming-8bit");
    let host = dir.start();
    let data = dir.path().join("data");
    let server = serve(&host, &data);
    let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10)
s.ehlo()
s.mail("a@shop.example", ["BODY=8BITMIME"])
s.rcpt("dora@example.com")
print("data", s.data(b"Subject: caf\xe9\r\nContent-Type: text/plain; charset=latin1\r\n\r\n\xff\xfe na\xefve\r\n")[0])
s.quit()
"#;
    assert_eq!(python(script, &server).trim(), "data 250");
    let stored = json_files(&data.join("inbox"));
    assert_eq!(stored.len(), 1);
    let m = &stored[0];
    assert!(m.get("mime").is_none(), "not a lossy string: {m}");
    let key = m["key"].as_str().expect("the MIME is kept apart");
    let bytes = std::fs::read(data.join("mime").join(key)).unwrap();
    assert_eq!(
        bytes,
        b"Subject: caf\xe9\r\nContent-Type: text/plain; charset=latin1\r\n\r\n\xff\xfe na\xefve\r\n"
    );
}

/// A C plugin, written against MailerQ's API only, that replaces every
/// incoming message's MIME with 8-bit (Latin-1) data.
fn latin1_plugin(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("latin1.c");
    std::fs::write(
        &src,
        r#"
#include <mailerq.h>
int mq_version(void) { return MQ_API_VERSION; }
bool mq_smtp_in_message(MQ_Context *context, MQ_Connection *connection, MQ_Message *message)
{
    static const char mime[] = "Subject: caf\xe9\r\n\r\n\xff na\xefve\r\n";
    (void)context;
    (void)connection;
    MQ_setMime(message, mime, sizeof mime - 1);
    return false;
}
"#,
    )
    .unwrap();
    let so = dir.join("build-latin1.so");
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/../include");
    let status = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-I", include, "-o"])
        .arg(&so)
        .arg(&src)
        .status()
        .expect("run the C compiler");
    assert!(status.success());
    so
}

const LATIN1: &[u8] = b"Subject: caf\xe9\r\n\r\n\xff na\xefve\r\n";

/// 8-bit MIME a plugin sets is stored byte for byte too; `mq-host run`,
/// whose output is JSON lines, reports it instead of making it lossy.
#[test]
fn non_utf8_mime_a_plugin_sets_is_never_made_lossy() {
    let build = PluginDir::new("incoming-latin1-build");
    let so = latin1_plugin(build.path());
    let dir = PluginDir::new("incoming-latin1");
    dir.add("10-latin1.so", &so, "");
    let host = dir.start();
    let data = dir.path().join("data");
    let server = serve(&host, &data);
    let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10)
print("refused", s.sendmail("a@shop.example", ["fred@example.com"], "Subject: plain\r\n\r\nascii\r\n"))
s.quit()
"#;
    assert_eq!(python(script, &server).trim(), "refused {}");
    let stored = json_files(&data.join("inbox"));
    assert_eq!(stored.len(), 1);
    let key = stored[0]["key"].as_str().expect("kept apart, not lossy");
    assert_eq!(std::fs::read(data.join("mime").join(key)).unwrap(), LATIN1);

    // The host API has the bytes as they are.
    let r = host
        .run_event(
            Direction::Incoming,
            Event::Message(serde_json::json!({
                "envelope": "a@shop.example",
                "recipient": "fred@example.com",
                "mime": "Subject: plain\r\n\r\nascii\r\n",
            })),
        )
        .unwrap();
    assert_eq!(r.mime.as_deref(), Some(LATIN1));

    // `run`: an error line naming why, and the next line still runs.
    let input = concat!(
        r#"{"envelope":"a@shop.example","recipient":"fred@example.com","mime":"x\r\n"}"#,
        "\n",
        r#"[]"#,
        "\n"
    );
    let mut output = Vec::new();
    let summary =
        mq_host::batch::run_jsonl(&host, Direction::Incoming, input.as_bytes(), &mut output)
            .unwrap();
    assert_eq!(summary.errors, 2, "{}", String::from_utf8_lossy(&output));
    let first: Value =
        serde_json::from_slice(output.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["line"], 1);
    let error = first["error"].as_str().unwrap();
    assert!(error.contains("not UTF-8"), "{error}");
    assert!(
        !String::from_utf8(output).unwrap().contains('\u{fffd}'),
        "nothing lossy"
    );
}

/// Waits (a hang detector, not a speed target) until the host's log has
/// a line `done` accepts.
fn wait_for_log(host: &mq_host::Host, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log: Vec<String> = host.log().iter().map(|l| l.text.clone()).collect();
        if done(&log) {
            return log;
        }
        assert!(Instant::now() < deadline, "{what}: {log:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// In `smtp_in_close` the client gets nothing more: `MQ_send` returns 0,
/// and the host says so, once per plugin and hook, naming both.
#[test]
fn mq_send_in_smtp_in_close_returns_0_and_is_logged() {
    let dir = PluginDir::new("incoming-send-close");
    dir.add("10-probe.so", &c_probe(), "smtp_in_close exercise\n");
    let host = dir.start();
    let server = serve(&host, &dir.path().join("data"));
    let script = r#"
import smtplib, sys
for _ in range(2):
    s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10)
    s.ehlo()
    s.quit()
"#;
    python(script, &server);
    let log = wait_for_log(&host, "both close chains ran", |log| {
        log.iter()
            .filter(|l| *l == "probe 10-probe smtp_in_close")
            .count()
            == 2
            && log.iter().filter(|l| *l == "probe 10-probe sent 0").count() == 2
    });
    assert!(
        !log.iter()
            .any(|l| l.starts_with("probe 10-probe sent ") && l != "probe 10-probe sent 0"),
        "{log:#?}"
    );
    let warnings: Vec<&String> = log
        .iter()
        .filter(|l| {
            l.starts_with("plugin 10-probe: MQ_send in smtp_in_close sent nothing and returned 0")
        })
        .collect();
    assert_eq!(warnings.len(), 1, "once per plugin and hook: {log:#?}");
    assert!(warnings[0].contains("closing"), "says why: {}", warnings[0]);
    assert_eq!(host.counters().plugin_send_undeliverable, 2);
}

/// The same through the host API, for both probes; in `smtp_in_connect`
/// the bytes are the reply and their count is returned.
#[test]
fn mq_send_counts_where_the_client_gets_the_bytes_and_not_in_close() {
    for (kind, so) in [("rust", rust_probe()), ("c", c_probe())] {
        let dir = PluginDir::new(&format!("incoming-send-api-{kind}"));
        dir.add(
            "10-p.so",
            &so,
            "smtp_in_connect exercise\nsmtp_in_close exercise\n",
        );
        let host = dir.start();
        let mut s = host.open(Direction::Incoming).unwrap();
        let r = s.run(Event::Connect).unwrap();
        assert!(
            r.plugin_log().contains(&"probe 10-p sent 16".to_owned()),
            "{kind}"
        );
        assert_eq!(r.sent, b"250-probe 10-p\r\n", "{kind}");
        let r = s.run(Event::Close).unwrap();
        assert!(
            r.plugin_log().contains(&"probe 10-p sent 0".to_owned()),
            "{kind}: {:#?}",
            r.plugin_log()
        );
        assert!(r.sent.is_empty(), "{kind}");
        assert_eq!(host.counters().plugin_send_undeliverable, 1, "{kind}");
    }
}

/// On a delivery connection the host speaks SMTP to the relay itself:
/// `MQ_send` in `smtp_out_data` sends nothing, returns 0 and is logged.
#[test]
fn mq_send_on_an_outgoing_hook_returns_0_and_is_logged() {
    let dir = PluginDir::new("incoming-send-out");
    dir.add(
        "10-p.so",
        &c_probe(),
        "smtp_out_data reject 250 not for the relay\n",
    );
    let host = dir.start();
    let mut out = host.open(Direction::Outgoing).unwrap();
    let message = serde_json::json!({
        "envelope": "a@shop.example",
        "recipient": "b@example.com",
        "mime": "Subject: x\r\n\r\nx\r\n",
    });
    let r = out.run(Event::OutData(message)).unwrap();
    assert!(r.sent.is_empty());
    let log: Vec<String> = r.log.iter().map(|l| l.text.clone()).collect();
    assert!(
        log.iter().any(|l| l.starts_with(
            "plugin 10-p: MQ_send in smtp_out_data sent nothing and returned 0 (23 byte(s))"
        ) && l.contains("relay")),
        "{log:#?}"
    );
    assert_eq!(host.counters().plugin_send_undeliverable, 1);
}

/// A plugin that answers DATA itself (`MQ_send` of a 2xx at
/// `smtp_in_data`, then completes) replaces the host's `250`: the client
/// sees the plugin's reply, and the message is stored.
#[test]
fn a_plugins_reply_at_data_replaces_the_hosts() {
    let dir = PluginDir::new("incoming-data-reply");
    dir.add(
        "10-p.so",
        &c_probe(),
        "smtp_in_data reject 250 2.0.0 taken by the probe\n",
    );
    let host = dir.start();
    let data = dir.path().join("data");
    let server = serve(&host, &data);
    let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10)
s.ehlo()
s.mail("a@shop.example")
s.rcpt("erin@example.com")
code, text = s.data(b"Subject: d\r\n\r\nd\r\n")
print(code, text.decode())
s.quit()
"#;
    assert_eq!(
        python(script, &server).trim(),
        "250 2.0.0 taken by the probe"
    );
    assert_eq!(json_files(&data.join("inbox")).len(), 1);
}
