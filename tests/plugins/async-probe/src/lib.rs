//! Async test probe. Every line it logs starts with `async-probe `.
//!
//! - `smtp_in_connect`: attaches connection data, sleeps 5 ms, then fails
//!   with an error (fallback: continue).
//! - `smtp_in_secure`: waits for a value sent from another thread.
//! - `smtp_in_authenticate`: a 20 ms `timeout` around a 10 s sleep; logs the
//!   login after the await (the credentials live in the future).
//! - `smtp_in_mailfrom` (sync) / `smtp_in_data` (sync): bracket the
//!   `smtp_in_rcptto` call to count the plugin's heap allocations.
//! - `smtp_in_rcptto`: ready at once (no take-over).
//! - `smtp_in_message` (fallback complete): sleeps the message's
//!   `delay_ms`, then returns its `flow`; panics if `panic` is true.
//! - `smtp_in_close`: sleeps, then checks the connection data is still there.
//! - `smtp_out_data`: never completes; logs when its future is dropped.

use mq_plugin::log::{write, Priority};
use mq_plugin::prelude::*;
use mq_plugin::time::{sleep, timeout};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

mq_plugin::declare_plugin!();

/// Counts this thread's allocations made by the plugin.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static MARK: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn say(text: &str) {
    write(Priority::Info, &format!("async-probe {text}"));
}

/// Connection data that reports when the framework drops it.
struct Marked(u32);

impl Drop for Marked {
    fn drop(&mut self) {
        say(&format!("connection data {} dropped", self.0));
    }
}

#[mq_hook(smtp_in_connect)]
async fn connect(conn: &Connection) -> Result<Flow, String> {
    conn.data_or_insert_with(|| Marked(7));
    sleep(Duration::from_millis(5)).await;
    Err("connect fails as planned".to_owned())
}

#[mq_hook(smtp_in_secure)]
async fn secure() -> Flow {
    let (tx, rx) = std::sync::mpsc::channel::<u32>();
    let waiter = FromThread::new();
    let handle = waiter.handle();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(10));
        let _ = tx.send(42);
        handle.wake();
    });
    waiter.await;
    say(&format!(
        "woken from another thread with {}",
        rx.try_recv().unwrap_or(0)
    ));
    Flow::Continue
}

#[mq_hook(smtp_in_authenticate)]
async fn authenticate(credentials: &Credentials, conn: &Connection) -> Flow {
    match timeout(Duration::from_millis(20), sleep(Duration::from_secs(10))).await {
        Ok(()) => say("timeout did not fire"),
        Err(e) => say(&format!("timeout fired: {e}")),
    }
    say(&format!(
        "login {}",
        String::from_utf8_lossy(credentials.login())
    ));
    conn.set_authenticated(credentials.password() == b"secret");
    Flow::Continue
}

#[mq_hook(smtp_in_mailfrom)]
fn mark() {
    MARK.with(|m| m.set(ALLOCATIONS.with(Cell::get)));
}

#[mq_hook(smtp_in_rcptto)]
async fn ready_at_once(rcpt: &Address) -> Flow {
    if rcpt.email() == Some("complete@example.org") {
        Flow::Complete
    } else {
        Flow::Continue
    }
}

#[mq_hook(smtp_in_data)]
fn count() {
    let delta = ALLOCATIONS.with(Cell::get) - MARK.with(Cell::get);
    say(&format!("allocations {delta}"));
}

#[mq_hook(smtp_in_message, fallback = complete)]
async fn message(ctx: &Context, msg: &mut Message) -> Result<Flow, String> {
    let json = msg.json().map_err(|e| e.to_string())?;
    if let Some(n) = json["blocking"].as_u64() {
        let loop_thread = std::thread::current().id();
        let (sum, thread) = mq_plugin::task::spawn_blocking(move || {
            let sum: u64 = (1..=n).sum();
            (sum, std::thread::current().name().unwrap_or("?").to_owned())
        })
        .await
        .map_err(|e| e.to_string())?;
        let back_on_loop = std::thread::current().id() == loop_thread;
        say(&format!(
            "blocking sum {sum} on {thread}; back on the loop: {back_on_loop}"
        ));
    }
    if let Some(ms) = json["background_ms"].as_u64() {
        ctx.spawn_local(async move {
            let _guard = Announce("background task dropped");
            sleep(Duration::from_millis(ms)).await;
            say("background task done");
        })
        .map_err(|e| e.to_string())?;
    }
    let delay = json["delay_ms"].as_u64().unwrap_or(0);
    if delay > 0 {
        sleep(Duration::from_millis(delay)).await;
    }
    if json["panic"] == true {
        panic!("message panics as planned");
    }
    let mime = format!("X-Async: {delay}\r\n").into_bytes();
    msg.set_mime(&[mime, msg.mime().unwrap_or_default().to_vec()].concat());
    Ok(match json["flow"].as_str() {
        Some("complete") => Flow::Complete,
        Some("retry") => Flow::Retry,
        _ => Flow::Continue,
    })
}

#[mq_hook(smtp_in_close)]
async fn close(conn: &Connection) -> Flow {
    sleep(Duration::from_millis(5)).await;
    match conn.data::<Marked>() {
        Some(m) => say(&format!("close sees connection data {}", m.0)),
        None => say("close sees no connection data"),
    }
    Flow::Continue
}

/// Logs its text when dropped.
struct Announce(&'static str);

impl Drop for Announce {
    fn drop(&mut self) {
        say(self.0);
    }
}

/// Logs when dropped: proves pending futures are dropped at cleanup.
struct DropGuard;

impl Drop for DropGuard {
    fn drop(&mut self) {
        say("pending future dropped");
    }
}

#[mq_hook(smtp_out_data)]
async fn never() -> Flow {
    let _guard = DropGuard;
    std::future::pending::<()>().await;
    Flow::Continue
}

/// A future completed by a wake from another thread.
struct FromThread {
    state: std::sync::Arc<std::sync::Mutex<(bool, Option<std::task::Waker>)>>,
}

struct FromThreadHandle(std::sync::Arc<std::sync::Mutex<(bool, Option<std::task::Waker>)>>);

impl FromThread {
    fn new() -> FromThread {
        FromThread {
            state: Default::default(),
        }
    }

    fn handle(&self) -> FromThreadHandle {
        FromThreadHandle(self.state.clone())
    }
}

impl FromThreadHandle {
    fn wake(self) {
        let waker = {
            let mut s = self.0.lock().unwrap();
            s.0 = true;
            s.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl std::future::Future for FromThread {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let mut s = self.state.lock().unwrap();
        if s.0 {
            std::task::Poll::Ready(())
        } else {
            s.1 = Some(cx.waker().clone());
            std::task::Poll::Pending
        }
    }
}
