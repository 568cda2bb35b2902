//! The `mq-host` command: run MailerQ plugins outside MailerQ.

mod batch;
mod config;
mod deliver;
mod inspect;
mod new;
mod serve;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use mq_host::delivery::DeliveryConfig;
use mq_host::{Host, HostMode, LogEcho};
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
        /// Read MailerQ's configuration file (`key: value` lines) for the
        /// settings mq-host implements (plugin-directory, smtp-ip,
        /// smtp-port, smtp-maxsize, smtp-timeout, smtp-connections[-in|-out],
        /// smtp-threads, smtp-certificate, smtp-key, smarthost[-port],
        /// max-attempts); MAILERQ_* variables override it, and flags given
        /// here override both. Other MailerQ settings are reported once.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
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
        #[command(flatten)]
        limits: serve::SessionLimits,
        /// Serve the host's counters in Prometheus' text format at
        /// http://ADDR/metrics (port 0: a free one, printed at start).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
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
        /// Keep the outbox and results here (inbox/, results/, success/,
        /// failures/, retry/); default: a temporary directory, removed at
        /// the end.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Input file; `-` for standard input.
        input: PathBuf,
        /// Output file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// When stderr is no terminal, the longest time between two
        /// progress lines, in seconds (there is also one at each tenth of
        /// the batch); on a terminal the line is redrawn every second.
        #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
        progress_interval: f64,
    },
    /// Create a new plugin crate in PATH (outside this repository): a
    /// cdylib depending on this checkout's mq-plugin, a hook, a passing
    /// test with mq-plugin-test, and a README. Then: `cd PATH && cargo test`.
    New {
        /// The new crate's folder (must not exist, or be empty).
        path: PathBuf,
        /// The crate's name (default: the folder's name).
        #[arg(long)]
        name: Option<String>,
        /// The mq-plugin checkout to depend on (default: the one this
        /// mq-host was built from).
        #[arg(long, value_name = "DIR")]
        checkout: Option<PathBuf>,
    },
    /// Show what plugin files are: name, version, API version, ABI check,
    /// and the hooks each defines. Runs nothing but `mq_version`; fails for
    /// a plugin whose API version is not --api-version.
    Inspect {
        /// Plugin files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The MQ_API_VERSION of the MailerQ the plugins are for.
        #[arg(long, value_name = "N", default_value_t = mq_host::hook_table::MQ_API_VERSION)]
        api_version: i32,
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
    /// Seconds a plugin may hold control before the host ends the hold and
    /// goes on with the next plugin (an mq-host option; a Rust plugin's
    /// hook is cancelled, a C plugin's late resume ignored). Default, and
    /// 0: no limit — the host waits for the resume, as MailerQ does.
    #[arg(long, value_name = "SECONDS")]
    hold_deadline: Option<f64>,
    /// Seconds between reports of a plugin that holds control without
    /// resuming (a warning naming the plugin, the hook and how long,
    /// counted in hold_reports); 0: no reports.
    #[arg(long, value_name = "SECONDS", default_value_t = mq_host::DEFAULT_HOLD_REPORT.as_secs_f64())]
    hold_report: f64,
    /// The MQ_API_VERSION this host runs as: plugins whose mq_version()
    /// returns another number are refused, as MailerQ does (set it to your
    /// MailerQ's number).
    #[arg(long, value_name = "N", default_value_t = mq_host::hook_table::MQ_API_VERSION)]
    api_version: i32,
    /// Retries a chain may make before it is cut.
    #[arg(long, default_value_t = 100)]
    retry_limit: u32,
    /// Seconds one call into a plugin (a hook, a timer or fd callback) may
    /// block its worker before the host logs a warning naming the plugin,
    /// the hook and the worker (once per call, counted in worker_stalls,
    /// with how long it took when it returns); 0 turns the watchdog off.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    stall_report: f64,
    /// Give Rust plugins only the global MQ_* symbols, as MailerQ does.
    #[arg(long)]
    global_symbols_only: bool,
    /// Do not print the log to stderr.
    #[arg(short, long)]
    quiet: bool,
    /// How the log is printed to stderr: text lines, or one JSON object
    /// per line (time, level, worker, source, seq, text). Either way a
    /// record is one line: control characters in a text are escaped
    /// (\n, \r, \t, \x1b, \u{202e}).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Print the host's counters to stderr at the end.
    #[arg(long)]
    counters: bool,
    /// Bytes the in-memory log may keep (record texts plus a fixed cost
    /// each); the oldest records are dropped beyond it (counted:
    /// log_records_evicted). Every record is still printed.
    #[arg(long, default_value_t = mq_host::DEFAULT_LOG_MAX_BYTES)]
    log_max_bytes: usize,
    /// Bytes of one log record's text (after escaping); a longer text is
    /// cut and ends with ` [... N bytes cut]` (counted: log_records_cut).
    #[arg(long, default_value_t = mq_host::DEFAULT_LOG_RECORD_MAX)]
    log_record_max: usize,
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
    /// own `maxattempts` wins); 0: no limit but --max-delivertime
    /// (MailerQ's `max-attempts`, default 0).
    #[arg(long, default_value_t = 0)]
    max_attempts: u32,
    /// Seconds after its first attempt that a message without its own
    /// `maxdelivertime` may still be tried (MailerQ's `max-delivertime`,
    /// default 86400).
    #[arg(long, default_value_t = 86_400.0)]
    max_delivertime: f64,
    /// Seconds the relay may take for each reply, all its lines together
    /// (and for taking each command); a slower reply makes the attempt a
    /// retry.
    #[arg(long, default_value_t = 300.0)]
    reply_timeout: f64,
    /// Seconds connecting to the relay may take, all its addresses
    /// together.
    #[arg(long, default_value_t = 30.0)]
    connect_timeout: f64,
    /// Seconds sending a message's data to the relay may take in all, up
    /// to the final `.`; a relay reading slower makes the attempt a retry.
    #[arg(long, default_value_t = 600.0)]
    send_timeout: f64,
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
        // A limit of 0 would fail every attempt at once.
        let limit = |name: &str, v: f64| match secs(name, v)? {
            d if d.is_zero() => Err(format!("--{name} {v}: a limit must be more than 0 seconds")),
            d => Ok(d),
        };
        Ok(DeliveryConfig {
            relay,
            helo: helo.to_owned(),
            connections: self.connections.max(1),
            reply_timeout: limit("reply-timeout", self.reply_timeout)?,
            connect_timeout: limit("connect-timeout", self.connect_timeout)?,
            send_timeout: limit("send-timeout", self.send_timeout)?,
            retry_delay: secs("retry-delay", self.retry_delay)?,
            max_retry_delay: secs("max-retry-delay", self.max_retry_delay)?,
            max_attempts: self.max_attempts,
            max_deliver_time: limit("max-delivertime", self.max_delivertime)?,
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
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Command::Serve {
        config: Some(file), ..
    } = &cli.command
    {
        let serve = matches.subcommand_matches("serve");
        let given =
            |id: &str| serve.and_then(|m| m.value_source(id)) == Some(ValueSource::CommandLine);
        let file = file.clone();
        let mut env = Vec::new();
        for (key, value) in std::env::vars_os() {
            match (key.into_string(), value.into_string()) {
                (Ok(key), Ok(value)) => env.push((key, value)),
                (Ok(key), Err(_)) if key.starts_with("MAILERQ_") => eprintln!(
                    "mq-host: config: {}: its value is not UTF-8; ignored",
                    mq_host::escape_controls(&key)
                ),
                _ => {}
            }
        }
        let read = config::read(&file, env.into_iter()).and_then(|(settings, warnings)| {
            Ok((config::check(&settings, &file)?, settings, warnings))
        });
        match read {
            Ok(((), settings, warnings)) => {
                for warning in warnings {
                    eprintln!("mq-host: config: {}", mq_host::escape_controls(&warning));
                }
                config::apply(settings, given, &mut cli.command);
            }
            Err(e) => {
                eprintln!("mq-host: config: {}", mq_host::escape_controls(&e));
                return ExitCode::FAILURE;
            }
        }
    } else if let Command::Serve { .. } = &cli.command {
        // MailerQ's variables go with its config file: say so, not nothing.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("MAILERQ_") {
                eprintln!(
                    "mq-host: {}: MailerQ's settings are read with --config FILE only; ignored",
                    mq_host::escape_controls(&key)
                );
            }
        }
    }
    let result = match cli.command {
        Command::Demo { host } => batch::demo(host),
        Command::Run {
            host,
            direction,
            input,
            output,
        } => batch::run(host, direction, input, output),
        Command::Inspect {
            files,
            verbose,
            api_version,
        } => return inspect::inspect(&files, verbose, api_version),
        Command::New {
            path,
            name,
            checkout,
        } => new::new(&path, name, checkout),
        Command::Deliver {
            host,
            relay,
            delivery,
            data_dir,
            input,
            output,
            progress_interval,
        } => Duration::try_from_secs_f64(progress_interval)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or(format!(
                "--progress-interval {progress_interval}: not a positive number of seconds"
            ))
            .and_then(|interval| {
                let config = delivery.config(relay, "localhost")?;
                deliver::deliver(host, config, data_dir, input, output, interval)
            }),
        Command::Serve {
            config: _,
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
            limits,
            metrics,
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
                    eprintln!("mq-host: {}", mq_host::escape_controls(&e.to_string()));
                    return ExitCode::FAILURE;
                }
            };
            let delivery = match relay.map(|r| delivery.config(r, &hostname)).transpose() {
                Ok(delivery) => delivery,
                Err(e) => {
                    eprintln!("mq-host: {}", mq_host::escape_controls(&e.to_string()));
                    return ExitCode::FAILURE;
                }
            };
            let mut config = mq_host::smtp_in::ServeConfig {
                data_dir,
                hostname,
                max_message_size,
                idle_timeout: Duration::from_secs(idle_timeout),
                tls,
                ..Default::default()
            };
            limits.apply(&mut config);
            let operations = serve::Operations {
                grace: Duration::from_secs(grace),
                metrics,
            };
            serve::serve(host, listen, config, delivery, operations)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mq-host: {}", mq_host::escape_controls(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

fn start(args: &HostArgs, dir: Option<&Path>) -> Result<Host, String> {
    let hold_deadline = match args.hold_deadline {
        None | Some(0.0) => None,
        Some(v) => Some(Duration::try_from_secs_f64(v).map_err(|_| {
            format!("--hold-deadline {v}: not a number of seconds (0 for no limit)")
        })?),
    };
    let hold_report =
        match args.hold_report {
            0.0 => None,
            v => Some(Duration::try_from_secs_f64(v).map_err(|_| {
                format!("--hold-report {v}: not a number of seconds (0: no reports)")
            })?),
        };
    let stall_report = match args.stall_report {
        0.0 => None,
        v => Some(Duration::try_from_secs_f64(v).map_err(|_| {
            format!("--stall-report {v}: not a number of seconds (0 turns the watchdog off)")
        })?),
    };
    let mut builder = Host::builder()
        .workers(args.workers)
        .retry_limit(args.retry_limit)
        .api_version(args.api_version)
        .hold_deadline(hold_deadline)
        .hold_report(hold_report)
        .log_max_bytes(args.log_max_bytes)
        .log_record_max(args.log_record_max)
        .stall_report(stall_report)
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
