//! Test probe: a plugin whose behaviour a plan file drives.
//!
//! The twin of `tests/plugins/c-probe/probe.c`, with the same protocol: the
//! plugin's name is its file name without `.so`; `<file>.plan` holds lines
//! `<hook> <action> [argument]`; every hook logs `probe <name> <hook>`
//! first. Actions: `false`, `continue`, `complete`, `retry`, `retry-once`,
//! `never`, `double`, `thread`, `inline`, `delay <s>`, `reject <reply>`,
//! `exercise`, `timers`, `io`, and (Rust only) `panic` and `error`.
//! `smtp_in_data` is declared with `fallback = complete`, every other hook
//! with the default fallback (continue).

use mq_plugin::log::{write, Priority};
use mq_plugin::prelude::*;
use mq_plugin::raw::{self, Control, ManualControl};
use mq_plugin::{Interest, Timer};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

mq_plugin::declare_plugin!();

struct Probe {
    name: String,
    plan: HashMap<String, (String, String)>,
}

static PROBE: OnceLock<Probe> = OnceLock::new();
static RETRIED: AtomicU32 = AtomicU32::new(0);

fn probe() -> &'static Probe {
    PROBE.get_or_init(|| {
        let path = own_path();
        let name = path
            .as_deref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().trim_end_matches(".so").to_owned())
            .unwrap_or_else(|| "probe".into());
        let mut plan = HashMap::new();
        if let Some(text) =
            path.and_then(|p| std::fs::read_to_string(format!("{}.plan", p.display())).ok())
        {
            for line in text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                let mut parts = line.splitn(3, ' ');
                let hook = parts.next().unwrap_or_default().to_owned();
                let action = parts.next().unwrap_or_default().to_owned();
                let arg = parts.next().unwrap_or_default().to_owned();
                plan.insert(hook, (action, arg));
            }
        }
        Probe { name, plan }
    })
}

/// The path of this shared object, found with dladdr.
fn own_path() -> Option<std::path::PathBuf> {
    // SAFETY: Dl_info is plain C data; all-zero is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr fills `info` for an address inside a loaded object.
    let found = unsafe { libc::dladdr(own_path as *const libc::c_void, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr returns a NUL-terminated path.
    let path = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    Some(std::path::PathBuf::from(
        path.to_string_lossy().into_owned(),
    ))
}

fn say(text: &str) {
    write(Priority::Info, &format!("probe {} {text}", probe().name));
}

fn check(name: &str, ok: bool, detail: impl FnOnce() -> String) {
    if ok {
        say(&format!("ok {name}"));
    } else {
        say(&format!("fail {name}: {}", detail()));
    }
}

/// What a probe hook returns: a flow, or control taken by hand, or a failure.
type Act = Result<Control, String>;

/// Takes control and resumes with `flows` (in order) from a timer.
fn resume_later(ctx: &Context, conn: &Connection, after: Duration, flows: &'static [Flow]) -> Act {
    let raw_conn = conn.as_raw();
    let started = ctx.start_timer(after, move || {
        for flow in flows {
            // SAFETY: this plugin holds the chain; we are on the loop.
            unsafe { raw::resume(raw_conn, *flow) };
        }
    });
    match started {
        // SAFETY: the timer resumes exactly as the plan says.
        Ok(_) => Ok(Control::Manual(unsafe { ManualControl::take() })),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs the plan's action for `hook`; `exercise` runs `exercise`.
fn act(hook: &str, ctx: &Context, conn: &Connection, exercise: impl FnOnce()) -> Act {
    say(hook);
    let (action, arg) = probe().plan.get(hook).cloned().unwrap_or_default();
    match action.as_str() {
        "" | "false" => Ok(Control::Flow(Flow::Continue)),
        "continue" => took(ctx, conn),
        "complete" => Ok(Control::Flow(Flow::Complete)),
        "retry" => Ok(Control::Flow(Flow::Retry)),
        "retry-once" => {
            if RETRIED.fetch_add(1, Ordering::Relaxed) == 0 {
                Ok(Control::Flow(Flow::Retry))
            } else {
                Ok(Control::Flow(Flow::Continue))
            }
        }
        // SAFETY: deliberately never resumed, to test the hold deadline.
        "never" => Ok(Control::Manual(unsafe { ManualControl::take() })),
        "double" => resume_later(ctx, conn, Duration::ZERO, &[Flow::Continue, Flow::Continue]),
        "thread" => {
            let raw_conn = conn.as_raw() as usize;
            let started = ctx.start_timer(Duration::ZERO, move || {
                std::thread::spawn(move || {
                    // SAFETY: deliberately the wrong thread: the host must refuse it.
                    unsafe { raw::resume(raw_conn as *mut _, Flow::Continue) }
                })
                .join()
                .ok();
                // SAFETY: the real resume, on the loop.
                unsafe { raw::resume(raw_conn as *mut _, Flow::Continue) };
            });
            match started {
                // SAFETY: resumed by the timer above.
                Ok(_) => Ok(Control::Manual(unsafe { ManualControl::take() })),
                Err(e) => Err(e.to_string()),
            }
        }
        "inline" => {
            // SAFETY: deliberately inside the hook: the host must defer it.
            unsafe { raw::resume(conn.as_raw(), Flow::Continue) };
            // SAFETY: resumed just above.
            Ok(Control::Manual(unsafe { ManualControl::take() }))
        }
        "delay" => resume_later(
            ctx,
            conn,
            Duration::from_secs_f64(arg.parse().unwrap_or(0.0)),
            &[Flow::Continue],
        ),
        "reject" => {
            conn.send(format!("{arg}\r\n").as_bytes());
            Ok(Control::Flow(Flow::Complete))
        }
        "exercise" => {
            exercise();
            took(ctx, conn)
        }
        "timers" => timers(ctx, conn),
        "late-exercise" => {
            // Handled by the message hooks (it needs the message).
            write(
                Priority::Critical,
                &format!("probe {} late-exercise needs a message hook", probe().name),
            );
            Ok(Control::Flow(Flow::Continue))
        }
        "io" => io(ctx, conn),
        "panic" => panic!("probe {} panics in {hook} as planned", probe().name),
        "error" => Err(format!("probe {} fails in {hook} as planned", probe().name)),
        other => {
            write(
                Priority::Critical,
                &format!("probe {} bad plan line: {hook} {other} {arg}", probe().name),
            );
            Ok(Control::Flow(Flow::Continue))
        }
    }
}

/// `continue` after taking control (as the C probe does): resume from the loop.
fn took(ctx: &Context, conn: &Connection) -> Act {
    resume_later(ctx, conn, Duration::ZERO, &[Flow::Continue])
}

fn timers(ctx: &Context, conn: &Connection) -> Act {
    let order = Rc::new(RefCell::new(Vec::<&'static str>::new()));
    let log = |name: &'static str| {
        let order = Rc::clone(&order);
        move || {
            say(&format!("timer {name}"));
            order.borrow_mut().push(name);
        }
    };
    let raw_conn = conn.as_raw();
    let result = (|| -> Result<(), mq_plugin::HostError> {
        ctx.start_timer(Duration::from_millis(10), log("A"))?;
        let b = ctx.start_timer(Duration::from_millis(20), log("B"))?;
        check("timer-stop", b.stop(), || "stop returned false".into());
        let c = ctx.start_timer(Duration::from_millis(500), log("C"))?;
        check("timer-reset", c.reset(Duration::from_millis(30)), || {
            "reset returned false".into()
        });
        let order_d = Rc::clone(&order);
        let d_fired = log("D");
        let c_handle: Timer = c;
        ctx.start_timer(Duration::from_millis(60), move || {
            d_fired();
            let order = order_d.borrow().clone();
            check("timers", order == ["A", "C", "D"], || {
                format!("order {order:?}")
            });
            check("timer-fired-stop", !c_handle.stop(), || {
                "stop of a fired timer returned true".into()
            });
            // SAFETY: this plugin holds the chain; we are on the loop.
            unsafe { raw::resume(raw_conn, Flow::Continue) };
        })?;
        Ok(())
    })();
    match result {
        // SAFETY: resumed by timer D.
        Ok(()) => Ok(Control::Manual(unsafe { ManualControl::take() })),
        Err(e) => Err(e.to_string()),
    }
}

fn socketpair() -> [libc::c_int; 2] {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair failed");
    fds
}

fn write_byte(fd: libc::c_int) {
    // SAFETY: one byte from a valid buffer.
    unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) };
}

fn read_byte(fd: libc::c_int) {
    let mut b = [0u8; 1];
    // SAFETY: one byte into a valid buffer.
    unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
}

fn close(fd: libc::c_int) {
    // SAFETY: closing a descriptor this probe opened.
    unsafe { libc::close(fd) };
}

/// The io exercise: level-triggered reads with two watchers, write
/// readiness, and a descriptor closed while watched and reused.
fn io(ctx: &Context, conn: &Connection) -> Act {
    let raw_ctx = ctx.as_raw();
    let raw_conn = conn.as_raw();
    let pair = socketpair();
    let counts = Rc::new([Cell::new(0u32), Cell::new(0u32)]);
    let watchers: Rc<RefCell<Vec<mq_plugin::FdWatcher>>> = Rc::default();
    for i in 0..2 {
        let counts = Rc::clone(&counts);
        let watchers2 = Rc::clone(&watchers);
        let w = ctx.watch_fd(pair[0], Interest::READ, move |_| {
            counts[i].set(counts[i].get() + 1);
            if counts[0].get() >= 2 && counts[1].get() >= 2 && !watchers2.borrow().is_empty() {
                read_byte(pair[0]);
                watchers2.borrow_mut().clear();
                check("io-read-two-watchers", true, String::new);
                // SAFETY: the context is live while its worker runs.
                step_write(unsafe { Context::from_raw(raw_ctx) }, raw_conn, pair);
            }
        });
        match w {
            Ok(w) => watchers.borrow_mut().push(w),
            Err(e) => return Err(e.to_string()),
        }
    }
    write_byte(pair[1]);
    // SAFETY: the last step resumes the chain.
    Ok(Control::Manual(unsafe { ManualControl::take() }))
}

fn step_write(ctx: &Context, raw_conn: *mut mq_plugin::sys::MQ_Connection, pair: [libc::c_int; 2]) {
    let raw_ctx = ctx.as_raw();
    let slot: Rc<RefCell<Option<mq_plugin::FdWatcher>>> = Rc::default();
    let slot2 = Rc::clone(&slot);
    let w = ctx.watch_fd(pair[1], Interest::WRITE, move |ready| {
        if slot2.borrow_mut().take().is_some() {
            check("io-write", ready.write, || format!("ready {ready:?}"));
            // SAFETY: the context is live while its worker runs.
            step_reuse(unsafe { Context::from_raw(raw_ctx) }, raw_conn, pair);
        }
    });
    *slot.borrow_mut() = w.ok();
}

fn step_reuse(ctx: &Context, raw_conn: *mut mq_plugin::sys::MQ_Connection, old: [libc::c_int; 2]) {
    // Watch, then close both ends without unwatching; the kernel drops them.
    let stale = ctx.watch_fd(old[0], Interest::READ, |_| {}).ok();
    close(old[0]);
    close(old[1]);
    let pair = socketpair();
    let fired = Rc::new(Cell::new(0u32));
    let fired2 = Rc::clone(&fired);
    let stale = Rc::new(RefCell::new(stale));
    let slot: Rc<RefCell<Option<mq_plugin::FdWatcher>>> = Rc::default();
    let slot2 = Rc::clone(&slot);
    let watcher = ctx.watch_fd(pair[0], Interest::READ, move |_| {
        read_byte(pair[0]);
        fired2.set(fired2.get() + 1);
        if fired2.get() == 1 {
            check("io-fd-reuse", true, String::new);
            // Unwatching the stale watcher must not disturb the new one.
            drop(stale.borrow_mut().take());
            write_byte(pair[1]);
        } else if slot2.borrow_mut().take().is_some() {
            check("io-stale-unwatch", true, String::new);
            close(pair[0]);
            close(pair[1]);
            // SAFETY: this plugin holds the chain; we are on the loop.
            unsafe { raw::resume(raw_conn, Flow::Continue) };
        }
    });
    *slot.borrow_mut() = watcher.ok();
    write_byte(pair[1]);
}

fn message_exercise(msg: &mut Message) {
    say(&format!(
        "json {}",
        msg.json_text().unwrap_or_else(|| "(null)".into())
    ));
    say(&format!(
        "envelope {}",
        msg.envelope().and_then(|a| a.email()).unwrap_or("(null)")
    ));
    say(&format!(
        "recipient {}",
        msg.recipient().unwrap_or("(null)")
    ));
    say(&format!(
        "mime-size {}",
        msg.mime().map_or(-1, |m| m.len() as i64)
    ));
    let local = msg.is_local();
    say(&format!("local {}", local as u8));
    let mime = [
        format!("X-Probe: {}\r\n", probe().name).into_bytes(),
        msg.mime().unwrap_or_default().to_vec(),
    ]
    .concat();
    msg.set_envelope("probe-envelope@example.org");
    msg.set_recipient("probe-recipient@example.org");
    msg.set_mime(&mime);
    msg.set_local(!local);
    check(
        "set-envelope",
        msg.envelope().and_then(|a| a.email()) == Some("probe-envelope@example.org"),
        || "".into(),
    );
    check(
        "set-recipient",
        msg.recipient() == Some("probe-recipient@example.org"),
        String::new,
    );
    check("set-mime", msg.mime() == Some(&mime[..]), String::new);
    check("set-local", msg.is_local() != local, String::new);
    check("json-parses", msg.json().is_ok(), || {
        format!("{:?}", msg.json().err())
    });
}

fn connection_exercise(ctx: &Context, conn: &Connection) {
    say(&format!("fd {}", conn.file_descriptor()));
    let n = conn.send(format!("250-probe {}\r\n", probe().name).as_bytes());
    say(&format!("sent {n}"));
    say(&format!("authenticated {}", conn.is_authenticated() as u8));
    say(&format!("secure {}", conn.is_secure() as u8));
    conn.set_authenticated(true);
    check("set-authenticated", conn.is_authenticated(), String::new);
    let c = conn.data_or_insert_with(|| Cell::new(0u32));
    c.set(c.get() + 1);
    say(&format!("connection-data {}", c.get()));
    let c = ctx.data_or_insert_with(|| Cell::new(0u32));
    c.set(c.get() + 1);
    say(&format!("context-data {}", c.get()));
}

fn address_exercise(addr: &Address) {
    say(&format!("email {}", addr.email().unwrap_or("(null)")));
    say(&format!("local {}", addr.is_local() as u8));
    addr.set_local(true);
    check("address-local", addr.is_local(), String::new);
}

#[mq_hook(initialize)]
fn initialize() -> Result<(), String> {
    say("initialize");
    match probe().plan.get("initialize") {
        Some((action, _)) if action == "fail" => Err(format!(
            "probe {} refuses to start as planned",
            probe().name
        )),
        _ => Ok(()),
    }
}

#[mq_hook(cleanup)]
fn cleanup() {
    say("cleanup");
}

#[mq_hook(context_initialize)]
fn context_initialize(_ctx: &Context) {
    say("context_initialize");
}

#[mq_hook(context_cleanup)]
fn context_cleanup(ctx: &Context) {
    say(&format!(
        "context_cleanup {}",
        ctx.data::<Cell<u32>>().map_or(0, Cell::get)
    ));
}

#[mq_hook(smtp_in_connect)]
fn connect(ctx: &Context, conn: &Connection) -> Act {
    act("smtp_in_connect", ctx, conn, || {
        connection_exercise(ctx, conn)
    })
}

#[mq_hook(smtp_in_secure)]
fn secure(ctx: &Context, conn: &Connection) -> Act {
    act("smtp_in_secure", ctx, conn, || {
        connection_exercise(ctx, conn)
    })
}

#[mq_hook(smtp_in_authenticate)]
fn authenticate(conn: &Connection, ctx: &Context, credentials: &Credentials) -> Act {
    act("smtp_in_authenticate", ctx, conn, || {
        say(&format!(
            "login {}",
            String::from_utf8_lossy(credentials.login())
        ));
        say(&format!(
            "password {}",
            String::from_utf8_lossy(credentials.password())
        ));
        match credentials.login() {
            b"good" => conn.set_authenticated(true),
            b"bad" => conn.set_authenticated(false),
            _ => {}
        }
    })
}

#[mq_hook(smtp_in_mailfrom)]
fn mailfrom(ctx: &Context, conn: &Connection, addr: &Address) -> Act {
    act("smtp_in_mailfrom", ctx, conn, || address_exercise(addr))
}

#[mq_hook(smtp_in_rcptto)]
fn rcptto(ctx: &Context, conn: &Connection, addr: &Address) -> Act {
    act("smtp_in_rcptto", ctx, conn, || address_exercise(addr))
}

#[mq_hook(smtp_in_data, fallback = complete)]
fn data(ctx: &Context, conn: &Connection, mime: &[u8]) -> Act {
    act("smtp_in_data", ctx, conn, || {
        say(&format!("mime-size {}", mime.len()));
        let first = mime.split(|b| *b == b'\n').next().unwrap_or_default();
        say(&format!(
            "mime-first {}",
            String::from_utf8_lossy(first).trim_end()
        ));
    })
}

#[mq_hook(smtp_in_message)]
fn message(ctx: &Context, conn: &Connection, msg: &mut Message) -> Act {
    if let Some((action, arg)) = probe().plan.get("smtp_in_message") {
        if action == "late-exercise" {
            return late_exercise(ctx, conn, msg, arg.parse().unwrap_or(0.0));
        }
    }
    act("smtp_in_message", ctx, conn, || message_exercise(msg))
}

/// Holds the chain for `seconds`, then uses the message and resumes, as a
/// slow plugin does after the host's hold deadline has passed.
fn late_exercise(ctx: &Context, conn: &Connection, msg: &mut Message, seconds: f64) -> Act {
    say("smtp_in_message");
    let (raw_conn, raw_msg) = (conn.as_raw(), msg.as_raw());
    let started = ctx.start_timer(Duration::from_secs_f64(seconds), move || {
        // SAFETY: the host keeps the message of a take-over alive until the
        // plugin resumes, even past the hold deadline.
        message_exercise(unsafe { Message::from_raw_mut(raw_msg) });
        // SAFETY: on the loop, resuming our own take-over.
        unsafe { raw::resume(raw_conn, Flow::Continue) };
    });
    match started {
        // SAFETY: the timer resumes.
        Ok(_) => Ok(Control::Manual(unsafe { ManualControl::take() })),
        Err(e) => Err(e.to_string()),
    }
}

#[mq_hook(smtp_in_close)]
fn close_hook(ctx: &Context, conn: &Connection) -> Act {
    act("smtp_in_close", ctx, conn, || {
        connection_exercise(ctx, conn)
    })
}

#[mq_hook(smtp_out_data)]
fn out_data(ctx: &Context, conn: &Connection, msg: &mut Message) -> Act {
    act("smtp_out_data", ctx, conn, || message_exercise(msg))
}

#[mq_hook(smtp_out_sent)]
fn out_sent(ctx: &Context, conn: &Connection, msg: &mut Message) -> Act {
    act("smtp_out_sent", ctx, conn, || message_exercise(msg))
}
