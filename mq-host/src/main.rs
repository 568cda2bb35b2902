//! The `mq-host` command: run MailerQ plugins outside MailerQ.

use clap::{Parser, Subcommand, ValueEnum};
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
    /// Run the example plugins (C allow-list, Rust allow-list, Rust stamp)
    /// on built-in sample messages. Build them first: `cargo build --workspace`.
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
    /// Serve SMTP with the plugins' smtp_in_* hooks (plain ESMTP with
    /// pipelining for now); accepted messages are stored under --data-dir.
    Serve {
        #[command(flatten)]
        host: HostArgs,
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
    /// Print the host's counters to stderr at the end.
    #[arg(long)]
    counters: bool,
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
        Command::Serve {
            host,
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
            let config = mq_host::smtp_in::ServeConfig {
                data_dir,
                hostname,
                max_message_size,
                idle_timeout: Duration::from_secs(idle_timeout),
                tls,
            };
            serve(host, listen, config, Duration::from_secs(grace))
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
    let mut builder = Host::builder()
        .workers(args.workers)
        .retry_limit(args.retry_limit)
        .hold_deadline(
            (args.hold_deadline > 0.0).then(|| Duration::from_secs_f64(args.hold_deadline)),
        )
        .log_echo(if args.quiet {
            LogEcho::None
        } else {
            LogEcho::Stderr
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
    config: mq_host::smtp_in::ServeConfig,
    grace: Duration,
) -> Result<(), String> {
    let signals = block_stop_signals();
    let host = start(&args, None)?;
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let data_dir = config.data_dir.clone();
    let server = host
        .serve(listener, config)
        .map_err(|e| format!("cannot serve: {e}"))?;
    eprintln!(
        "mq-host: serving SMTP on {} with {} plugin(s); messages go to {}",
        server.local_addr(),
        host.plugins().len(),
        data_dir.display()
    );
    let signal = wait_for_stop(&signals, &host);
    eprintln!("mq-host: {signal}: no new connections; open sessions get {grace:?} to finish");
    let cut = server.shutdown(grace);
    if cut > 0 {
        eprintln!("mq-host: {cut} session(s) did not finish in time and were told 421");
    }
    finish(host, &args);
    eprintln!("mq-host: stopped");
    Ok(())
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

/// The example plugins, in the order the demo loads them.
const DEMO_PLUGINS: [(&str, &str); 3] = [
    ("10-c-allowlist.so", "libmq_example_c_allowlist.so"),
    ("20-allowlist.so", "libmq_example_allowlist.so"),
    ("30-stamp.so", "libmq_example_stamp.so"),
];

const DEMO_MESSAGES: &str = include_str!("demo-messages.jsonl");

fn demo(args: HostArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let built = exe.parent().ok_or("this executable has no directory")?;
    let dir = std::env::temp_dir().join(format!("mq-host-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = (|| {
        for (name, library) in DEMO_PLUGINS {
            let source = built.join(library);
            if !source.is_file() {
                return Err(format!(
                    "example plugin {} is not built; run `cargo build --workspace` first",
                    source.display()
                ));
            }
            let link = dir.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&source, &link).map_err(|e| {
                format!(
                    "cannot link {} to {}: {e}",
                    link.display(),
                    source.display()
                )
            })?;
        }
        let host = start(&args, Some(&dir))?;
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
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
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
