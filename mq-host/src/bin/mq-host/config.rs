//! `mq-host serve --config FILE`: MailerQ's configuration file.
//!
//! MailerQ reads `/etc/mailerq/config.txt`: one `key: value` setting a
//! line, `#` starting a comment line; an environment variable
//! `MAILERQ_<KEY>` (upper case, `-` as `_`) overrides the file, and a
//! command-line option overrides both. mq-host reads the file named by
//! `--config` (never MailerQ's own without it) by the same rules: the
//! serve flags given on the command line win, then `MAILERQ_*`, then the
//! file, then mq-host's defaults.
//!
//! The keys mq-host implements are in [`IMPLEMENTED`]. Every other key of
//! MailerQ's documentation is reported, once, as not implemented and
//! ignored. A key MailerQ's documentation does not name is reported with
//! a "did you mean" and ignored too, not refused: MailerQ's documented keys
//! are not all in its A-Z list (e.g. `smtp-connections-in`), and it does
//! not document refusing a key, so refusing one could refuse a file
//! MailerQ accepts. A line that is not a setting, or a value mq-host cannot
//! read, is an error naming the file, the line and the cause.

use crate::Command;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The keys mq-host implements, and what they set (`mq-host serve` flag).
///
/// Where mq-host differs from MailerQ:
/// - `smtp-ip` absent: mq-host listens on 127.0.0.1 (MailerQ on every
///   address), and `smtp-port` absent: on 2525 (MailerQ on 25) — a test
///   host opens no public port unless told;
/// - `smtp-port` with several ports or a range: mq-host opens the first
///   only (reported);
/// - `smtp-connections` (MailerQ: incoming and outgoing together) limits
///   the incoming sessions when `smtp-connections-in` is absent;
/// - sizes take `K`/`KB`, `M`/`MB`, `G`/`GB` as powers of 1024.
pub(crate) const IMPLEMENTED: [(&str, &str); 14] = [
    ("plugin-directory", "--plugins"),
    ("smtp-ip", "--listen (its address)"),
    ("smtp-port", "--listen (its port)"),
    ("smtp-maxsize", "--max-message-size"),
    ("smtp-timeout", "--idle-timeout"),
    ("smtp-connections", "--max-connections"),
    ("smtp-connections-in", "--max-connections"),
    ("smtp-connections-out", "--connections"),
    ("smtp-threads", "--workers"),
    ("smtp-certificate", "--tls-cert"),
    ("smtp-key", "--tls-key"),
    ("smarthost", "--relay (its host)"),
    ("max-attempts", "--max-attempts"),
    ("max-delivertime", "--max-delivertime"),
];

/// `smarthost-port` goes with `smarthost`: the relay's port (default 25).
const SMARTHOST_PORT: &str = "smarthost-port";

/// MailerQ's documented configuration keys that mq-host does not implement
/// (the boolean command-line options included).
#[rustfmt::skip]
const NOT_IMPLEMENTED: &[&str] = &[
    "cluster-address", "cluster-exchange", "cluster-timeout", "cluster-verify", "database",
    "database-address", "database-ttl", "database-validate", "download-blacklist",
    "download-cache", "download-log-format", "download-log-file", "download-ttl",
    "download-whitelist", "download-proxy", "dsn-advertise", "dsn-notify", "dsn-ret",
    "dns-min-ttl", "error-log", "heartbeat-enabled", "license", "lock",
    "proxy-server", "rabbitmq-address", "rabbitmq-consumers", "rabbitmq-declare", "rabbitmq-dsn",
    "rabbitmq-durable", "rabbitmq-encoding", "rabbitmq-exchange", "rabbitmq-failure",
    "rabbitmq-inbox", "rabbitmq-local", "rabbitmq-lazy", "rabbitmq-maxpriority", "rabbitmq-qos",
    "rabbitmq-minqos", "rabbitmq-flush-qos", "rabbitmq-outbox", "rabbitmq-persistent",
    "rabbitmq-publishers", "rabbitmq-queues", "rabbitmq-refused", "rabbitmq-reports",
    "rabbitmq-results", "rabbitmq-retry", "rabbitmq-success", "rabbitmq-verify",
    "received-log-format", "received-log-file", "retry-interval", "send-bin-log-file",
    "send-log-file", "send-log-format", "server-id", "smarthost-password", "smarthost-username",
    "smtp-auth", "smtp-auth-results", "smtp-check", "smtp-ciphers", "smtp-default-ips",
    "smtp-extract", "smtp-mappable-ips", "smtp-proxy", "smtp-range", "smtp-secure-port",
    "smtp-sink-address", "smtp-sink-password", "smtp-sink-port", "smtp-sink-username",
    "smtp-protection", "smtp-unmappable-ips", "spamassassin-host", "spamassassin-port",
    "spool-delay", "spool-directory", "spool-extract", "spool-fail-directory", "spool-open-files",
    "spool-remove", "spool-threads", "storage-address", "storage-policy", "storage-reschedule",
    "storage-threads", "storage-timeout", "storage-ttl", "user", "validate-envelope",
    "validate-recipient", "www-auth", "www-cache-control", "www-certificate", "www-ciphers",
    "www-connections", "www-ip", "www-dir", "www-host", "www-port", "www-private-key",
    "www-secure-port", "www-url", "daemon", "disable-crash-report", "disable-crash-post",
    "extract-recipients", "ignore-dot", "list-ips", "loopback", "notify-cluster", "paused",
    "purge-database", "repair-database", "version",
];

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// This line of the file.
    Line(PathBuf, usize),
    /// This environment variable.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Line(file, line) => write!(f, "{}:{line}", file.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// One `key: value` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Setting {
    key: String,
    value: String,
    origin: Origin,
}

/// Reads the settings of a file's text: `key: value` lines; blank lines
/// and lines starting with `#` are skipped. Keys are lower case letters,
/// digits and `-`; the value is the rest of the line, trimmed.
fn parse(file: &Path, text: &str) -> Result<Vec<Setting>, String> {
    let mut settings = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let origin = Origin::Line(file.to_owned(), i + 1);
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!(
                "{origin}: not a `key: value` setting: {}",
                mq_host::escape_controls(line)
            ));
        };
        let key = key.trim();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(format!(
                "{origin}: `{}` is not a key (lower-case letters, digits and `-`)",
                mq_host::escape_controls(key)
            ));
        }
        settings.push(Setting {
            key: key.to_owned(),
            value: value.trim().to_owned(),
            origin,
        });
    }
    Ok(settings)
}

/// The `MAILERQ_*` variables among `vars`, as settings (they override the
/// file's, as in MailerQ).
fn from_env(vars: impl Iterator<Item = (String, String)>) -> Vec<Setting> {
    let mut settings: Vec<Setting> = vars
        .filter_map(|(name, value)| {
            let key = name
                .strip_prefix("MAILERQ_")?
                .to_ascii_lowercase()
                .replace('_', "-");
            Some(Setting {
                key,
                value: value.trim().to_owned(),
                origin: Origin::Env(name),
            })
        })
        .collect();
    settings.sort_by(|a, b| a.key.cmp(&b.key));
    settings
}

/// What a config file sets for `serve`, each value with where it came from.
#[derive(Debug, Default)]
pub(crate) struct ServeSettings {
    plugin_dir: Option<PathBuf>,
    ip: Option<IpAddr>,
    port: Option<u16>,
    max_message_size: Option<usize>,
    idle_timeout: Option<u64>,
    max_connections: Option<usize>,
    delivery_connections: Option<usize>,
    workers: Option<usize>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    smarthost: Option<String>,
    smarthost_port: Option<u16>,
    max_attempts: Option<u32>,
    max_delivertime: Option<f64>,
    /// Set by `smtp-connections-in`, which wins over `smtp-connections`.
    connections_in: bool,
}

/// Reads `file` and the `MAILERQ_*` variables among `env` into settings;
/// returns them with the warnings to print (one per key).
pub(crate) fn read(
    file: &Path,
    env: impl Iterator<Item = (String, String)>,
) -> Result<(ServeSettings, Vec<String>), String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("--config {}: cannot read it: {e}", file.display()))?;
    let mut settings = parse(file, &text)?;
    settings.extend(from_env(env));
    let mut out = ServeSettings::default();
    let mut warnings = Vec::new();
    let mut warned = std::collections::HashSet::new();
    for s in &settings {
        if let Some(warning) = out.set(s)? {
            if warned.insert(s.key.clone()) {
                warnings.push(warning);
            }
        }
    }
    Ok((out, warnings))
}

impl ServeSettings {
    /// Takes one setting (a later one replaces an earlier one); returns a
    /// warning for a key mq-host does not implement or does not know.
    fn set(&mut self, s: &Setting) -> Result<Option<String>, String> {
        let origin = &s.origin;
        let value = s.value.as_str();
        let bad = |what: &str| format!("{origin}: `{}: {value}`: {what}", s.key);
        match s.key.as_str() {
            "plugin-directory" => {
                self.plugin_dir = Some(path(value).ok_or_else(|| bad("no directory given"))?)
            }
            "smtp-ip" => self.ip = Some(value.parse().map_err(|_| bad("not an IP address"))?),
            "smtp-port" => {
                let (first, more) = value
                    .split_once(',')
                    .map_or((value, false), |(f, _)| (f, true));
                let (first, range) = first
                    .split_once('-')
                    .map_or((first, false), |(f, _)| (f, true));
                let port: u16 = first.trim().parse().map_err(|_| bad("not a port number"))?;
                self.port = Some(port);
                if more || range {
                    return Ok(Some(format!(
                        "{origin}: `smtp-port: {value}`: mq-host listens on one port, {port}; \
                         the others are not opened (not implemented)"
                    )));
                }
            }
            "smtp-maxsize" => {
                self.max_message_size =
                    Some(size(value).ok_or_else(|| bad("not a size (e.g. 25MB)"))?)
            }
            "smtp-timeout" => {
                self.idle_timeout = Some(value.parse().map_err(|_| bad("not a number of seconds"))?)
            }
            "smtp-connections" => {
                if !self.connections_in {
                    self.max_connections =
                        Some(count(value).ok_or_else(|| bad("not a number above 0"))?);
                }
            }
            "smtp-connections-in" => {
                self.max_connections =
                    Some(count(value).ok_or_else(|| bad("not a number above 0"))?);
                self.connections_in = true;
            }
            "smtp-connections-out" => {
                self.delivery_connections =
                    Some(count(value).ok_or_else(|| bad("not a number above 0"))?)
            }
            "smtp-threads" => {
                self.workers = Some(count(value).ok_or_else(|| bad("not a number above 0"))?)
            }
            "smtp-certificate" => {
                self.tls_cert = Some(path(value).ok_or_else(|| bad("no file given"))?)
            }
            "smtp-key" => self.tls_key = Some(path(value).ok_or_else(|| bad("no file given"))?),
            "smarthost" if value.is_empty() => self.smarthost = None,
            "smarthost" => self.smarthost = Some(value.to_owned()),
            SMARTHOST_PORT => {
                self.smarthost_port = Some(value.parse().map_err(|_| bad("not a port number"))?)
            }
            "max-attempts" => {
                let n: u32 = value
                    .parse()
                    .map_err(|_| bad("not a number (0: unlimited)"))?;
                self.max_attempts = Some(n);
            }
            "max-delivertime" => {
                let secs: f64 = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| bad("not a number of seconds above 0"))?;
                self.max_delivertime = Some(secs);
            }
            key if NOT_IMPLEMENTED.contains(&key) => {
                return Ok(Some(format!(
                    "{origin}: `{key}` is a MailerQ setting mq-host does not implement; ignored"
                )))
            }
            key => {
                let hint = did_you_mean(key)
                    .map(|k| format!("did you mean `{k}`? "))
                    .unwrap_or_default();
                return Ok(Some(format!(
                    "{origin}: `{}` is not a MailerQ setting; {hint}ignored",
                    mq_host::escape_controls(key)
                )));
            }
        }
        Ok(None)
    }
}

fn path(value: &str) -> Option<PathBuf> {
    (!value.is_empty()).then(|| PathBuf::from(value))
}

fn count(value: &str) -> Option<usize> {
    value.parse().ok().filter(|&n| n > 0)
}

/// A size: a number of bytes with an optional unit (`B`, `K`/`KB`,
/// `M`/`MB`, `G`/`GB`, any case; powers of 1024).
fn size(value: &str) -> Option<usize> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: usize = number.parse().ok()?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" => 10,
        "M" | "MB" => 20,
        "G" | "GB" => 30,
        _ => return None,
    };
    number.checked_mul(1 << shift)
}

/// The known key nearest `key`, if it is near enough to be a typo.
fn did_you_mean(key: &str) -> Option<&'static str> {
    IMPLEMENTED
        .iter()
        .map(|(k, _)| *k)
        .chain([SMARTHOST_PORT])
        .chain(NOT_IMPLEMENTED.iter().copied())
        .map(|k| (edit_distance(key, k), k))
        .filter(|&(d, k)| d <= 2.max(k.len() / 5))
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let replaced = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = replaced.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// Sets in `command` (`serve`) what the file sets, except the options
/// `given` on the command line. The relay's port goes with the relay:
/// `smarthost-port` alone sets nothing.
pub(crate) fn apply(settings: ServeSettings, given: impl Fn(&str) -> bool, command: &mut Command) {
    let Command::Serve {
        host,
        relay,
        delivery,
        listen,
        max_message_size,
        idle_timeout,
        tls_cert,
        tls_key,
        no_tls,
        limits,
        ..
    } = command
    else {
        return;
    };
    let take = |id: &str| !given(id);
    if let (Some(dir), true) = (settings.plugin_dir, take("plugins")) {
        host.plugins = Some(dir);
    }
    if let (Some(n), true) = (settings.workers, take("workers")) {
        host.workers = n;
    }
    if take("listen") && (settings.ip.is_some() || settings.port.is_some()) {
        let ip = settings.ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        *listen = SocketAddr::new(ip, settings.port.unwrap_or(listen.port()));
    }
    if let (Some(n), true) = (settings.max_message_size, take("max_message_size")) {
        *max_message_size = n;
    }
    if let (Some(n), true) = (settings.idle_timeout, take("idle_timeout")) {
        *idle_timeout = n;
    }
    if let (Some(n), true) = (settings.max_connections, take("max_connections")) {
        limits.max_connections = n;
    }
    if let (Some(n), true) = (settings.delivery_connections, take("connections")) {
        delivery.connections = n;
    }
    if let (Some(n), true) = (settings.max_attempts, take("max_attempts")) {
        delivery.max_attempts = n;
    }
    if let (Some(secs), true) = (settings.max_delivertime, take("max_delivertime")) {
        delivery.max_delivertime = secs;
    }
    // The certificate and key go together, and --no-tls wins over both.
    if let (Some(cert), Some(key)) = (&settings.tls_cert, &settings.tls_key) {
        if !*no_tls && take("tls_cert") && take("tls_key") {
            *tls_cert = Some(cert.clone());
            *tls_key = Some(key.clone());
        }
    }
    if let (Some(smarthost), true) = (settings.smarthost, take("relay")) {
        let port = settings.smarthost_port.unwrap_or(25);
        *relay = Some(match smarthost.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => format!("[{v6}]:{port}"),
            Err(_) => format!("{smarthost}:{port}"),
        });
    }
}

/// The certificate without the key (or the other way round) is an error
/// of the file, as `--tls-cert` without `--tls-key` is of the command line.
pub(crate) fn check(settings: &ServeSettings, file: &Path) -> Result<(), String> {
    match (&settings.tls_cert, &settings.tls_key) {
        (Some(_), None) | (None, Some(_)) => Err(format!(
            "{}: `smtp-certificate` and `smtp-key` go together; set both or neither",
            file.display()
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str, env: &[(&str, &str)]) -> Result<(ServeSettings, Vec<String>), String> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!("mq-host-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = dir.join(format!("{n}.txt"));
        std::fs::write(&file, text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let read = read(&file, env.collect::<Vec<_>>().into_iter());
        let _ = std::fs::remove_file(&file);
        read
    }

    #[test]
    fn settings_comments_and_blank_lines() {
        let settings = parse(
            Path::new("c.txt"),
            "# MailerQ\n\nsmtp-port:   2526\n  smtp-ip: ::1\nlicense: /a:b # not a comment\n",
        )
        .unwrap();
        let keys: Vec<_> = settings
            .iter()
            .map(|s| (s.key.as_str(), s.value.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("smtp-port", "2526"),
                ("smtp-ip", "::1"),
                ("license", "/a:b # not a comment")
            ]
        );
        assert_eq!(settings[1].origin, Origin::Line("c.txt".into(), 4));
    }

    #[test]
    fn a_line_that_is_no_setting_names_file_and_line() {
        let e = parse(Path::new("/etc/c.txt"), "smtp-port: 25\nsmtp-ip 1.2.3.4\n").unwrap_err();
        assert_eq!(
            e,
            "/etc/c.txt:2: not a `key: value` setting: smtp-ip 1.2.3.4"
        );
        let e = parse(Path::new("c.txt"), ": 25\n").unwrap_err();
        assert!(e.starts_with("c.txt:1: `` is not a key"), "{e}");
        let e = parse(Path::new("c.txt"), "\nSMTP Port: 25\n").unwrap_err();
        assert!(e.starts_with("c.txt:2: `SMTP Port` is not a key"), "{e}");
    }

    #[test]
    fn values_are_read_or_refused_with_their_line() {
        let (s, warnings) = read_text(
            "smtp-maxsize: 2KB\nsmtp-port: 25,2525,1024-1026\nsmtp-connections-in: 5\nsmtp-connections: 9\nmax-attempts: 0\nmax-delivertime: 3600\n",
            &[],
        )
        .unwrap();
        assert_eq!(s.max_message_size, Some(2048));
        assert_eq!(s.port, Some(25));
        assert_eq!(s.max_connections, Some(5), "-in wins over the total");
        assert_eq!(s.max_attempts, Some(0), "0: unlimited, as --max-attempts 0");
        assert_eq!(s.max_delivertime, Some(3600.0));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0]
            .contains(":2: `smtp-port: 25,2525,1024-1026`: mq-host listens on one port, 25"));
        let e = read_text("\nsmtp-timeout: soon\n", &[]).unwrap_err();
        assert!(
            e.ends_with(":2: `smtp-timeout: soon`: not a number of seconds"),
            "{e}"
        );
        assert_eq!(size("100MB"), Some(100 << 20));
        assert_eq!(size("7"), Some(7));
        assert_eq!(size("1 g"), Some(1 << 30));
        assert_eq!(size("1TB"), None);
    }

    #[test]
    fn unimplemented_and_unknown_keys_are_warned_once_each() {
        let (_, warnings) = read_text(
            "rabbitmq-address: amqp://x\nrabbitmq-address: amqp://y\nsmtp-prot: 25\nfoo-bar: 1\n",
            &[("MAILERQ_WWW_PORT", "80")],
        )
        .unwrap();
        assert_eq!(warnings.len(), 4, "{warnings:#?}");
        assert!(warnings[0].ends_with(
            ":1: `rabbitmq-address` is a MailerQ setting mq-host does not implement; ignored"
        ));
        assert!(warnings[1].ends_with(
            ":3: `smtp-prot` is not a MailerQ setting; did you mean `smtp-port`? ignored"
        ));
        assert!(warnings[2].ends_with(":4: `foo-bar` is not a MailerQ setting; ignored"));
        assert_eq!(
            warnings[3],
            "environment variable MAILERQ_WWW_PORT: `www-port` is a MailerQ setting mq-host does not implement; ignored"
        );
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let (s, _) = read_text(
            "smtp-port: 25\n",
            &[("MAILERQ_SMTP_PORT", "2600"), ("OTHER", "1")],
        )
        .unwrap();
        assert_eq!(s.port, Some(2600));
    }
}
