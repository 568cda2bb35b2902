//! The acceptor thread: admits each client under the connection limits and
//! hands it to a worker (round robin); backs off, and says so once, when
//! the process runs out of file descriptors.

use super::{commands, session, ConnectionLimit, Listener, OpenSessions, ServeConfig};
use crate::observe::{Counters, Priority, Source};
use crate::runtime::event_loop::LoopRemote;
use crate::runtime::worker::{self, Shared};
use crate::store::commit::Committer;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The first pause after an accept that failed for want of resources.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// The longest pause between accept attempts while resources lack.
const LONGEST_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts on `listener` and hands each client to a worker, round robin.
pub(super) fn listen(
    listener: TcpListener,
    remotes: Vec<LoopRemote>,
    host: Arc<Shared>,
    config: ServeConfig,
) -> std::io::Result<Listener> {
    let addr = listener.local_addr()?;
    // `shutdown` is a socket call, not a stream one: std offers it on
    // `TcpStream` only, so the second descriptor is held as one.
    let wake = TcpStream::from(std::os::fd::OwnedFd::from(listener.try_clone()?));
    let stop = Arc::new(AtomicBool::new(false));
    let open = Arc::new(OpenSessions::default());
    let store = Arc::new(Committer::start(
        Arc::clone(&host.counters),
        &config.data_dir,
    )?);
    let acceptor = Acceptor {
        listener,
        stop: Arc::clone(&stop),
        open: Arc::clone(&open),
        remotes: remotes.clone(),
        host,
        config: Arc::new(config),
        #[cfg(test)]
        store: Arc::clone(&store),
        #[cfg(not(test))]
        store,
    };
    let thread = std::thread::Builder::new()
        .name("mq-smtp-accept".into())
        .spawn(move || acceptor.run())?;
    Ok(Listener {
        addr,
        stop,
        wake,
        thread: Some(thread),
        open,
        remotes,
        #[cfg(test)]
        store,
    })
}

struct Acceptor {
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    open: Arc<OpenSessions>,
    remotes: Vec<LoopRemote>,
    host: Arc<Shared>,
    config: Arc<ServeConfig>,
    /// The store thread of this listener's sessions.
    store: Arc<Committer>,
}

impl Acceptor {
    fn run(self) {
        let mut next = 0usize;
        let mut backoff: Option<(Duration, u64)> = None;
        loop {
            let accepted = self.listener.accept();
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) if lacks_resources(&e) => {
                    Counters::bump(&self.host.counters.accept_errors);
                    let (pause, failures) = match backoff {
                        None => {
                            self.log(
                                Priority::Critical,
                                format!("smtp: cannot accept clients: {e}; retrying with pauses until it can"),
                            );
                            (FIRST_BACKOFF, 1)
                        }
                        Some((pause, failures)) => ((pause * 2).min(LONGEST_BACKOFF), failures + 1),
                    };
                    backoff = Some((pause, failures));
                    std::thread::sleep(pause);
                    continue;
                }
                // The client went before it was accepted, and the like.
                Err(_) => continue,
            };
            if let Some((_, failures)) = backoff.take() {
                self.log(
                    Priority::Warning,
                    format!("smtp: accepting clients again (after {failures} failed attempt(s))"),
                );
            }
            self.admit(stream, &mut next);
        }
    }

    /// Hands `stream` to the next worker, or refuses it at a limit.
    fn admit(&self, stream: TcpStream, next: &mut usize) {
        let Ok(peer) = stream.peer_addr() else {
            return;
        };
        let admission = match self.open.admit(peer.ip(), &self.config) {
            Ok(admission) => admission,
            Err(limit) => return self.refuse(stream, limit),
        };
        let config = Arc::clone(&self.config);
        let store = Arc::clone(&self.store);
        let remote = &self.remotes[*next % self.remotes.len()];
        *next += 1;
        worker::post(remote, move |w| {
            session::start_session(w, stream, config, admission, store, commands::process)
        });
    }

    /// A client over a connection limit: `421`, then closed, without
    /// blocking the acceptor.
    fn refuse(&self, mut stream: TcpStream, limit: ConnectionLimit) {
        Counters::bump(&self.host.counters.connections_refused);
        let line = match limit {
            ConnectionLimit::Total(n) => {
                format!("421 4.7.0 {} too busy: {n} sessions are open, try again later\r\n", self.config.hostname)
            }
            ConnectionLimit::PerAddress(n) => format!(
                "421 4.7.0 {} too many sessions from your address (at most {n}), try again later\r\n",
                self.config.hostname
            ),
        };
        if stream.set_nonblocking(true).is_ok() {
            let _ = stream.write(line.as_bytes());
        }
    }

    fn log(&self, priority: Priority, text: String) {
        self.host.log.write(None, priority, Source::Host, text);
    }
}

/// An accept error that means the process or the system lacks resources
/// (descriptors, memory): accepting again at once would fail again.
fn lacks_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
