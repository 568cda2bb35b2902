//! Running chains on a worker: [`start`] walks an event through the
//! plugins by [`Chain`]'s rules, calling each hook with its handles; the
//! C resumes arrive in [`resume`]; the hold deadline ends a hold in
//! [`expire_hold`]. Everything is logged and counted here.
//!
//! A hold is watched by `runtime::hold`: by default, as in MailerQ, the
//! host waits for the plugin's resume however long it takes (reporting a
//! long hold at intervals). **The hold deadline**, an option mq-host adds,
//! ends a hold safely:
//!
//! - a Rust plugin's hold is *cancelled* first: the host asks the plugin
//!   (its root module's `cancel_hold`) to drop the hook's future, with
//!   every borrow of the hook's arguments, before the chain moves on;
//! - a hold that cannot be cancelled (a C plugin; a Rust plugin in the
//!   global-symbols mode) becomes an [`ExpiredHold`] on the connection: it
//!   keeps the take-over's arguments alive and pins its message's buffers
//!   until the plugin's late resume, which is credited to that expired
//!   take-over — the plugin's oldest — and to no other.
//!
//! Resumes are applied on the next loop turn (`defer`), never inside the
//! plugin's own call stack. No `RefCell` borrow is held while a plugin runs.

use crate::observe::{Counters, Priority, Source};
use crate::plugins::call::{self, SmtpArgs};
use crate::runtime::chain::{AfterCall, Chain, ChainEnd, End, HookCall, Next, Resume, Verdict};
use crate::runtime::connection::{ConnectionState, ExpiredHold, TakeoverEnd};
use crate::runtime::handles;
use crate::runtime::hold;
use crate::runtime::message::ChainArgs;
use crate::runtime::watchdog::CallSite;
use crate::runtime::worker::{Calling, Done, RunningChain, Shared, Worker};
use mq_abi::Flow;
use mq_hook_table::Hook;
use std::rc::Rc;

/// Another chain runs on the connection (a host bug; the caller reports it).
#[derive(Debug)]
pub(crate) struct Busy;

/// Starts `hook`'s chain on `conn`; `done` runs on the loop when it ends.
pub(crate) fn start(
    w: &Worker,
    conn: &Rc<ConnectionState>,
    hook: &'static Hook,
    args: ChainArgs,
    done: Done,
) -> Result<(), Busy> {
    if w.is_running(conn.id) {
        return Err(Busy);
    }
    w.chains.borrow_mut().insert(
        conn.id,
        RunningChain {
            chain: Chain::new(hook, args),
            done: Some(done),
        },
    );
    advance(w, conn);
    Ok(())
}

/// The recorded calls with the plugins' names.
pub(crate) fn named_calls(
    shared: &Shared,
    calls: &[crate::runtime::chain::CallRecord],
) -> Vec<HookCall> {
    calls
        .iter()
        .map(|c| HookCall {
            plugin: shared.plugin_name(c.plugin).to_owned(),
            took_control: c.took_control,
            resumed: c.resumed,
        })
        .collect()
}

/// Calls plugins until one takes control or the chain ends.
fn advance(w: &Worker, conn: &Rc<ConnectionState>) {
    loop {
        let next = w.with_chain(conn.id, |running| {
            let hook = running.chain.hook();
            let next = running.chain.next(w.shared.plugins_with(hook));
            (next, hook, running.chain.args().clone())
        });
        let (plugin, hook, args) = match next {
            None => return,
            Some((Next::End(end), _, _)) => return finish(w, conn, end),
            Some((Next::Call(plugin), hook, args)) => (plugin, hook, args),
        };
        if w.shared.skips_close(plugin, hook, conn) {
            w.with_chain(conn.id, |running| running.chain.skip());
            Counters::bump(&w.shared.counters.smtp_in_close_skipped);
            continue;
        }
        w.shared.counters.hook_called(hook);
        let took_control = call_hook(w, conn, plugin, hook, &args);

        let Some(returned) = w.with_chain(conn.id, |running| running.chain.returned(took_control))
        else {
            return;
        };
        let name = w.shared.plugin_name(plugin);
        if returned.extra_resumes > 0 {
            for _ in 0..returned.extra_resumes {
                Counters::bump(&w.shared.counters.double_resumes);
            }
            w.log(
                Priority::Warning,
                format!(
                    "plugin {name} resumed {} inside its {} call more than once; extra resumes ignored",
                    hook.symbol,
                    returned.extra_resumes + 1
                ),
            );
        }
        match returned.after {
            AfterCall::Next { stray } => {
                if stray {
                    Counters::bump(&w.shared.counters.stray_resumes);
                    w.log(
                        Priority::Warning,
                        format!("plugin {name} resumed {} but returned false (it never took control); resume ignored", hook.symbol),
                    );
                }
            }
            AfterCall::Apply(flow) => {
                Counters::bump(&w.shared.counters.take_overs);
                Counters::bump(&w.shared.counters.inline_resumes);
                w.log(
                    Priority::Warning,
                    format!(
                        "plugin {name} resumed {} inside the hook call; applied after it returned",
                        hook.symbol
                    ),
                );
                conn.last_takeover.set(Some((plugin, TakeoverEnd::Resumed)));
                return defer_apply(w, conn, plugin, flow);
            }
            AfterCall::Hold => {
                Counters::bump(&w.shared.counters.take_overs);
                let takeover = w.next_takeover();
                let watch = hold::watch(w, conn, takeover);
                w.with_chain(conn.id, |running| running.chain.hold(takeover, watch));
                conn.last_takeover.set(Some((plugin, TakeoverEnd::Held)));
                return;
            }
        }
    }
}

/// Calls `plugin`'s hook with its handles.
fn call_hook(
    w: &Worker,
    conn: &Rc<ConnectionState>,
    plugin: usize,
    hook: &'static Hook,
    args: &ChainArgs,
) -> bool {
    let raw = w.shared.plugins[plugin].hooks[hook.index()].expect("indexed by hook");
    let (Some(ctx), Some(cv)) = (handles::context_handle(plugin), conn.handle(plugin)) else {
        return no_handles(w, plugin);
    };
    let smtp_args = match args {
        ChainArgs::None => SmtpArgs::None,
        ChainArgs::Authenticate(c) => SmtpArgs::Authenticate {
            login: c.login.as_ptr().cast(),
            login_len: c.login.len(),
            password: c.password.as_ptr().cast(),
            password_len: c.password.len(),
        },
        ChainArgs::Address(a) => match a.handle(plugin) {
            Some(h) => SmtpArgs::Address(h.to_ptr()),
            None => return no_handles(w, plugin),
        },
        ChainArgs::Data(d) => SmtpArgs::Data(d.as_ptr().cast(), d.len()),
        ChainArgs::Message(m) => match m.handle(plugin) {
            Some(h) => SmtpArgs::Message(h.to_ptr()),
            None => return no_handles(w, plugin),
        },
    };
    let _calling = Calling::watched(&w.calls, plugin, CallSite::Hook(hook));
    // SAFETY: the plugin's entry point for this hook; the handles name live
    // objects and the buffers belong to `args`, which outlives the call.
    unsafe { call::smtp(raw, ctx.to_ptr(), cv.to_ptr(), smtp_args) }
}

/// The worker's handle space is exhausted: the plugin is skipped.
fn no_handles(w: &Worker, plugin: usize) -> bool {
    w.log(
        Priority::Critical,
        format!(
            "no free handle for plugin {}'s call (too many live objects on this worker); skipped",
            w.shared.plugin_name(plugin)
        ),
    );
    false
}

fn defer_apply(w: &Worker, conn: &Rc<ConnectionState>, plugin: usize, flow: Flow) {
    let conn = Rc::clone(conn);
    w.defer(move |w| apply(w, &conn, plugin, flow));
}

/// Applies a resume that was accepted.
fn apply(w: &Worker, conn: &Rc<ConnectionState>, plugin: usize, flow: Flow) {
    let limit = w.shared.limits.retry_limit;
    let Some((end, hook, retries)) = w.with_chain(conn.id, |running| {
        let end = running.chain.apply(plugin, flow, limit);
        (end, running.chain.hook(), running.chain.retries())
    }) else {
        return;
    };
    if end == Some(End::RetryLimit) {
        Counters::bump(&w.shared.counters.retry_loops_cut);
        w.log(
            Priority::Critical,
            format!(
                "the {} chain retried {retries} times (limit {limit}); cut, the host goes on with its own work",
                hook.symbol
            ),
        );
    }
    match end {
        Some(end) => finish(w, conn, end),
        None => advance(w, conn),
    }
}

fn finish(w: &Worker, conn: &Rc<ConnectionState>, end: End) {
    let Some(mut running) = w.chains.borrow_mut().remove(&conn.id) else {
        return;
    };
    Counters::bump(&w.shared.counters.chains_finished);
    let end = match end {
        End::Finished => ChainEnd::Finished,
        End::Completed(plugin) => ChainEnd::Completed {
            plugin: w.shared.plugin_name(plugin).to_owned(),
        },
        End::RetryLimit => ChainEnd::RetryLimit,
    };
    let done = running.done.take().expect("finished once");
    done(w, conn, running.chain.into_report(end));
}

/// `MQ_continue`/`MQ_complete`/`MQ_retry` on the owner thread.
pub(crate) fn resume(w: &Worker, conn: &Rc<ConnectionState>, plugin: usize, flow: Flow) {
    let name = w.shared.plugin_name(plugin);
    // A plugin with an expired take-over on this connection resumes that
    // one first: its resume is never credited to a later take-over.
    if credit_late_resume(w, conn, plugin) {
        Counters::bump(&w.shared.counters.late_resumes);
        w.log(
            Priority::Warning,
            format!(
                "plugin {name} resumed (MQ_{flow}) a take-over whose hold deadline had passed; \
                 ignored (what it was given is released now)"
            ),
        );
        return;
    }
    let verdict = w
        .with_chain(conn.id, |running| running.chain.resume(plugin, flow))
        .unwrap_or(Verdict::NotHeld);
    match verdict {
        Verdict::Inline => {}
        Verdict::Accepted { deadline } => {
            if let Some(timer) = deadline {
                w.ev.stop_timer(timer);
            }
            conn.last_takeover.set(Some((plugin, TakeoverEnd::Resumed)));
            defer_apply(w, conn, plugin, flow);
        }
        Verdict::NotHeld if conn.closed.get() => {
            Counters::bump(&w.shared.counters.invalid_handles);
            w.log(
                Priority::Warning,
                format!("plugin {name} called MQ_{flow} on a connection that has closed; ignored"),
            );
        }
        Verdict::NotHeld => match conn.last_takeover.get() {
            Some((p, TakeoverEnd::Resumed)) if p == plugin => {
                Counters::bump(&w.shared.counters.double_resumes);
                w.log(
                    Priority::Warning,
                    format!("plugin {name} resumed its hook a second time (MQ_{flow}); ignored"),
                );
            }
            _ => {
                Counters::bump(&w.shared.counters.stray_resumes);
                w.log(
                    Priority::Warning,
                    format!("plugin {name} called MQ_{flow} without holding control; ignored"),
                );
            }
        },
    }
}

/// Releases `plugin`'s oldest expired take-over on `conn`, if it has one;
/// a closed connection with no expired take-over left is let go.
fn credit_late_resume(w: &Worker, conn: &Rc<ConnectionState>, plugin: usize) -> bool {
    let released = {
        let mut expired = conn.expired.borrow_mut();
        let oldest = expired.iter().position(|e| e.plugin == plugin);
        oldest.map(|i| expired.remove(i))
    };
    let Some(released) = released else {
        return false;
    };
    // Dropped outside the borrow: it unpins its message.
    drop(released);
    if conn.closed.get() && !conn.has_expired_holds() && !w.is_running(conn.id) {
        w.release_retired(conn.id);
    }
    true
}

/// A resume called from a thread that does not own the connection.
pub(crate) fn wrong_thread_resume(function: &str, shared: &Shared, plugin: usize) {
    // Off the worker thread: only thread-safe state is touched.
    Counters::bump(&shared.counters.wrong_thread_resumes);
    let text = format!(
        "{function} refused: plugin {} called it from thread {:?}, not the connection's worker; \
         resume from the event loop instead",
        shared.plugin_name(plugin),
        std::thread::current().name().unwrap_or("unnamed")
    );
    shared
        .log
        .write(None, Priority::Critical, Source::Host, text);
}

/// The hold deadline passed for `takeover`.
pub(crate) fn expire(w: &Worker, conn: &Rc<ConnectionState>, takeover: u64) {
    let why = format!(
        "the {:?} hold deadline passed",
        w.shared.limits.hold_deadline.unwrap_or_default()
    );
    expire_hold(w, conn, Some(takeover), &why);
}

/// Ends the hold of the chain on `conn` now (if it is `takeover`, or any
/// hold for `None`), as the hold deadline does: a Rust plugin's hold is
/// cancelled, another one becomes an [`ExpiredHold`]; the chain goes on.
/// Returns whether a hold was ended.
pub(crate) fn expire_hold(
    w: &Worker,
    conn: &Rc<ConnectionState>,
    takeover: Option<u64>,
    why: &str,
) -> bool {
    let ended = w.with_chain(conn.id, |running| {
        let (plugin, deadline) = running.chain.end_hold(takeover)?;
        Some((
            plugin,
            deadline,
            running.chain.hook(),
            running.chain.args().clone(),
        ))
    });
    let Some((plugin, deadline, hook, args)) = ended.flatten() else {
        return false;
    };
    if let Some(timer) = deadline {
        w.ev.stop_timer(timer);
    }
    let name = w.shared.plugin_name(plugin);
    Counters::bump(&w.shared.counters.held_past_deadline);
    let resumed = if cancel(w, conn, plugin) {
        w.log(
            Priority::Critical,
            format!(
                "plugin {name} held control of {} until {why}; its hook was cancelled and the \
                 chain goes on with the next plugin",
                hook.symbol
            ),
        );
        conn.last_takeover.set(Some((plugin, TakeoverEnd::Resumed)));
        Resume::Cancelled
    } else {
        w.log(
            Priority::Critical,
            format!(
                "plugin {name} held control of {} until {why}; the chain goes on with the next \
                 plugin, and what the hook was given stays alive until it resumes",
                hook.symbol
            ),
        );
        conn.expired
            .borrow_mut()
            .push(ExpiredHold::new(plugin, args));
        conn.last_takeover.set(Some((plugin, TakeoverEnd::Expired)));
        Resume::Expired
    };
    w.with_chain(conn.id, |running| running.chain.record(resumed));
    apply(w, conn, plugin, Flow::Continue);
    true
}

/// Asks a Rust plugin to drop its held hook; false if it cannot (a C
/// plugin, the global-symbols mode, or nothing the plugin knows of).
fn cancel(w: &Worker, conn: &Rc<ConnectionState>, plugin: usize) -> bool {
    let Some(cancel) = w.shared.plugins[plugin].cancel else {
        return false;
    };
    let (Some(ctx), Some(cv)) = (handles::context_handle(plugin), conn.handle(plugin)) else {
        return false;
    };
    let _calling = Calling::watched(&w.calls, plugin, CallSite::CancelHold);
    cancel(ctx.to_ptr(), cv.to_ptr())
}
