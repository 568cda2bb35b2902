//! The deadlines a client must meet: a command (or AUTH) line from its
//! first byte, a message's data from the `354` or the BDAT command.

use super::session::{close, guarded, reply, Deadline, Ending, Phase, Shared};
use crate::observe::Priority;
use crate::runtime::worker::Worker;
use std::rc::Rc;
use std::sync::Arc;

/// Arms, keeps or stops the session's deadline for what it waits for from
/// the client now: a line being received, or a message's data.
pub(super) fn update_deadline(w: &Worker, s: &Shared) {
    let (want, current, config) = {
        let sess = s.borrow();
        let waiting_for_client = sess.ending == Ending::No && !sess.busy && !sess.finishing_data;
        let want = match sess.phase {
            _ if !waiting_for_client => None,
            Phase::Data(_) | Phase::Bdat(_) | Phase::SkipBdat(..) => Some(Deadline::Data),
            Phase::Commands => (sess.partial_line || sess.skipping_line).then_some(Deadline::Line),
            Phase::AuthPlain | Phase::AuthLoginUser | Phase::AuthLoginPassword(_) => {
                (!sess.input.is_empty()).then_some(Deadline::Line)
            }
            Phase::Connecting => None,
        };
        (
            want,
            sess.deadline.map(|(d, _)| d),
            Arc::clone(&sess.config),
        )
    };
    if want == current {
        return;
    }
    if let Some((_, timer)) = s.borrow_mut().deadline.take() {
        w.ev.stop_timer(timer);
    }
    let Some(kind) = want else { return };
    let after = match kind {
        Deadline::Line => config.command_timeout,
        Deadline::Data => config.data_timeout,
    };
    let weak = Rc::downgrade(s);
    let timer = w.start_timer(after, move |w| {
        let Some(s) = weak.upgrade() else { return };
        s.borrow_mut().deadline = None;
        guarded(w, &s, || too_slow(w, &s, kind, after));
    });
    s.borrow_mut().deadline = Some((kind, timer));
}

/// A deadline passed: the client trickles its input. `421`, and the
/// session ends.
fn too_slow(w: &Worker, s: &Shared, kind: Deadline, after: std::time::Duration) {
    crate::observe::Counters::bump(&w.shared.counters.sessions_too_slow);
    let what = match kind {
        Deadline::Line => "a command line",
        Deadline::Data => "the message data",
    };
    let peer = s
        .borrow()
        .stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    w.log(
        Priority::Info,
        format!(
            "smtp: {peer} did not send {what} within {} s; closing",
            after.as_secs_f64()
        ),
    );
    reply(
        w,
        s,
        &format!(
            "421 4.4.2 {what} took longer than {} s, closing",
            after.as_secs_f64()
        ),
    );
    close(w, s);
}
