//! Email addresses parsed by RFC 5321's `Mailbox` grammar, so that a
//! plugin decides on the domain an address really has, not on how its
//! text ends.
//!
//! An address a hook gets is whatever the client (or a JSON message) sent.
//! `victim@evil.net\n…@example.com` ends with `@example.com`, and after a
//! naive split at the last `@` its "domain" is `example.com`; as a mailbox
//! it is not an address at all (a line feed is no part of any address).
//! [`Mailbox::parse`] accepts exactly RFC 5321 section 4.1.2:
//!
//! ```text
//! Mailbox     = Local-part "@" ( Domain / address-literal )
//! Local-part  = Dot-string / Quoted-string
//! Dot-string  = Atom *("." Atom)               ; Atom = 1*atext (RFC 5322)
//! Quoted-string = DQUOTE *(qtextSMTP / "\" %d32-126) DQUOTE
//! Domain      = sub-domain *("." sub-domain)   ; letters, digits, inner hyphens
//! address-literal = "[" ( IPv4 / "IPv6:" IPv6 / tag ":" 1*dcontent ) "]"
//! ```
//!
//! with the limits of section 4.5.3.1: a local part of at most 64 bytes, a
//! domain label of at most 63, and a whole mailbox of at most 254 (a path,
//! `<` mailbox `>`, is at most 256). No control character (NUL, CR, LF,
//! ESC, DEL, ...) and nothing outside ASCII is accepted: internationalized
//! addresses (RFC 6531, SMTPUTF8) are refused.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// An email address that follows RFC 5321's `Mailbox` grammar: a local
/// part (dot-string or quoted string), `@`, and a domain (dot-separated
/// labels) or an address literal in brackets. See the [module
/// docs](crate::mailbox) for the grammar and the limits.
///
/// ```
/// use mq_plugin::Mailbox;
///
/// let mailbox = Mailbox::parse("Alice.Smith@Example.COM")?;
/// assert_eq!(mailbox.local_part(), "Alice.Smith");
/// assert_eq!(mailbox.domain(), "Example.COM");
/// assert!(mailbox.domain_is("example.com"));
///
/// // What a naive suffix match would take for example.com:
/// assert!(Mailbox::parse("victim@evil.net\n@example.com").is_err());
/// # Ok::<(), mq_plugin::MailboxError>(())
/// ```
///
/// Its text holds printable ASCII only, so it can go into a reply or a log
/// line as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    text: String,
    /// The position of the `@` that ends the local part.
    at: usize,
}

impl Mailbox {
    /// The longest mailbox, in bytes (RFC 5321 4.5.3.1.3: a path of 256
    /// bytes, less its angle brackets).
    pub const MAX_LEN: usize = 254;
    /// The longest local part, in bytes (RFC 5321 4.5.3.1.1).
    pub const MAX_LOCAL_PART: usize = 64;
    /// The longest domain label, in bytes (RFC 1035 2.3.4).
    pub const MAX_LABEL: usize = 63;

    /// Parses `text` as a mailbox; the error names the cause (and never
    /// quotes the input, so it is safe in a reply).
    pub fn parse(text: &str) -> Result<Mailbox, MailboxError> {
        Mailbox::parse_bytes(text.as_bytes())
    }

    /// Parses `bytes` as a mailbox (see [`Mailbox::parse`]).
    pub fn parse_bytes(bytes: &[u8]) -> Result<Mailbox, MailboxError> {
        if bytes.is_empty() {
            return Err(MailboxError::Empty);
        }
        // The first byte that is no printable ASCII, whatever else follows.
        if let Some(at) = bytes
            .iter()
            .position(|b| !b.is_ascii() || b.is_ascii_control())
        {
            let byte = bytes[at];
            return Err(match byte.is_ascii() {
                true => MailboxError::ControlCharacter { at, byte },
                false => MailboxError::NotAscii { at },
            });
        }
        if bytes.len() > Mailbox::MAX_LEN {
            return Err(MailboxError::TooLong { len: bytes.len() });
        }
        let at = local_part(bytes)?;
        if at > Mailbox::MAX_LOCAL_PART {
            return Err(MailboxError::LocalPartTooLong { len: at });
        }
        domain(bytes, at + 1)?;
        // Printable ASCII only (checked above), so the conversion is exact.
        let text = String::from_utf8_lossy(bytes).into_owned();
        Ok(Mailbox { text, at })
    }

    /// The whole address, as parsed.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The local part, as written: a dot-string (`alice.smith`) or a
    /// quoted string with its quotes (`"alice smith"`).
    pub fn local_part(&self) -> &str {
        &self.text[..self.at]
    }

    /// Whether the local part is a quoted string.
    pub fn is_quoted(&self) -> bool {
        self.text.starts_with('"')
    }

    /// The domain as written: dot-separated labels (`mail.example.com`),
    /// or an address literal with its brackets (`[192.0.2.1]`).
    pub fn domain(&self) -> &str {
        &self.text[self.at + 1..]
    }

    /// Whether the domain is an address literal (`[192.0.2.1]`,
    /// `[IPv6:2001:db8::1]`).
    pub fn is_address_literal(&self) -> bool {
        self.domain().starts_with('[')
    }

    /// Whether the domain is `domain`, ignoring ASCII case (domain names
    /// are case-insensitive): exactly that domain, not a subdomain of it.
    ///
    /// ```
    /// let mailbox = mq_plugin::Mailbox::parse("bob@Mail.Example.ORG").unwrap();
    /// assert!(mailbox.domain_is("mail.example.org"));
    /// assert!(!mailbox.domain_is("example.org"));
    /// ```
    pub fn domain_is(&self, domain: &str) -> bool {
        self.domain().eq_ignore_ascii_case(domain)
    }
}

impl FromStr for Mailbox {
    type Err = MailboxError;

    fn from_str(text: &str) -> Result<Mailbox, MailboxError> {
        Mailbox::parse(text)
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl AsRef<str> for Mailbox {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

/// Why a text is not a [`Mailbox`]. Positions are byte offsets into the
/// text. The message names the cause and never quotes the text, so it can
/// go into an SMTP reply or a log line as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MailboxError {
    /// Nothing at all (e.g. the null reverse-path `<>` of a bounce).
    Empty,
    /// A control character: NUL, CR, LF, ESC, any other C0 character or
    /// DEL.
    ControlCharacter {
        /// Where.
        at: usize,
        /// Which.
        byte: u8,
    },
    /// A byte outside ASCII (internationalized addresses are not
    /// supported).
    NotAscii {
        /// Where.
        at: usize,
    },
    /// Longer than [`Mailbox::MAX_LEN`].
    TooLong {
        /// The length, in bytes.
        len: usize,
    },
    /// No `@` after the local part.
    MissingAt,
    /// Nothing before the `@`.
    EmptyLocalPart,
    /// A local part longer than [`Mailbox::MAX_LOCAL_PART`].
    LocalPartTooLong {
        /// The length, in bytes.
        len: usize,
    },
    /// The local part is neither dot-separated atoms nor one quoted
    /// string: a character atoms do not allow, a dot at either end or two
    /// in a row, or text after the closing quote.
    InvalidLocalPart {
        /// The first byte out of place.
        at: usize,
    },
    /// A quoted local part without its closing `"`.
    UnterminatedQuote,
    /// Nothing after the `@`.
    EmptyDomain,
    /// The domain is not dot-separated labels of letters, digits and inner
    /// hyphens.
    InvalidDomain {
        /// The first byte out of place.
        at: usize,
    },
    /// A domain label longer than [`Mailbox::MAX_LABEL`].
    LabelTooLong {
        /// Where the label starts.
        at: usize,
    },
    /// A bracketed domain that is not `[IPv4]`, `[IPv6:address]` or
    /// `[tag:text]`.
    InvalidAddressLiteral,
}

impl fmt::Display for MailboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MailboxError::Empty => write!(f, "the address is empty"),
            MailboxError::ControlCharacter { at, byte } => {
                write!(f, "a control character (0x{byte:02x}) at byte {at}")
            }
            MailboxError::NotAscii { at } => write!(
                f,
                "a byte outside ASCII at byte {at} (internationalized addresses are not supported)"
            ),
            MailboxError::TooLong { len } => write!(
                f,
                "the address is {len} bytes long, more than {}",
                Mailbox::MAX_LEN
            ),
            MailboxError::MissingAt => write!(f, "no `@` after the local part"),
            MailboxError::EmptyLocalPart => write!(f, "nothing before the `@`"),
            MailboxError::LocalPartTooLong { len } => write!(
                f,
                "the local part is {len} bytes long, more than {}",
                Mailbox::MAX_LOCAL_PART
            ),
            MailboxError::InvalidLocalPart { at } => write!(
                f,
                "the local part is neither dot-separated atoms nor a quoted string (byte {at})"
            ),
            MailboxError::UnterminatedQuote => {
                write!(f, "the quoted local part has no closing quote")
            }
            MailboxError::EmptyDomain => write!(f, "nothing after the `@`"),
            MailboxError::InvalidDomain { at } => write!(
                f,
                "the domain is not dot-separated labels of letters, digits and inner hyphens (byte {at})"
            ),
            MailboxError::LabelTooLong { at } => write!(
                f,
                "a domain label is longer than {} bytes (byte {at})",
                Mailbox::MAX_LABEL
            ),
            MailboxError::InvalidAddressLiteral => write!(
                f,
                "the address literal is not [IPv4], [IPv6:address] or [tag:text]"
            ),
        }
    }
}

impl std::error::Error for MailboxError {}

/// RFC 5322 `atext`.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// Checks the local part at the start of `s` (printable ASCII); returns
/// the position of the `@` after it.
fn local_part(s: &[u8]) -> Result<usize, MailboxError> {
    if s[0] == b'"' {
        return quoted_string(s);
    }
    let mut atom = 0;
    for (i, &b) in s.iter().enumerate() {
        match b {
            b'@' if i == 0 => return Err(MailboxError::EmptyLocalPart),
            b'@' if atom == 0 => return Err(MailboxError::InvalidLocalPart { at: i - 1 }),
            b'@' => return Ok(i),
            b'.' if atom == 0 => return Err(MailboxError::InvalidLocalPart { at: i }),
            b'.' => atom = 0,
            b if is_atext(b) => atom += 1,
            _ => return Err(MailboxError::InvalidLocalPart { at: i }),
        }
    }
    Err(MailboxError::MissingAt)
}

/// A quoted string at the start of `s`: every printable character but `"`
/// and `\` as it is, `\` before any printable one. Printable ASCII is all
/// the input can hold here, so only the closing quote can be missing.
fn quoted_string(s: &[u8]) -> Result<usize, MailboxError> {
    let mut i = 1;
    loop {
        match s.get(i) {
            None => return Err(MailboxError::UnterminatedQuote),
            Some(b'"') => break,
            Some(b'\\') if i + 1 < s.len() => i += 2,
            Some(b'\\') => return Err(MailboxError::UnterminatedQuote),
            Some(_) => i += 1,
        }
    }
    match s.get(i + 1) {
        Some(b'@') => Ok(i + 1),
        None => Err(MailboxError::MissingAt),
        Some(_) => Err(MailboxError::InvalidLocalPart { at: i + 1 }),
    }
}

/// Checks the domain of `s`, from `start` to the end.
fn domain(s: &[u8], start: usize) -> Result<(), MailboxError> {
    let domain = &s[start..];
    match domain.first() {
        None => Err(MailboxError::EmptyDomain),
        Some(b'[') if address_literal(domain) => Ok(()),
        Some(b'[') => Err(MailboxError::InvalidAddressLiteral),
        Some(_) => {
            for (label_start, label) in labels(s, start) {
                if label.is_empty() {
                    // A dot at either end or two in a row: point at a dot.
                    let at = label_start.min(s.len() - 1);
                    return Err(MailboxError::InvalidDomain { at });
                }
                sub_domain(label, label_start)?;
            }
            Ok(())
        }
    }
}

/// The dot-separated labels of `s[start..]`, each with its position.
fn labels(s: &[u8], start: usize) -> impl Iterator<Item = (usize, &[u8])> {
    let mut at = start;
    s[start..].split(|&b| b == b'.').map(move |label| {
        let here = at;
        at += label.len() + 1;
        (here, label)
    })
}

/// RFC 5321 `sub-domain`: `Let-dig [Ldh-str]`, at most 63 bytes.
fn sub_domain(label: &[u8], at: usize) -> Result<(), MailboxError> {
    let bad = |offset: usize| Err(MailboxError::InvalidDomain { at: at + offset });
    let Some(&last) = label.last() else {
        return bad(0);
    };
    if label.len() > Mailbox::MAX_LABEL {
        return Err(MailboxError::LabelTooLong { at });
    }
    if let Some(i) = label
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || b == b'-'))
    {
        return bad(i);
    }
    if label[0] == b'-' {
        return bad(0);
    }
    if last == b'-' {
        return bad(label.len() - 1);
    }
    Ok(())
}

/// RFC 5321 `address-literal`, brackets included.
fn address_literal(literal: &[u8]) -> bool {
    let Some(inner) = literal
        .strip_prefix(b"[")
        .and_then(|l| l.strip_suffix(b"]"))
    else {
        return false;
    };
    let Some(colon) = inner.iter().position(|&b| b == b':') else {
        return ipv4(inner);
    };
    let (tag, rest) = (&inner[..colon], &inner[colon + 1..]);
    if tag.eq_ignore_ascii_case(b"IPv6") {
        return std::str::from_utf8(rest).is_ok_and(|r| r.parse::<Ipv6Addr>().is_ok());
    }
    // General-address-literal: Standardized-tag ":" 1*dcontent.
    let ldh_str = tag.last().is_some_and(u8::is_ascii_alphanumeric)
        && tag.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-');
    ldh_str && !rest.is_empty() && rest.iter().all(|&b| matches!(b, 33..=90 | 94..=126))
}

/// RFC 5321 `IPv4-address-literal`: four `Snum` (1 to 3 digits, at most
/// 255) separated by dots.
fn ipv4(s: &[u8]) -> bool {
    let mut parts = 0;
    for part in s.split(|&b| b == b'.') {
        parts += 1;
        let snum = (1..=3).contains(&part.len())
            && part.iter().all(u8::is_ascii_digit)
            && part.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 255;
        if !snum {
            return false;
        }
    }
    parts == 4
}

#[cfg(test)]
mod tests;
