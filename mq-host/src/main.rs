//! The `mq-host` command: run MailerQ plugins outside MailerQ.

use clap::{Parser, Subcommand, ValueEnum};
use mq_host::delivery::{self, DeliveryConfig, Outbox, Status, Until};
use mq_host::{Direction, Host, HostMode, LogEcho, PluginInfo, PluginKind};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// An open MailerQ plugin host: loads C and Rust plugins and runs their
/// hooks with MailerQ's exact control-flow rules.
#[derive(Parser)]
#[command(name = "mq-host", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the example plugins on built-in sample messages through an SMTP
    /// session's hooks, without network. Build them first: `cargo build --workspace`.
    Demo {
        #[command(flatten)]
        host: HostArgs,
    },
    /// Feed MailerQ JSON messages (one per line) through the message hooks
    /// and write the resulting JSON, one line each.
    Run {
        #[command(flatten)]
        host: HostArgs,
        /// Incoming (SMTP session hooks) or outgoing (delivery hooks).
        #[arg(long, value_enum, default_value_t = DirectionArg::In)]
        direction: DirectionArg,
        /// Input file; `-` or nothing for standard input.
        input: Option<PathBuf>,
        /// Output file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Serve SMTP with the plugins' smtp_in_* hooks; accepted messages are
    /// stored under --data-dir and, with --relay, delivered with the
    /// smtp_out_* hooks. Without --plugins/--plugin: the example plugins.
    Serve {
        #[command(flatten)]
        host: HostArgs,
        /// Deliver the outbox (DATA-DIR/inbox) to this SMTP relay
        /// (host:port); without it, accepted messages wait there.
        #[arg(long)]
        relay: Option<String>,
        #[command(flatten)]
        delivery: DeliveryArgs,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:2525")]
        listen: std::net::SocketAddr,
        /// Directory for accepted messages (inbox/, local/, refused/).
        #[arg(long, default_value = "mq-data")]
        data_dir: PathBuf,
        /// Name in the greeting.
        #[arg(long, default_value = "localhost")]
        hostname: String,
        /// Largest message accepted, in bytes.
        #[arg(long, default_value_t = 25 * 1024 * 1024)]
        max_message_size: usize,
        /// Seconds an idle client may stay connected.
        #[arg(long, default_value_t = 300)]
        idle_timeout: u64,
        /// PEM certificate chain for STARTTLS (with --tls-key); without it a
        /// self-signed development certificate is generated.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for STARTTLS.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Do not offer STARTTLS.
        #[arg(long, conflicts_with = "tls_cert")]
        no_tls: bool,
        /// Seconds open sessions may take to finish after SIGINT/SIGTERM
        /// (SIGUSR1 prints the counters).
        #[arg(long, default_value_t = 10)]
        grace: u64,
    },
    /// Deliver MailerQ JSON messages (one per line) to an SMTP relay with
    /// the smtp_out_* hooks; print each final result as a JSON line and a
    /// progress line on stderr. Without --plugins/--plugin: the example
    /// plugins.
    Deliver {
        #[command(flatten)]
        host: HostArgs,
        /// The SMTP relay (host:port).
        #[arg(long)]
        relay: String,
        #[command(flatten)]
        delivery: DeliveryArgs,
        /// Keep the outbox and results here (inbox/, success/, failures/,
        /// retry/); default: a temporary directory, removed at the end.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Input file; `-` for standard input.
        input: PathBuf,
        /// Output file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Show what plugin files are: name, version, API version, ABI check,
    /// and the hooks each defines. Runs nothing but `mq_version`.
    Inspect {
        /// Plugin files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print abi_stable's full report for an ABI mismatch.
        #[arg(short, long)]
        verbose: bool,
    },
}

#[derive(clap::Args)]
struct HostArgs {
    /// Load every shared object in this directory, in byte order of name.
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// Load this plugin file (repeatable; after the directory's).
    #[arg(long = "plugin")]
    plugin_files: Vec<PathBuf>,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Seconds a plugin may hold control before the host reports it and
    /// goes on; 0 for no limit.
    #[arg(long, default_value_t = 60.0)]
    hold_deadline: f64,
    /// Retries a chain may make before it is cut.
    #[arg(long, default_value_t = 100)]
    retry_limit: u32,
    /// Give Rust plugins only the global MQ_* symbols, as MailerQ does.
    #[arg(long)]
    global_symbols_only: bool,
    /// Do not print the log to stderr.
    #[arg(short, long)]
    quiet: bool,
    /// How the log is printed to stderr: text lines, or one JSON object
    /// per line (time, level, worker, source, seq, text).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Print the host's counters to stderr at the end.
    #[arg(long)]
    counters: bool,
}

#[derive(clap::Args)]
struct DeliveryArgs {
    /// Messages delivered at once (delivery connections).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Seconds before the first retry of a temporary failure; doubles for
    /// each further retry.
    #[arg(long, default_value_t = 60.0)]
    retry_delay: f64,
    /// The longest delay between retries, in seconds.
    #[arg(long, default_value_t = 3600.0)]
    max_retry_delay: f64,
    /// Attempts before a temporary failure becomes a failure (a message's
    /// own `maxattempts` wins).
    #[arg(long, default_value_t = 5)]
    max_attempts: u32,
    /// Seconds the relay may take for each reply.
    #[arg(long, default_value_t = 300.0)]
    reply_timeout: f64,
}

impl DeliveryArgs {
    fn config(&self, relay: String, helo: &str) -> Result<DeliveryConfig, String> {
        if helo.is_empty() || helo.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("--hostname {helo:?}: not a name to give in EHLO"));
        }
        let secs = |name: &str, v: f64| {
            Duration::try_from_secs_f64(v)
                .map_err(|_| format!("--{name} {v}: not a number of seconds"))
        };
        Ok(DeliveryConfig {
            relay,
            helo: helo.to_owned(),
            connections: self.connections.max(1),
            reply_timeout: secs("reply-timeout", self.reply_timeout)?,
            retry_delay: secs("retry-delay", self.retry_delay)?,
            max_retry_delay: secs("max-retry-delay", self.max_retry_delay)?,
            max_attempts: self.max_attempts.max(1),
            ..DeliveryConfig::default()
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum DirectionArg {
    In,
    Out,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { host } => demo(host),
        Command::Run {
            host,
            direction,
            input,
            output,
        } => run(host, direction, input, output),
        Command::Inspect { files, verbose } => return inspect(&files, verbose),
        Command::Deliver {
            host,
            relay,
            delivery,
            data_dir,
            input,
            output,
        } => delivery
            .config(relay, "localhost")
            .and_then(|config| deliver(host, config, data_dir, input, output)),
        Command::Serve {
            host,
            relay,
            delivery,
            listen,
            data_dir,
            hostname,
            max_message_size,
            idle_timeout,
            grace,
            tls_cert,
            tls_key,
            no_tls,
        } => {
            let tls = match (no_tls, tls_cert, tls_key) {
                (true, _, _) => Ok(None),
                (false, Some(cert), Some(key)) => {
                    mq_host::smtp_in::tls_from_pem(&cert, &key).map(Some)
                }
                _ => mq_host::smtp_in::self_signed_tls(&hostname).map(Some),
            };
            let tls = match tls {
                Ok(tls) => tls,
                Err(e) => {
                    eprintln!("mq-host: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let delivery = match relay.map(|r| delivery.config(r, &hostname)).transpose() {
                Ok(delivery) => delivery,
                Err(e) => {
                    eprintln!("mq-host: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let config = mq_host::smtp_in::ServeConfig {
                data_dir,
                hostname,
                max_message_size,
                idle_timeout: Duration::from_secs(idle_timeout),
                tls,
                outbox: None,
            };
            serve(host, listen, config, delivery, Duration::from_secs(grace))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mq-host: {e}");
            ExitCode::FAILURE
        }
    }
}

fn start(args: &HostArgs, dir: Option<&Path>) -> Result<Host, String> {
    let hold_deadline = match args.hold_deadline {
        0.0 => None,
        v => Some(Duration::try_from_secs_f64(v).map_err(|_| {
            format!("--hold-deadline {v}: not a number of seconds (0 for no limit)")
        })?),
    };
    let mut builder = Host::builder()
        .workers(args.workers)
        .retry_limit(args.retry_limit)
        .hold_deadline(hold_deadline)
        .log_echo(match (args.quiet, args.log_format) {
            (true, _) => LogEcho::None,
            (false, LogFormat::Text) => LogEcho::Stderr,
            (false, LogFormat::Json) => LogEcho::StderrJson,
        });
    if args.global_symbols_only {
        builder = builder.mode(HostMode::GlobalSymbolsOnly);
    }
    if let Some(dir) = dir.or(args.plugins.as_deref()) {
        builder = builder.plugin_dir(dir);
    }
    for file in &args.plugin_files {
        builder = builder.plugin_file(file);
    }
    builder.start().map_err(|e| e.to_string())
}

fn finish(host: Host, args: &HostArgs) {
    let report = host.shutdown();
    if args.counters {
        eprintln!("counters:\n{}", report.counters);
    }
}

/// Blocks SIGINT and SIGTERM in this thread and every thread started after
/// it, so that `wait_for_stop` receives them synchronously.
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: plain signal-set manipulation on a zeroed set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for SIGINT or SIGTERM (returns its name); prints the counters on
/// each SIGUSR1 meanwhile.
fn wait_for_stop(set: &libc::sigset_t, host: &Host) -> &'static str {
    loop {
        let mut signal = 0;
        // SAFETY: `set` holds the blocked signals; sigwait writes one to `signal`.
        unsafe { libc::sigwait(set, &mut signal) };
        match signal {
            libc::SIGINT => return "SIGINT",
            libc::SIGTERM => return "SIGTERM",
            _ => eprintln!("counters:\n{}", host.counters()),
        }
    }
}

fn serve(
    args: HostArgs,
    listen: std::net::SocketAddr,
    mut config: mq_host::smtp_in::ServeConfig,
    delivery: Option<DeliveryConfig>,
    grace: Duration,
) -> Result<(), String> {
    let signals = block_stop_signals();
    let examples = ExamplePlugins::unless_given(&args)?;
    let host = start(&args, examples.as_ref().map(|e| e.dir.as_path()))?;
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let data_dir = config.data_dir.clone();
    // The outbox is opened (and its directory locked) even without a
    // relay; only with one are stored messages queued for delivery.
    let (opened, pickup) = Outbox::open(&data_dir)
        .map_err(|e| format!("cannot open the outbox in {}: {e}", data_dir.display()))?;
    let delivering = delivery.map(|d| (opened.clone(), d));
    config.outbox = delivering.as_ref().map(|(outbox, _)| outbox.clone());
    let server = host
        .serve(listener, config)
        .map_err(|e| format!("cannot serve: {e}"))?;
    eprintln!(
        "mq-host: serving SMTP on {} with {} plugin(s); messages go to {}{}",
        server.local_addr(),
        host.plugins().len(),
        data_dir.display(),
        if delivering.is_none() {
            format!(
                " (no --relay: they wait in inbox/, {} there now)",
                pickup.waiting
            )
        } else {
            String::new()
        }
    );
    if let Some((_, d)) = &delivering {
        eprintln!(
            "mq-host: outbox {}: {} message(s) waiting{}; delivering to {} with {} connection(s)",
            data_dir.join("inbox").display(),
            pickup.waiting,
            if pickup.finished > 0 {
                format!(
                    ", {} already delivered before a restart (removed)",
                    pickup.finished
                )
            } else {
                String::new()
            },
            d.relay,
            d.connections
        );
    }
    std::thread::scope(|scope| {
        if let Some((outbox, delivery)) = &delivering {
            let host = &host;
            scope.spawn(move || {
                delivery::run(host, outbox, delivery, Until::Stopped, &|_| {});
            });
        }
        let signal = wait_for_stop(&signals, &host);
        eprintln!("mq-host: {signal}: no new connections; open sessions get {grace:?} to finish");
        let cut = server.shutdown(grace);
        if cut > 0 {
            eprintln!("mq-host: {cut} session(s) did not finish in time and were told 421");
        }
        if let Some((outbox, _)) = &delivering {
            eprintln!(
                "mq-host: finishing the deliveries on their way (up to {grace:?}); {} message(s) in the outbox",
                outbox.pending()
            );
            let cut = outbox.stop_within(grace);
            if cut > 0 {
                eprintln!("mq-host: {cut} delivery(ies) cut short; they stay in the outbox for the next start");
            }
        }
    });
    finish(host, &args);
    eprintln!("mq-host: stopped");
    Ok(())
}

/// `mq-host deliver`: the file's messages into an outbox, delivered until
/// each has its final result.
fn deliver(
    args: HostArgs,
    config: DeliveryConfig,
    data_dir: Option<PathBuf>,
    input: PathBuf,
    output: Option<PathBuf>,
) -> Result<(), String> {
    let text = if input == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        text
    } else {
        std::fs::read_to_string(&input)
            .map_err(|e| format!("cannot read {}: {e}", input.display()))?
    };
    let mut writer: Box<dyn Write + Send> = match &output {
        None => Box::new(std::io::stdout()),
        Some(p) => Box::new(
            std::fs::File::create(p)
                .map_err(|e| format!("cannot create output {}: {e}", p.display()))?,
        ),
    };
    let temporary = data_dir.is_none();
    let data_dir = data_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("mq-host-deliver-{}", std::process::id()))
    });
    let (outbox, pickup) = Outbox::open(&data_dir)
        .map_err(|e| format!("cannot open the outbox in {}: {e}", data_dir.display()))?;
    let examples = ExamplePlugins::unless_given(&args)?;
    let host = start(&args, examples.as_ref().map(|e| e.dir.as_path()))?;
    let mut invalid = 0;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let error = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(message @ serde_json::Value::Object(_)) => match outbox.add(&message) {
                Ok(_) => continue,
                Err(e) => format!("cannot store it in the outbox: {e}"),
            },
            Ok(_) => "a MailerQ message must be a JSON object".to_owned(),
            Err(e) => format!("not JSON: {e}"),
        };
        invalid += 1;
        let line = serde_json::json!({"error": format!("line {}: {error}", n + 1), "line": n + 1});
        writeln!(writer, "{line}").map_err(|e| format!("cannot write a result: {e}"))?;
    }
    let total = outbox.pending();
    if pickup.waiting > 0 {
        eprintln!(
            "mq-host: {} message(s) from an earlier run in {} are delivered too",
            pickup.waiting,
            data_dir.join("inbox").display()
        );
    }
    let progress = Progress::new(total);
    let writer = std::sync::Mutex::new(writer);
    let write_error = std::sync::Mutex::new(None);
    delivery::run(&host, &outbox, &config, Until::Empty, &|outcome| {
        progress.record(outcome.status);
        if outcome.status != Status::Retry {
            let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = writeln!(w, "{}", outcome.result).and_then(|_| w.flush()) {
                write_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(e.to_string());
            }
        }
    });
    progress.finish();
    finish(host, &args);
    let left = outbox.pending_files();
    drop(outbox);
    if left > 0 {
        return Err(format!(
            "{left} message(s) got no final result (see the log) and stay in {}",
            data_dir.join("inbox").display()
        ));
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    if let Some(e) = write_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(format!("cannot write a result: {e}"));
    }
    let failed = progress.failed() + invalid;
    if failed > 0 {
        return Err(format!("{failed} message(s) not delivered"));
    }
    Ok(())
}

/// The progress line of `mq-host deliver` (stderr; redrawn in place on a
/// terminal, a line per second otherwise).
struct Progress {
    total: usize,
    state: std::sync::Mutex<ProgressState>,
    terminal: bool,
}

#[derive(Default)]
struct ProgressState {
    success: usize,
    failure: usize,
    retries: usize,
    printed: Option<std::time::Instant>,
}

impl Progress {
    fn new(total: usize) -> Progress {
        use std::io::IsTerminal;
        Progress {
            total,
            state: Default::default(),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn record(&self, status: Status) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match status {
            Status::Success => state.success += 1,
            Status::Failure => state.failure += 1,
            Status::Retry => state.retries += 1,
        }
        // The last one is printed by `finish`.
        let last = state.success + state.failure == self.total;
        let due = !last
            && state
                .printed
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if (self.terminal && !last) || due {
            state.printed = Some(std::time::Instant::now());
            self.print(&state, false);
        }
    }

    fn print(&self, state: &ProgressState, last: bool) {
        let line = format!(
            "deliver: {}/{} done: {} delivered, {} failed; {} retr{} so far",
            state.success + state.failure,
            self.total,
            state.success,
            state.failure,
            state.retries,
            if state.retries == 1 { "y" } else { "ies" }
        );
        // A closed stderr must not stop the delivery.
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal {
            write!(err, "\r\x1b[K{line}{}", if last { "\n" } else { "" })
        } else {
            writeln!(err, "{line}")
        };
    }

    fn finish(&self) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.print(&state, true);
    }

    fn failed(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).failure
    }
}

fn run(
    args: HostArgs,
    direction: DirectionArg,
    input: Option<PathBuf>,
    output: Option<PathBuf>,
) -> Result<(), String> {
    if args.plugins.is_none() && args.plugin_files.is_empty() {
        return Err("no plugins: give --plugins DIR or --plugin FILE".into());
    }
    let host = start(&args, None)?;
    let direction = match direction {
        DirectionArg::In => Direction::Incoming,
        DirectionArg::Out => Direction::Outgoing,
    };
    let reader: Box<dyn std::io::BufRead> = match input.as_deref() {
        None => Box::new(std::io::stdin().lock()),
        Some(p) if p == Path::new("-") => Box::new(std::io::stdin().lock()),
        Some(p) => {
            Box::new(BufReader::new(std::fs::File::open(p).map_err(|e| {
                format!("cannot open input {}: {e}", p.display())
            })?))
        }
    };
    let writer: Box<dyn Write> = match &output {
        None => Box::new(std::io::stdout().lock()),
        Some(p) => Box::new(
            std::fs::File::create(p)
                .map_err(|e| format!("cannot create output {}: {e}", p.display()))?,
        ),
    };
    let summary =
        mq_host::runmode::run_jsonl(&host, direction, reader, writer).map_err(|e| e.to_string())?;
    eprintln!(
        "mq-host: {} message(s): {} accepted, {} refused, {} error(s)",
        summary.messages, summary.accepted, summary.refused, summary.errors
    );
    finish(host, &args);
    Ok(())
}

/// The example plugins, in the order they load.
const EXAMPLE_PLUGINS: [(&str, &str); 4] = [
    ("10-c-allowlist.so", "libmq_example_c_allowlist.so"),
    ("20-allowlist.so", "libmq_example_allowlist.so"),
    ("30-stamp.so", "libmq_example_stamp.so"),
    ("40-out-trace.so", "libmq_example_out_trace.so"),
];

/// A temporary plugin directory with the example plugins (links to the
/// libraries built next to this executable); removed on drop.
struct ExamplePlugins {
    dir: PathBuf,
}

impl ExamplePlugins {
    fn link() -> Result<ExamplePlugins, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
        let built = exe.parent().ok_or("this executable has no directory")?;
        let dir = std::env::temp_dir().join(format!("mq-host-examples-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let examples = ExamplePlugins { dir };
        for (name, library) in EXAMPLE_PLUGINS {
            let source = built.join(library);
            if !source.is_file() {
                return Err(format!(
                    "example plugin {} is not built next to this executable; run \
                     `cargo build --workspace`, or give --plugins DIR or --plugin FILE",
                    source.display()
                ));
            }
            let link = examples.dir.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&source, &link).map_err(|e| {
                format!(
                    "cannot link {} to {}: {e}",
                    link.display(),
                    source.display()
                )
            })?;
        }
        Ok(examples)
    }

    /// The example plugins, unless `args` name plugins.
    fn unless_given(args: &HostArgs) -> Result<Option<ExamplePlugins>, String> {
        if args.plugins.is_some() || !args.plugin_files.is_empty() {
            return Ok(None);
        }
        let examples = ExamplePlugins::link()?;
        eprintln!("mq-host: no --plugins/--plugin: loading the example plugins");
        Ok(Some(examples))
    }
}

impl Drop for ExamplePlugins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const DEMO_MESSAGES: &str = include_str!("demo-messages.jsonl");

fn demo(args: HostArgs) -> Result<(), String> {
    let examples = ExamplePlugins::link()?;
    let host = start(&args, Some(&examples.dir))?;
    eprintln!(
        "mq-host demo: {} plugin(s), {} worker(s); sample messages in, results out:",
        host.plugins().len(),
        host.workers()
    );
    let summary = mq_host::runmode::run_jsonl(
        &host,
        Direction::Incoming,
        DEMO_MESSAGES.as_bytes(),
        std::io::stdout().lock(),
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "mq-host demo: {} message(s): {} accepted, {} refused, {} error(s)",
        summary.messages, summary.accepted, summary.refused, summary.errors
    );
    finish(host, &args);
    Ok(())
}

fn inspect(files: &[PathBuf], verbose: bool) -> ExitCode {
    let mut failed = false;
    for file in files {
        match mq_host::inspect(file) {
            Ok(info) => print_info(&info),
            Err(e) => {
                failed = true;
                eprintln!("mq-host: {e}");
                if let (true, Some(report)) = (verbose, e.report()) {
                    eprintln!("{report}");
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_info(info: &PluginInfo) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", info.file.display());
    let _ = writeln!(out, "  name:        {}", info.name);
    if let Some(p) = &info.package {
        let _ = writeln!(out, "  package:     {p}");
    }
    if let Some(v) = &info.version {
        let _ = writeln!(out, "  version:     {v}");
    }
    if let Some(d) = &info.description {
        let _ = writeln!(out, "  description: {d}");
    }
    let _ = writeln!(out, "  api version: {}", info.api_version);
    let kind = match &info.kind {
        PluginKind::Rust { framework_abi } => {
            format!("Rust (mq-plugin, framework ABI {framework_abi}; ABI check passed)")
        }
        PluginKind::RustWithoutRootModule => "Rust (root module not checked)".to_owned(),
        PluginKind::C => "C (no root module)".to_owned(),
    };
    let _ = writeln!(out, "  kind:        {kind}");
    let _ = writeln!(out, "  hooks:");
    for hook in &info.hooks {
        let note = match &info.authored_hooks {
            Some(authored) if !authored.contains(hook) => " (framework housekeeping)",
            _ => "",
        };
        let control = if hook.may_take_control {
            "may take control"
        } else {
            "lifecycle"
        };
        let _ = writeln!(out, "    {:<22} {control}{note}", hook.symbol);
    }
}
