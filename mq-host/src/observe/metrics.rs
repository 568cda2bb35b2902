//! The host's counters in Prometheus' text exposition format (version
//! 0.0.4), and the small HTTP endpoint `mq-host serve --metrics ADDR`
//! serves them on.
//!
//! Every counter of [`CounterSnapshot`] is one family named
//! `mqhost_<counter>_total`, with its doc text as `# HELP`; the calls per
//! hook are one family, `mqhost_hook_calls_total{hook="..."}`, with a
//! sample for every hook of the table (zeros included, so a rate exists
//! from the first scrape). The unlabelled `hook_calls` counter is that
//! family's sum and is not served twice. A caller adds gauges of its own
//! with [`prometheus_gauge`] (`serve`: the outbox's length).
//!
//! The endpoint is one thread with a blocking std listener: it reads the
//! counters (relaxed atomic loads, no lock a worker takes), so a scrape
//! never waits for a worker and a worker never waits for a scrape. It
//! serves one client at a time with a bounded request
//! ([`MAX_REQUEST`]) and one deadline for the whole exchange
//! ([`CLIENT_TIMEOUT`]), so a slow or hostile client delays only other
//! scrapes, by at most that deadline. No web framework: `GET /metrics` answers `200`, any
//! other path `404`, any other method `405`, a request that does not
//! parse `400`, one too large `431`.

use super::counters::COUNTER_DOCS;
use super::CounterSnapshot;
use mq_hook_table::HOOKS;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The prefix of every metric name.
pub const PREFIX: &str = "mqhost_";

/// The largest request (line and headers) the endpoint reads.
pub const MAX_REQUEST: usize = 8 * 1024;

/// How long the whole exchange with one client may take: its request and
/// our answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// The counters in `snapshot` as Prometheus text exposition: `# HELP` and
/// `# TYPE` before each family's samples.
///
/// ```
/// let text = mq_host::prometheus_text(&mq_host::CounterSnapshot::default());
/// assert!(text.contains("# TYPE mqhost_smtp_sessions_total counter\nmqhost_smtp_sessions_total 0\n"));
/// assert!(text.contains("mqhost_hook_calls_total{hook=\"smtp_in_rcptto\"} 0\n"));
/// ```
pub fn prometheus_text(snapshot: &CounterSnapshot) -> String {
    let mut out = String::with_capacity(8 * 1024);
    for ((name, value), (doc_name, doc)) in snapshot.entries().into_iter().zip(COUNTER_DOCS) {
        debug_assert_eq!(name, *doc_name);
        if name == "hook_calls" {
            continue;
        }
        family(&mut out, name, doc);
        let _ = writeln!(out, "{PREFIX}{name}_total {value}");
    }
    family(
        &mut out,
        "hook_calls",
        "Hook calls made into plugins, per hook (their sum is every hook call).",
    );
    for (hook, value) in HOOKS.iter().zip(snapshot.per_hook) {
        let _ = writeln!(
            out,
            "{PREFIX}hook_calls_total{{hook=\"{}\"}} {value}",
            label_value(hook.name)
        );
    }
    out
}

/// A gauge `mqhost_<name>` (a value that goes up and down, such as a
/// queue's length) in the text exposition format, to serve beside
/// [`prometheus_text`].
///
/// ```
/// let text = mq_host::prometheus_gauge("outbox_messages", "Messages waiting.", 3);
/// let lines: Vec<&str> = text.lines().collect();
/// assert_eq!(lines, [
///     "# HELP mqhost_outbox_messages Messages waiting.",
///     "# TYPE mqhost_outbox_messages gauge",
///     "mqhost_outbox_messages 3",
/// ]);
/// ```
pub fn prometheus_gauge(name: &str, help: &str, value: u64) -> String {
    format!(
        "# HELP {PREFIX}{name} {}\n# TYPE {PREFIX}{name} gauge\n{PREFIX}{name} {value}\n",
        help_text(help)
    )
}

/// `# HELP` and `# TYPE` of counter family `name`.
fn family(out: &mut String, name: &str, doc: &str) {
    let help = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    let _ = writeln!(out, "# HELP {PREFIX}{name}_total {}", help_text(&help));
    let _ = writeln!(out, "# TYPE {PREFIX}{name}_total counter");
}

/// A `# HELP` text: backslash and line feed escaped, as the format asks.
fn help_text(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A label value: backslash, double quote and line feed escaped.
fn label_value(text: &str) -> String {
    help_text(text).replace('"', "\\\"")
}

/// The metrics endpoint: a bound listener, served by [`Endpoint::run`]
/// on a thread of the caller's until [`Endpoint::stop`].
#[derive(Debug)]
pub struct Endpoint {
    listener: TcpListener,
    addr: SocketAddr,
    stopping: AtomicBool,
    /// The whole exchange with one client: its request and our answer.
    client_timeout: Duration,
}

/// How often [`Endpoint::run`] looks at the stop flag while idle.
const STOP_CHECK: Duration = Duration::from_millis(200);

impl Endpoint {
    /// Binds `addr` (port 0: a free port; see [`Endpoint::local_addr`]).
    pub fn bind(addr: impl ToSocketAddrs) -> std::io::Result<Endpoint> {
        let listener = TcpListener::bind(addr)?;
        // Readiness comes from poll; an accept never blocks.
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        Ok(Endpoint {
            listener,
            addr,
            stopping: AtomicBool::new(false),
            client_timeout: CLIENT_TIMEOUT,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers scrapes with the text `scrape()` makes (usually
    /// [`prometheus_text`] of the host's counters) until
    /// [`Endpoint::stop`], one client at a time.
    pub fn run(&self, scrape: impl Fn() -> String) {
        while !self.stopping.load(Ordering::Acquire) {
            if !self.wait_for_client() {
                continue;
            }
            match self.listener.accept() {
                Ok((client, _)) => {
                    // A client that misbehaves costs its own answer only.
                    let _ = answer(client, self.client_timeout, &scrape);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // Out of descriptors or memory: do not spin on it.
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Whether a client waits to be accepted, after [`STOP_CHECK`] at most.
    fn wait_for_client(&self) -> bool {
        let mut fd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.listener),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the listener, which outlives the call.
        let ready = unsafe { libc::poll(&mut fd, 1, STOP_CHECK.as_millis() as libc::c_int) };
        ready > 0
    }

    /// Makes [`Endpoint::run`] return, within 200 ms or once the
    /// client it answers now is done.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Metrics { head: bool },
    NotFound,
    BadMethod,
    Malformed,
    TooLarge,
}

/// Reads one request from `client` and answers it, all within `limit`;
/// the connection closes.
fn answer(
    mut client: TcpStream,
    limit: Duration,
    scrape: &impl Fn() -> String,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let deadline = Instant::now() + limit;
    let asked = read_request(&mut client, deadline)?;
    let (status, body) = match asked {
        Asked::Metrics { .. } => ("200 OK", scrape()),
        Asked::NotFound => ("404 Not Found", "only /metrics is served\n".to_owned()),
        Asked::BadMethod => ("405 Method Not Allowed", "GET /metrics\n".to_owned()),
        Asked::Malformed => ("400 Bad Request", "not an HTTP request\n".to_owned()),
        Asked::TooLarge => (
            "431 Request Header Fields Too Large",
            "request too large\n".to_owned(),
        ),
    };
    let content_type = match asked {
        Asked::Metrics { .. } => "text/plain; version=0.0.4; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
        body.len(),
        if asked == Asked::BadMethod { "Allow: GET, HEAD\r\n" } else { "" },
    )
    .into_bytes();
    if asked != (Asked::Metrics { head: true }) {
        response.extend_from_slice(body.as_bytes());
    }
    let mut rest = &response[..];
    while !rest.is_empty() {
        client.set_write_timeout(Some(left(deadline)?))?;
        let n = client.write(rest)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        rest = &rest[n..];
    }
    Ok(())
}

/// The time left until `deadline`; an error once it passed (a client
/// that trickles its bytes cannot stretch the exchange).
fn left(deadline: Instant) -> std::io::Result<Duration> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(left),
        _ => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Reads until the end of the request's headers, at most [`MAX_REQUEST`]
/// bytes, before `deadline`, and says what it asks for.
fn read_request(client: &mut TcpStream, deadline: Instant) -> std::io::Result<Asked> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Ok(Asked::TooLarge);
        }
        client.set_read_timeout(Some(left(deadline)?))?;
        let n = client.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(Asked::Malformed);
        }
        len += n;
        if let Some(asked) = parse(&buf[..len]) {
            return Ok(asked);
        }
    }
}

/// What the request in `bytes` asks for; `None` if its headers are not
/// all there yet.
fn parse(bytes: &[u8]) -> Option<Asked> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(Asked::TooLarge),
        Err(_) => Some(Asked::Malformed),
        Ok(httparse::Status::Complete(_)) => {
            let path = request.path.unwrap_or("");
            let path = path.split_once('?').map_or(path, |(path, _)| path);
            Some(match (request.method, path) {
                (Some("GET"), "/metrics") => Asked::Metrics { head: false },
                (Some("HEAD"), "/metrics") => Asked::Metrics { head: true },
                (Some("GET" | "HEAD"), _) => Asked::NotFound,
                _ => Asked::BadMethod,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_and_type_and_valid_names() {
        let mut snapshot = CounterSnapshot {
            smtp_sessions: 7,
            ..Default::default()
        };
        snapshot.per_hook[0] = 3;
        let text = prometheus_text(&snapshot);
        let mut helped = std::collections::HashSet::new();
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                assert!(!help.is_empty() && !help.contains('\n'));
                assert!(helped.insert(name.to_owned()), "HELP twice: {name}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(kind, "counter");
                assert!(helped.contains(name), "TYPE before HELP: {name}");
                assert!(typed.insert(name.to_owned()));
            } else {
                let (series, value) = line.rsplit_once(' ').unwrap();
                value.parse::<u64>().unwrap();
                let name = series.split('{').next().unwrap();
                assert!(typed.contains(name), "a sample without TYPE: {line}");
                assert!(name.starts_with(PREFIX) && name.ends_with("_total"));
                assert!(name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'));
            }
        }
        assert!(text.contains("\nmqhost_smtp_sessions_total 7\n"));
        assert!(text.contains(&format!(
            "mqhost_hook_calls_total{{hook=\"{}\"}} 3\n",
            HOOKS[0].name
        )));
        // Every counter but the per-hook sum is served, with its doc.
        assert_eq!(typed.len(), snapshot.entries().len());
        assert!(text.contains(
            "# HELP mqhost_chains_finished_total Chains run to their end (any outcome).\n"
        ));
    }

    #[test]
    fn help_and_label_escapes() {
        assert_eq!(help_text("a\\b\nc"), "a\\\\b\\nc");
        assert_eq!(label_value("a\"b"), "a\\\"b");
    }

    #[test]
    fn requests() {
        let asked = |r: &str| parse(r.as_bytes());
        assert_eq!(
            asked("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Asked::Metrics { head: false })
        );
        assert_eq!(
            asked("GET /metrics?name[]=x HTTP/1.0\r\n\r\n"),
            Some(Asked::Metrics { head: false })
        );
        assert_eq!(
            asked("HEAD /metrics HTTP/1.1\r\n\r\n"),
            Some(Asked::Metrics { head: true })
        );
        assert_eq!(asked("GET / HTTP/1.1\r\n\r\n"), Some(Asked::NotFound));
        assert_eq!(
            asked("POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Asked::BadMethod)
        );
        assert_eq!(asked("GET /metrics HTTP/1.1\r\nHost"), None);
        assert_eq!(asked("\x16\x03\x01 hello\r\n\r\n"), Some(Asked::Malformed));
    }

    fn get(endpoint: &Endpoint, request: &[u8]) -> String {
        let mut client = TcpStream::connect(endpoint.local_addr()).unwrap();
        client.write_all(request).unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn the_endpoint_answers_and_stops() {
        let endpoint = Endpoint::bind("127.0.0.1:0").unwrap();
        let snapshot = CounterSnapshot {
            messages_stored: 42,
            ..Default::default()
        };
        std::thread::scope(|scope| {
            let running = scope.spawn(|| endpoint.run(|| prometheus_text(&snapshot)));
            let ok = get(&endpoint, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
            assert!(ok.contains("Content-Type: text/plain; version=0.0.4"));
            assert!(ok.contains("\nmqhost_messages_stored_total 42\n"));
            let missing = get(&endpoint, b"GET /other HTTP/1.1\r\n\r\n");
            assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
            // A request past the bound is refused, not buffered on.
            let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
            huge.resize(MAX_REQUEST, b'a');
            let refused = get(&endpoint, &huge);
            assert!(refused.starts_with("HTTP/1.1 431 "), "{refused}");
            endpoint.stop();
            running.join().unwrap();
        });
    }

    #[test]
    fn a_trickling_client_is_cut_at_the_deadline() {
        let mut endpoint = Endpoint::bind("127.0.0.1:0").unwrap();
        endpoint.client_timeout = Duration::from_millis(300);
        std::thread::scope(|scope| {
            let running = scope.spawn(|| endpoint.run(String::new));
            let mut client = TcpStream::connect(endpoint.local_addr()).unwrap();
            // One byte every 20 ms would take minutes to fill the request
            // bound; every single read is quick, so only a deadline for
            // the whole request ends it. The bound here is generous.
            let started = Instant::now();
            let cut = loop {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the trickling client was not cut"
                );
                if client.write_all(b"G").is_err() {
                    break true;
                }
                client
                    .set_read_timeout(Some(Duration::from_millis(20)))
                    .unwrap();
                match client.read(&mut [0u8; 64]) {
                    Ok(0) => break true,
                    Ok(_) => break false,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => break true,
                }
            };
            assert!(cut, "the endpoint answered a request that never ended");
            // It serves the next client.
            let ok = get(&endpoint, b"GET /metrics HTTP/1.1\r\n\r\n");
            assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
            endpoint.stop();
            running.join().unwrap();
        });
    }
}
