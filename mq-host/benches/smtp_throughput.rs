//! SMTP throughput: `mq-host serve` against postfix's `smtp-sink`.
//!
//! `cargo bench -p mq-host --bench smtp_throughput` drives each server with
//! postfix's `smtp-source` (~2.4 KB messages, one recipient each) under
//! three loads and prints, per load, messages per second (wall clock) and
//! messages per server CPU-second (the server's utime+stime from
//! `/proc/PID/stat`, read after it is listening and again after the load),
//! then mq-host's numbers as a ratio of smtp-sink's. The servers:
//!
//! - `smtp-sink`: postfix's C test server: no plugins, no storage;
//! - `mq-host serve` (release build) with the `allowlist` and `stamp`
//!   example plugins, its data directory on tmpfs (`/dev/shm`), and again
//!   on disk (under `target/`): every accepted message is durable (written,
//!   fsynced, renamed) before its `250`.
//!
//! `smtp-sink` and `smtp-source` come from Debian's `postfix` package,
//! fetched with `apt-get download postfix` and unpacked with `dpkg -x` into
//! `target/postfix-tools/` the first time (never installed system-wide).
//! The bench builds `mq-host` and the two plugins with
//! `cargo build --release` itself.
//!
//! Not a test: the numbers depend on the machine. `--quick` sends a few
//! hundred messages per load (a smoke run that checks that everything
//! works). Options:
//!
//! - `--messages N`: messages per new-connection load (default 10,000;
//!   the third load always sends 1,000 per connection);
//! - `--rounds N`: runs per load and server (default 3); the table shows
//!   the median round by messages per CPU-second;
//! - `--only sink|tmpfs|disk`: one server only;
//! - `--mq-host PATH`: this `mq-host` binary instead of building one (to
//!   compare two builds; the plugins still come from `target/release`).

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `smtp-source` load.
#[derive(Clone, Copy)]
struct Load {
    name: &'static str,
    sessions: u32,
    /// Messages in all.
    messages: u32,
    /// Keep the connection for the next message (`smtp-source -d`).
    keep_connection: bool,
}

/// A server under test.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Sink,
    MqHostTmpfs,
    MqHostDisk,
}

impl Server {
    const ALL: [Server; 3] = [Server::Sink, Server::MqHostTmpfs, Server::MqHostDisk];

    fn name(self) -> &'static str {
        match self {
            Server::Sink => "smtp-sink",
            Server::MqHostTmpfs => "mq-host (tmpfs)",
            Server::MqHostDisk => "mq-host (disk)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Server::Sink => "sink",
            Server::MqHostTmpfs => "tmpfs",
            Server::MqHostDisk => "disk",
        }
    }
}

/// What one run measured.
#[derive(Clone, Copy)]
struct Measured {
    messages: u32,
    wall: Duration,
    cpu: Duration,
}

impl Measured {
    fn per_second(&self) -> f64 {
        f64::from(self.messages) / self.wall.as_secs_f64()
    }

    /// None when the server used less CPU than `/proc` shows (a tick).
    fn per_cpu_second(&self) -> Option<f64> {
        (!self.cpu.is_zero()).then(|| f64::from(self.messages) / self.cpu.as_secs_f64())
    }
}

/// The workspace's paths.
struct Paths {
    workspace: PathBuf,
    target: PathBuf,
    tools: PathBuf,
    /// The `mq-host` binary under test.
    host: PathBuf,
}

impl Paths {
    fn find() -> Paths {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("mq-host is in the workspace")
            .to_path_buf();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"));
        let tools = target.join("postfix-tools");
        let host = target.join("release/mq-host");
        Paths {
            workspace,
            target,
            tools,
            host,
        }
    }

    fn sbin(&self, tool: &str) -> PathBuf {
        self.tools.join("root/usr/sbin").join(tool)
    }

    fn postfix_libs(&self) -> PathBuf {
        self.tools.join("root/usr/lib/postfix")
    }

    fn release(&self, file: &str) -> PathBuf {
        self.target.join("release").join(file)
    }
}

fn run(cmd: &mut Command, what: &str) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(status.success(), "{what} failed: {status}");
}

/// Fetches and unpacks postfix into `target/postfix-tools/` unless there.
fn postfix_tools(paths: &Paths) {
    if paths.sbin("smtp-sink").exists() && paths.sbin("smtp-source").exists() {
        return;
    }
    eprintln!(
        "fetching postfix (apt-get download) into {}",
        paths.tools.display()
    );
    fs::create_dir_all(&paths.tools).expect("postfix-tools directory");
    run(
        Command::new("apt-get")
            .args(["download", "postfix"])
            .current_dir(&paths.tools),
        "apt-get download postfix",
    );
    let deb = fs::read_dir(&paths.tools)
        .expect("postfix-tools directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("apt-get download left a .deb");
    run(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(paths.tools.join("root")),
        "dpkg-deb -x",
    );
}

/// Builds the release `mq-host` and the two example plugins.
fn build_host(paths: &Paths) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Cargo sets these for the bench; build scripts (ring's) watch some of
    // them, and passed on they would rebuild the host on every run.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&name.as_ref())
            || name == "OUT_DIR"
            || name == "CARGO_TARGET_TMPDIR"
        {
            cmd.env_remove(name.as_ref());
        }
    }
    // Two builds: `--bin` applies to every `-p` of one command, and the
    // plugins have no binary (their `.so` would not be built).
    let mut plugins = Command::new(cmd.get_program());
    for (name, value) in cmd.get_envs() {
        match value {
            Some(value) => plugins.env(name, value),
            None => plugins.env_remove(name),
        };
    }
    run(
        cmd.args(["build", "--release", "-p", "mq-host", "--bin", "mq-host"])
            .current_dir(&paths.workspace),
        "cargo build --release -p mq-host",
    );
    run(
        plugins
            .args(["build", "--release"])
            .args(["-p", "mq-example-allowlist", "-p", "mq-example-stamp"])
            .current_dir(&paths.workspace),
        "cargo build --release (the plugins)",
    );
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

/// utime + stime of a whole process (every thread, live or ended).
fn cpu_time(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The command name (field 2) may hold spaces: count after its `)`.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

fn wait_listening(addr: SocketAddr, server: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        if let Some(status) = server.try_wait().expect("server status") {
            panic!("the server ended before listening: {status}");
        }
        assert!(Instant::now() < deadline, "the server never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Starts `server` on `addr`; for mq-host, with its data in `data_dir`.
fn start(paths: &Paths, server: Server, addr: SocketAddr, data_dir: &Path) -> Child {
    let mut cmd = match server {
        Server::Sink => {
            let mut cmd = Command::new(paths.sbin("smtp-sink"));
            cmd.env("LD_LIBRARY_PATH", paths.postfix_libs());
            if is_root() {
                // smtp-sink refuses to run as root without a user to become.
                cmd.args(["-u", "nobody"]);
            }
            cmd.arg(addr.to_string()).arg("1024");
            cmd
        }
        Server::MqHostTmpfs | Server::MqHostDisk => {
            let mut cmd = Command::new(&paths.host);
            cmd.arg("serve")
                .arg("--plugin")
                .arg(paths.release("libmq_example_allowlist.so"))
                .arg("--plugin")
                .arg(paths.release("libmq_example_stamp.so"))
                .args(["--quiet", "--no-tls", "--grace", "1"])
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--data-dir")
                .arg(data_dir);
            cmd
        }
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", server.name()));
    // Keep draining stderr so the server never blocks on it.
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if std::env::var_os("MQ_BENCH_VERBOSE").is_some() {
                eprintln!("  server: {line}");
            }
        }
    });
    wait_listening(addr, &mut child);
    child
}

fn stop(mut child: Child) {
    // SAFETY: kill on the pid of our own child, which has not been reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("server status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stored messages under `data_dir/inbox`.
fn stored(data_dir: &Path) -> u32 {
    fs::read_dir(data_dir.join("inbox"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count() as u32
        })
        .unwrap_or(0)
}

fn measure(paths: &Paths, server: Server, load: Load) -> Measured {
    let addr = free_port();
    let data_dir = match server {
        Server::MqHostTmpfs => PathBuf::from(format!("/dev/shm/mq-bench-{}", std::process::id())),
        _ => paths
            .target
            .join(format!("mq-bench-data-{}", std::process::id())),
    };
    let _ = fs::remove_dir_all(&data_dir);
    let mut child = start(paths, server, addr, &data_dir);
    // Let the start-up (and the probing connection) settle.
    std::thread::sleep(Duration::from_millis(200));
    let pid = child.id();
    let cpu_before = cpu_time(pid);
    let started = Instant::now();
    let mut source = Command::new(paths.sbin("smtp-source"));
    source
        .env("LD_LIBRARY_PATH", paths.postfix_libs())
        .args(["-M", "localhost", "-f", "bench@example.com"])
        .args(["-t", "rcpt@example.com", "-l", "2400"])
        .arg("-s")
        .arg(load.sessions.to_string())
        .arg("-m")
        .arg(load.messages.to_string());
    if load.keep_connection {
        source.arg("-d");
    }
    let status = source
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .status()
        .expect("run smtp-source");
    let wall = started.elapsed();
    let cpu = cpu_time(pid) - cpu_before;
    if let Some(status) = child.try_wait().expect("server status") {
        panic!("{} ended during the load: {status}", server.name());
    }
    stop(child);
    assert!(
        status.success(),
        "smtp-source against {} failed: {status}",
        server.name()
    );
    if server != Server::Sink {
        let kept = stored(&data_dir);
        assert_eq!(
            kept,
            load.messages,
            "{}: {kept} of {} messages stored",
            server.name(),
            load.messages
        );
    }
    let _ = fs::remove_dir_all(&data_dir);
    Measured {
        messages: load.messages,
        wall,
        cpu,
    }
}

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let per_load: u32 = arg_value(&args, "--messages")
        .map(|n| n.parse().expect("--messages N"))
        .unwrap_or(if quick { 200 } else { 10_000 });
    let per_connection: u32 = if quick { 20 } else { 1_000 };
    let only = arg_value(&args, "--only");
    let servers: Vec<Server> = Server::ALL
        .into_iter()
        .filter(|s| only.as_deref().is_none_or(|o| o == s.key()))
        .collect();
    assert!(!servers.is_empty(), "--only takes sink, tmpfs or disk");
    let loads = [
        Load {
            name: "10 sessions, new connection per message",
            sessions: 10,
            messages: per_load,
            keep_connection: false,
        },
        Load {
            name: "50 sessions, new connection per message",
            sessions: 50,
            messages: per_load,
            keep_connection: false,
        },
        Load {
            name: "10 sessions, messages per connection",
            sessions: 10,
            messages: 10 * per_connection,
            keep_connection: true,
        },
    ];

    let rounds: usize = arg_value(&args, "--rounds")
        .map(|n| n.parse().expect("--rounds N"))
        .unwrap_or(if quick { 1 } else { 3 });
    assert!(rounds > 0, "--rounds takes at least 1");

    let mut paths = Paths::find();
    postfix_tools(&paths);
    match arg_value(&args, "--mq-host") {
        Some(host) => paths.host = PathBuf::from(host),
        None if servers != [Server::Sink] => build_host(&paths),
        None => {}
    }

    let mut results = Vec::new();
    for load in loads {
        for &server in &servers {
            let mut runs: Vec<Measured> = (0..rounds)
                .map(|_| {
                    let m = measure(&paths, server, load);
                    eprintln!(
                        "{:<42} {:<16} {:>6} msgs in {:>7.3} s wall, {:>7.3} s server CPU",
                        load.name,
                        server.name(),
                        m.messages,
                        m.wall.as_secs_f64(),
                        m.cpu.as_secs_f64()
                    );
                    m
                })
                .collect();
            // The median round by messages per CPU-second.
            runs.sort_by(|a, b| {
                let key = |m: &Measured| m.per_cpu_second().unwrap_or(0.0);
                key(a).total_cmp(&key(b))
            });
            results.push((load, server, runs[runs.len() / 2]));
        }
    }
    print_table(&loads, &servers, &results, per_connection);
    if quick {
        println!("(--quick: too few messages for the CPU times to mean much; /proc counts in ticks of 10 ms)");
    }
}

/// `value` with `decimals` and its unit, or `n/a`.
fn show(value: Option<(f64, &str)>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".into(), |(v, unit)| format!("{v:.decimals$}{unit}"))
}

fn print_table(
    loads: &[Load],
    servers: &[Server],
    results: &[(Load, Server, Measured)],
    per_connection: u32,
) {
    let find = |load: &Load, server: Server| {
        results
            .iter()
            .find(|(l, s, _)| l.name == load.name && *s == server)
            .map(|r| r.2)
    };
    println!();
    println!("messages per server CPU-second (messages per second); ratio = mq-host / smtp-sink per CPU-second");
    print!("| load |");
    for s in servers {
        print!(" {} |", s.name());
    }
    for s in servers.iter().filter(|s| **s != Server::Sink) {
        if servers.contains(&Server::Sink) {
            print!(" ratio {} |", s.key());
        }
    }
    println!();
    print!("|---|");
    let columns = servers.len()
        + if servers.contains(&Server::Sink) {
            servers.len() - 1
        } else {
            0
        };
    for _ in 0..columns {
        print!("---:|");
    }
    println!();
    for load in loads {
        let name = if load.keep_connection {
            format!("10 sessions, {per_connection} messages per connection")
        } else {
            load.name.to_string()
        };
        print!("| {name} |");
        for &s in servers {
            let m = find(load, s).expect("measured");
            print!(
                " {} ({:.0}/s) |",
                show(m.per_cpu_second().map(|v| (v, "")), 0),
                m.per_second()
            );
        }
        if let Some(sink) = find(load, Server::Sink) {
            for &s in servers.iter().filter(|s| **s != Server::Sink) {
                let m = find(load, s).expect("measured");
                let ratio = m
                    .per_cpu_second()
                    .zip(sink.per_cpu_second())
                    .map(|(m, sink)| m / sink);
                print!(" {} |", show(ratio.map(|r| (r, "×")), 2));
            }
        }
        println!();
    }
}
