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
//! returns, a hold past the deadline reported (and the chain goes on), a
//! retry loop cut after the limit — each logged and counted.
//!
//! Resumes are applied on the next loop turn (`defer`), never inside the
//! plugin's own call stack. No `RefCell` borrow is held while a plugin runs.

use crate::counters::Counters;
use crate::event_loop::TimerHandle;
use crate::hostlog::{Priority, Source};
use crate::loader::HookFn;
use crate::objects::{AddressObj, ConnectionState, MessageObj, TakeoverEnd};
use crate::worker::{self, Worker};
use mq_hook_table::Hook;
use mq_plugin::Flow;
use std::rc::Rc;
use std::time::Instant;

/// The arguments of a chain's hook besides context and connection.
pub(crate) enum ChainArgs {
    None,
    Authenticate { login: Vec<u8>, password: Vec<u8> },
    Address(Box<AddressObj>),
    Data(Vec<u8>),
    Message(Box<MessageObj>),
}

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
    /// Not before the hold deadline: the host went on.
    Expired,
}

/// A finished chain.
pub(crate) struct ChainReport {
    pub(crate) end: ChainEnd,
    pub(crate) calls: Vec<CallRecord>,
    pub(crate) retries: u32,
    pub(crate) args: ChainArgs,
    pub(crate) started: Instant,
}

/// Runs when the chain ends; returns the arguments it did not keep, which
/// the chain retains while a plugin whose hold expired may still use them.
type Done = Box<dyn FnOnce(&Rc<ConnectionState>, ChainReport) -> ChainArgs>;

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
    takeovers: u64,
    calls: Vec<CallRecord>,
    done: Option<Done>,
    started: Instant,
    /// Plugins whose hold deadline passed in this chain: they may still
    /// touch its arguments until their (late) resume.
    expired: Vec<usize>,
}

/// Starts `hook`'s chain on `conn`; `done` runs on the loop when it ends.
/// The connection must have no chain running.
pub(crate) fn start(
    w: &Worker,
    conn: &Rc<ConnectionState>,
    hook: &'static Hook,
    args: ChainArgs,
    done: Done,
) {
    let chain = Box::new(Chain {
        hook,
        args,
        position: 0,
        retries: 0,
        state: State::Ready,
        takeovers: 0,
        calls: Vec::new(),
        done: Some(done),
        started: Instant::now(),
        expired: Vec::new(),
    });
    let previous = conn.chain.borrow_mut().replace(chain);
    assert!(previous.is_none(), "one chain at a time per connection");
    advance(w, conn);
}

/// What a hook call needs, copied out of the chain so no borrow is held.
struct Call {
    plugin: usize,
    hook_fn: HookFn,
    args: ArgPtrs,
}

#[derive(Clone, Copy)]
enum ArgPtrs {
    None,
    Bytes2(*const u8, usize, *const u8, usize),
    Address(*mut mq_plugin::sys::MQ_Address),
    Bytes(*const u8, usize),
    Message(*mut mq_plugin::sys::MQ_Message),
}

fn arg_ptrs(args: &ChainArgs) -> ArgPtrs {
    match args {
        ChainArgs::None => ArgPtrs::None,
        ChainArgs::Authenticate { login, password } => ArgPtrs::Bytes2(
            login.as_ptr(),
            login.len(),
            password.as_ptr(),
            password.len(),
        ),
        ChainArgs::Address(a) => ArgPtrs::Address(a.as_raw()),
        ChainArgs::Data(d) => ArgPtrs::Bytes(d.as_ptr(), d.len()),
        ChainArgs::Message(m) => ArgPtrs::Message(m.as_raw()),
    }
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
                args: arg_ptrs(&chain.args),
            }
        };
        w.shared.counters.hook_called(chain_hook);
        // SAFETY: the hook has the signature of its shape; the context and
        // connection views and the argument buffers (owned by the boxed
        // chain, which is not dropped during the call) are live.
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
        chain.takeovers += 1;
        let takeover = chain.takeovers;
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

unsafe fn call_hook(w: &Worker, conn: &ConnectionState, call: &Call) -> bool {
    let ctx = w.contexts[call.plugin].as_raw();
    let cv = conn.view(call.plugin);
    // SAFETY: the caller's promise.
    unsafe {
        match (call.hook_fn, call.args) {
            (HookFn::Connection(f), _) => f(ctx, cv),
            (HookFn::Authenticate(f), ArgPtrs::Bytes2(l, ll, p, pl)) => {
                f(ctx, cv, l.cast(), ll, p.cast(), pl)
            }
            (HookFn::Address(f), ArgPtrs::Address(a)) => f(ctx, cv, a),
            (HookFn::Data(f), ArgPtrs::Bytes(d, len)) => f(ctx, cv, d.cast(), len),
            (HookFn::Message(f), ArgPtrs::Message(m)) => f(ctx, cv, m),
            _ => unreachable!("chains are started with the arguments of their hook's shape"),
        }
    }
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
    let report = ChainReport {
        end,
        calls: chain.calls,
        retries: chain.retries,
        args: chain.args,
        started: chain.started,
    };
    let leftover = done(conn, report);
    if !chain.expired.is_empty() {
        let mut retained = w.retained_args.borrow_mut();
        let entry = retained.entry(conn.id).or_default();
        entry.0 += chain.expired.len();
        entry.1.push(leftover);
    }
}

/// A plugin whose hold expired has resumed: when no such plugin is left,
/// the arguments kept for them can go.
fn release_retained(w: &Worker, conn_id: u64) {
    let mut retained = w.retained_args.borrow_mut();
    if let Some(entry) = retained.get_mut(&conn_id) {
        entry.0 = entry.0.saturating_sub(1);
        if entry.0 == 0 {
            retained.remove(&conn_id);
        }
    }
}

/// `MQ_continue`/`MQ_complete`/`MQ_retry` on the owner thread.
pub(crate) fn resume(conn: &ConnectionState, plugin: usize, flow: Flow) {
    let Some(w) = worker::current() else { return };
    let name = &w.shared.plugins[plugin].info.name;
    let Some(conn) = w.connections.borrow().get(&conn.id).cloned() else {
        // Only retired connections reach here: closed ones are freed.
        release_retained(&w, conn.id);
        if !w.retained_args.borrow().contains_key(&conn.id) {
            w.retired.borrow_mut().remove(&conn.id);
        }
        Counters::bump(&w.shared.counters.late_resumes);
        w.log(
            Priority::Warning,
            format!(
                "plugin {name} resumed (MQ_{flow}) after its hold deadline had passed \
                 and the connection closed; ignored"
            ),
        );
        return;
    };
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
                return defer_apply(&w, &conn, plugin, flow);
            }
            _ => {}
        }
    }
    drop(slot);
    let hook = "its hook";
    match conn.last_takeover.get() {
        Some((p, TakeoverEnd::Resumed)) if p == plugin => {
            Counters::bump(&w.shared.counters.double_resumes);
            w.log(
                Priority::Warning,
                format!("plugin {name} resumed {hook} a second time (MQ_{flow}); ignored"),
            );
        }
        Some((p, TakeoverEnd::Expired)) if p == plugin => {
            release_retained(&w, conn.id);
            Counters::bump(&w.shared.counters.late_resumes);
            w.log(
                Priority::Warning,
                format!(
                    "plugin {name} resumed (MQ_{flow}) after its hold deadline had passed; ignored"
                ),
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

/// A resume called from a thread that does not own the connection.
pub(crate) fn wrong_thread_resume(function: &str, shared: &worker::Shared, plugin: usize) {
    // Off the worker thread: only thread-safe state is touched.
    Counters::bump(&shared.counters.wrong_thread_resumes);
    let text = format!(
        "{function} refused: plugin {} called it from thread {:?}, not the connection's worker; \
         resume from the event loop instead",
        shared.plugins[plugin].info.name,
        std::thread::current().name().unwrap_or("unnamed")
    );
    shared
        .log
        .write(None, Priority::Critical, Source::Host, text);
}

/// The hold deadline passed for `takeover`.
fn expire(conn: &Rc<ConnectionState>, takeover: u64) {
    let Some(w) = worker::current() else { return };
    let plugin = {
        let mut slot = conn.chain.borrow_mut();
        let Some(chain) = slot.as_mut() else { return };
        let State::Held {
            plugin,
            takeover: t,
            ..
        } = chain.state
        else {
            return;
        };
        if t != takeover {
            return;
        }
        chain.state = State::Resuming;
        if let Some(call) = chain.calls.last_mut() {
            call.resumed = Some(Resume::Expired);
        }
        chain.expired.push(plugin);
        Counters::bump(&w.shared.counters.held_past_deadline);
        w.log(
            Priority::Critical,
            format!(
                "plugin {} held control of {} past the {:?} hold deadline; going on with the next plugin",
                w.shared.plugins[plugin].info.name,
                chain.hook.symbol,
                w.shared.limits.hold_deadline.unwrap_or_default()
            ),
        );
        plugin
    };
    conn.last_takeover.set(Some((plugin, TakeoverEnd::Expired)));
    apply(&w, conn, plugin, Flow::Continue);
}
