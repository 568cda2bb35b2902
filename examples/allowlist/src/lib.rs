//! Example plugin: a recipient allow-list (`smtp_in_rcptto`).
//!
//! The list comes from the file named by `MQ_ALLOWLIST_FILE`, one entry per
//! line (`#` comments and blank lines ignored): `@example.com` allows a
//! whole domain, anything else one exact address; matching ignores ASCII
//! case. Without the variable the built-in list is `@example.com`,
//! `@example.org` and `postmaster@localhost`. A file that cannot be read
//! fails `initialize` with the reason: `mq-host` then refuses to start, and
//! in MailerQ (which cannot be told) the plugin refuses every recipient.
//!
//! A refused recipient gets `550 5.7.1 <address>: recipient not on the
//! allow-list` and the plugin completes the step, so later plugins are
//! skipped. `examples/c-allowlist` is the same plugin in C.

#![forbid(unsafe_code)]

use mq_plugin::prelude::*;
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

    /// Whether `email` is allowed.
    pub fn allows(&self, email: &str) -> bool {
        let email = email.to_ascii_lowercase();
        let domain = email.rsplit_once('@').map(|(_, d)| d);
        self.addresses.contains(&email)
            || domain.is_some_and(|d| self.domains.iter().any(|x| x == d))
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
    match rcpt.email() {
        Some(email) if list.allows(email) => {
            log::info!("accepted {email}");
            Flow::Continue
        }
        email => {
            let email = email.unwrap_or("");
            conn.send(
                format!("550 5.7.1 <{email}>: recipient not on the allow-list\r\n").as_bytes(),
            );
            log::info!("rejected {email}");
            Flow::Complete
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_domains_addresses_and_comments() {
        let list = AllowList::parse("# team\n@Example.COM \n\n  boss@other.org # the boss\n");
        assert!(list.allows("anyone@example.com"));
        assert!(list.allows("BOSS@other.org"));
        assert!(!list.allows("other@other.org"));
        assert!(!list.allows("x@sub.example.com"));
        assert!(!list.allows("not-an-address"));
    }

    #[test]
    fn builtin_list() {
        let list = AllowList::builtin();
        assert!(list.allows("a@example.org"));
        assert!(list.allows("postmaster@localhost"));
        assert!(!list.allows("a@example.net"));
    }
}
