//! Example plugin: a recipient allow-list (`smtp_in_rcptto`).
//!
//! The list comes from the file named by `MQ_ALLOWLIST_FILE`, one entry per
//! line (`#` comments and blank lines ignored): `@example.com` allows a
//! whole domain (not its subdomains), anything else one exact address;
//! matching ignores ASCII case. Without the variable the built-in list is
//! `@example.com`, `@example.org` and `postmaster@localhost`. A file that
//! cannot be read fails `initialize` with the reason: `mq-host` then
//! refuses to start, and in MailerQ (which cannot be told) the plugin
//! refuses every recipient.
//!
//! The recipient is parsed first ([`Address::mailbox`], RFC 5321's
//! grammar) and the decision is made on the parsed domain, never on how
//! the text ends: `victim@evil.net\n@example.com` is no example.com
//! address. An address that does not parse gets `553 5.1.3 recipient is
//! not a valid mailbox: <cause>`; one that is not on the list gets
//! `550 5.7.1 <address>: recipient not on the allow-list`. Either way the
//! plugin completes the step, so later plugins are skipped.
//! `examples/c-allowlist` is the same plugin in C.

#![forbid(unsafe_code)]

use mq_plugin::prelude::*;
use mq_plugin::Mailbox;
use std::sync::OnceLock;

mq_plugin::declare_plugin!();

static LIST: OnceLock<AllowList> = OnceLock::new();

/// The parsed allow-list.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    domains: Vec<String>,
    addresses: Vec<String>,
}

impl AllowList {
    /// The built-in list used without `MQ_ALLOWLIST_FILE`.
    pub fn builtin() -> AllowList {
        AllowList::parse("@example.com\n@example.org\npostmaster@localhost\n")
    }

    /// Parses the file format described in the crate docs.
    pub fn parse(text: &str) -> AllowList {
        let mut list = AllowList::default();
        for line in text.lines() {
            let entry = line
                .split('#')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if let Some(domain) = entry.strip_prefix('@') {
                list.domains.push(domain.to_owned());
            } else if !entry.is_empty() {
                list.addresses.push(entry);
            }
        }
        list
    }

    /// Whether `mailbox` is allowed: its domain is one of the `@domain`
    /// entries, or the whole address one of the address entries, ignoring
    /// ASCII case. A domain entry does not allow its subdomains.
    pub fn allows(&self, mailbox: &Mailbox) -> bool {
        self.domains.iter().any(|d| mailbox.domain_is(d))
            || self
                .addresses
                .iter()
                .any(|a| mailbox.as_str().eq_ignore_ascii_case(a))
    }
}

#[mq_hook(initialize)]
fn load() -> Result<(), String> {
    let list = match std::env::var_os("MQ_ALLOWLIST_FILE") {
        None => AllowList::builtin(),
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(text) => AllowList::parse(&text),
            Err(e) => {
                let _ = LIST.set(AllowList::default());
                return Err(format!(
                    "cannot read allow-list {}: {e}",
                    path.to_string_lossy()
                ));
            }
        },
    };
    let _ = LIST.set(list);
    Ok(())
}

#[mq_hook(smtp_in_rcptto)]
fn check(conn: &Connection, rcpt: &Address) -> Flow {
    let list = LIST.get_or_init(AllowList::default);
    match rcpt.mailbox() {
        Ok(mailbox) if list.allows(&mailbox) => {
            log::info!("accepted {mailbox}");
            Flow::Continue
        }
        Ok(mailbox) => {
            // A parsed mailbox is printable ASCII: safe in a reply and a log.
            conn.send(
                format!("550 5.7.1 <{mailbox}>: recipient not on the allow-list\r\n").as_bytes(),
            );
            log::info!("rejected {mailbox}");
            Flow::Complete
        }
        Err(why) => {
            // The cause never quotes the address; the log gets the address
            // escaped (`{:?}`), as MailerQ writes log lines as they come.
            conn.send(format!("553 5.1.3 recipient is not a valid mailbox: {why}\r\n").as_bytes());
            let raw = String::from_utf8_lossy(rcpt.email_bytes().unwrap_or_default());
            log::info!("rejected {raw:?}: {why}");
            Flow::Complete
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(list: &AllowList, email: &str) -> bool {
        list.allows(&Mailbox::parse(email).unwrap())
    }

    #[test]
    fn parses_domains_addresses_and_comments() {
        let list = AllowList::parse("# team\n@Example.COM \n\n  boss@other.org # the boss\n");
        assert!(allows(&list, "anyone@example.com"));
        assert!(allows(&list, "BOSS@other.org"));
        assert!(!allows(&list, "other@other.org"));
        assert!(!allows(&list, "x@sub.example.com"));
    }

    #[test]
    fn builtin_list() {
        let list = AllowList::builtin();
        assert!(allows(&list, "a@example.org"));
        assert!(allows(&list, "postmaster@localhost"));
        assert!(!allows(&list, "a@example.net"));
    }

    #[test]
    fn the_domain_decides_not_the_tail() {
        let list = AllowList::builtin();
        assert!(allows(&list, "\"victim@evil.net\"@example.com"));
        assert!(!allows(&list, "victim@example.com.evil.net"));
        assert!(!allows(&list, "victim@evilexample.com"));
        for hostile in [
            "victim@evil.net\n@example.com",
            "victim@evil.net\r\n@example.com",
            "victim@evil.net@example.com",
            "a\u{1b}[31mRED@example.com",
        ] {
            assert!(Mailbox::parse(hostile).is_err(), "{hostile:?}");
        }
    }
}
