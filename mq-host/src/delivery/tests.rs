//! Unit tests of the delivery engine: replies, retries, pickup, data,
//! expiry.

use super::*;
use relay::*;
use serde_json::Map;
use std::io::Write;

use std::time::SystemTime;

#[test]
fn reply_lines() {
    assert_eq!(
        parse_reply_line("250-PIPELINING"),
        Some((250, true, "PIPELINING"))
    );
    assert_eq!(
        parse_reply_line("250 2.0.0 Ok"),
        Some((250, false, "2.0.0 Ok"))
    );
    assert_eq!(parse_reply_line("354"), Some((354, false, "")));
    assert_eq!(parse_reply_line("25 x"), None);
    assert_eq!(parse_reply_line("250x"), None);
    assert_eq!(split_extended("2.1.5 Ok"), (Some("2.1.5".into()), "Ok"));
    assert_eq!(split_extended("5.7.1"), (Some("5.7.1".into()), ""));
    assert_eq!(split_extended("Ok then"), (None, "Ok then"));
    assert_eq!(split_extended("3.1.4 pi"), (None, "3.1.4 pi"));
}

#[test]
fn retry_delays_double_up_to_the_cap_or_follow_the_message() {
    let config = DeliveryConfig {
        retry_delay: Duration::from_secs(10),
        max_retry_delay: Duration::from_secs(35),
        ..Default::default()
    };
    let plain = Map::new();
    let delays: Vec<_> = (1..=4)
        .map(|n| retry_delay(&plain, &config, n).as_secs())
        .collect();
    assert_eq!(delays, [10, 20, 35, 35]);
    let Value::Object(own) = json!({"retries": [1, 5]}) else {
        unreachable!()
    };
    let delays: Vec<_> = (1..=3)
        .map(|n| retry_delay(&own, &config, n).as_secs())
        .collect();
    assert_eq!(delays, [1, 5, 5]);
    let Value::Object(limited) = json!({"maxattempts": 2}) else {
        unreachable!()
    };
    assert_eq!(max_attempts(&limited, &config), Some(2));
    assert_eq!(
        max_attempts(&plain, &config),
        None,
        "MailerQ's default: no limit"
    );
    let Value::Object(unlimited) = json!({"maxattempts": 0}) else {
        unreachable!()
    };
    let three = DeliveryConfig {
        max_attempts: 3,
        ..Default::default()
    };
    assert_eq!(max_attempts(&unlimited, &three), None);
    assert_eq!(max_attempts(&plain, &three), Some(3));
}

#[test]
fn pickup_honours_nextattempt_and_skips_finished_messages() {
    let dir = std::env::temp_dir().join(format!("mq-pickup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let inbox = dir.join("inbox");
    let later = SystemTime::now() + Duration::from_secs(3600);
    let mailerq = json!({"time": clock::mailerq_time(later)});
    store::store_as(
        &inbox,
        "a.json",
        &json!({"recipient": "a@x", "nextattempt": mailerq}),
    )
    .unwrap();
    store::store_as(&inbox, "b.json", &json!({"recipient": "b@x"})).unwrap();
    // c was delivered, but the host stopped before removing it.
    store::store_as(&inbox, "c.json", &json!({"recipient": "c@x"})).unwrap();
    store::store_as(&dir.join("success"), "c.json", &json!({"recipient": "c@x"})).unwrap();

    let (outbox, pickup) = Outbox::open(&dir).unwrap();
    assert_eq!(
        pickup,
        Pickup {
            waiting: 2,
            finished: 1
        }
    );
    assert!(!inbox.join("c.json").exists());
    // a's turn comes, but its nextattempt puts it an hour ahead; b is due.
    let read = |name: &str| -> Map<String, Value> {
        serde_json::from_slice(&std::fs::read(inbox.join(name)).unwrap()).unwrap()
    };
    let wait = not_due(&read("a.json")).expect("a is not due");
    assert!(wait > Duration::from_secs(3500));
    assert_eq!(not_due(&read("b.json")), None);
    // The RFC 3339 text earlier mq-host versions wrote is read too.
    let Value::Object(old) = json!({"nextattempt": clock::rfc3339(later)}) else {
        unreachable!()
    };
    assert!(not_due(&old).expect("not due") > Duration::from_secs(3500));
    drop(outbox);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn data_is_sent_with_crlf_line_ends_and_dot_stuffed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = DeliveryConfig {
        relay: listener.local_addr().unwrap().to_string(),
        ..Default::default()
    };
    let mut relay = Relay::connect(&config, &config.relay).unwrap();
    let (mut peer, _) = listener.accept().unwrap();
    relay.send_data(b".a\r\nb\nc\r.d\r\n\r\n..e\rf").unwrap();
    drop(relay);
    let mut sent = Vec::new();
    std::io::Read::read_to_end(&mut peer, &mut sent).unwrap();
    assert_eq!(
        String::from_utf8(sent).unwrap(),
        "..a\r\nb\r\nc\r\n..d\r\n\r\n...e\r\nf\r\n.\r\n"
    );
}

#[test]
fn replies_are_read_whole_and_bounded() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = DeliveryConfig {
        relay: listener.local_addr().unwrap().to_string(),
        reply_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let mut relay = Relay::connect(&config, &config.relay).unwrap();
    let (mut peer, _) = listener.accept().unwrap();
    peer.write_all(b"250-first\r\n250-2.0.0 second \xe9\r\n250 2.1.0 third\r\n")
        .unwrap();
    let reply = relay.read_reply("the reply").unwrap();
    assert_eq!(reply.code, 250);
    assert_eq!(reply.extended.as_deref(), Some("2.0.0"));
    assert_eq!(reply.text, "first second \u{fffd} third");
    assert_eq!(reply.lines, ["first", "second \u{fffd}", "third"]);
    peer.write_all(&[b'x'; LONGEST_REPLY_LINE + 10]).unwrap();
    assert_eq!(
        relay.read_reply("the reply").unwrap_err(),
        Broken::invalid("the relay sent a reply line that is too long"),
        "an answer that is not SMTP: result `invalid`"
    );
}

#[test]
fn one_outbox_per_data_directory() {
    let dir = std::env::temp_dir().join(format!("mq-lock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (first, _) = Outbox::open(&dir).unwrap();
    let err = Outbox::open(&dir).unwrap_err().to_string();
    assert!(
        err.contains("another mq-host uses this data directory"),
        "{err}"
    );
    drop(first);
    Outbox::open(&dir).expect("free again once the first is gone");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn delivery_time_ends_at_maxdelivertime_or_a_day_after_the_first_attempt() {
    let config = DeliveryConfig::default();
    let message = |v: Value| -> Map<String, Value> {
        let Value::Object(m) = v else { unreachable!() };
        m
    };
    let at = |text: &str| clock::parse_mailerq_time(text).unwrap();
    // Its own maxdelivertime.
    let own = message(json!({"maxdelivertime": "2030-02-10 00:00:00"}));
    assert_eq!(deadline(&own, &config), (at("2030-02-10 00:00:00"), None));
    // Else a day (MailerQ's max-delivertime) after its first attempt.
    let tried = message(json!({"results": [{"time": "2026-01-01 10:00:00"}]}));
    assert_eq!(deadline(&tried, &config).0, at("2026-01-02 10:00:00"));
    assert!(expired(&tried, &config, deadline(&tried, &config).0)
        .unwrap()
        .contains("delivery time ended at 2026-01-02 10:00:00"));
    // A first entry whose time cannot be read (from elsewhere): the
    // earliest readable one counts, so the limit does not move on.
    let odd = message(json!({"results": [{"time": 1767261600}, {"time": "2026-01-01 11:00:00"}]}));
    assert_eq!(deadline(&odd, &config).0, at("2026-01-02 11:00:00"));
    // Unreadable: the default, and the text for a warning.
    let bad = message(json!({"maxdelivertime": "2030-02-10T00:00:00Z"}));
    let (end, unreadable) = deadline(&bad, &config);
    assert!(end > SystemTime::now() + Duration::from_secs(86_000));
    assert_eq!(unreadable.as_deref(), Some("2030-02-10T00:00:00Z"));
    // Attempts used up.
    let used = message(json!({"maxattempts": 1, "results": [{}]}));
    assert_eq!(
        expired(&used, &config, deadline(&used, &config).0).as_deref(),
        Some("expired: 1 attempt(s) made, maxattempts is 1")
    );
    let fresh = message(json!({"maxattempts": 1}));
    assert_eq!(expired(&fresh, &config, deadline(&fresh, &config).0), None);
}

#[test]
fn keepmime_values() {
    for (value, keeps) in [
        (json!(true), true),
        (json!(1), true),
        (json!(false), false),
        (json!(0), false),
        (json!("yes"), true),
    ] {
        let Value::Object(m) = json!({"keepmime": value}) else {
            unreachable!()
        };
        assert_eq!(keeps_mime(&m), keeps, "{value}");
    }
    assert!(!keeps_mime(&Map::new()));
}
