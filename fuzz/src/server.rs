//! The server under test: one `Host` (no plugins, one worker) serving SMTP
//! on a loopback port, started once per fuzzing process.
//!
//! One worker puts every session of an input on the same event loop, so
//! sessions that overlap (the linger flag) interleave there, and a worker
//! that dies or hangs shows at once: the next fresh connection gets no
//! greeting.

use mq_host::smtp_in::{Listener, ServeConfig};
use mq_host::Host;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Small, so that a few hundred bytes of input reach the `552` path.
pub const MAX_MESSAGE_SIZE: usize = 256;

/// Short, so that the `421` idle path costs an input only this long (a
/// quarter of random flag bytes ask for it).
pub const IDLE_TIMEOUT: Duration = Duration::from_millis(5);

/// A running server and what a client needs to talk to it.
pub struct Server {
    /// The host (for its counters and log).
    pub host: Host,
    /// Where it listens.
    pub addr: SocketAddr,
    /// A client configuration that trusts the server's certificate.
    pub client_tls: Arc<rustls::ClientConfig>,
    /// Its data directory (accepted messages land here).
    pub data_dir: PathBuf,
    _listener: Listener,
}

static DATA_DIR: OnceLock<PathBuf> = OnceLock::new();

impl Server {
    /// Starts the host and serves on an ephemeral loopback port.
    pub fn start() -> Server {
        ignore_sigpipe();
        let data_dir = scratch_dir();
        let _ = DATA_DIR.set(data_dir.clone());
        // SAFETY: `remove_data_dir` is an `extern "C" fn()` that does not
        // unwind (it catches panics); registering it has no other effect.
        unsafe { libc::atexit(remove_data_dir) };
        let (server_tls, client_tls) = tls_pair(&data_dir);
        let host = Host::builder()
            .workers(1)
            .start()
            .expect("a host without plugins starts");
        let config = ServeConfig {
            data_dir: data_dir.clone(),
            hostname: "fuzz.invalid".to_owned(),
            max_message_size: MAX_MESSAGE_SIZE,
            idle_timeout: IDLE_TIMEOUT,
            tls: Some(server_tls),
            // AUTH stays reachable on plain sessions, for the fuzzer.
            auth_insecure: true,
            ..Default::default()
        };
        let socket = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let listener = host.serve(socket, config).expect("serve starts");
        Server {
            addr: listener.local_addr(),
            host,
            client_tls,
            data_dir,
            _listener: listener,
        }
    }

    /// Removes the messages stored so far (the queue directories' files;
    /// temporary files being written are left alone).
    pub fn prune_messages(&self) {
        for queue in ["inbox", "local", "refused"] {
            let Ok(entries) = std::fs::read_dir(self.data_dir.join(queue)) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_name().to_string_lossy().starts_with('.') {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// The host's last twenty log records, for a report.
    pub fn recent_log(&self) -> String {
        let log = self.host.log();
        let start = log.len().saturating_sub(20);
        log[start..]
            .iter()
            .map(|r| format!("{:?} {}\n", r.priority, r.text))
            .collect()
    }
}

/// Writes to a socket the peer has closed fail with `EPIPE` instead of
/// killing the process, as under a Rust `main` (which sets this before
/// `main` runs; libFuzzer's `main` is C++ and does not). Needed: rustls
/// writes TLS records with `writev`, which, unlike std's `send`, is not
/// called with `MSG_NOSIGNAL`.
fn ignore_sigpipe() {
    // SAFETY: installs the standard `SIG_IGN` disposition for one signal,
    // before any thread of ours runs; no handler code is involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// A fresh data directory, on tmpfs where there is one: the server
/// fsyncs every message it accepts, which on a disk costs milliseconds.
/// Directories left by crashed runs (their process is gone) are removed.
fn scratch_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    remove_stale(&base);
    let dir = base.join(format!("{DIR_PREFIX}{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

const DIR_PREFIX: &str = "mq-host-fuzz-";

fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

extern "C" fn remove_data_dir() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(dir) = DATA_DIR.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    });
}

/// The server's TLS configuration from a fresh self-signed certificate,
/// and a client configuration that trusts exactly that certificate.
fn tls_pair(dir: &Path) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("a self-signed certificate");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).expect("cert.pem written");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("key.pem written");
    let server = mq_host::smtp_in::tls_from_pem(&cert, &key).expect("the server TLS config");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(certified.cert.der().clone())
        .expect("the certificate as a root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, Arc::new(client))
}

/// How many file descriptors this process has open (server sockets
/// included: a session that never ends keeps one).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}
