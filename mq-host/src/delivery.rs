//! Delivery: messages from the outbox go over SMTP to a relay, with the
//! `smtp_out_data` and `smtp_out_sent` hooks at their MailerQ moments.
//!
//! The outbox is the `inbox/` directory under the data directory, next to
//! `local/` and `refused/` (written by [`serve`](crate::Host::serve)) and
//! the results: `success/`, `failures/` and `retry/`. An [`Outbox`] picks up every message
//! file in it when it opens, so nothing accepted before a crash or a restart
//! is lost, and takes new ones as `serve` stores them. [`run`] delivers them
//! with a few delivery threads, each one plain SMTP connection at a time:
//!
//! 1. connect, greeting, `EHLO` (`HELO` if the relay refuses it),
//!    `MAIL FROM:<envelope>`, `RCPT TO:<recipient>`, `DATA`;
//! 2. after the relay's `354` the connection is in the DATA state: the
//!    `smtp_out_data` chain runs on a worker (a plugin may hold control, or
//!    replace the MIME with `MQ_setMime`);
//! 3. the MIME is sent (line ends made CRLF, dot-stuffed, ended with
//!    `.`), then the `smtp_out_sent` chain runs, before the relay's reply is
//!    read;
//! 4. the reply decides: 2xx success, 4xx (or a network error, or a
//!    timeout) retry, 5xx failure.
//!
//! The hooks run on the workers' event loops like every chain; the delivery
//! threads only wait for them, so a plugin that holds control never blocks
//! a worker.
//!
//! # Results
//!
//! A result is the message's MailerQ JSON with the attempt added to its
//! `results` array, and `mime` removed unless the message sets `keepmime`:
//!
//! ```json
//! {"envelope": "a@example.org", "recipient": "b@example.net",
//!  "results": [{"time": "2026-11-30T09:12:01Z", "relay": "127.0.0.1:2526",
//!               "attempt": 1, "status": "success", "state": "data",
//!               "code": 250, "extended": "2.0.0", "description": "OK queued"}]}
//! ```
//!
//! `status` is `success`, `failure` or `retry`; `state` names the step the
//! reply answered (`connect`, `greeting`, `ehlo`, `mailfrom`, `rcptto`,
//! `data`, `sent`); `code`, `extended` and `description` are the relay's
//! reply, or for an error without one, `description` says what happened.
//! Results are written durably to `success/`, `failures/` or `retry/` under
//! the data directory, and handed to the caller of [`run`].
//!
//! # Retries
//!
//! A temporary failure is retried after a delay that doubles from
//! [`DeliveryConfig::retry_delay`] up to [`DeliveryConfig::max_retry_delay`]
//! (or, if the message has a `retries` array, its entries in seconds, the
//! last one repeated), until `maxattempts` (the message's, or
//! [`DeliveryConfig::max_attempts`]) attempts were made; then it is a
//! failure. The message file stays in the outbox meanwhile, rewritten with
//! its `results` so far and its `nextattempt` (RFC 3339 UTC), which a
//! restart honours; other waiting messages are due at once.
//!
//! A message is delivered at least once: if the host dies after the relay
//! accepted a message but before its result was written, the message is
//! sent again after the restart (SMTP's at-least-once). A message whose
//! final result was written is never sent again: an outbox file whose
//! result exists is only removed. `DATA_DIR/.lock` keeps a second process
//! from delivering the same outbox.

use crate::counters::Counters;
use crate::host::{Event, Host};
use crate::hostlog::Priority;
use crate::objects::Direction;
use crate::store;
use serde_json::{json, Map, Value};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// How messages are delivered.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// The relay, as `host:port`.
    pub relay: String,
    /// The name given in `EHLO`.
    pub helo: String,
    /// Delivery threads: how many messages are on their way at once.
    pub connections: usize,
    /// How long connecting to the relay may take.
    pub connect_timeout: Duration,
    /// How long the relay may take for each reply.
    pub reply_timeout: Duration,
    /// The delay before the first retry; it doubles for each further one.
    pub retry_delay: Duration,
    /// The longest delay between retries.
    pub max_retry_delay: Duration,
    /// Attempts before a temporary failure becomes a failure, unless the
    /// message sets `maxattempts`.
    pub max_attempts: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            relay: "127.0.0.1:25".to_owned(),
            helo: "localhost".to_owned(),
            connections: 2,
            connect_timeout: Duration::from_secs(30),
            reply_timeout: Duration::from_secs(300),
            retry_delay: Duration::from_secs(60),
            max_retry_delay: Duration::from_secs(3600),
            max_attempts: 5,
        }
    }
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The relay accepted the message.
    Success,
    /// The message cannot be delivered: a permanent error, or its attempts
    /// are used up.
    Failure,
    /// A temporary failure: the message will be tried again.
    Retry,
}

impl Status {
    /// `success`, `failure` or `retry`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Failure => "failure",
            Status::Retry => "retry",
        }
    }

    fn queue(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Failure => "failures",
            Status::Retry => "retry",
        }
    }
}

/// A delivery result, as written under the data directory.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// What became of the attempt.
    pub status: Status,
    /// The result JSON (the message with its `results`).
    pub result: Value,
    /// Where the result was written.
    pub file: PathBuf,
}

/// What an [`Outbox`] found when it opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pickup {
    /// Messages waiting for delivery.
    pub waiting: usize,
    /// Messages whose result had been written but which were still in the
    /// outbox (the host stopped in between): removed, not sent again.
    pub finished: usize,
}

/// The outbox: the message files waiting in `inbox/`, in the order they
/// are due. Cheap to clone; all clones are one queue.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<(Mutex<Queue>, Condvar)>,
    data_dir: PathBuf,
    /// `DATA_DIR/.lock`, locked while any clone lives: one process per
    /// data directory.
    _lock: Arc<std::fs::File>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("data_dir", &self.data_dir)
            .field("pending", &self.pending())
            .finish()
    }
}

#[derive(Default)]
struct Queue {
    /// Waiting messages by due time (then order of arrival).
    due: BinaryHeap<Reverse<(Instant, u64, PathBuf)>>,
    seq: u64,
    /// Messages being delivered right now.
    in_flight: usize,
    stopping: bool,
    /// Relay connections of the deliveries on their way, to cut them
    /// short at shutdown.
    connections: std::collections::HashMap<u64, TcpStream>,
    next_connection: u64,
    /// The connections were cut: their attempts are not recorded.
    cut: bool,
}

/// When [`run`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// When [`Outbox::stop`] is called (after the messages on their way).
    Stopped,
    /// When every message has its final result, or at [`Outbox::stop`].
    Empty,
}

impl Outbox {
    /// Opens the outbox under `data_dir` and picks up every message waiting
    /// in `inbox/` (without reading them: one whose `nextattempt` is still
    /// ahead is put back until then when its turn comes). Fails if another
    /// outbox (in this or another process) has the directory open.
    pub fn open(data_dir: impl Into<PathBuf>) -> std::io::Result<(Outbox, Pickup)> {
        let data_dir = data_dir.into();
        let inbox = data_dir.join("inbox");
        std::fs::create_dir_all(&inbox)?;
        let lock_path = data_dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        if let Err(e) = lock.try_lock() {
            let why = match e {
                std::fs::TryLockError::WouldBlock => {
                    "another mq-host uses this data directory".to_owned()
                }
                std::fs::TryLockError::Error(e) => e.to_string(),
            };
            return Err(std::io::Error::other(format!(
                "cannot lock {}: {why}",
                lock_path.display()
            )));
        }
        let outbox = Outbox {
            shared: Arc::new((Mutex::new(Queue::default()), Condvar::new())),
            data_dir,
            _lock: Arc::new(lock),
        };
        let mut pickup = Pickup::default();
        for file in store::pending(&inbox)? {
            if outbox.has_final_result(&file) {
                store::remove(&file)?;
                pickup.finished += 1;
            } else {
                // Due now; a `nextattempt` still ahead is honoured when its
                // turn comes, from the read that turn makes anyway.
                outbox.push(file);
                pickup.waiting += 1;
            }
        }
        Ok((outbox, pickup))
    }

    /// Whether the message in outbox file `file` has its final result
    /// (`success/` or `failures/` under the same name).
    fn has_final_result(&self, file: &Path) -> bool {
        let name = file.file_name().unwrap_or_default();
        ["success", "failures"]
            .iter()
            .any(|q| self.data_dir.join(q).join(name).exists())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stores `message` durably in the outbox and queues it.
    pub fn add(&self, message: &Value) -> std::io::Result<PathBuf> {
        let path = store::store(&self.data_dir.join("inbox"), message)?;
        self.push(path.clone());
        Ok(path)
    }

    /// Queues a message file already stored in `inbox/`, due now.
    pub fn push(&self, file: PathBuf) {
        self.push_at(file, Instant::now());
    }

    fn push_at(&self, file: PathBuf, due: Instant) {
        let mut queue = self.lock();
        queue.seq += 1;
        let seq = queue.seq;
        queue.due.push(Reverse((due, seq, file)));
        drop(queue);
        self.shared.1.notify_all();
    }

    /// Message files in `inbox/` now (waiting, on their way, or left
    /// there by a turn that recorded nothing).
    pub fn pending_files(&self) -> usize {
        store::pending(&self.data_dir.join("inbox")).map_or(0, |f| f.len())
    }

    /// Messages waiting or on their way.
    pub fn pending(&self) -> usize {
        let queue = self.lock();
        queue.due.len() + queue.in_flight
    }

    /// Lets [`run`] return once the messages on their way are done; the
    /// waiting ones stay in `inbox/` for the next start.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.shared.1.notify_all();
    }

    /// Like [`Outbox::stop`], then waits up to `grace` for the deliveries
    /// on their way; those still going then are cut short (their messages
    /// stay in `inbox/`, unchanged, for the next start). Returns how many
    /// were cut.
    pub fn stop_within(&self, grace: Duration) -> usize {
        self.stop();
        let deadline = Instant::now() + grace.min(LONGEST_DELAY);
        let mut queue = self.lock();
        while queue.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            queue = self.wait(queue, Some(left));
        }
        if queue.in_flight == 0 {
            return 0;
        }
        queue.cut = true;
        for stream in queue.connections.values() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        queue.in_flight
    }

    /// Keeps a clone of a relay connection until the guard drops.
    /// `None` once the shutdown cut the connections.
    fn track(&self, stream: &TcpStream) -> Option<Tracked> {
        let clone = stream.try_clone().ok()?;
        let mut queue = self.lock();
        if queue.cut {
            return None;
        }
        queue.next_connection += 1;
        let id = queue.next_connection;
        queue.connections.insert(id, clone);
        Some(Tracked {
            outbox: self.clone(),
            id,
        })
    }

    fn was_cut(&self) -> bool {
        self.lock().cut
    }

    fn is_stopping(&self) -> bool {
        self.lock().stopping
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A poisoned lock only means a delivery thread panicked while
        // holding it; the queue itself is always consistent.
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next due message, waiting for one; `None` when `run` should end.
    fn next(&self, until: Until) -> Option<PathBuf> {
        let mut queue = self.lock();
        loop {
            if queue.stopping {
                return None;
            }
            let now = Instant::now();
            match queue.due.peek() {
                Some(Reverse((due, _, _))) if *due <= now => {
                    let Reverse((_, _, file)) = queue.due.pop().expect("peeked");
                    queue.in_flight += 1;
                    return Some(file);
                }
                Some(Reverse((due, _, _))) => {
                    let wait = *due - now;
                    queue = self.wait(queue, Some(wait));
                }
                None if until == Until::Empty && queue.in_flight == 0 => {
                    // Wake the other threads: they end too.
                    self.shared.1.notify_all();
                    return None;
                }
                None => queue = self.wait(queue, None),
            }
        }
    }

    fn wait<'a>(
        &self,
        queue: MutexGuard<'a, Queue>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, Queue> {
        let cv = &self.shared.1;
        match timeout {
            Some(t) => {
                cv.wait_timeout(queue, t)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => cv.wait(queue).unwrap_or_else(|e| e.into_inner()),
        }
    }

    fn done(&self) {
        self.lock().in_flight -= 1;
        self.shared.1.notify_all();
    }
}

/// A tracked relay connection (see [`Outbox::track`]).
struct Tracked {
    outbox: Outbox,
    id: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.outbox.lock().connections.remove(&self.id);
    }
}

/// Delivers the outbox's messages with `config.connections` threads until
/// `until`; `on_result` gets every result (success, failure and retry) as
/// soon as it is written.
///
/// A message whose turn records nothing (its file cannot be read, its
/// result cannot be written, or the host is stopping) stays in the outbox:
/// with [`Until::Stopped`] it is due again after `config.retry_delay`; with
/// [`Until::Empty`] it waits for the next [`Outbox::open`].
pub fn run(
    host: &Host,
    outbox: &Outbox,
    config: &DeliveryConfig,
    until: Until,
    on_result: &(dyn Fn(&Outcome) + Sync),
) {
    std::thread::scope(|scope| {
        for n in 0..config.connections.max(1) {
            std::thread::Builder::new()
                .name(format!("mq-deliver-{n}"))
                .spawn_scoped(scope, || {
                    while let Some(file) = outbox.next(until) {
                        let _in_flight = InFlight(outbox);
                        take_turn(host, outbox, config, until, on_result, file);
                    }
                })
                .expect("a delivery thread starts");
        }
    });
}

/// Marks a message's turn as over, however it ends (a panic included).
struct InFlight<'a>(&'a Outbox);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.done();
    }
}

fn take_turn(
    host: &Host,
    outbox: &Outbox,
    config: &DeliveryConfig,
    until: Until,
    on_result: &(dyn Fn(&Outcome) + Sync),
    file: PathBuf,
) {
    let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        deliver_file(host, outbox, config, &file)
    }))
    .unwrap_or_else(|_| {
        host.host_log(
            Priority::Critical,
            format!(
                "delivery: handling {} panicked (a host bug); it stays in the outbox",
                file.display()
            ),
        );
        Turn::Later
    });
    match turn {
        Turn::Recorded(outcome, again) => {
            let counters = host.counters_live();
            Counters::bump(match outcome.status {
                Status::Success => &counters.messages_delivered,
                Status::Failure => &counters.messages_failed,
                Status::Retry => &counters.messages_deferred,
            });
            if let Some(delay) = again {
                outbox.push_at(file, due_in(delay));
            }
            let reported =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_result(&outcome)));
            if reported.is_err() {
                host.host_log(
                    Priority::Critical,
                    "delivery: the result callback panicked".to_owned(),
                );
            }
        }
        Turn::Later if until == Until::Stopped && !outbox.is_stopping() => {
            outbox.push_at(file, due_in(config.retry_delay));
        }
        Turn::NotYet(wait) if !outbox.is_stopping() => outbox.push_at(file, due_in(wait)),
        Turn::Later | Turn::NotYet(_) | Turn::Over => {}
    }
}

/// The longest any delay may be (retries, `nextattempt`): 30 days.
const LONGEST_DELAY: Duration = Duration::from_secs(30 * 86_400);

/// `delay` from now, at most [`LONGEST_DELAY`].
fn due_in(delay: Duration) -> Instant {
    Instant::now() + delay.min(LONGEST_DELAY)
}

/// What one turn of a message came to.
enum Turn {
    /// A result was written; `Some(delay)`: a retry, due after it.
    Recorded(Outcome, Option<Duration>),
    /// Nothing was recorded; the message stays in the outbox as it is.
    Later,
    /// Its `nextattempt` is this far ahead: not tried now.
    NotYet(Duration),
    /// Nothing more to do now: the shutdown cut the attempt short (the
    /// message stays as it is), or its final result was already written.
    Over,
}

/// One attempt for the message in `file`, and its result recorded.
fn deliver_file(host: &Host, outbox: &Outbox, config: &DeliveryConfig, file: &Path) -> Turn {
    let name = match file.file_name() {
        Some(name) => name.to_string_lossy().into_owned(),
        None => return Turn::Later,
    };
    if outbox.has_final_result(file) {
        // Recorded before, but not removed from the outbox (a removal
        // failed): only the removal is due.
        if let Err(e) = store::remove(file) {
            host.host_log(
                Priority::Critical,
                format!(
                    "delivery: cannot remove the delivered {}: {e}",
                    file.display()
                ),
            );
        }
        return Turn::Over;
    }
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) => {
            host.host_log(
                Priority::Critical,
                format!(
                    "delivery: cannot read {}: {e}; it stays in the outbox",
                    file.display()
                ),
            );
            return Turn::Later;
        }
    };
    let message = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return quarantine(host, outbox, file, &name, "not a JSON object"),
        Err(e) => return quarantine(host, outbox, file, &name, &e.to_string()),
    };
    if let Some(wait) = not_due(&message) {
        return Turn::NotYet(wait);
    }
    let (attempt, relay) = attempt(host, outbox, config, &message);
    if attempt.error.is_some() && outbox.was_cut() {
        host.host_log(
            Priority::Warning,
            format!("delivery: {name} was cut short by the shutdown; it stays in the outbox"),
        );
        return Turn::Over;
    }
    Counters::bump(&host.counters_live().delivery_attempts);
    let turn = match record(outbox, config, file, &name, message, attempt) {
        Ok((outcome, again)) => {
            host.host_log(
                Priority::Info,
                format!(
                    "delivery: {name} to {}: {} ({})",
                    outcome.result["recipient"].as_str().unwrap_or("?"),
                    outcome.status.as_str(),
                    last_description(&outcome.result)
                ),
            );
            Turn::Recorded(outcome, again)
        }
        Err(e) => {
            host.host_log(
                Priority::Critical,
                format!(
                    "delivery: cannot record the result of {name}: {e}; it stays in the outbox"
                ),
            );
            Turn::Later
        }
    };
    // The result is safe: now a polite end, if the conversation is in step.
    if let Some(mut relay) = relay {
        relay.quit();
    }
    turn
}

fn last_description(result: &Value) -> String {
    let last = result["results"].as_array().and_then(|r| r.last());
    match last {
        Some(a) => match a["code"].as_u64() {
            Some(code) => format!("{} {}", code, a["description"].as_str().unwrap_or("")),
            None => a["description"].as_str().unwrap_or("").to_owned(),
        },
        None => String::new(),
    }
}

/// A message file that is not a MailerQ message moves to `failures/` in one
/// rename, unchanged but for `.invalid` added to its name, so it is
/// reported, never lost.
fn quarantine(host: &Host, outbox: &Outbox, file: &Path, name: &str, why: &str) -> Turn {
    let failures = outbox.data_dir.join("failures");
    match store::move_as(file, &failures, &format!("{name}.invalid")) {
        Ok(path) => {
            host.host_log(
                Priority::Critical,
                format!(
                    "delivery: {} is not a MailerQ message ({why}); moved to {}",
                    file.display(),
                    path.display()
                ),
            );
            let result = json!({"file": file.display().to_string(), "results": [{
                "time": store::now_rfc3339(), "status": "failure", "state": "message",
                "description": format!("not a MailerQ message: {why}")}]});
            Turn::Recorded(
                Outcome {
                    status: Status::Failure,
                    result,
                    file: path,
                },
                None,
            )
        }
        Err(e) => {
            host.host_log(
                Priority::Critical,
                format!(
                    "delivery: {} is not a MailerQ message ({why}) and cannot be moved: {e}",
                    file.display()
                ),
            );
            Turn::Later
        }
    }
}

/// One attempt's result, before it is recorded.
struct Attempt {
    status: Status,
    state: &'static str,
    reply: Option<Reply>,
    error: Option<String>,
}

impl Attempt {
    fn error(status: Status, state: &'static str, error: impl Into<String>) -> Attempt {
        Attempt {
            status,
            state,
            reply: None,
            error: Some(error.into()),
        }
    }

    /// The status a reply means: 2xx success, 4xx retry, anything else
    /// failure.
    fn from_reply(state: &'static str, reply: Reply) -> Attempt {
        let status = match reply.code / 100 {
            2 => Status::Success,
            4 => Status::Retry,
            _ => Status::Failure,
        };
        Attempt {
            status,
            state,
            reply: Some(reply),
            error: None,
        }
    }
}

/// A relay's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    code: u16,
    /// The enhanced status code (`2.0.0`), if the relay gave one.
    extended: Option<String>,
    /// The reply's text, lines joined with a space, without the codes.
    text: String,
}

/// An SMTP client connection to the relay (blocking, with timeouts).
struct Relay {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    reply_timeout: Duration,
    /// Lets a shutdown cut this connection.
    tracked: Option<Tracked>,
}

/// The longest reply line read from a relay (RFC 5321 allows 512 octets).
const LONGEST_REPLY_LINE: usize = 4096;
/// The most lines a relay's reply may have.
const MOST_REPLY_LINES: usize = 100;

impl Relay {
    fn connect(config: &DeliveryConfig) -> Result<Relay, String> {
        let addrs = config
            .relay
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve relay {}: {e}", config.relay))?;
        let mut last = format!("relay {} has no address", config.relay);
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, config.connect_timeout) {
                Ok(stream) => {
                    stream
                        .set_write_timeout(Some(config.reply_timeout))
                        .map_err(|e| e.to_string())?;
                    let writer = stream.try_clone().map_err(|e| e.to_string())?;
                    return Ok(Relay {
                        reader: BufReader::new(stream),
                        writer: BufWriter::new(writer),
                        reply_timeout: config.reply_timeout,
                        tracked: None,
                    });
                }
                Err(e) => last = format!("cannot connect to relay {addr}: {e}"),
            }
        }
        Err(last)
    }

    /// One reply (all its lines), within `reply_timeout` for the whole
    /// reply; lines longer than [`LONGEST_REPLY_LINE`] or replies of more
    /// than [`MOST_REPLY_LINES`] lines are errors.
    fn read_reply(&mut self) -> Result<Reply, String> {
        let deadline = Instant::now() + self.reply_timeout;
        let mut text = Vec::new();
        let mut extended = None;
        for _ in 0..MOST_REPLY_LINES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("the relay did not answer in time".into());
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(|e| format!("reading from the relay: {e}"))?;
            let mut line = Vec::new();
            let read = std::io::Read::take(&mut self.reader, LONGEST_REPLY_LINE as u64)
                .read_until(b'\n', &mut line);
            match read {
                Ok(0) => return Err("the relay closed the connection".into()),
                Ok(_) if line.last() != Some(&b'\n') => {
                    if line.len() >= LONGEST_REPLY_LINE {
                        return Err("the relay sent a reply line that is too long".into());
                    }
                    return Err("the relay closed the connection".into());
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err("the relay did not answer in time".into())
                }
                Err(e) => return Err(format!("reading from the relay: {e}")),
            }
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            let (code, more, rest) = parse_reply_line(line)
                .ok_or_else(|| format!("the relay sent a malformed reply: {line:?}"))?;
            let (ext, rest) = split_extended(rest);
            if extended.is_none() {
                extended = ext;
            }
            if !rest.is_empty() {
                text.push(rest.to_owned());
            }
            if !more {
                return Ok(Reply {
                    code,
                    extended,
                    text: text.join(" "),
                });
            }
        }
        Err(format!(
            "the relay sent a reply of more than {MOST_REPLY_LINES} lines"
        ))
    }

    /// `QUIT`, waiting briefly for the answer; the result is already known.
    fn quit(&mut self) {
        self.reply_timeout = self.reply_timeout.min(Duration::from_secs(5));
        let _ = self.command("QUIT");
    }

    fn command(&mut self, line: &str) -> Result<Reply, String> {
        self.writer
            .write_all(line.as_bytes())
            .and_then(|_| self.writer.write_all(b"\r\n"))
            .and_then(|_| self.writer.flush())
            .map_err(|e| format!("writing to the relay: {e}"))?;
        self.read_reply()
    }

    /// Sends `mime` as DATA content: every line end (CRLF, or a bare LF or
    /// CR) sent as CRLF, lines starting with `.` dot-stuffed, a final CRLF
    /// added if missing, then `.`. A bare CR never reaches the relay, so
    /// no relay can read an end of data into the content.
    fn send_data(&mut self, mime: &[u8]) -> Result<(), String> {
        let w = &mut self.writer;
        let mut write = || -> std::io::Result<()> {
            let mut at_line_start = true;
            let mut i = 0;
            while i < mime.len() {
                let b = mime[i];
                if at_line_start && b == b'.' {
                    w.write_all(b".")?;
                }
                match b {
                    b'\r' => {
                        // CRLF, or a bare CR: one line end either way.
                        if mime.get(i + 1) == Some(&b'\n') {
                            i += 1;
                        }
                        w.write_all(b"\r\n")?;
                        at_line_start = true;
                    }
                    b'\n' => {
                        w.write_all(b"\r\n")?;
                        at_line_start = true;
                    }
                    _ => {
                        w.write_all(&[b])?;
                        at_line_start = false;
                    }
                }
                i += 1;
            }
            if !at_line_start {
                w.write_all(b"\r\n")?;
            }
            w.write_all(b".\r\n")?;
            w.flush()
        };
        write().map_err(|e| format!("sending the message to the relay: {e}"))
    }
}

/// `250-text` → (250, true, "text"); `250 text` or `250` → (250, false, ..).
fn parse_reply_line(line: &str) -> Option<(u16, bool, &str)> {
    let code = line.get(..3)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u16 = code.parse().ok()?;
    match line.as_bytes().get(3) {
        None => Some((code, false, "")),
        Some(b'-') => Some((code, true, &line[4..])),
        Some(b' ') => Some((code, false, &line[4..])),
        Some(_) => None,
    }
}

/// `2.1.0 Ok` → (Some("2.1.0"), "Ok").
fn split_extended(text: &str) -> (Option<String>, &str) {
    let (first, rest) = text.split_once(' ').unwrap_or((text, ""));
    let parts: Vec<_> = first.split('.').collect();
    let extended = parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    if extended {
        (Some(first.to_owned()), rest.trim_start())
    } else {
        (None, text)
    }
}

/// One delivery attempt of `message` to the relay, with the out hooks;
/// the relay connection too while the conversation is still in step (for
/// a polite `QUIT` once the result is recorded).
fn attempt(
    host: &Host,
    outbox: &Outbox,
    config: &DeliveryConfig,
    message: &Map<String, Value>,
) -> (Attempt, Option<Relay>) {
    let envelope = message
        .get("envelope")
        .and_then(Value::as_str)
        .unwrap_or("");
    let recipient = match message.get("recipient").and_then(Value::as_str) {
        Some(r) if !r.trim().is_empty() => r,
        _ => {
            let e = "the message has no `recipient`";
            return (Attempt::error(Status::Failure, "message", e), None);
        }
    };
    for (what, address) in [("envelope", envelope), ("recipient", recipient)] {
        if let Some(bad) = address
            .chars()
            .find(|c| matches!(c, '\r' | '\n' | '\0' | '<' | '>'))
        {
            let e = format!("the message's `{what}` holds {bad:?}, which no SMTP address may");
            return (Attempt::error(Status::Failure, "message", e), None);
        }
    }
    let mut relay = match Relay::connect(config) {
        Ok(relay) => relay,
        Err(e) => return (Attempt::error(Status::Retry, "connect", e), None),
    };
    match outbox.track(relay.reader.get_ref()) {
        Some(tracked) => relay.tracked = Some(tracked),
        None => {
            let e = "the host is stopping";
            return (Attempt::error(Status::Retry, "connect", e), None);
        }
    }
    let attempt = converse(host, config, &mut relay, message, envelope, recipient);
    // After an error the connection is broken, or aborted in DATA: it is
    // only closed.
    let relay = attempt.error.is_none().then_some(relay);
    (attempt, relay)
}

fn converse(
    host: &Host,
    config: &DeliveryConfig,
    relay: &mut Relay,
    message: &Map<String, Value>,
    envelope: &str,
    recipient: &str,
) -> Attempt {
    macro_rules! step {
        ($state:literal, $reply:expr, $want:expr) => {
            match $reply {
                Ok(reply) if reply.code / 100 == $want => reply,
                Ok(reply) => {
                    let mut a = Attempt::from_reply($state, reply);
                    // A 2xx where a 354 was due: the relay is confused. A
                    // 5xx to the greeting or EHLO/HELO speaks of the
                    // connection (busy, our name), not of this message.
                    if a.status == Status::Success || ($state == "greeting" || $state == "ehlo") {
                        a.status = Status::Retry;
                    }
                    return a;
                }
                Err(e) => return Attempt::error(Status::Retry, $state, e),
            }
        };
    }
    step!("greeting", relay.read_reply(), 2);
    match relay.command(&format!("EHLO {}", config.helo)) {
        Ok(reply) if reply.code / 100 == 5 => {
            step!("ehlo", relay.command(&format!("HELO {}", config.helo)), 2);
        }
        reply => {
            step!("ehlo", reply, 2);
        }
    }
    step!(
        "mailfrom",
        relay.command(&format!("MAIL FROM:<{envelope}>")),
        2
    );
    step!(
        "rcptto",
        relay.command(&format!("RCPT TO:<{recipient}>")),
        2
    );
    step!("data", relay.command("DATA"), 3);

    // The connection is in the DATA state: the out hooks run now.
    let mut session = match host.open(Direction::Outgoing) {
        Ok(session) => session,
        Err(e) => {
            return Attempt::error(
                Status::Retry,
                "data",
                format!("the host cannot run smtp_out_data: {e}"),
            )
        }
    };
    let mime = match session.run(Event::OutData(Value::Object(message.clone()))) {
        Ok(out) => out.smtp.and_then(|smtp| smtp.mime),
        Err(e) => {
            return Attempt::error(
                Status::Retry,
                "data",
                format!("the host cannot run smtp_out_data: {e}"),
            )
        }
    };
    let Some(mime) = mime else {
        // Closing the connection in DATA aborts the transaction.
        let _ = session.close();
        return Attempt::error(
            Status::Failure,
            "data",
            "the message has no `mime` and no plugin set one in smtp_out_data",
        );
    };
    if let Err(e) = relay.send_data(&mime) {
        let _ = session.close();
        return Attempt::error(Status::Retry, "data", e);
    }
    let sent = session.run(Event::OutSent);
    let _ = session.close();
    if let Err(e) = sent {
        host.host_log(
            Priority::Warning,
            format!("delivery: smtp_out_sent did not run: {e}"),
        );
    }
    match relay.read_reply() {
        Ok(reply) => Attempt::from_reply("sent", reply),
        Err(e) => Attempt::error(Status::Retry, "sent", e),
    }
}

/// How far ahead the message's `nextattempt` (RFC 3339 UTC, as a retry
/// writes it) is; `None` if it is due (or has none that can be read).
fn not_due(message: &Map<String, Value>) -> Option<Duration> {
    let at = store::parse_rfc3339(message.get("nextattempt")?.as_str()?)?;
    at.duration_since(SystemTime::now())
        .ok()
        .filter(|wait| !wait.is_zero())
}

/// The attempts a message may have.
fn max_attempts(message: &Map<String, Value>, config: &DeliveryConfig) -> u64 {
    message
        .get("maxattempts")
        .and_then(Value::as_u64)
        .unwrap_or(u64::from(config.max_attempts))
        .max(1)
}

/// The delay after the `attempts`-th attempt failed for now.
fn retry_delay(message: &Map<String, Value>, config: &DeliveryConfig, attempts: usize) -> Duration {
    if let Some(retries) = message.get("retries").and_then(Value::as_array) {
        let secs: Vec<f64> = retries.iter().filter_map(Value::as_f64).collect();
        if let Some(&last) = secs.last() {
            let s = secs
                .get(attempts.saturating_sub(1))
                .copied()
                .unwrap_or(last);
            let longest = LONGEST_DELAY.as_secs_f64();
            return Duration::try_from_secs_f64(s.clamp(0.0, longest)).unwrap_or(LONGEST_DELAY);
        }
    }
    let doublings = attempts.saturating_sub(1).min(32) as u32;
    config
        .retry_delay
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(config.max_retry_delay)
        .min(LONGEST_DELAY)
}

fn keeps_mime(message: &Map<String, Value>) -> bool {
    match message.get("keepmime") {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty() && s != "0" && s != "false",
        _ => false,
    }
}

/// Writes the attempt's result and moves the message on: to `success/` or
/// `failures/` (out of the outbox), or back into the outbox for a retry.
fn record(
    outbox: &Outbox,
    config: &DeliveryConfig,
    file: &Path,
    name: &str,
    mut message: Map<String, Value>,
    attempt: Attempt,
) -> std::io::Result<(Outcome, Option<Duration>)> {
    let allowed = max_attempts(&message, config);
    let results = message
        .entry("results")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !results.is_array() {
        *results = Value::Array(Vec::new());
    }
    let results = results.as_array_mut().expect("made an array");
    let number = results.len() + 1;
    let mut status = attempt.status;
    let mut entry = json!({
        "time": store::now_rfc3339(),
        "relay": config.relay,
        "attempt": number,
        "state": attempt.state,
    });
    if let Some(reply) = &attempt.reply {
        entry["code"] = json!(reply.code);
        if let Some(ext) = &reply.extended {
            entry["extended"] = json!(ext);
        }
        entry["description"] = json!(reply.text);
    }
    if let Some(error) = &attempt.error {
        entry["description"] = json!(error);
    }
    let attempts = number;
    if status == Status::Retry && attempts as u64 >= allowed {
        status = Status::Failure;
        entry["gaveup"] = json!(format!("{attempts} attempt(s) made"));
    }
    entry["status"] = json!(status.as_str());
    results.push(entry);

    let keep_mime = keeps_mime(&message);
    let queue = outbox.data_dir.join(status.queue());
    match status {
        Status::Success | Status::Failure => {
            let mut result = message;
            if !keep_mime {
                result.remove("mime");
            }
            let result = Value::Object(result);
            let path = store::store_as(&queue, name, &result)?;
            store::remove(file)?;
            let outcome = Outcome {
                status,
                result,
                file: path,
            };
            Ok((outcome, None))
        }
        Status::Retry => {
            let delay = retry_delay(&message, config, attempts);
            let next = store::rfc3339(SystemTime::now() + delay);
            message.insert("nextattempt".into(), json!(next));
            // The result without the MIME, unless kept: not a full copy.
            let result: Map<String, Value> = message
                .iter()
                .filter(|(key, _)| keep_mime || key.as_str() != "mime")
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            // The result first: if the host stops in between, the attempt
            // is made again and its result written again under this name.
            let stem = name.strip_suffix(".json").unwrap_or(name);
            let result = Value::Object(result);
            let path = store::store_as(&queue, &format!("{stem}.{attempts}.json"), &result)?;
            let inbox = outbox.data_dir.join("inbox");
            store::store_as(&inbox, name, &Value::Object(message))?;
            let outcome = Outcome {
                status,
                result,
                file: path,
            };
            Ok((outcome, Some(delay)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines() {
        assert_eq!(
            parse_reply_line("250-PIPELINING"),
            Some((250, true, "PIPELINING"))
        );
        assert_eq!(
            parse_reply_line("250 2.0.0 Ok"),
            Some((250, false, "2.0.0 Ok"))
        );
        assert_eq!(parse_reply_line("354"), Some((354, false, "")));
        assert_eq!(parse_reply_line("25 x"), None);
        assert_eq!(parse_reply_line("250x"), None);
        assert_eq!(split_extended("2.1.5 Ok"), (Some("2.1.5".into()), "Ok"));
        assert_eq!(split_extended("5.7.1"), (Some("5.7.1".into()), ""));
        assert_eq!(split_extended("Ok then"), (None, "Ok then"));
        assert_eq!(split_extended("3.1.4 pi"), (None, "3.1.4 pi"));
    }

    #[test]
    fn retry_delays_double_up_to_the_cap_or_follow_the_message() {
        let config = DeliveryConfig {
            retry_delay: Duration::from_secs(10),
            max_retry_delay: Duration::from_secs(35),
            ..Default::default()
        };
        let plain = Map::new();
        let delays: Vec<_> = (1..=4)
            .map(|n| retry_delay(&plain, &config, n).as_secs())
            .collect();
        assert_eq!(delays, [10, 20, 35, 35]);
        let Value::Object(own) = json!({"retries": [1, 5]}) else {
            unreachable!()
        };
        let delays: Vec<_> = (1..=3)
            .map(|n| retry_delay(&own, &config, n).as_secs())
            .collect();
        assert_eq!(delays, [1, 5, 5]);
        let Value::Object(limited) = json!({"maxattempts": 2}) else {
            unreachable!()
        };
        assert_eq!(max_attempts(&limited, &config), 2);
        assert_eq!(max_attempts(&plain, &config), 5);
    }

    #[test]
    fn pickup_honours_nextattempt_and_skips_finished_messages() {
        let dir = std::env::temp_dir().join(format!("mq-pickup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let inbox = dir.join("inbox");
        let later = store::rfc3339(SystemTime::now() + Duration::from_secs(3600));
        store::store_as(
            &inbox,
            "a.json",
            &json!({"recipient": "a@x", "nextattempt": later}),
        )
        .unwrap();
        store::store_as(&inbox, "b.json", &json!({"recipient": "b@x"})).unwrap();
        // c was delivered, but the host stopped before removing it.
        store::store_as(&inbox, "c.json", &json!({"recipient": "c@x"})).unwrap();
        store::store_as(&dir.join("success"), "c.json", &json!({"recipient": "c@x"})).unwrap();

        let (outbox, pickup) = Outbox::open(&dir).unwrap();
        assert_eq!(
            pickup,
            Pickup {
                waiting: 2,
                finished: 1
            }
        );
        assert!(!inbox.join("c.json").exists());
        // a's turn comes, but its nextattempt puts it an hour ahead; b is due.
        let read = |name: &str| -> Map<String, Value> {
            serde_json::from_slice(&std::fs::read(inbox.join(name)).unwrap()).unwrap()
        };
        let wait = not_due(&read("a.json")).expect("a is not due");
        assert!(wait > Duration::from_secs(3500));
        assert_eq!(not_due(&read("b.json")), None);
        drop(outbox);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn data_is_sent_with_crlf_line_ends_and_dot_stuffed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = DeliveryConfig {
            relay: listener.local_addr().unwrap().to_string(),
            ..Default::default()
        };
        let mut relay = Relay::connect(&config).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        relay.send_data(b".a\r\nb\nc\r.d\r\n\r\n..e\rf").unwrap();
        drop(relay);
        let mut sent = Vec::new();
        std::io::Read::read_to_end(&mut peer, &mut sent).unwrap();
        assert_eq!(
            String::from_utf8(sent).unwrap(),
            "..a\r\nb\r\nc\r\n..d\r\n\r\n...e\r\nf\r\n.\r\n"
        );
    }

    #[test]
    fn replies_are_read_whole_and_bounded() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = DeliveryConfig {
            relay: listener.local_addr().unwrap().to_string(),
            reply_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let mut relay = Relay::connect(&config).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        peer.write_all(b"250-first\r\n250-2.0.0 second \xe9\r\n250 2.1.0 third\r\n")
            .unwrap();
        let reply = relay.read_reply().unwrap();
        assert_eq!(reply.code, 250);
        assert_eq!(reply.extended.as_deref(), Some("2.0.0"));
        assert_eq!(reply.text, "first second \u{fffd} third");
        peer.write_all(&[b'x'; LONGEST_REPLY_LINE + 10]).unwrap();
        assert_eq!(
            relay.read_reply().unwrap_err(),
            "the relay sent a reply line that is too long"
        );
    }

    #[test]
    fn one_outbox_per_data_directory() {
        let dir = std::env::temp_dir().join(format!("mq-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (first, _) = Outbox::open(&dir).unwrap();
        let err = Outbox::open(&dir).unwrap_err().to_string();
        assert!(
            err.contains("another mq-host uses this data directory"),
            "{err}"
        );
        drop(first);
        Outbox::open(&dir).expect("free again once the first is gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keepmime_values() {
        for (value, keeps) in [
            (json!(true), true),
            (json!(1), true),
            (json!(false), false),
            (json!(0), false),
            (json!("yes"), true),
        ] {
            let Value::Object(m) = json!({"keepmime": value}) else {
                unreachable!()
            };
            assert_eq!(keeps_mime(&m), keeps, "{value}");
        }
        assert!(!keeps_mime(&Map::new()));
    }
}
