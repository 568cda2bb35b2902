//! The hold watch: what the host does while a plugin holds control.
//!
//! MailerQ waits for a plugin that took control for as long as it takes;
//! so does mq-host by default. While it waits, it reports the hold: every
//! [`Limits::hold_report`] of holding, a warning naming the plugin, the
//! hook and how long it has held, counted in `hold_reports`. The chain is
//! not touched; the plugin's resume is applied as ever.
//!
//! Beyond MailerQ, a hold deadline ([`Limits::hold_deadline`], off by
//! default) ends the hold when it passes ([`dispatch::expire`]), safely:
//! a Rust plugin's held future is cancelled, a C plugin's take-over is
//! kept alive until its late resume.
//!
//! One timer watches a hold: it fires at the next report or the deadline,
//! whichever comes first, and re-arms itself for the next one; the chain
//! keeps the newest handle, so a resume or shutdown stops it.

use crate::observe::{Counters, Priority};
use crate::runtime::connection::ConnectionState;
use crate::runtime::dispatch;
use crate::runtime::event_loop::TimerHandle;
use crate::runtime::worker::{Limits, Worker};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What the hold watch does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Reports the hold and waits on.
    Report,
    /// Ends the hold: the deadline passed.
    Deadline,
}

/// The hold watch's next event after `age` of holding: when (counted from
/// the hold's start) and what; `None` when nothing is to be done (no
/// reports, no deadline). Reports fall on whole multiples of the interval;
/// a report that would fall on or after the deadline gives way to it.
fn next_due(limits: &Limits, age: Duration) -> Option<(Duration, Due)> {
    let report = limits.hold_report.filter(|r| !r.is_zero()).map(|every| {
        let done = u32::try_from(age.as_nanos() / every.as_nanos()).unwrap_or(u32::MAX);
        every.saturating_mul(done.saturating_add(1))
    });
    match (report, limits.hold_deadline) {
        (Some(report), Some(deadline)) if report < deadline => Some((report, Due::Report)),
        (_, Some(deadline)) => Some((deadline.max(age), Due::Deadline)),
        (Some(report), None) => Some((report, Due::Report)),
        (None, None) => None,
    }
}

/// Starts watching the hold `takeover` of the chain on `conn`, which
/// begins now; returns the timer for the chain to keep.
pub(crate) fn watch(w: &Worker, conn: &Rc<ConnectionState>, takeover: u64) -> Option<TimerHandle> {
    arm(w, conn, takeover, w.ev.now(), Duration::ZERO)
}

/// Starts the timer for the next event after `age` of holding.
fn arm(
    w: &Worker,
    conn: &Rc<ConnectionState>,
    takeover: u64,
    started: Instant,
    age: Duration,
) -> Option<TimerHandle> {
    let (at, due) = next_due(&w.shared.limits, age)?;
    let conn = Rc::clone(conn);
    // Counted from the hold's start, so that a late turn of the loop does
    // not push every later report (and the deadline) back.
    // (A time past what `Instant` holds is never: the loop saturates it.)
    let after = match started.checked_add(at) {
        Some(due) => due.saturating_duration_since(w.ev.now()),
        None => at,
    };
    Some(w.start_timer(after, move |w| match due {
        Due::Deadline => dispatch::expire(w, &conn, takeover),
        Due::Report => report(w, &conn, takeover, started, at),
    }))
}

/// The hold `takeover` has lasted `age`: reported, and watched on.
fn report(w: &Worker, conn: &Rc<ConnectionState>, takeover: u64, started: Instant, age: Duration) {
    let held = w
        .with_chain(conn.id, |running| {
            let plugin = running.chain.holder(takeover)?;
            Some((plugin, running.chain.hook()))
        })
        .flatten();
    let Some((plugin, hook)) = held else {
        return;
    };
    Counters::bump(&w.shared.counters.hold_reports);
    let deadline = match w.shared.limits.hold_deadline {
        Some(d) => format!("its hold deadline of {d:?} ends it"),
        None => "the host waits for it, as MailerQ does".to_owned(),
    };
    w.log(
        Priority::Warning,
        format!(
            "plugin {} has held control of {} for {:.1} s without resuming; {deadline}",
            w.shared.plugin_name(plugin),
            hook.symbol,
            w.ev.now().saturating_duration_since(started).as_secs_f64()
        ),
    );
    let Some(next) = arm(w, conn, takeover, started, age) else {
        return;
    };
    let kept = w
        .with_chain(conn.id, |running| running.chain.rearm_hold(takeover, next))
        .unwrap_or(false);
    if !kept {
        w.ev.stop_timer(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(report: Option<u64>, deadline: Option<u64>) -> Limits {
        Limits {
            hold_deadline: deadline.map(Duration::from_secs),
            hold_report: report.map(Duration::from_secs),
            retry_limit: 1,
            clock: Default::default(),
        }
    }

    const fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn by_default_a_hold_is_reported_at_every_interval_and_never_ended() {
        let l = limits(Some(60), None);
        assert_eq!(next_due(&l, s(0)), Some((s(60), Due::Report)));
        assert_eq!(next_due(&l, s(60)), Some((s(120), Due::Report)));
        assert_eq!(next_due(&l, s(6000)), Some((s(6060), Due::Report)));
    }

    #[test]
    fn a_deadline_ends_the_hold_and_replaces_reports_at_or_after_it() {
        let l = limits(Some(60), Some(150));
        assert_eq!(next_due(&l, s(0)), Some((s(60), Due::Report)));
        assert_eq!(next_due(&l, s(60)), Some((s(120), Due::Report)));
        assert_eq!(next_due(&l, s(120)), Some((s(150), Due::Deadline)));
        let l = limits(Some(60), Some(120));
        assert_eq!(next_due(&l, s(60)), Some((s(120), Due::Deadline)));
        let l = limits(None, Some(5));
        assert_eq!(next_due(&l, s(0)), Some((s(5), Due::Deadline)));
    }

    #[test]
    fn without_reports_or_deadline_nothing_is_watched() {
        assert_eq!(next_due(&limits(None, None), s(0)), None);
        assert_eq!(next_due(&limits(Some(0), None), s(0)), None);
    }
}
