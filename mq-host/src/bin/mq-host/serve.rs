//! `mq-host serve`: SMTP in with the plugins, delivery to a relay, and a
//! graceful stop on SIGINT/SIGTERM.

use crate::*;
use mq_host::delivery::{self, DeliveryConfig, Outbox, Until};
use mq_host::{Host, MetricsEndpoint};
use std::time::Duration;

/// The limits of `mq-host serve` that bound what one client may cost
/// (docs/security.md explains each).
#[derive(clap::Args, Debug)]
pub(crate) struct SessionLimits {
    /// Seconds a client may take to send one command line, from its
    /// first byte (a trickling client gets 421).
    #[arg(long, default_value_t = 300)]
    command_timeout: u64,
    /// Seconds a client may take to send a message's data (from the 354,
    /// or per BDAT chunk).
    #[arg(long, default_value_t = 600)]
    data_timeout: u64,
    /// Recipients per message; more get 452.
    #[arg(long, default_value_t = 1000)]
    max_recipients: usize,
    /// Sessions open at once; more clients get 421.
    #[arg(long, default_value_t = 1000)]
    pub(crate) max_connections: usize,
    /// Sessions open at once from one client address.
    #[arg(long, default_value_t = 100)]
    max_connections_per_ip: usize,
    /// Bytes of unhandled (pipelined) input a session buffers before it
    /// stops reading from its client.
    #[arg(long, default_value_t = 256 * 1024)]
    max_input_buffer: usize,
    /// Bytes of replies a session buffers for a client that does not read
    /// them; a plugin's MQ_send beyond it is cut.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_output_buffer: usize,
    /// Offer and accept AUTH on connections without TLS. By default, as in
    /// MailerQ, AUTH needs a secure connection (STARTTLS first): a plain
    /// connection gets 538 (an mq-host option; MailerQ has no such key).
    #[arg(long)]
    auth_insecure: bool,
}

impl SessionLimits {
    /// Sets these limits in `config`.
    pub(crate) fn apply(&self, config: &mut mq_host::smtp_in::ServeConfig) {
        config.command_timeout = Duration::from_secs(self.command_timeout);
        config.data_timeout = Duration::from_secs(self.data_timeout);
        config.max_recipients = self.max_recipients;
        config.max_connections = self.max_connections;
        config.max_connections_per_ip = self.max_connections_per_ip;
        config.max_input_buffer = self.max_input_buffer;
        config.max_output_buffer = self.max_output_buffer;
        config.auth_insecure = self.auth_insecure;
    }
}

/// Blocks SIGINT and SIGTERM in this thread and every thread started after
/// it, so that `wait_for_stop` receives them synchronously.
pub(crate) fn block_stop_signals() -> libc::sigset_t {
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
pub(crate) fn wait_for_stop(set: &libc::sigset_t, host: &Host) -> &'static str {
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

/// How `serve` is operated beside SMTP and delivery: its stop, its metrics.
pub(crate) struct Operations {
    /// How long open sessions and deliveries get after SIGINT/SIGTERM.
    pub(crate) grace: Duration,
    /// Where to serve the counters as Prometheus metrics (`--metrics`).
    pub(crate) metrics: Option<std::net::SocketAddr>,
}

/// What `--metrics` serves: the counters, and the outbox's length when
/// `serve` delivers.
fn scrape(host: &Host, outbox: Option<&Outbox>) -> String {
    let mut text = mq_host::prometheus_text(&host.counters());
    if let Some(outbox) = outbox {
        text += &mq_host::prometheus_gauge(
            "outbox_messages",
            "Messages in the outbox: waiting for delivery or a retry, or on their way.",
            outbox.pending() as u64,
        );
    }
    text
}

pub(crate) fn serve(
    args: HostArgs,
    listen: std::net::SocketAddr,
    mut config: mq_host::smtp_in::ServeConfig,
    delivery: Option<DeliveryConfig>,
    Operations { grace, metrics }: Operations,
) -> Result<(), String> {
    let signals = block_stop_signals();
    let examples = ExamplePlugins::unless_given(&args)?;
    let host = start(&args, examples.as_ref().map(|e| e.dir.as_path()))?;
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let metrics = metrics
        .map(|addr| {
            MetricsEndpoint::bind(addr).map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
        })
        .transpose()?;
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
    if let Some((outbox, d)) = &delivering {
        eprintln!(
            "mq-host: outbox {}: {} message(s) waiting{}; delivering to {} with {} connection(s)",
            outbox.dir().display(),
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
    if let Some(metrics) = &metrics {
        eprintln!(
            "mq-host: metrics on http://{}/metrics",
            metrics.local_addr()
        );
    }
    std::thread::scope(|scope| {
        if let Some(metrics) = &metrics {
            let host = &host;
            let outbox = delivering.as_ref().map(|(outbox, _)| outbox);
            std::thread::Builder::new()
                .name("mq-metrics".into())
                .spawn_scoped(scope, move || metrics.run(|| scrape(host, outbox)))
                .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
        }
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
        // Scrapes go on until the work is done, so the last ones see it.
        if let Some(metrics) = &metrics {
            metrics.stop();
        }
        Ok::<(), String>(())
    })?;
    finish(host, &args);
    eprintln!("mq-host: stopped");
    Ok(())
}
