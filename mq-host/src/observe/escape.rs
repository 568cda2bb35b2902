//! The one escape form for text the host prints: whatever a plugin or a
//! client wrote, a log record stays one line and cannot move the cursor,
//! recolour a terminal or reorder what a reader sees.
//!
//! Escaped are the control characters (C0 `U+0000`–`U+001F`, DEL `U+007F`,
//! C1 `U+0080`–`U+009F`), the line and paragraph separators (`U+2028`,
//! `U+2029`) and the bidirectional controls (`U+061C`, `U+200E`, `U+200F`,
//! `U+202A`–`U+202E`, `U+2066`–`U+2069`):
//!
//! | character | written as |
//! |---|---|
//! | line feed, carriage return, tab | `\n`, `\r`, `\t` |
//! | any other ASCII control (C0, DEL) | `\xHH`, e.g. `\x1b` for ESC, `\x00` for NUL |
//! | C1, the separators, the bidi controls | `\u{HH..}`, e.g. `\u{85}`, `\u{202e}` |
//!
//! Everything else, the backslash included, is kept as it is, so escaping
//! is idempotent (escaped text escapes to itself) and ordinary text reads
//! unchanged; the price is that a literal `\n` typed by a client looks like
//! an escaped line feed — it still cannot break the line.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` is written escaped (see the module docs).
pub(crate) fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every control, separator and bidi control character
/// escaped: `\n`, `\r`, `\t`, `\xHH` for the other ASCII controls (`\x1b`
/// for ESC), `\u{HH..}` for the rest (`\u{202e}`). Borrowed when there is
/// nothing to escape. The host writes every log record, and prints every
/// plugin- or client-supplied text, through it.
///
/// ```
/// assert_eq!(mq_host::escape_controls("a\x1b[31mRED\r\nX\u{202e}"), r"a\x1b[31mRED\r\nX\u{202e}");
/// assert_eq!(mq_host::escape_controls(r"C:\path"), r"C:\path");
/// ```
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let (escaped, _) = escape_bounded(text, usize::MAX);
    Cow::Owned(escaped)
}

/// `text` escaped, cut so that the result is at most `max` bytes; also
/// returns how many bytes of `text` did not fit. Only the kept part is
/// copied, so a huge text costs no more than `max`.
pub(crate) fn escape_bounded(text: &str, max: usize) -> (String, usize) {
    let mut out = String::with_capacity(text.len().min(max));
    let mut one = String::new();
    for (at, c) in text.char_indices() {
        one.clear();
        push_escaped(&mut one, c);
        if out.len() + one.len() > max {
            return (out, text.len() - at);
        }
        out.push_str(&one);
    }
    (out, 0)
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if needs_escape(c) && c.is_ascii() => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if needs_escape(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_has_its_form() {
        assert_eq!(escape_controls("a\nb\rc\td"), r"a\nb\rc\td");
        assert_eq!(
            escape_controls("\x1b[31m\x00\x7f\x08"),
            r"\x1b[31m\x00\x7f\x08"
        );
        assert_eq!(escape_controls("\u{85}\u{9b}"), r"\u{85}\u{9b}");
        assert_eq!(
            escape_controls("\u{2028}\u{2029}\u{202e}\u{2066}\u{061c}\u{200f}"),
            r"\u{2028}\u{2029}\u{202e}\u{2066}\u{61c}\u{200f}"
        );
    }

    #[test]
    fn ordinary_text_is_borrowed_and_unchanged() {
        for text in [
            "plain",
            r"back\slash \n",
            "héllo wörld ✓",
            "\"quoted\"@example.com",
            "",
        ] {
            assert!(matches!(escape_controls(text), Cow::Borrowed(t) if t == text));
        }
    }

    #[test]
    fn escaping_is_idempotent() {
        let once = escape_controls("x\r\n\x1b\u{202e}\u{85}y").into_owned();
        assert_eq!(escape_controls(&once), once);
        assert!(!once.chars().any(needs_escape));
    }

    #[test]
    fn bounded_escaping_cuts_at_a_character_and_counts_the_rest() {
        assert_eq!(escape_bounded("abcdef", 4), ("abcd".to_owned(), 2));
        assert_eq!(escape_bounded("abc", 3), ("abc".to_owned(), 0));
        // An escape is never split: `\x1b` (4 bytes) does not fit in 3.
        assert_eq!(escape_bounded("ab\x1bcd", 5), ("ab".to_owned(), 3));
        // Nor is a multi-byte character: `é` is 2 bytes.
        assert_eq!(escape_bounded("aé", 2), ("a".to_owned(), 2));
    }
}
