//! Every host function, called from a Rust plugin and from a C plugin.

use mq_e2e::*;
use mq_host::{ChainEnd, Direction, Event, Host};

fn both() -> [(&'static str, std::path::PathBuf); 2] {
    [("rust", rust_probe()), ("c", c_probe())]
}

fn host_with(kind: &str, so: &std::path::Path, plan: &str) -> (PluginDir, Host) {
    let dir = PluginDir::new(&format!("hostfn-{kind}"));
    dir.add("10-p.so", so, plan);
    let host = dir.start();
    (dir, host)
}

#[test]
fn message_functions() {
    for (kind, so) in both() {
        let (_dir, host) = host_with(
            kind,
            &so,
            "smtp_in_message exercise\nsmtp_out_data exercise\n",
        );
        let r = run_message(&host);
        let lines = probe_lines(&r);
        assert_no_failures(&lines);
        let json = lines
            .iter()
            .find_map(|l| l.strip_prefix("10-p json "))
            .expect("json line");
        let parsed: serde_json::Value = serde_json::from_str(json).expect("MQ_json is JSON text");
        assert_eq!(parsed, message(), "{kind}");
        assert!(
            lines.contains(&"10-p envelope sender@example.com".to_owned()),
            "{kind}: {lines:#?}"
        );
        assert!(
            lines.contains(&"10-p recipient rcpt@example.org".to_owned()),
            "{kind}"
        );
        assert!(lines.contains(&"10-p local 0".to_owned()), "{kind}");
        for check in ["set-envelope", "set-recipient", "set-mime", "set-local"] {
            assert!(
                lines.contains(&format!("10-p ok {check}")),
                "{kind}: {check} missing in {lines:#?}"
            );
        }
        // Incoming: the setters changed the JSON that will be published.
        let m = r.message.expect("message");
        assert_eq!(m["envelope"], "probe-envelope@example.org", "{kind}");
        assert_eq!(m["recipient"], "probe-recipient@example.org", "{kind}");
        assert!(
            m["mime"]
                .as_str()
                .unwrap()
                .starts_with("X-Probe: 10-p\r\nFrom: sender@example.com"),
            "{kind}"
        );
        assert_eq!(
            m["custom"]["kept"], true,
            "{kind}: other properties are kept"
        );
        assert_eq!(r.local, Some(true), "{kind}");
        assert_eq!(r.end, ChainEnd::Finished);

        // Outgoing: the setters change what goes over SMTP, not the JSON.
        let mut out = host.open(Direction::Outgoing).unwrap();
        let r = out.run(Event::OutData(message())).unwrap();
        assert_no_failures(&probe_lines(&r));
        assert_eq!(r.message.as_ref().unwrap(), &message(), "{kind}");
        let smtp = r.smtp.expect("smtp view");
        assert_eq!(smtp.recipient, "probe-recipient@example.org", "{kind}");
        assert_eq!(smtp.envelope, "probe-envelope@example.org", "{kind}");
        assert!(
            smtp.mime.unwrap().starts_with(b"X-Probe: 10-p\r\n"),
            "{kind}"
        );
        let r = out.run(Event::OutSent).unwrap();
        assert_eq!(probe_lines(&r), ["10-p smtp_out_sent"], "{kind}");
    }
}

#[test]
fn connection_and_context_functions() {
    for (kind, so) in both() {
        let (_dir, host) = host_with(
            kind,
            &so,
            "smtp_in_connect exercise\nsmtp_in_secure exercise\nsmtp_in_close exercise\n",
        );
        let mut s = host.open(Direction::Incoming).unwrap();
        let r = s.run(Event::Connect).unwrap();
        let lines = probe_lines(&r);
        assert_no_failures(&lines);
        for expected in [
            "10-p fd -1",
            "10-p sent 16",
            "10-p authenticated 0",
            "10-p secure 0",
            "10-p ok set-authenticated",
            "10-p connection-data 1",
            "10-p context-data 1",
        ] {
            assert!(
                lines.contains(&expected.to_owned()),
                "{kind}: {expected} missing in {lines:#?}"
            );
        }
        assert_eq!(
            r.sent, b"250-probe 10-p\r\n",
            "{kind}: MQ_send reaches the peer"
        );
        assert!(r.authenticated, "{kind}");
        let r = s.run(Event::Secure).unwrap();
        let lines = probe_lines(&r);
        assert!(
            lines.contains(&"10-p secure 1".to_owned()),
            "{kind}: {lines:#?}"
        );
        assert!(
            lines.contains(&"10-p connection-data 2".to_owned()),
            "{kind}: per-connection data persists"
        );
        assert!(lines.contains(&"10-p context-data 2".to_owned()), "{kind}");
        let r = s.run(Event::Close).unwrap();
        assert!(
            probe_lines(&r).contains(&"10-p connection-data 3".to_owned()),
            "{kind}"
        );
        // A new connection has fresh connection data but the same context.
        let mut s2 = host.open_on(0, Direction::Incoming).unwrap();
        let r = s2.run(Event::Connect).unwrap();
        let lines = probe_lines(&r);
        assert!(
            lines.contains(&"10-p connection-data 1".to_owned()),
            "{kind}: {lines:#?}"
        );
        assert!(
            lines.contains(&"10-p context-data 4".to_owned()),
            "{kind}: {lines:#?}"
        );
    }
}

#[test]
fn authentication_needs_a_yes_and_no_no() {
    for (kind, so) in both() {
        let dir = PluginDir::new(&format!("auth-{kind}"));
        dir.add("10-a.so", &so, "smtp_in_authenticate exercise\n");
        dir.add("20-b.so", &so, "smtp_in_authenticate exercise\n");
        let host = dir.start();
        let auth = |login: &str| {
            host.run_event(
                Direction::Incoming,
                Event::Authenticate {
                    login: login.as_bytes().to_vec(),
                    password: b"secret".to_vec(),
                },
            )
            .unwrap()
        };
        let r = auth("good");
        assert!(r.authenticated, "{kind}");
        let lines = probe_lines(&r);
        assert!(
            lines.contains(&"10-a login good".to_owned()),
            "{kind}: {lines:#?}"
        );
        assert!(lines.contains(&"20-b password secret".to_owned()), "{kind}");
        assert!(!auth("bad").authenticated, "{kind}");
        assert!(!auth("nobody").authenticated, "{kind}: no plugin said yes");
    }
}

#[test]
fn address_and_data_functions() {
    for (kind, so) in both() {
        let (_dir, host) = host_with(
            kind,
            &so,
            "smtp_in_mailfrom exercise\nsmtp_in_rcptto exercise\nsmtp_in_data exercise\n",
        );
        let mut s = host.open(Direction::Incoming).unwrap();
        let r = s.run(Event::MailFrom(String::new())).unwrap();
        let lines = probe_lines(&r);
        assert_no_failures(&lines);
        assert!(
            lines.contains(&"10-p email (null)".to_owned()),
            "{kind}: the empty envelope is NULL: {lines:#?}"
        );
        let r = s.run(Event::RcptTo("Someone@Example.org".into())).unwrap();
        let lines = probe_lines(&r);
        assert!(
            lines.contains(&"10-p email Someone@Example.org".to_owned()),
            "{kind}"
        );
        assert!(lines.contains(&"10-p local 0".to_owned()), "{kind}");
        assert!(
            lines.contains(&"10-p ok address-local".to_owned()),
            "{kind}"
        );
        assert_eq!(r.local, Some(true), "{kind}: MQ_setLocal on a recipient");
        let r = s
            .run(Event::Data(b"Subject: x\r\n\r\nbody".to_vec()))
            .unwrap();
        let lines = probe_lines(&r);
        assert!(
            lines.contains(&"10-p mime-size 18".to_owned()),
            "{kind}: {lines:#?}"
        );
        assert!(
            lines.contains(&"10-p mime-first Subject: x".to_owned()),
            "{kind}"
        );
    }
}

#[test]
fn timers_fire_stop_and_reset() {
    for (kind, so) in both() {
        let (_dir, host) = host_with(kind, &so, "smtp_in_connect timers\n");
        let r = host.run_event(Direction::Incoming, Event::Connect).unwrap();
        let lines = probe_lines(&r);
        assert_no_failures(&lines);
        assert!(
            lines.contains(&"10-p ok timers".to_owned()),
            "{kind}: {lines:#?}"
        );
        let fired: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("10-p timer "))
            .collect();
        assert_eq!(
            fired,
            ["10-p timer A", "10-p timer C", "10-p timer D"],
            "{kind}"
        );
        assert!(
            r.elapsed >= std::time::Duration::from_millis(60),
            "{kind}: D fires after 60 ms"
        );
        assert_eq!(
            r.calls[0].resumed,
            Some(mq_host::Resume::Flow(mq_host::Flow::Continue)),
            "{kind}"
        );
    }
}

#[test]
fn io_watchers_read_write_two_watchers_and_fd_reuse() {
    for (kind, so) in both() {
        let (_dir, host) = host_with(kind, &so, "smtp_in_connect io\n");
        let r = host.run_event(Direction::Incoming, Event::Connect).unwrap();
        let lines = probe_lines(&r);
        assert_no_failures(&lines);
        for check in [
            "io-read-two-watchers",
            "io-write",
            "io-fd-reuse",
            "io-stale-unwatch",
        ] {
            assert!(
                lines.contains(&format!("10-p ok {check}")),
                "{kind}: {check} missing in {lines:#?}"
            );
        }
        assert_eq!(r.end, ChainEnd::Finished);
    }
}
