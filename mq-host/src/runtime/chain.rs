//! The chain's rules: one event walked through every plugin that defines
//! its hook, as MailerQ walks it — a pure state machine, driven by the
//! dispatcher (which calls the plugins, runs the timers and logs) and
//! tested here on its own.
//!
//! - `false` from a hook: the next plugin.
//! - `true`: the chain is held until that plugin resumes it once:
//!   continue (next plugin), complete (skip the rest), retry (from the
//!   first plugin again, at most `retry_limit` times).
//! - A resume inside the hook call is applied after the hook returns;
//!   further ones in that call are extra (ignored). A resume by a plugin
//!   that does not hold the chain is not accepted.
//! - A hold can also end without a resume (its deadline, or shutdown):
//!   only the take-over it belongs to is ended (take-overs are numbered).
//! - A hold keeps one timer, the hold watch (`runtime::hold`): it reports
//!   a long hold and, with a deadline, ends it; it re-arms itself, so the
//!   chain keeps the newest handle.

use crate::runtime::event_loop::TimerHandle;
use crate::runtime::message::ChainArgs;
use mq_abi::Flow;
use mq_hook_table::Hook;
use std::time::Instant;

/// How a chain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainEnd {
    /// Every plugin went on (or none defines the hook): the host does its own work.
    Finished,
    /// A plugin completed the step; later plugins were skipped.
    Completed {
        /// The plugin's name.
        plugin: String,
    },
    /// The chain retried more often than the retry limit and was cut.
    RetryLimit,
}

/// How a chain ended, with plugins by index (named by the driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Finished,
    Completed(usize),
    RetryLimit,
}

/// How one hook call went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookCall {
    /// The plugin's name.
    pub plugin: String,
    /// Whether the hook returned `true`.
    pub took_control: bool,
    /// How control came back, if it was taken.
    pub resumed: Option<Resume>,
}

/// How a plugin that took control gave it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// With this flow.
    Flow(Flow),
    /// Not before the hold deadline, and the hold could not be cancelled
    /// (a C plugin): the host went on; what the plugin was given stays
    /// alive until its late resume.
    Expired,
    /// Not before the hold deadline: the host cancelled the hold (a Rust
    /// plugin's hook future was dropped) and went on.
    Cancelled,
}

/// A hook call as the chain records it (names are looked up only when a
/// caller asks for [`HookCall`]s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CallRecord {
    pub(crate) plugin: usize,
    pub(crate) took_control: bool,
    pub(crate) resumed: Option<Resume>,
}

/// A finished chain.
pub(crate) struct ChainReport {
    pub(crate) end: ChainEnd,
    pub(crate) calls: CallLog,
    pub(crate) retries: u32,
    pub(crate) args: ChainArgs,
    pub(crate) started: Instant,
}

/// The calls of a chain: the first [`CallLog::INLINE`] kept in place, so
/// that a chain through a few plugins allocates nothing for its record
/// (it was one allocation per chain run); more (many plugins, retries)
/// move to the heap.
#[derive(Debug, Clone)]
pub(crate) struct CallLog {
    inline: [CallRecord; CallLog::INLINE],
    len: usize,
    /// Every call, once there are more than fit inline.
    spilled: Vec<CallRecord>,
}

impl CallLog {
    /// Calls kept without an allocation.
    pub(crate) const INLINE: usize = 4;

    fn push(&mut self, call: CallRecord) {
        if self.spilled.is_empty() && self.len < Self::INLINE {
            self.inline[self.len] = call;
            self.len += 1;
        } else {
            if self.spilled.is_empty() {
                self.spilled.extend_from_slice(&self.inline[..self.len]);
            }
            self.spilled.push(call);
        }
    }
}

impl Default for CallLog {
    fn default() -> CallLog {
        let none = CallRecord {
            plugin: 0,
            took_control: false,
            resumed: None,
        };
        CallLog {
            inline: [none; CallLog::INLINE],
            len: 0,
            spilled: Vec::new(),
        }
    }
}

impl std::ops::Deref for CallLog {
    type Target = [CallRecord];
    fn deref(&self) -> &[CallRecord] {
        if self.spilled.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spilled
        }
    }
}

impl std::ops::DerefMut for CallLog {
    fn deref_mut(&mut self) -> &mut [CallRecord] {
        if self.spilled.is_empty() {
            &mut self.inline[..self.len]
        } else {
            &mut self.spilled
        }
    }
}

#[derive(Debug)]
enum State {
    Ready,
    Calling {
        plugin: usize,
        inline: Option<Flow>,
        extra: u32,
    },
    Held {
        plugin: usize,
        takeover: u64,
        /// The hold watch's pending timer.
        deadline: Option<TimerHandle>,
    },
    Resuming,
}

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Call this plugin's hook.
    Call(usize),
    /// The chain is over.
    End(End),
}

/// What follows a hook call that returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterCall {
    /// The hook returned `false`: the next plugin. `stray` when it resumed
    /// inside the call nonetheless (ignored).
    Next { stray: bool },
    /// The hook took control and resumed inside the call: apply `flow`
    /// once the call is over.
    Apply(Flow),
    /// The hook took control: the chain is held until it resumes.
    Hold,
}

/// A hook call's end as the chain saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Returned {
    pub(crate) after: AfterCall,
    /// Resumes inside the call beyond the first (ignored).
    pub(crate) extra_resumes: u32,
}

/// What a resume does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Inside the plugin's own hook call: recorded, applied when it returns.
    Inline,
    /// The plugin held the chain: apply `flow` (stop the deadline timer).
    Accepted { deadline: Option<TimerHandle> },
    /// The plugin holds nothing here.
    NotHeld,
}

/// A running chain.
pub(crate) struct Chain {
    hook: &'static Hook,
    args: ChainArgs,
    position: usize,
    retries: u32,
    state: State,
    calls: CallLog,
    started: Instant,
}

impl Chain {
    pub(crate) fn new(hook: &'static Hook, args: ChainArgs) -> Chain {
        Chain {
            hook,
            args,
            position: 0,
            retries: 0,
            state: State::Ready,
            calls: CallLog::default(),
            started: Instant::now(),
        }
    }

    pub(crate) fn hook(&self) -> &'static Hook {
        self.hook
    }

    pub(crate) fn args(&self) -> &ChainArgs {
        &self.args
    }

    /// The next call: the plugin at the chain's position among `plugins`
    /// (those that define the hook, in order), or the end.
    pub(crate) fn next(&mut self, plugins: &[usize]) -> Next {
        match plugins.get(self.position) {
            Some(&plugin) => {
                self.state = State::Calling {
                    plugin,
                    inline: None,
                    extra: 0,
                };
                Next::Call(plugin)
            }
            None => Next::End(End::Finished),
        }
    }

    /// Passes over the plugin [`Chain::next`] named, without a call (and
    /// without a record): see `Shared::skips_close`.
    pub(crate) fn skip(&mut self) {
        debug_assert!(matches!(self.state, State::Calling { .. }));
        self.position += 1;
        self.state = State::Ready;
    }

    /// The hook called by [`Chain::next`] returned `took_control`.
    pub(crate) fn returned(&mut self, took_control: bool) -> Returned {
        let State::Calling {
            plugin,
            inline,
            extra,
        } = self.state
        else {
            unreachable!("returned follows next")
        };
        self.calls.push(CallRecord {
            plugin,
            took_control,
            resumed: None,
        });
        let after = match (took_control, inline) {
            (false, inline) => {
                self.position += 1;
                self.state = State::Ready;
                AfterCall::Next {
                    stray: inline.is_some(),
                }
            }
            (true, Some(flow)) => {
                self.record(Resume::Flow(flow));
                self.state = State::Resuming;
                AfterCall::Apply(flow)
            }
            (true, None) => AfterCall::Hold,
        };
        Returned {
            after,
            extra_resumes: extra,
        }
    }

    /// The chain is held by the plugin whose call returned [`AfterCall::Hold`].
    pub(crate) fn hold(&mut self, takeover: u64, deadline: Option<TimerHandle>) {
        let plugin = self.calls.last().expect("a call took control").plugin;
        self.state = State::Held {
            plugin,
            takeover,
            deadline,
        };
    }

    /// The plugin holding the chain, if `takeover` holds it now.
    pub(crate) fn holder(&self, takeover: u64) -> Option<usize> {
        match self.state {
            State::Held {
                plugin,
                takeover: t,
                ..
            } if t == takeover => Some(plugin),
            _ => None,
        }
    }

    /// Gives the hold of `takeover` its next watch timer; false (and the
    /// caller stops `timer`) if `takeover` no longer holds the chain.
    pub(crate) fn rearm_hold(&mut self, takeover: u64, timer: TimerHandle) -> bool {
        match &mut self.state {
            State::Held {
                takeover: t,
                deadline,
                ..
            } if *t == takeover => {
                *deadline = Some(timer);
                true
            }
            _ => false,
        }
    }

    /// A resume (`MQ_continue`/`MQ_complete`/`MQ_retry`) from `plugin`.
    pub(crate) fn resume(&mut self, plugin: usize, flow: Flow) -> Verdict {
        match &mut self.state {
            State::Calling {
                plugin: p,
                inline,
                extra,
            } if *p == plugin => {
                if inline.is_some() {
                    *extra += 1;
                } else {
                    *inline = Some(flow);
                }
                Verdict::Inline
            }
            State::Held {
                plugin: p,
                deadline,
                ..
            } if *p == plugin => {
                let deadline = deadline.take();
                self.state = State::Resuming;
                self.record(Resume::Flow(flow));
                Verdict::Accepted { deadline }
            }
            _ => Verdict::NotHeld,
        }
    }

    /// Ends the hold of `takeover` (or the current hold, for `None`)
    /// without a resume; returns the holding plugin and the deadline timer
    /// to stop. The driver then records how it ended and applies continue.
    pub(crate) fn end_hold(
        &mut self,
        takeover: Option<u64>,
    ) -> Option<(usize, Option<TimerHandle>)> {
        let State::Held {
            plugin,
            takeover: t,
            ref mut deadline,
        } = self.state
        else {
            return None;
        };
        if takeover.is_some_and(|takeover| takeover != t) {
            return None;
        }
        let deadline = deadline.take();
        self.state = State::Resuming;
        Some((plugin, deadline))
    }

    /// How the last call's take-over ended.
    pub(crate) fn record(&mut self, resumed: Resume) {
        if let Some(call) = self.calls.last_mut() {
            call.resumed = Some(resumed);
        }
    }

    /// Applies an accepted resume of `plugin`: the chain goes on (`None`)
    /// or ends.
    pub(crate) fn apply(&mut self, plugin: usize, flow: Flow, retry_limit: u32) -> Option<End> {
        self.state = State::Ready;
        match flow {
            Flow::Continue => {
                self.position += 1;
                None
            }
            Flow::Complete => Some(End::Completed(plugin)),
            Flow::Retry => {
                self.retries += 1;
                if self.retries > retry_limit {
                    Some(End::RetryLimit)
                } else {
                    self.position = 0;
                    None
                }
            }
        }
    }

    /// How often the chain retried so far.
    pub(crate) fn retries(&self) -> u32 {
        self.retries
    }

    /// The finished chain, with `end` (its plugins named by the driver).
    pub(crate) fn into_report(self, end: ChainEnd) -> ChainReport {
        ChainReport {
            end,
            calls: self.calls,
            retries: self.retries,
            args: self.args,
            started: self.started,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mq_hook_table::HookId;

    const PLUGINS: &[usize] = &[0, 1, 2];

    fn chain() -> Chain {
        Chain::new(HookId::SmtpInRcptto.hook(), ChainArgs::None)
    }

    /// Calls the next plugin, which returns `took`.
    fn call(c: &mut Chain, took: bool) -> (usize, Returned) {
        let Next::Call(plugin) = c.next(PLUGINS) else {
            panic!("the chain ended early")
        };
        (plugin, c.returned(took))
    }

    #[test]
    fn false_everywhere_finishes_after_the_last_plugin() {
        let mut c = chain();
        for expected in PLUGINS {
            let (plugin, r) = call(&mut c, false);
            assert_eq!(plugin, *expected);
            assert_eq!(r.after, AfterCall::Next { stray: false });
        }
        assert_eq!(c.next(PLUGINS), Next::End(End::Finished));
        assert_eq!(
            c.next(&[]),
            Next::End(End::Finished),
            "no plugin defines it"
        );
    }

    #[test]
    fn a_hold_waits_for_its_plugins_resume() {
        let mut c = chain();
        let (plugin, r) = call(&mut c, true);
        assert_eq!(r.after, AfterCall::Hold);
        c.hold(1, None);
        assert_eq!(
            c.resume(plugin + 1, Flow::Continue),
            Verdict::NotHeld,
            "another plugin"
        );
        assert_eq!(
            c.resume(plugin, Flow::Continue),
            Verdict::Accepted { deadline: None }
        );
        assert_eq!(
            c.resume(plugin, Flow::Complete),
            Verdict::NotHeld,
            "a second resume"
        );
        assert_eq!(c.apply(plugin, Flow::Continue, 10), None);
        assert_eq!(c.next(PLUGINS), Next::Call(1), "the next plugin");
    }

    #[test]
    fn complete_skips_the_rest() {
        let mut c = chain();
        call(&mut c, false);
        let (plugin, _) = call(&mut c, true);
        c.hold(1, None);
        c.resume(plugin, Flow::Complete);
        assert_eq!(c.apply(plugin, Flow::Complete, 10), Some(End::Completed(1)));
        let report = c.into_report(ChainEnd::Finished);
        assert_eq!(report.calls.len(), 2);
        assert_eq!(report.calls[1].resumed, Some(Resume::Flow(Flow::Complete)));
    }

    #[test]
    fn retry_starts_over_until_the_limit() {
        let mut c = chain();
        for round in 1..=3 {
            let (first, _) = call(&mut c, false);
            assert_eq!(first, 0, "every round starts from the first plugin");
            let (plugin, _) = call(&mut c, true);
            c.hold(round, None);
            assert!(matches!(
                c.resume(plugin, Flow::Retry),
                Verdict::Accepted { .. }
            ));
            let end = c.apply(plugin, Flow::Retry, 2);
            assert_eq!(end, (round > 2).then_some(End::RetryLimit), "round {round}");
        }
        assert_eq!(c.retries(), 3);
    }

    #[test]
    fn a_resume_inside_the_call_is_applied_after_it() {
        let mut c = chain();
        let Next::Call(plugin) = c.next(PLUGINS) else {
            unreachable!()
        };
        assert_eq!(c.resume(plugin, Flow::Complete), Verdict::Inline);
        assert_eq!(c.resume(plugin, Flow::Retry), Verdict::Inline);
        let r = c.returned(true);
        assert_eq!(r.after, AfterCall::Apply(Flow::Complete));
        assert_eq!(r.extra_resumes, 1);
        assert_eq!(c.resume(plugin, Flow::Continue), Verdict::NotHeld);
    }

    #[test]
    fn a_resume_inside_a_call_that_returned_false_is_stray() {
        let mut c = chain();
        let Next::Call(plugin) = c.next(PLUGINS) else {
            unreachable!()
        };
        c.resume(plugin, Flow::Continue);
        assert_eq!(c.returned(false).after, AfterCall::Next { stray: true });
    }

    #[test]
    fn ending_a_hold_touches_only_its_own_take_over() {
        let mut c = chain();
        let (plugin, _) = call(&mut c, true);
        c.hold(7, None);
        assert_eq!(c.end_hold(Some(6)), None, "an older take-over's timer");
        assert_eq!(c.end_hold(Some(7)), Some((plugin, None)));
        assert_eq!(c.end_hold(None), None, "ended once");
        assert_eq!(c.resume(plugin, Flow::Continue), Verdict::NotHeld, "late");
        c.record(Resume::Expired);
        assert_eq!(c.apply(plugin, Flow::Continue, 10), None);
        assert_eq!(c.next(PLUGINS), Next::Call(1));
        let report = c.into_report(ChainEnd::Finished);
        assert_eq!(report.calls[0].resumed, Some(Resume::Expired));
    }

    #[test]
    fn a_hold_keeps_its_newest_watch_timer() {
        let mut c = chain();
        let (plugin, _) = call(&mut c, true);
        let first = TimerHandle::from_raw(1);
        let second = TimerHandle::from_raw(2).unwrap();
        c.hold(3, first);
        assert_eq!(c.holder(3), Some(plugin));
        assert_eq!(c.holder(2), None, "another take-over");
        assert!(!c.rearm_hold(2, second), "not another take-over's hold");
        assert!(c.rearm_hold(3, second));
        assert_eq!(
            c.resume(plugin, Flow::Continue),
            Verdict::Accepted {
                deadline: Some(second)
            },
            "the resume stops the newest timer"
        );
        assert_eq!(c.holder(3), None);
        assert!(!c.rearm_hold(3, second), "resumed: nothing to re-arm");
    }

    #[test]
    fn the_call_log_keeps_every_call_in_order_past_its_inline_room() {
        let mut log = CallLog::default();
        for plugin in 0..CallLog::INLINE + 3 {
            log.push(CallRecord {
                plugin,
                took_control: plugin % 2 == 1,
                resumed: None,
            });
            let plugins: Vec<usize> = log.iter().map(|c| c.plugin).collect();
            assert_eq!(plugins, (0..=plugin).collect::<Vec<_>>());
        }
        log.last_mut().unwrap().resumed = Some(Resume::Cancelled);
        assert_eq!(log[CallLog::INLINE + 2].resumed, Some(Resume::Cancelled));
        assert!(log[1].took_control && !log[2].took_control);
    }
}
