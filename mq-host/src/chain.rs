//! The chain: one event walked through every plugin that defines its hook,
//! with MailerQ's rules and the host's guards.
//!
//! - `false` from a hook: the next plugin.
//! - `true`: the chain is held until that plugin resumes it once:
//!   continue (next plugin), complete (skip the rest), retry (from the
//!   first plugin again).
//!
//! Guards beyond MailerQ: a second resume is ignored, a resume from the
//! wrong thread refused, a resume inside the hook call applied after it
//! returns, a retry loop cut after the limit — each logged and counted.
//!
//! **The hold deadline.** A hold past the deadline is reported and the
//! chain goes on, and that is only ever safe:
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
//! Every take-over has its own number, and the deadline timer of one
//! take-over never touches another.
//!
//! Resumes are applied on the next loop turn (`defer`), never inside the
//! plugin's own call stack. No `RefCell` borrow is held while a plugin runs.

use crate::counters::Counters;
use crate::event_loop::TimerHandle;
use crate::handles;
use crate::hostlog::{Priority, Source};
use crate::loader::HookFn;
use crate::objects::{ChainArgs, ConnectionState, ExpiredHold, TakeoverEnd};
use crate::worker::{self, Worker};
use mq_hook_table::Hook;
use mq_plugin::Flow;
use std::rc::Rc;
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

/// A hook call as the chain records it (names are looked up only when a
/// caller asks for [`HookCall`]s).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallRecord {
    pub(crate) plugin: usize,
    pub(crate) took_control: bool,
    pub(crate) resumed: Option<Resume>,
}

/// The recorded calls with the plugins' names.
pub(crate) fn named_calls(shared: &worker::Shared, calls: &[CallRecord]) -> Vec<HookCall> {
    calls
        .iter()
        .map(|c| HookCall {
            plugin: shared.plugins[c.plugin].info.name.clone(),
            took_control: c.took_control,
            resumed: c.resumed,
        })
        .collect()
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

/// A finished chain.
pub(crate) struct ChainReport {
    pub(crate) end: ChainEnd,
    pub(crate) calls: Vec<CallRecord>,
    pub(crate) retries: u32,
    pub(crate) args: ChainArgs,
    pub(crate) started: Instant,
}

/// Runs when the chain ends.
type Done = Box<dyn FnOnce(&Rc<ConnectionState>, ChainReport)>;

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
        deadline: Option<TimerHandle>,
    },
    Resuming,
}

/// A running chain, stored in its connection.
pub(crate) struct Chain {
    hook: &'static Hook,
    args: ChainArgs,
    position: usize,
    retries: u32,
    state: State,
    calls: Vec<CallRecord>,
    done: Option<Done>,
    started: Instant,
}

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
    {
        let mut slot = conn.chain.borrow_mut();
        if slot.is_some() {
            return Err(Busy);
        }
        *slot = Some(Box::new(Chain {
            hook,
            args,
            position: 0,
            retries: 0,
            state: State::Ready,
            calls: Vec::new(),
            done: Some(done),
            started: Instant::now(),
        }));
    }
    advance(w, conn);
    Ok(())
}

/// Whether a chain runs on the connection.
pub(crate) fn is_running(conn: &ConnectionState) -> bool {
    conn.chain.try_borrow().map_or(true, |c| c.is_some())
}

/// What a hook call needs, copied out of the chain so no borrow is held.
struct Call {
    plugin: usize,
    hook_fn: HookFn,
    args: ChainArgs,
}

/// Calls plugins until one takes control or the chain ends.
fn advance(w: &Worker, conn: &Rc<ConnectionState>) {
    loop {
        let chain_hook;
        let call = {
            let mut slot = conn.chain.borrow_mut();
            let Some(chain) = slot.as_mut() else { return };
            // The plugins defining the hook, in order: derived, not copied.
            let index = chain.hook.index();
            let Some(&plugin) = w.shared.by_hook[index].get(chain.position) else {
                drop(slot);
                return finish(w, conn, ChainEnd::Finished);
            };
            let hook_fn = w.shared.plugins[plugin].hooks[index].expect("indexed by hook");
            chain_hook = chain.hook;
            chain.state = State::Calling {
                plugin,
                inline: None,
                extra: 0,
            };
            Call {
                plugin,
                hook_fn,
                args: chain.args.clone(),
            }
        };
        w.shared.counters.hook_called(chain_hook);
        // SAFETY: the hook has the signature of its shape; the handles name
        // live objects (the call holds a share of the arguments).
        let took_control = unsafe { call_hook(w, conn, &call) };

        let mut slot = conn.chain.borrow_mut();
        let chain = slot.as_mut().expect("the chain lives during its calls");
        let State::Calling { inline, extra, .. } = chain.state else {
            unreachable!("only advance leaves the Calling state")
        };
        // Names only in the rare log lines: the hot path stores an index.
        let name = &w.shared.plugins[call.plugin].info.name;
        chain.calls.push(CallRecord {
            plugin: call.plugin,
            took_control,
            resumed: None,
        });
        for _ in 0..extra {
            Counters::bump(&w.shared.counters.double_resumes);
        }
        if extra > 0 {
            w.log(
                Priority::Warning,
                format!("plugin {name} resumed {} inside its {} call more than once; extra resumes ignored", chain.hook.symbol, extra + 1),
            );
        }
        if !took_control {
            if inline.is_some() {
                Counters::bump(&w.shared.counters.stray_resumes);
                w.log(
                    Priority::Warning,
                    format!("plugin {name} resumed {} but returned false (it never took control); resume ignored", chain.hook.symbol),
                );
            }
            chain.position += 1;
            continue;
        }
        Counters::bump(&w.shared.counters.take_overs);
        let takeover = w.next_takeover();
        if let Some(flow) = inline {
            Counters::bump(&w.shared.counters.inline_resumes);
            w.log(
                Priority::Warning,
                format!(
                    "plugin {name} resumed {} inside the hook call; applied after it returned",
                    chain.hook.symbol
                ),
            );
            chain.calls.last_mut().expect("pushed above").resumed = Some(Resume::Flow(flow));
            chain.state = State::Resuming;
            conn.last_takeover
                .set(Some((call.plugin, TakeoverEnd::Resumed)));
            drop(slot);
            return defer_apply(w, conn, call.plugin, flow);
        }
        let deadline = w.shared.limits.hold_deadline.map(|d| {
            let conn = Rc::clone(conn);
            w.ev.start_timer(d, Box::new(move || expire(&conn, takeover)))
        });
        chain.state = State::Held {
            plugin: call.plugin,
            takeover,
            deadline,
        };
        conn.last_takeover
            .set(Some((call.plugin, TakeoverEnd::Held)));
        return;
    }
}

/// Calls one plugin's hook with its handles.
///
/// # Safety
/// `call.hook_fn` has the C signature of the chain's hook.
unsafe fn call_hook(w: &Worker, conn: &Rc<ConnectionState>, call: &Call) -> bool {
    let plugin = call.plugin;
    let (Some(ctx), Some(cv)) = (handles::context_handle(plugin), conn.handle(plugin)) else {
        return no_handles(w, plugin);
    };
    let (ctx, cv) = (ctx.to_ptr(), cv.to_ptr());
    let _calling = worker::Calling::enter(plugin);
    // SAFETY: the caller's promise; buffers are owned by `call.args`, which
    // outlives the call.
    unsafe {
        match (call.hook_fn, &call.args) {
            (HookFn::Connection(f), _) => f(ctx, cv),
            (HookFn::Authenticate(f), ChainArgs::Authenticate(c)) => f(
                ctx,
                cv,
                c.login.as_ptr().cast(),
                c.login.len(),
                c.password.as_ptr().cast(),
                c.password.len(),
            ),
            (HookFn::Address(f), ChainArgs::Address(a)) => match a.handle(plugin) {
                Some(h) => f(ctx, cv, h.to_ptr()),
                None => no_handles(w, plugin),
            },
            (HookFn::Data(f), ChainArgs::Data(d)) => f(ctx, cv, d.as_ptr().cast(), d.len()),
            (HookFn::Message(f), ChainArgs::Message(m)) => match m.handle(plugin) {
                Some(h) => f(ctx, cv, h.to_ptr()),
                None => no_handles(w, plugin),
            },
            _ => unreachable!("chains are started with the arguments of their hook's shape"),
        }
    }
}

/// The worker's handle space is exhausted: the plugin is skipped.
fn no_handles(w: &Worker, plugin: usize) -> bool {
    w.log(
        Priority::Critical,
        format!(
            "no free handle for plugin {}'s call (too many live objects on this worker); skipped",
            w.shared.plugins[plugin].info.name
        ),
    );
    false
}

fn defer_apply(w: &Worker, conn: &Rc<ConnectionState>, plugin: usize, flow: Flow) {
    let conn = Rc::clone(conn);
    w.ev.defer(Box::new(move || {
        if let Some(w) = worker::current() {
            apply(&w, &conn, plugin, flow);
        }
    }));
}

/// Applies a resume that was accepted.
fn apply(w: &Worker, conn: &Rc<ConnectionState>, plugin: usize, flow: Flow) {
    let end = {
        let mut slot = conn.chain.borrow_mut();
        let Some(chain) = slot.as_mut() else { return };
        chain.state = State::Ready;
        match flow {
            Flow::Continue => {
                chain.position += 1;
                None
            }
            Flow::Complete => Some(ChainEnd::Completed {
                plugin: w.shared.plugins[plugin].info.name.clone(),
            }),
            Flow::Retry => {
                chain.retries += 1;
                if chain.retries > w.shared.limits.retry_limit {
                    Counters::bump(&w.shared.counters.retry_loops_cut);
                    w.log(
                        Priority::Critical,
                        format!(
                            "the {} chain retried {} times (limit {}); cut, the host goes on with its own work",
                            chain.hook.symbol, chain.retries, w.shared.limits.retry_limit
                        ),
                    );
                    Some(ChainEnd::RetryLimit)
                } else {
                    chain.position = 0;
                    None
                }
            }
        }
    };
    match end {
        Some(end) => finish(w, conn, end),
        None => advance(w, conn),
    }
}

fn finish(w: &Worker, conn: &Rc<ConnectionState>, end: ChainEnd) {
    let chain = conn
        .chain
        .borrow_mut()
        .take()
        .expect("finishing a running chain");
    let mut chain = *chain;
    Counters::bump(&w.shared.counters.chains_finished);
    let done = chain.done.take().expect("finished once");
    done(
        conn,
        ChainReport {
            end,
            calls: chain.calls,
            retries: chain.retries,
            args: chain.args,
            started: chain.started,
        },
    );
}

/// `MQ_continue`/`MQ_complete`/`MQ_retry` on the owner thread.
pub(crate) fn resume(w: &Worker, conn: &Rc<ConnectionState>, plugin: usize, flow: Flow) {
    let name = &w.shared.plugins[plugin].info.name;
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
    let Ok(mut slot) = conn.chain.try_borrow_mut() else {
        // No chain borrow is held while plugins run; never abort inside a
        // C call because of a host bug, report it instead.
        w.log(
            Priority::Critical,
            format!("plugin {name}: resume while the chain is busy; ignored (host bug)"),
        );
        return;
    };
    if let Some(chain) = slot.as_mut() {
        match &mut chain.state {
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
                return;
            }
            State::Held {
                plugin: p,
                deadline,
                ..
            } if *p == plugin => {
                if let Some(timer) = deadline.take() {
                    w.ev.stop_timer(timer);
                }
                chain.state = State::Resuming;
                if let Some(call) = chain.calls.last_mut() {
                    call.resumed = Some(Resume::Flow(flow));
                }
                conn.last_takeover.set(Some((plugin, TakeoverEnd::Resumed)));
                drop(slot);
                return defer_apply(w, conn, plugin, flow);
            }
            _ => {}
        }
    }
    drop(slot);
    if conn.closed.get() {
        Counters::bump(&w.shared.counters.invalid_handles);
        w.log(
            Priority::Warning,
            format!("plugin {name} called MQ_{flow} on a connection that has closed; ignored"),
        );
        return;
    }
    match conn.last_takeover.get() {
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
    if conn.closed.get() && !conn.has_expired_holds() && !is_running(conn) {
        w.release_retired(conn.id);
    }
    true
}

/// A resume called from a thread that does not own the connection.
pub(crate) fn wrong_thread_resume(function: &str, shared: &worker::Shared, plugin: usize) {
    // Off the worker thread: only thread-safe state is touched.
    Counters::bump(&shared.counters.wrong_thread_resumes);
    let name = shared
        .plugins
        .get(plugin)
        .map_or("(unknown)", |p| p.info.name.as_str());
    let text = format!(
        "{function} refused: plugin {name} called it from thread {:?}, not the connection's worker; \
         resume from the event loop instead",
        std::thread::current().name().unwrap_or("unnamed")
    );
    shared
        .log
        .write(None, Priority::Critical, Source::Host, text);
}

/// The hold deadline passed for `takeover`.
fn expire(conn: &Rc<ConnectionState>, takeover: u64) {
    let Some(w) = worker::current() else { return };
    let why = format!(
        "the {:?} hold deadline passed",
        w.shared.limits.hold_deadline.unwrap_or_default()
    );
    expire_hold(&w, conn, Some(takeover), &why);
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
    let (plugin, hook, args) = {
        let Ok(mut slot) = conn.chain.try_borrow_mut() else {
            return false;
        };
        let Some(chain) = slot.as_mut() else {
            return false;
        };
        let State::Held {
            plugin,
            takeover: t,
            ref mut deadline,
        } = chain.state
        else {
            return false;
        };
        if takeover.is_some_and(|takeover| takeover != t) {
            return false;
        }
        if let Some(timer) = deadline.take() {
            w.ev.stop_timer(timer);
        }
        chain.state = State::Resuming;
        (plugin, chain.hook, chain.args.clone())
    };
    let name = &w.shared.plugins[plugin].info.name;
    Counters::bump(&w.shared.counters.held_past_deadline);
    let cancelled = cancel(w, conn, plugin);
    let resumed = if cancelled {
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
    if let Some(chain) = conn.chain.borrow_mut().as_mut() {
        if let Some(call) = chain.calls.last_mut() {
            call.resumed = Some(resumed);
        }
    }
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
    let _calling = worker::Calling::enter(plugin);
    cancel(ctx.to_ptr(), cv.to_ptr())
}
