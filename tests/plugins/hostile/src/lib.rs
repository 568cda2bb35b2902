//! A hostile plugin in safe Rust: everything it does compiles under
//! `#![forbid(unsafe_code)]`, and none of it may corrupt, abort or hang
//! the host. The soundness suite (`tests/tests/soundness.rs`) runs it in
//! `mq-host` under valgrind.
//!
//! A copy `NAME.so` reads its scenario from `NAME.so.plan`: one line,
//! `<scenario> [unit-ms]` (the unit defaults to 200 ms; the suite gives the
//! host a hold deadline of one unit). Every line it logs starts with
//! `hostile `. The scenarios, by the class of problem they attack:
//!
//! | scenario | what the plugin does |
//! |---|---|
//! | `conn-data-across-await` | `smtp_in_rcptto` borrows per-connection data, sleeps 3 units, then writes it |
//! | `out-set-mime-late` | `smtp_out_data` sleeps 3 units, then calls `set_mime` |
//! | `mime-slice-across-await` | `smtp_in_message` keeps `msg.mime()` across a 3-unit sleep, then reads it |
//! | `mime-setter` | `smtp_in_message` replaces the MIME at once (the plugin after the one above) |
//! | `late-resume` | `smtp_in_mailfrom` sleeps 1.5 units; `smtp_in_rcptto` sleeps 0.8 units, then refuses with 550 and reads the address |
//! | `bomb-initialize`, `bomb-sync`, `bomb-first-poll`, `bomb-after-await`, `bomb-timer` | `panic_any(Bomb)`, whose payload panics again when dropped |
//! | `display-panics` | hooks return `Err(e)` whose `Display` panics |
//! | `duration-max` | `Duration::MAX` in `start_timer`, `reset`, `sleep`, `timeout`, `interval` |
//! | `drop-panics` | two per-connection and two per-context values whose `Drop` panics |
//! | `watch-host-fds` | watches every fd number 0..1024 and drops the watchers |
//! | `timer-at-cleanup` | starts an hour-long timer and forgets it |
//! | `send-flood` | `smtp_in_rcptto` sends 20 MB to the client, then a `250` line |
//! | `json-borrows` | `smtp_in_message` sets envelope and recipient with a NUL byte (the JSON keeps it, the C string ends there), borrows both, makes the JSON live through `property`, reads the addresses again, then reads the borrows |

#![forbid(unsafe_code)]

use mq_plugin::log::{write, Priority};
use mq_plugin::prelude::*;
use mq_plugin::time::{interval, sleep, timeout};
use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

mq_plugin::declare_plugin!();

struct Plan {
    scenario: String,
    unit: Duration,
}

fn plan() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| {
        let text = own_path()
            .and_then(|p| std::fs::read_to_string(format!("{}.plan", p.display())).ok())
            .unwrap_or_default();
        let mut words = text.split_whitespace();
        let scenario = words.next().unwrap_or("none").to_owned();
        let unit = words.next().and_then(|w| w.parse().ok()).unwrap_or(200);
        Plan {
            scenario,
            unit: Duration::from_millis(unit),
        }
    })
}

fn is(scenario: &str) -> bool {
    plan().scenario == scenario
}

fn units(n: f64) -> Duration {
    plan().unit.mul_f64(n)
}

/// This shared object's path, from `/proc/self/maps` (safe code: no dladdr).
fn own_path() -> Option<PathBuf> {
    let here = own_path as fn() -> Option<PathBuf> as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        let path = fields.nth(4)?;
        (start <= here && here < end && path.starts_with('/')).then(|| PathBuf::from(path))
    })
}

fn say(text: &str) {
    write(Priority::Info, &format!("hostile {text}"));
}

/// A panic payload whose `Drop` panics again, with another `Bomb`.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        std::panic::panic_any(Bomb);
    }
}

/// An error whose `Display` panics.
#[derive(Debug)]
struct PanickyDisplay;

impl std::fmt::Display for PanickyDisplay {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("Display of the hook's error panics")
    }
}

/// A value whose `Drop` panics (two kinds, so both can be attached).
struct DropPanics(&'static str);

impl Drop for DropPanics {
    fn drop(&mut self) {
        say(&format!("dropping {}", self.0));
        panic!("Drop of {} panics", self.0);
    }
}

struct DropPanicsToo(&'static str);

impl Drop for DropPanicsToo {
    fn drop(&mut self) {
        say(&format!("dropping {}", self.0));
        panic!("Drop of {} panics", self.0);
    }
}

/// Says when it is dropped.
struct Noisy(&'static str);

impl Drop for Noisy {
    fn drop(&mut self) {
        say(&format!("{} dropped", self.0));
    }
}

#[mq_hook(initialize)]
fn initialize() {
    say(&format!("scenario {}", plan().scenario));
    if is("bomb-initialize") {
        std::panic::panic_any(Bomb);
    }
}

#[mq_hook(context_initialize)]
fn context_initialize(ctx: &Context) {
    if is("drop-panics") {
        ctx.data_or_insert_with(|| DropPanics("context value one"));
        ctx.data_or_insert_with(|| DropPanicsToo("context value two"));
    }
    if is("timer-at-cleanup") {
        let callback = Noisy("the forgotten timer's callback");
        let started = ctx.start_timer(Duration::from_secs(3600), move || drop(callback));
        say(&format!("forgotten timer started: {}", started.is_ok()));
    }
}

#[mq_hook(smtp_in_connect)]
fn connect(ctx: &Context, conn: &Connection) -> Flow {
    if is("bomb-sync") {
        std::panic::panic_any(Bomb);
    }
    if is("bomb-timer") {
        let started = ctx.start_timer(Duration::from_millis(10), || std::panic::panic_any(Bomb));
        say(&format!("bomb timer started: {}", started.is_ok()));
    }
    if is("drop-panics") {
        conn.data_or_insert_with(|| DropPanics("connection value one"));
        conn.data_or_insert_with(|| DropPanicsToo("connection value two"));
    }
    if is("duration-max") {
        match ctx.start_timer(Duration::MAX, || say("the Duration::MAX timer fired")) {
            Ok(timer) => {
                say(&format!(
                    "reset to Duration::MAX: {}",
                    timer.reset(Duration::MAX)
                ));
                say(&format!("stopped: {}", timer.stop()));
            }
            Err(e) => say(&format!("start_timer(Duration::MAX) failed: {e}")),
        }
    }
    if is("watch-host-fds") {
        let mut watched = 0;
        for fd in 0..1024 {
            for interest in [Interest::READ, Interest::BOTH] {
                if let Ok(watcher) = ctx.watch_fd(fd, interest, |_| {}) {
                    watched += 1;
                    drop(watcher);
                }
            }
        }
        say(&format!("watched and dropped {watched} fd watchers"));
    }
    Flow::Continue
}

#[mq_hook(smtp_in_mailfrom)]
async fn mailfrom() -> Flow {
    if is("late-resume") {
        sleep(units(1.5)).await;
        say("mailfrom resumes late");
    }
    Flow::Continue
}

#[mq_hook(smtp_in_rcptto)]
async fn rcptto(conn: &Connection, rcpt: &Address) -> Result<Flow, PanickyDisplay> {
    if is("bomb-first-poll") {
        std::panic::panic_any(Bomb);
    }
    if is("bomb-timer") {
        // Lets the bomb timer go off during the session.
        sleep(Duration::from_millis(50)).await;
    }
    if is("display-panics") {
        sleep(Duration::from_millis(1)).await;
        return Err(PanickyDisplay);
    }
    if is("conn-data-across-await") {
        let data = conn.data_or_insert_with(|| RefCell::new(vec![7u8; 4096]));
        sleep(units(3.0)).await;
        data.borrow_mut().push(1);
        say(&format!(
            "connection data written after the deadline: {}",
            data.borrow().len()
        ));
    }
    if is("send-flood") {
        let line = format!("250-{}\r\n", "x".repeat(1020));
        let mut taken = 0;
        for _ in 0..20 * 1024 {
            taken += conn.send(line.as_bytes());
        }
        taken += conn.send(b"250 2.1.5 flooded\r\n");
        say(&format!("send-flood: the host took {taken} bytes"));
    }
    if is("late-resume") {
        sleep(units(0.8)).await;
        conn.send(b"550 5.7.1 refused by the rcptto hook\r\n");
        say(&format!("refusing {:?}", rcpt.email()));
        return Ok(Flow::Complete);
    }
    if is("duration-max") {
        let forever = timeout(Duration::from_millis(20), sleep(Duration::MAX)).await;
        say(&format!(
            "sleep(Duration::MAX) under a 20 ms timeout: {forever:?}"
        ));
        let at_once = timeout(Duration::MAX, async { 5 }).await;
        say(&format!("timeout(Duration::MAX, ready): {at_once:?}"));
        let mut ticks = interval(Duration::MAX);
        ticks.tick().await;
        let second = timeout(Duration::from_millis(20), ticks.tick()).await;
        say(&format!(
            "interval(Duration::MAX) second tick: {}",
            second.is_ok()
        ));
    }
    Ok(Flow::Continue)
}

#[mq_hook(smtp_in_data)]
fn data(mime: &[u8]) -> Result<Flow, PanickyDisplay> {
    if is("display-panics") {
        return Err(PanickyDisplay);
    }
    say(&format!("data of {} bytes", mime.len()));
    Ok(Flow::Continue)
}

#[mq_hook(smtp_in_message)]
async fn message(msg: &mut Message) -> Flow {
    if is("bomb-after-await") {
        sleep(Duration::from_millis(5)).await;
        std::panic::panic_any(Bomb);
    }
    if is("json-borrows") {
        json_borrows(msg);
    }
    mime_scenarios(msg).await;
    Flow::Continue
}

/// `json-borrows`: reads that only take `&Message` keep what earlier reads
/// returned valid, also when the JSON becomes a live libfastjson object
/// between them and the JSON's address differs from the C string's.
fn json_borrows(msg: &mut Message) {
    msg.set_envelope("sender\0hidden@example.com");
    msg.set_recipient("rcpt\0hidden@example.org");
    let msg: &Message = msg;
    let envelope = msg.envelope().and_then(Address::email_bytes);
    let recipient = msg.recipient();
    let property: Result<Option<String>, _> = msg.property("envelope");
    let again = (msg.envelope().and_then(Address::email), msg.recipient());
    say(&format!(
        "json-borrows: envelope {:?}, recipient {:?}, property {:?}, again {:?}",
        envelope.map(String::from_utf8_lossy),
        recipient,
        property.ok().flatten().map(|p| p.len()),
        again
    ));
}

#[mq_hook(smtp_out_data)]
async fn out_data(msg: &mut Message) {
    if is("out-set-mime-late") {
        sleep(units(3.0)).await;
        msg.set_mime(b"Subject: late\r\n\r\nset after the deadline\r\n");
        say("set the MIME after the deadline");
    }
    mime_scenarios(msg).await;
}

/// `mime-slice-across-await` and `mime-setter`, in and out.
async fn mime_scenarios(msg: &mut Message) {
    if is("mime-slice-across-await") {
        if msg.mime().is_none() {
            // An outgoing message's MQ_mime is NULL until a plugin set
            // one: set the JSON's, to have a slice to keep.
            if let Ok(Some(own)) = msg.property_bytes("mime") {
                msg.set_mime(&own);
            }
        }
        let mime = msg.mime().unwrap_or_default();
        sleep(units(3.0)).await;
        let sum: u64 = mime.iter().map(|b| u64::from(*b)).sum();
        say(&format!(
            "read {} MIME bytes after the deadline (sum {sum})",
            mime.len()
        ));
    }
    if is("mime-setter") {
        msg.set_mime(b"Subject: replaced\r\n\r\nreplaced by the second plugin\r\n");
    }
}
