//! `Host::serve`: real SMTP clients against the host with real plugins.

use mq_e2e::*;
use mq_host::smtp_in::ServeConfig;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Runs a Python script (a real smtplib client) against `server`; its
/// stdout, after checking it succeeded.
fn python(script: &str, server: &mq_host::smtp_in::Listener) -> String {
    mq_e2e::python_client(script, server.local_addr().port())
}

/// Serves SMTP from `host` on a free loopback port, storing under `data`.
fn serve(host: &mq_host::Host, data: &Path) -> mq_host::smtp_in::Listener {
    let config = ServeConfig {
        data_dir: data.to_owned(),
        ..Default::default()
    };
    host.serve(TcpListener::bind("127.0.0.1:0").unwrap(), config)
        .unwrap()
}

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: std::net::SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    /// One reply (all its lines), e.g. "250 ..." or "250-a\n250 b".
    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            assert!(!line.is_empty(), "connection closed; so far: {all}");
            all.push_str(line.trim_end());
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
            all.push('\n');
        }
    }

    fn send(&mut self, bytes: &str) {
        self.writer.write_all(bytes.as_bytes()).unwrap();
    }
}

/// The `(message-id, recipient)` pairs of the `250` after DATA, which
/// lists one line per stored message.
fn queued(reply: &str) -> Vec<(String, String)> {
    let mut lines = reply.lines();
    assert_eq!(
        lines.next(),
        Some("250-2.0.0 queued with these identifiers:"),
        "{reply}"
    );
    lines
        .map(|line| {
            let rest = line
                .strip_prefix("250-2.0.0 ")
                .or_else(|| line.strip_prefix("250 2.0.0 "))
                .unwrap_or_else(|| panic!("{reply}"));
            let (id, recipient) = rest.split_once(" for ").expect("<id> for <recipient>");
            (id.to_owned(), recipient.to_owned())
        })
        .collect()
}

#[test]
fn python_smtplib_delivers_through_the_hooks() {
    let dir = PluginDir::new("serve-smtplib");
    dir.add(
        "10-c-allowlist.so",
        &plugin_so("mq-example-c-allowlist"),
        "",
    );
    dir.add("30-stamp.so", &plugin_so("mq-example-stamp"), "");
    let host = dir.start();
    let data = dir.path().join("data");
    let server = serve(&host, &data);
    let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10)
refused = s.sendmail("sender@shop.example", ["alice@example.com", "eve@example.net"], "Subject: hi\r\n\r\n.leading dot\r\nbody\r\n")
print(sorted(refused))
s.quit()
"#;
    assert_eq!(python(script, &server).trim(), "['eve@example.net']");
    let stored = json_files(&data.join("inbox"));
    assert_eq!(stored.len(), 1);
    let m = &stored[0];
    assert_eq!(m["recipient"], "alice@example.com");
    assert_eq!(m["envelope"], "sender@shop.example");
    let mime = m["mime"].as_str().unwrap();
    assert!(mime.starts_with("X-Stamped-By: mq-example-stamp"), "{mime}");
    assert!(
        mime.ends_with("Subject: hi\r\n\r\n.leading dot\r\nbody\r\n"),
        "dot-unstuffed: {mime:?}"
    );
    for key in ["hostname", "received", "message-id", "connection"] {
        assert!(m.get(key).is_some(), "{key} in {m}");
    }
}

#[test]
fn pipelined_commands_wait_for_held_chains_without_blocking_others() {
    let dir = PluginDir::new("serve-pipelining");
    dir.add("10-tarpit.so", &plugin_so("mq-example-tarpit"), "");
    let host = dir.builder().workers(1).start().unwrap();
    let data = dir.path().join("data");
    let server = serve(&host, &data);
    let mut slow = Client::connect(server.local_addr());
    assert!(slow.reply().starts_with("220 "));
    // All at once (PIPELINING): the tarpit holds the 2nd and 3rd RCPT.
    // (The holds cannot start before the bytes are sent.)
    let sent = Instant::now();
    slow.send("EHLO client\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x1@example.org>\r\nRCPT TO:<x2@example.org>\r\nRCPT TO:<x3@example.org>\r\nDATA\r\n");
    let started = Instant::now();
    assert!(slow.reply().contains("PIPELINING"));
    assert!(slow.reply().starts_with("250 2.1.0"));
    assert!(slow.reply().starts_with("250 2.1.5"));
    // Meanwhile another session on the same worker is served at once.
    let mut fast = Client::connect(server.local_addr());
    assert!(fast.reply().starts_with("220 "));
    fast.send("NOOP\r\n");
    assert!(fast.reply().starts_with("250"));
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "not blocked by the held session"
    );
    assert!(slow.reply().starts_with("250 2.1.5"));
    assert!(slow.reply().starts_with("250 2.1.5"));
    assert!(
        sent.elapsed() >= Duration::from_millis(300),
        "0 + 100 + 200 ms of tarpit"
    );
    assert!(slow.reply().starts_with("354"));
    slow.send("Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    assert_eq!(queued(&slow.reply()).len(), 3);
    assert!(slow.reply().starts_with("221"));
    assert_eq!(json_files(&data.join("inbox")).len(), 3);
}

#[test]
fn bad_input_gets_smtp_errors_and_the_worker_survives() {
    let dir = PluginDir::new("serve-errors");
    dir.add("10-probe.so", &c_probe(), "");
    let host = dir.builder().workers(1).start().unwrap();
    let data = dir.path().join("data");
    let config = ServeConfig {
        data_dir: data.clone(),
        max_message_size: 64,
        ..Default::default()
    };
    let server = host
        .serve(TcpListener::bind("127.0.0.1:0").unwrap(), config)
        .unwrap();
    let mut c = Client::connect(server.local_addr());
    c.reply();
    for (send, expect) in [
        ("FROBNICATE\r\n", "500 5.5.1"),
        ("MAIL FROM:<a@b>\r\n", "503 5.5.1 say EHLO"),
        ("HELO me\r\n", "250 "),
        ("RCPT TO:<c@d>\r\n", "503 5.5.1 MAIL FROM first"),
        ("DATA\r\n", "554 5.5.1 no valid recipients"),
        ("MAIL FROM:<not an address\r\n", "501"),
        ("STARTTLS\r\n", "502"),
        ("MAIL FROM:<a@b.example>\r\n", "250 2.1.0"),
        ("RCPT TO:<c@d.example>\r\n", "250 2.1.5"),
        ("DATA\r\n", "354"),
        (&format!("{}\r\n.\r\n", "x".repeat(200)), "552 5.3.4"),
        (&format!("{}\r\n", "y".repeat(5000)), "500 5.5."),
        ("NOOP\r\n", "250"),
    ] {
        c.send(send);
        let r = c.reply();
        assert!(r.starts_with(expect), "{send:?} -> {r}");
    }
    assert!(json_files(&data.join("inbox")).is_empty());
    assert_eq!(host.counters().messages_too_big, 1);
    // The worker still serves new sessions.
    let mut d = Client::connect(server.local_addr());
    assert!(d.reply().starts_with("220"));
}

#[test]
fn auth_plain_and_login_ask_the_plugins_after_starttls() {
    let dir = PluginDir::new("serve-auth");
    dir.add("10-probe.so", &c_probe(), "smtp_in_authenticate exercise\n");
    let host = dir.start();
    let config = ServeConfig {
        data_dir: dir.path().join("data"),
        tls: Some(mq_host::smtp_in::self_signed_tls("localhost").unwrap()),
        ..Default::default()
    };
    let server = host
        .serve(TcpListener::bind("127.0.0.1:0").unwrap(), config)
        .unwrap();
    let script = r#"
import smtplib, ssl, sys
port = int(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
p = smtplib.SMTP("127.0.0.1", port, timeout=10)
p.ehlo()
print("plain offers auth", p.has_extn("auth"))
code, text = p.docmd("AUTH", "PLAIN AGdvb2QAc2VjcmV0")
print("plain", code, text.decode())
p.quit()
s = smtplib.SMTP("127.0.0.1", port, timeout=10)
s.starttls(context=ctx)
s.ehlo()
print("advertised", " ".join(sorted(s.esmtp_features["auth"].split())))
try:
    s.login("bad", "secret")
except smtplib.SMTPAuthenticationError as e:
    print("bad", e.smtp_code)
s.login("good", "secret")
print("plain ok")
s.quit()
t = smtplib.SMTP("127.0.0.1", port, timeout=10)
t.starttls(context=ctx)
t.ehlo()
t.user, t.password = "good", "pw"
code, _ = t.auth("LOGIN", t.auth_login)
print("login", code)
t.quit()
"#;
    let stdout = python(script, &server);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "plain offers auth False",
            "plain 538 5.7.11 Encryption required for requested authentication mechanism",
            "advertised LOGIN PLAIN",
            "bad 535",
            "plain ok",
            "login 235"
        ]
    );
    assert_eq!(host.counters().auth_needs_tls, 1);
    let log: Vec<String> = host.log().iter().map(|l| l.text.clone()).collect();
    for line in [
        "probe 10-probe login bad",
        "probe 10-probe login good",
        "probe 10-probe password secret",
        "probe 10-probe password pw",
    ] {
        assert!(log.iter().any(|l| l == line), "{line} missing: {log:#?}");
    }
    // The plain connection's AUTH never reached the plugins.
    assert_eq!(
        log.iter()
            .filter(|l| *l == "probe 10-probe login good")
            .count(),
        2,
        "{log:#?}"
    );
}

/// With `auth_insecure` (`serve --auth-insecure`), AUTH is offered and
/// accepted without TLS; STARTTLS afterwards forgets that login (RFC 3207),
/// so the client logs in again.
#[test]
fn auth_insecure_offers_auth_on_a_plain_connection() {
    let dir = PluginDir::new("serve-auth-insecure");
    dir.add("10-probe.so", &c_probe(), "smtp_in_authenticate exercise\n");
    let host = dir.start();
    let config = ServeConfig {
        data_dir: dir.path().join("data"),
        auth_insecure: true,
        tls: Some(mq_host::smtp_in::self_signed_tls("localhost").unwrap()),
        ..Default::default()
    };
    let server = host
        .serve(TcpListener::bind("127.0.0.1:0").unwrap(), config)
        .unwrap();
    let script = r#"
import smtplib, ssl, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10)
s.ehlo()
print("advertised", " ".join(sorted(s.esmtp_features["auth"].split())))
s.login("good", "secret")
print("plain ok")
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s.starttls(context=ctx)
s.ehlo()
print("again", s.docmd("AUTH", "PLAIN AGdvb2QAc2VjcmV0")[0])
s.quit()
"#;
    let stdout = python(script, &server);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["advertised LOGIN PLAIN", "plain ok", "again 235"]
    );
    assert_eq!(host.counters().auth_needs_tls, 0);
}

#[test]
fn bdat_chunks_make_one_message() {
    let dir = PluginDir::new("serve-bdat");
    dir.add("10-probe.so", &c_probe(), "");
    let host = dir.start();
    let data = dir.path().join("data");
    let server = serve(&host, &data);
    let mut c = Client::connect(server.local_addr());
    c.reply();
    c.send("EHLO me\r\n");
    assert!(c.reply().contains("250-CHUNKING"));
    // A chunk without a transaction is read and refused; an empty one at
    // once (it has nothing to read).
    c.send("BDAT 4\r\nabcd");
    assert!(c.reply().starts_with("554 5.5.1"));
    c.send("BDAT 0 LAST\r\n");
    assert!(c.reply().starts_with("554 5.5.1"));
    c.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 10\r\n0123456789BDAT 0\r\nBDAT 5 LAST\r\nabcde");
    assert!(c.reply().starts_with("250 2.1.0"));
    assert!(c.reply().starts_with("250 2.1.5"));
    assert_eq!(c.reply(), "250 2.0.0 10 octets received so far");
    assert_eq!(c.reply(), "250 2.0.0 10 octets received so far");
    assert_eq!(queued(&c.reply()).len(), 1);
    let stored = json_files(&data.join("inbox"));
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0]["mime"], "0123456789abcde",
        "binary-exact, no dot handling"
    );
}

#[test]
fn sigterm_stops_accepting_lets_sessions_finish_then_cuts_the_rest() {
    let dir = PluginDir::new("serve-sigterm");
    let probe = dir.add("10-p.so", &c_probe(), "");
    let data = dir.path().join("data");
    let (mut child, mut stderr, addr) = spawn_serve(&[
        "--workers".as_ref(),
        "1".as_ref(),
        "--plugin".as_ref(),
        probe.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    let mut idle = Client::connect(addr);
    assert!(idle.reply().starts_with("220"));
    idle.send("EHLO me\r\n");
    idle.reply();
    let started = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The open session is told after the grace period, then the host stops.
    assert_eq!(idle.reply(), "421 4.3.2 the server is shutting down");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "after the grace period"
    );
    assert!(mq_e2e::wait_bounded(&mut child, "serve after SIGTERM").success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(rest.contains("SIGTERM: no new connections"), "{rest}");
    assert!(
        rest.contains("1 session(s) did not finish in time and were told 421"),
        "{rest}"
    );
    let close = rest
        .find("probe 10-p smtp_in_close")
        .expect("the close chain ran");
    let cleanup = rest.find("probe 10-p cleanup").expect("mq_cleanup ran");
    assert!(
        close < cleanup && rest.trim_end().ends_with("mq-host: stopped"),
        "{rest}"
    );
    assert!(TcpStream::connect(addr).is_err(), "no longer listening");
}

#[test]
fn swaks_delivers_and_sigusr1_prints_the_counters() {
    let dir = PluginDir::new("serve-swaks");
    let stamp = dir.add("30-stamp.so", &plugin_so("mq-example-stamp"), "");
    let data = dir.path().join("data");
    let (mut child, mut stderr, addr) = spawn_serve(&[
        "--plugin".as_ref(),
        stamp.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    let out = std::process::Command::new("swaks")
        .args([
            "--server",
            &addr.to_string(),
            "--from",
            "a@shop.example",
            "--to",
            "alice@example.com",
            "--body",
            "hello from swaks",
        ])
        .output()
        .expect("swaks must be installed (.ci/run installs it)");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{transcript}");
    let stored = json_files(&data.join("inbox"));
    assert_eq!(stored.len(), 1);
    // The id the client was given is the stored message's.
    let id = stored[0]["message-id"].as_str().unwrap();
    assert!(
        transcript.contains(&format!("<-  250 2.0.0 {id} for alice@example.com")),
        "{transcript}"
    );
    assert!(stored[0]["mime"]
        .as_str()
        .unwrap()
        .contains("hello from swaks"));
    assert!(stored[0]["mime"]
        .as_str()
        .unwrap()
        .starts_with("X-Stamped-By: mq-example-stamp"));

    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-USR1", &pid])
        .status()
        .unwrap()
        .success());
    let mut seen = String::new();
    while !seen.contains("messages_stored") {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "{seen}");
        seen.push_str(&line);
    }
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    seen.push_str(&line);
    let value = |name: &str| {
        seen.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(value("smtp_sessions"), "1", "{seen}");
    assert_eq!(value("messages_stored"), "1", "{seen}");
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(mq_e2e::wait_bounded(&mut child, "serve after SIGTERM").success());
}

#[test]
fn a_recipient_a_plugin_marks_local_goes_to_the_local_store() {
    let dir = PluginDir::new("serve-local");
    // The probe's rcptto exercise marks every recipient local.
    dir.add("10-probe.so", &c_probe(), "smtp_in_rcptto exercise\n");
    let host = dir.start();
    let data = dir.path().join("data");
    let server = serve(&host, &data);
    let mut c = Client::connect(server.local_addr());
    c.reply();
    c.send("HELO me\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<postmaster@here.example>\r\nDATA\r\n");
    c.reply();
    c.reply();
    assert!(c.reply().starts_with("250"));
    assert!(c.reply().starts_with("354"));
    c.send("Subject: local\r\n\r\nfor us\r\n.\r\n");
    assert_eq!(queued(&c.reply()).len(), 1);
    assert_eq!(json_files(&data.join("local")).len(), 1);
    assert!(json_files(&data.join("inbox")).is_empty());
    assert_eq!(host.counters().messages_stored, 1);
}

#[test]
fn starttls_secures_the_session_and_runs_smtp_in_secure() {
    let dir = PluginDir::new("serve-starttls");
    dir.add("10-probe.so", &c_probe(), "smtp_in_secure exercise\n");
    let host = dir.start();
    let data = dir.path().join("data");
    let config = ServeConfig {
        data_dir: data.clone(),
        tls: Some(mq_host::smtp_in::self_signed_tls("localhost").unwrap()),
        ..Default::default()
    };
    let server = host
        .serve(TcpListener::bind("127.0.0.1:0").unwrap(), config)
        .unwrap();
    let script = r#"
import smtplib, ssl, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10)
s.ehlo()
print("offered", s.has_extn("starttls"))
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
print("starttls", s.starttls(context=ctx)[0])
s.ehlo()
print("offered again", s.has_extn("starttls"))
print("refused", s.sendmail("a@b.example", ["c@d.example"], "Subject: tls\r\n\r\nsecret\r\n"))
print("cipher", s.sock.version())
s.quit()
"#;
    let stdout = python(script, &server);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        &lines[..4],
        [
            "offered True",
            "starttls 220",
            "offered again False",
            "refused {}"
        ]
    );
    assert!(lines[4].starts_with("cipher TLSv1."), "{stdout}");
    let log: Vec<String> = host.log().iter().map(|l| l.text.clone()).collect();
    assert!(
        log.contains(&"probe 10-probe smtp_in_secure".to_owned()),
        "{log:#?}"
    );
    assert!(
        log.contains(&"probe 10-probe secure 1".to_owned()),
        "{log:#?}"
    );
    let stored = json_files(&data.join("inbox"));
    assert_eq!(stored.len(), 1);
    assert!(stored[0]["mime"].as_str().unwrap().contains("secret"));
}
