//! Misuse of the host's functions that a host can survive: what MailerQ's
//! documentation calls illegal (stopping a timer that fired, unwatching
//! twice) or leaves undefined (a NULL buffer with a size, a delay that is
//! no number of seconds). MailerQ would crash or misbehave; mq-host
//! refuses the call or clamps the argument, and tells the plugin's author.
//! Also reported here: a call that is fine in MailerQ but that mq-host
//! cannot answer as MailerQ does (`MQ_ev`: mq-host has no libev loop).
//!
//! Each kind of misuse is logged once per plugin and host function (the
//! first occurrence, naming both), so that a plugin that repeats it in a
//! loop cannot flood the log; every occurrence is counted in
//! `api_misuse`. The host functions (`capi`) find the misuse; this module
//! names, clamps, counts and reports it.

use crate::observe::{Counters, Priority};
use crate::runtime::event_loop::Stale;
use crate::runtime::worker::{self, Worker};
use std::sync::PoisonError;
use std::time::Duration;

/// The longest timer delay the host supports: 365 days. Longer delays (and
/// `INFINITY`) are clamped to it and reported.
pub(crate) const MAX_TIMER_DELAY: Duration = Duration::from_secs(mq_abi::MAX_TIMER_SECONDS as u64);

/// A kind of misuse; with the plugin and the function, what is reported once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Misuse {
    /// A NULL buffer with a non-zero size: refused, nothing changes.
    NullBuffer,
    /// A delay that is NaN: runs as 0 s.
    DelayNotANumber,
    /// A negative delay (also `-INFINITY`): runs as 0 s.
    DelayNegative,
    /// A delay longer than [`MAX_TIMER_DELAY`] (also `INFINITY`): clamped.
    DelayTooLong,
    /// Stopping or resetting a timer that fired.
    TimerFired,
    /// Stopping or resetting a timer that was stopped.
    TimerStopped,
    /// Stopping or resetting a timer that fired or was stopped (the loop no
    /// longer knows which).
    TimerGone,
    /// NULL, another worker's timer, or a value that is no timer.
    NotATimer,
    /// Unwatching a watcher that was unwatched.
    UnwatchedTwice,
    /// NULL, another worker's watcher, or a value that is no watcher.
    NotAWatcher,
    /// `MQ_ioWatch`/`MQ_startTimer` without a callback: refused.
    NoCallback,
    /// `MQ_ioWatch` with neither `MQ_READ` nor `MQ_WRITE`: refused.
    NoEvents,
    /// `MQ_ev`: fine in MailerQ, but mq-host has no libev loop to give.
    NoLibevLoop,
}

impl Misuse {
    /// What was wrong and what the host did, to follow `"<function> "`.
    fn describe(self, detail: &str) -> String {
        match self {
            Misuse::NullBuffer => {
                format!("refused: a NULL buffer with size {detail}; nothing changed")
            }
            Misuse::DelayNotANumber => {
                "got a delay that is not a number; it runs as 0 s".to_owned()
            }
            Misuse::DelayNegative => format!("got a negative delay ({detail} s); it runs as 0 s"),
            Misuse::DelayTooLong => format!(
                "got a delay of {detail} s, longer than the host supports; it runs as {} s \
                 (365 days)",
                MAX_TIMER_DELAY.as_secs()
            ),
            Misuse::TimerFired => "on a timer that already fired (a fired timer is freed by the \
                 host: stop or reset a timer only before it fires); ignored"
                .to_owned(),
            Misuse::TimerStopped => "on a timer that was already stopped; ignored".to_owned(),
            Misuse::TimerGone => "on a timer that already fired or was stopped; ignored".to_owned(),
            Misuse::NotATimer => {
                format!("on {detail}, which is not a timer of this worker; ignored")
            }
            Misuse::UnwatchedTwice => "on a watcher that was already unwatched; ignored".to_owned(),
            Misuse::NotAWatcher => {
                format!("on {detail}, which is not a watcher of this worker; ignored")
            }
            Misuse::NoCallback => "refused: no callback".to_owned(),
            Misuse::NoEvents => "refused: events is neither MQ_READ nor MQ_WRITE".to_owned(),
            Misuse::NoLibevLoop => "returns NULL: mq-host runs its own event loop, not libev \
                 (MailerQ returns its libev loop); MQ_ioWatch and MQ_startTimer work in both hosts"
                .to_owned(),
        }
    }

    /// The misuse of stopping or resetting a timer whose handle is stale.
    pub(crate) fn of_timer(stale: Stale) -> Misuse {
        match stale {
            Stale::Fired => Misuse::TimerFired,
            Stale::Stopped => Misuse::TimerStopped,
            Stale::Foreign => Misuse::NotATimer,
            Stale::Unwatched | Stale::Discarded | Stale::Forgotten => Misuse::TimerGone,
        }
    }

    /// The misuse of unwatching a stale watcher handle, if it is one: a
    /// watcher the loop discarded (its fd was closed and the number watched
    /// anew) is not the plugin's fault, and one whose end the loop forgot
    /// may have been that.
    pub(crate) fn of_watcher(stale: Stale) -> Option<Misuse> {
        match stale {
            Stale::Unwatched => Some(Misuse::UnwatchedTwice),
            Stale::Foreign => Some(Misuse::NotAWatcher),
            Stale::Discarded | Stale::Forgotten | Stale::Fired | Stale::Stopped => None,
        }
    }
}

impl Worker {
    /// Counts a misuse of `function` by `plugin` (by default the plugin
    /// this worker is calling into) and logs it if it is the first of its
    /// kind by that plugin in this host; `detail` fills in the description.
    pub(crate) fn report_misuse(
        &self,
        plugin: Option<usize>,
        function: &'static str,
        misuse: Misuse,
        detail: &str,
    ) {
        Counters::bump(&self.shared.counters.api_misuse);
        let plugin = plugin.or_else(worker::calling);
        let first = self
            .shared
            .misuse_reported
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((plugin, function, misuse));
        if !first {
            return;
        }
        let name = plugin.map_or("(unknown)", |p| self.shared.plugin_name(p));
        self.log(
            Priority::Critical,
            format!(
                "plugin {name}: {function} {}; reported once per plugin, function and kind \
                 (every occurrence counts in api_misuse)",
                misuse.describe(detail)
            ),
        );
    }
}

/// A timer delay in seconds as a [`Duration`] in `0..=MAX_TIMER_DELAY`,
/// with the misuse if it was out of that range: NaN and negative run as
/// 0 s, longer (and `INFINITY`) as [`MAX_TIMER_DELAY`].
pub(crate) fn timer_delay(seconds: f32) -> (Duration, Option<Misuse>) {
    if seconds.is_nan() {
        (Duration::ZERO, Some(Misuse::DelayNotANumber))
    } else if seconds < 0.0 {
        (Duration::ZERO, Some(Misuse::DelayNegative))
    } else if seconds > mq_abi::MAX_TIMER_SECONDS {
        (MAX_TIMER_DELAY, Some(Misuse::DelayTooLong))
    } else {
        // In range, so finite and representable.
        (
            Duration::try_from_secs_f32(seconds).unwrap_or(MAX_TIMER_DELAY),
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_clamped_to_the_documented_range() {
        let max = MAX_TIMER_DELAY;
        assert_eq!(max, Duration::from_secs(365 * 24 * 3600));
        for (seconds, expected, misuse) in [
            (0.0, Duration::ZERO, None),
            (-0.0, Duration::ZERO, None),
            (0.25, Duration::from_millis(250), None),
            (mq_abi::MAX_TIMER_SECONDS, max, None),
            (f32::NAN, Duration::ZERO, Some(Misuse::DelayNotANumber)),
            (-1.0, Duration::ZERO, Some(Misuse::DelayNegative)),
            (-1e-30, Duration::ZERO, Some(Misuse::DelayNegative)),
            (
                f32::NEG_INFINITY,
                Duration::ZERO,
                Some(Misuse::DelayNegative),
            ),
            (f32::INFINITY, max, Some(Misuse::DelayTooLong)),
            (f32::MAX, max, Some(Misuse::DelayTooLong)),
            (1e30, max, Some(Misuse::DelayTooLong)),
            (
                mq_abi::MAX_TIMER_SECONDS * 1.001,
                max,
                Some(Misuse::DelayTooLong),
            ),
        ] {
            assert_eq!(timer_delay(seconds), (expected, misuse), "{seconds}");
        }
    }

    #[test]
    fn only_the_plugins_own_stale_watchers_are_misuse() {
        assert_eq!(
            Misuse::of_watcher(Stale::Unwatched),
            Some(Misuse::UnwatchedTwice)
        );
        assert_eq!(
            Misuse::of_watcher(Stale::Foreign),
            Some(Misuse::NotAWatcher)
        );
        assert_eq!(Misuse::of_watcher(Stale::Discarded), None);
        assert_eq!(Misuse::of_watcher(Stale::Forgotten), None);
        assert_eq!(Misuse::of_timer(Stale::Fired), Misuse::TimerFired);
        assert_eq!(Misuse::of_timer(Stale::Stopped), Misuse::TimerStopped);
        assert_eq!(Misuse::of_timer(Stale::Forgotten), Misuse::TimerGone);
        assert_eq!(Misuse::of_timer(Stale::Foreign), Misuse::NotATimer);
    }
}
