use super::*;

fn ok(text: &str) -> Mailbox {
    Mailbox::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn err(text: &str) -> MailboxError {
    match Mailbox::parse(text) {
        Ok(m) => panic!("{text:?} parsed as {m:?}"),
        Err(e) => e,
    }
}

#[test]
fn the_injections_a_suffix_match_lets_through_are_refused() {
    use MailboxError::*;
    let cases: [(&str, MailboxError); 9] = [
        (
            "victim@evil.net\n[INFO] [worker 0] x@example.com",
            ControlCharacter {
                at: 15,
                byte: b'\n',
            },
        ),
        (
            "victim@evil.net\r\n@example.com",
            ControlCharacter {
                at: 15,
                byte: b'\r',
            },
        ),
        (
            "a\x1b[31mRED@example.com",
            ControlCharacter { at: 1, byte: 0x1b },
        ),
        (
            "\"a\x1b[31mRED\"@example.com",
            ControlCharacter { at: 2, byte: 0x1b },
        ),
        (
            "victim@evil.net\0@example.com",
            ControlCharacter { at: 15, byte: 0 },
        ),
        ("a\x7f@example.com", ControlCharacter { at: 1, byte: 0x7f }),
        // The quoted `"victim@evil.net"@example.com` with its quotes lost.
        ("victim@evil.net@example.com", InvalidDomain { at: 15 }),
        ("victim@evil.net>@example.com", InvalidDomain { at: 15 }),
        ("victim@evil.net @example.com", InvalidDomain { at: 15 }),
    ];
    for (text, expected) in cases {
        assert_eq!(err(text), expected, "{text:?}");
    }
    // Parsed, but not at the domain its tail suggests.
    assert!(!ok("victim@example.com.evil.net").domain_is("example.com"));
    assert!(!ok("victim@evil-example.com").domain_is("example.com"));
    assert!(!ok("victim@sub.example.com").domain_is("example.com"));
}

#[test]
fn nothing_outside_ascii() {
    assert_eq!(err("üser@example.com"), MailboxError::NotAscii { at: 0 });
    assert_eq!(err("a@exämple.com"), MailboxError::NotAscii { at: 4 });
    assert_eq!(
        err("a@example.com\u{202e}ten.live"),
        MailboxError::NotAscii { at: 13 }
    );
    assert_eq!(err("a\u{85}@x"), MailboxError::NotAscii { at: 1 });
    assert_eq!(
        err("a\u{85}\n@x"),
        MailboxError::NotAscii { at: 1 },
        "the first offending byte"
    );
    assert_eq!(
        err("a\n\u{85}@x"),
        MailboxError::ControlCharacter { at: 1, byte: b'\n' }
    );
    assert_eq!(
        Mailbox::parse_bytes(b"a\xff@example.com"),
        Err(MailboxError::NotAscii { at: 1 })
    );
}

#[test]
fn dot_strings() {
    let m = ok("Alice.Smith@Example.COM");
    assert_eq!((m.local_part(), m.domain()), ("Alice.Smith", "Example.COM"));
    assert!(!m.is_quoted() && !m.is_address_literal());
    assert_eq!(m.as_str(), "Alice.Smith@Example.COM");
    assert_eq!(m.to_string(), "Alice.Smith@Example.COM");
    ok("user+tag@sub.example.co.uk");
    ok("!#$%&'*+-/=?^_`{|}~@example.com");
    ok("x@y");
    ok("1@2.3");

    use MailboxError::*;
    assert_eq!(err(".a@x"), InvalidLocalPart { at: 0 });
    assert_eq!(err("a.@x"), InvalidLocalPart { at: 1 });
    assert_eq!(err("a..b@x"), InvalidLocalPart { at: 2 });
    assert_eq!(err("a b@x"), InvalidLocalPart { at: 1 });
    for special in ["(", ")", "<", ">", "[", "]", ",", ";", ":", "\\", "\""] {
        let text = format!("a{special}b@x");
        assert_eq!(err(&text), InvalidLocalPart { at: 1 }, "{text}");
    }
}

#[test]
fn quoted_strings() {
    let m = ok("\"john doe\"@example.com");
    assert_eq!(m.local_part(), "\"john doe\"");
    assert!(m.is_quoted());
    let m = ok("\"victim@evil.net\"@example.com");
    assert_eq!(
        m.domain(),
        "example.com",
        "an `@` in quotes is the local part's"
    );
    assert_eq!(ok(r#""a\"b\\c@d"@x"#).local_part(), r#""a\"b\\c@d""#);
    ok("\"\"@example.com");
    ok("\"(),:;<>[]\"@example.com");

    use MailboxError::*;
    assert_eq!(err("\"abc@x"), UnterminatedQuote);
    assert_eq!(err(r#""abc\"@x"#), UnterminatedQuote);
    assert_eq!(err(r#""abc\"#), UnterminatedQuote);
    assert_eq!(err("\"a\"b@x"), InvalidLocalPart { at: 3 });
    assert_eq!(err("\"a\".b@x"), InvalidLocalPart { at: 3 });
    assert_eq!(err("\"a\""), MissingAt);
}

#[test]
fn domains() {
    use MailboxError::*;
    assert_eq!(err("a@-x.com"), InvalidDomain { at: 2 });
    assert_eq!(err("a@x-.com"), InvalidDomain { at: 3 });
    assert_eq!(err("a@x..com"), InvalidDomain { at: 4 });
    assert_eq!(err("a@.x"), InvalidDomain { at: 2 });
    assert_eq!(err("a@x."), InvalidDomain { at: 3 });
    assert_eq!(err("a@x_y.com"), InvalidDomain { at: 3 });
    assert_eq!(err("a@x.com/"), InvalidDomain { at: 7 });
    ok("a@x-y--z.example");
    ok("a@123.example");
}

#[test]
fn address_literals() {
    for literal in [
        "[192.0.2.1]",
        "[0.0.0.0]",
        "[255.255.255.255]",
        "[001.02.3.4]",
        "[IPv6:2001:db8::1]",
        "[ipv6:::1]",
        "[IPv6:::ffff:192.0.2.1]",
        "[x-tag:some.text]",
    ] {
        let m = ok(&format!("a@{literal}"));
        assert_eq!(m.domain(), literal);
        assert!(m.is_address_literal());
        assert!(m.domain_is(&literal.to_ascii_uppercase()));
    }
    for literal in [
        "[1.2.3]",
        "[1.2.3.4.5]",
        "[256.1.1.1]",
        "[1.2.3.]",
        "[1234.1.1.1]",
        "[IPv6:zz]",
        "[IPv6:1.2.3.4]",
        "[1.2.3.4",
        "[1.2.3.4]x",
        "[]",
        "[tag:]",
        "[:x]",
        "[tag-:x]",
        "[tag:a[b]",
        "[tag:a\\b]",
    ] {
        assert_eq!(
            err(&format!("a@{literal}")),
            MailboxError::InvalidAddressLiteral,
            "{literal}"
        );
    }
}

#[test]
fn the_rfc_length_limits() {
    use MailboxError::*;
    let local = "l".repeat(64);
    ok(&format!("{local}@x"));
    assert_eq!(err(&format!("{local}l@x")), LocalPartTooLong { len: 65 });
    let label = "d".repeat(63);
    ok(&format!("a@{label}.x"));
    assert_eq!(err(&format!("a@x.{label}d")), LabelTooLong { at: 4 });
    // 254 bytes in all: 64 + 1 + 189.
    let domain = format!("{}.{}.{}", "d".repeat(63), "d".repeat(63), "d".repeat(61));
    assert_eq!(domain.len(), 189);
    ok(&format!("{local}@{domain}"));
    assert_eq!(err(&format!("{local}@{domain}d")), TooLong { len: 255 });
}

#[test]
fn empty_and_missing_parts() {
    use MailboxError::*;
    assert_eq!(err(""), Empty);
    assert_eq!(err("postmaster"), MissingAt);
    assert_eq!(err("@example.com"), EmptyLocalPart);
    assert_eq!(err("a@"), EmptyDomain);
}

#[test]
fn domains_compare_ignoring_ascii_case_only() {
    let m = ok("bob@Mail.Example.ORG");
    assert!(m.domain_is("mail.example.org"));
    assert!(m.domain_is("MAIL.EXAMPLE.ORG"));
    assert!(!m.domain_is("example.org"));
    assert!(!m.domain_is("mail.example.org."));
    assert!(!m.domain_is("@mail.example.org"));
    assert!(!m.domain_is(""));
    assert_eq!("bob@x".parse::<Mailbox>(), Ok(ok("bob@x")));
}

#[test]
fn error_texts_name_the_cause_and_never_quote_the_input() {
    for text in [
        "",
        "victim@evil.net\r\n250 OK@example.com",
        "\u{1b}[2J@x",
        "x\u{202e}@y",
        "postmaster",
        "@x",
        "a@",
        "a..b@x",
        "\"abc",
        "a@b_c",
        "a@[1.2.3]",
        &format!("{}@x", "l".repeat(65)),
        &format!("a@{}", "d".repeat(64)),
        &format!("a@{}", "d.".repeat(200)),
    ] {
        let e = err(text).to_string();
        assert!(
            e.chars().all(|c| c == ' ' || c.is_ascii_graphic()),
            "{text:?}: {e:?}"
        );
        assert!(!e.contains("evil") && !e.contains("250 OK"), "{e}");
    }
    assert_eq!(
        err("a\nb@x").to_string(),
        "a control character (0x0a) at byte 1"
    );
}
