//! What every reply stream must look like (RFC 5321 §4.2): lines ended by
//! CRLF, each a three-digit code followed by a space, a hyphen (more lines
//! follow) or nothing, with no bare CR or LF inside.

/// The line after which a STARTTLS session speaks TLS.
pub const TLS_READY: &[u8] = b"220 2.0.0 ready to start TLS\r\n";

/// A reply stream broke the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

/// Checks the reply lines in `bytes`, up to and including a [`TLS_READY`]
/// line if there is one (what follows it is TLS, not text). `complete`:
/// the server closed the connection, so a last line without CRLF is
/// itself a violation.
pub fn check(bytes: &[u8], complete: bool) -> Result<(), Violation> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some(end) = find_crlf(rest) else {
            if complete {
                return Err(violation("a reply ends without CRLF", rest));
            }
            return Ok(());
        };
        let (line, tail) = rest.split_at(end + 2);
        check_line(&line[..end])?;
        if line == TLS_READY {
            return Ok(());
        }
        rest = tail;
    }
    Ok(())
}

/// A stream's first line must be the server's greeting (no plugin here
/// replaces it).
pub fn check_greeting(bytes: &[u8]) -> Result<(), Violation> {
    if bytes.is_empty() || bytes.starts_with(b"220 ") || b"220 ".starts_with(bytes) {
        Ok(())
    } else {
        Err(violation("the first reply is not a 220 greeting", bytes))
    }
}

fn check_line(line: &[u8]) -> Result<(), Violation> {
    let code_ok = line.len() >= 3 && line[..3].iter().all(u8::is_ascii_digit);
    let separator_ok = matches!(line.get(3), None | Some(b' ' | b'-'));
    if !code_ok || !separator_ok {
        return Err(violation("a reply line does not start with a code", line));
    }
    if line.iter().any(|b| matches!(b, b'\r' | b'\n')) {
        return Err(violation("a reply line holds a bare CR or LF", line));
    }
    Ok(())
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

fn violation(what: &str, bytes: &[u8]) -> Violation {
    let shown = &bytes[..bytes.len().min(200)];
    Violation(format!("{what}: {:?}", String::from_utf8_lossy(shown)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_replies_pass() {
        let ok = b"220 x ESMTP\r\n250-x\r\n250 SIZE 256\r\n334 \r\n221\r\n";
        assert_eq!(check(ok, true), Ok(()));
        assert_eq!(check(b"250 partial", false), Ok(()));
    }

    #[test]
    fn broken_lines_fail() {
        assert!(check(b"25 x\r\n", false).is_err());
        assert!(check(b"250x\r\n", false).is_err());
        assert!(check(b"250 a\rb\r\n", false).is_err());
        assert!(check(b"250 a\nb\r\n", false).is_err());
        assert!(check(b"250 partial", true).is_err());
    }

    #[test]
    fn tls_records_after_ready_are_not_text() {
        let mut bytes = TLS_READY.to_vec();
        bytes.extend_from_slice(&[0x15, 0x03, 0x03, 0x00]);
        assert_eq!(check(&bytes, true), Ok(()));
    }

    #[test]
    fn greeting_first() {
        assert_eq!(check_greeting(b"220 x\r\n"), Ok(()));
        assert_eq!(check_greeting(b"22"), Ok(()));
        assert!(check_greeting(b"250 x\r\n").is_err());
    }
}
