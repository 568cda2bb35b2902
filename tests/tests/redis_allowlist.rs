//! The Redis allow-list example against a real redis-server on loopback:
//! async lookups over the framework's TCP stream, many at once, and a
//! deferral (451) when Redis goes away.

use mq_e2e::redis::Redis;
use mq_e2e::*;
use mq_host::{ChainEnd, Direction, Event};

#[test]
fn recipients_are_checked_in_redis() {
    let redis = Redis::start();
    assert_eq!(
        redis.command(&[
            "SADD",
            "mq:allowed-recipients",
            "boss@partner.example",
            "@ours.example"
        ]),
        ":2\r\n"
    );
    std::env::set_var("MQ_REDIS_ADDR", format!("127.0.0.1:{}", redis.port()));
    let dir = PluginDir::new("redis");
    dir.add("10-redis.so", &plugin_so("mq-example-redis-allowlist"), "");
    dir.add("20-probe.so", &c_probe(), "");
    let host = dir.builder().workers(2).start().unwrap();
    let rcpt = |email: &str| {
        host.run_event(Direction::Incoming, Event::RcptTo(email.into()))
            .unwrap()
    };

    for ok in ["Boss@Partner.example", "anyone@ours.example"] {
        let r = rcpt(ok);
        assert_eq!(r.end, ChainEnd::Finished, "{ok}: {:#?}", r.log);
        assert!(r.calls[0].took_control, "the lookup is asynchronous");
        assert_eq!(called(&r), ["10-redis", "20-probe"]);
    }
    // The parsed domain decides: an address with a quoted `@` is fine.
    let r = rcpt("\"victim@evil.net\"@ours.example");
    assert_eq!(r.end, ChainEnd::Finished, "{:#?}", r.log);
    // Hostile recipients that end in `@ours.example` are no mailboxes: refused
    // with the cause, without a lookup.
    for (hostile, why) in [
        (
            "victim@evil.net\n@ours.example",
            "a control character (0x0a) at byte 15",
        ),
        (
            "victim@evil.net\r\n@ours.example",
            "a control character (0x0d) at byte 15",
        ),
        (
            "victim@evil.net@ours.example",
            "the domain is not dot-separated labels of letters, digits and inner hyphens (byte 15)",
        ),
        ("", "the address is empty"),
    ] {
        let r = rcpt(hostile);
        assert_eq!(
            r.reply(),
            Some(format!("553 5.1.3 recipient is not a valid mailbox: {why}")),
            "{hostile:?}"
        );
        assert_eq!(called(&r), ["10-redis"], "{hostile:?}");
    }
    // Nor is a subdomain, or a domain that only ends the same.
    for other in [
        "x@sub.ours.example",
        "x@ours.example.evil.net",
        "x@yours.example",
    ] {
        let r = rcpt(other);
        assert_eq!(
            r.reply(),
            Some(format!("550 5.7.1 <{other}>: recipient not allowed")),
        );
    }
    let r = rcpt("stranger@example.net");
    assert_eq!(
        r.end,
        ChainEnd::Completed {
            plugin: "10-redis".into()
        }
    );
    assert_eq!(
        r.reply().as_deref(),
        Some("550 5.7.1 <stranger@example.net>: recipient not allowed")
    );

    // Many lookups at once, on pooled connections.
    let sessions: Vec<_> = (0..200)
        .map(|i| {
            let s = host.open(Direction::Incoming).unwrap();
            let email = if i % 2 == 0 {
                format!("u{i}@ours.example")
            } else {
                format!("u{i}@other.example")
            };
            let pending = s.submit(Event::RcptTo(email)).unwrap();
            (s, pending, i % 2 == 0)
        })
        .collect();
    for (s, pending, allowed) in sessions {
        let r = pending.wait().unwrap();
        assert_eq!(r.refused(), !allowed, "{:?}", r.reply());
        drop(s);
    }

    // Redis goes away: recipients are deferred, not accepted.
    redis.stop();
    for _ in 0..2 {
        let r = rcpt("boss@partner.example");
        assert_eq!(
            r.reply().as_deref(),
            Some("451 4.3.0 recipient check unavailable, try again later"),
            "{:#?}",
            r.log
        );
        assert_eq!(
            r.end,
            ChainEnd::Completed {
                plugin: "10-redis".into()
            }
        );
    }
    assert_eq!(host.counters().double_resumes, 0);
}
