//! Time as the host writes it in messages, results and logs: MailerQ's
//! `YYYY-MM-DD HH:MM:SS` (UTC) in message and result JSON, RFC 3339 UTC in
//! logs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `time` as RFC 3339 UTC, to the second.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let c = Civil::from_time(time);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// Now in MailerQ's form, UTC (`2026-11-22 21:08:37`).
pub(crate) fn now_mailerq() -> String {
    mailerq_time(SystemTime::now())
}

/// `time` in MailerQ's form, UTC, to the second (`2026-11-22 21:08:37`):
/// how MailerQ writes `received`, a result's `time` and `nextattempt`'s
/// `time`.
pub(crate) fn mailerq_time(time: SystemTime) -> String {
    let c = Civil::from_time(time);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// Parses the RFC 3339 UTC form [`rfc3339`] writes
/// (`2026-11-22T21:08:37Z`); `None` for anything else.
pub(crate) fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() != 20 || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    Civil::parse(&text[..10], &text[11..19])?.to_time()
}

/// Parses MailerQ's `YYYY-MM-DD HH:MM:SS` (UTC); `None` for anything else.
pub(crate) fn parse_mailerq_time(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() != 19 || b[10] != b' ' {
        return None;
    }
    Civil::parse(&text[..10], &text[11..])?.to_time()
}

/// A UTC calendar date and time of day.
struct Civil {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
}

impl Civil {
    /// The civil date of `time` (Howard Hinnant's algorithm).
    fn from_time(time: SystemTime) -> Civil {
        let secs = time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        Civil {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: rest / 3600,
            minute: rest % 3600 / 60,
            second: rest % 60,
        }
    }

    /// From `YYYY-MM-DD` and `HH:MM:SS`; `None` unless both are exactly so
    /// and in range.
    fn parse(date: &str, time: &str) -> Option<Civil> {
        let (d, t) = (date.as_bytes(), time.as_bytes());
        if d.len() != 10 || d[4] != b'-' || d[7] != b'-' {
            return None;
        }
        if t.len() != 8 || t[2] != b':' || t[5] != b':' {
            return None;
        }
        let num = |text: &str, range: std::ops::Range<usize>| -> Option<i64> {
            let part = text.get(range)?;
            part.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| part.parse().ok())
                .flatten()
        };
        let c = Civil {
            year: num(date, 0..4)?,
            month: num(date, 5..7)?,
            day: num(date, 8..10)?,
            hour: num(time, 0..2)?,
            minute: num(time, 3..5)?,
            second: num(time, 6..8)?,
        };
        let valid = (1..=12).contains(&c.month)
            && (1..=31).contains(&c.day)
            && c.hour <= 23
            && c.minute <= 59
            && c.second <= 60;
        valid.then_some(c)
    }

    /// The moment, if it is not before 1970 (days from a civil date,
    /// Howard Hinnant's algorithm).
    fn to_time(&self) -> Option<SystemTime> {
        let y = if self.month <= 2 {
            self.year - 1
        } else {
            self.year
        };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (self.month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + self.day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let secs = days * 86_400 + self.hour * 3600 + self.minute * 60 + self.second;
        u64::try_from(secs)
            .ok()
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_827_696);
        assert_eq!(rfc3339(leap), "2000-02-29T12:34:56Z");
    }

    #[test]
    fn mailerq_known_dates() {
        assert_eq!(mailerq_time(UNIX_EPOCH), "1970-01-01 00:00:00");
        let leap = UNIX_EPOCH + Duration::from_secs(951_827_696);
        assert_eq!(mailerq_time(leap), "2000-02-29 12:34:56");
    }

    #[test]
    fn both_forms_round_trip() {
        for secs in [0, 951_827_696, 1_796_025_034, 4_102_444_800] {
            let time = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(parse_rfc3339(&rfc3339(time)), Some(time), "{secs}");
            assert_eq!(
                parse_mailerq_time(&mailerq_time(time)),
                Some(time),
                "{secs}"
            );
        }
    }

    #[test]
    fn malformed_times_are_refused() {
        for bad in [
            "",
            "2026-11-22 21:08:37Z",
            "2026-13-01T00:00:00Z",
            "2026-11-22T21:08:37",
            "x026-11-22T21:08:37Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        for bad in [
            "",
            "2026-11-22T21:08:37",
            "2026-11-22 21:08:37Z",
            "2026-11-22 24:00:00",
            "2026-02-30x00:00:00",
            "2026-1-22 21:08:37 ",
        ] {
            assert_eq!(parse_mailerq_time(bad), None, "{bad}");
        }
    }
}
