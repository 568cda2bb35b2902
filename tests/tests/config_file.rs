//! `mq-host serve --config FILE`: MailerQ's configuration file.

use mq_e2e::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// `serve` started with `args`; its stderr lines up to the "serving" line.
struct Serve {
    child: Child,
    addr: SocketAddr,
    before: Vec<String>,
}

impl Serve {
    fn start(data: &Path, args: &[&str]) -> Serve {
        let mut child = Command::new(host_binary())
            .args(["serve", "--no-tls", "--grace", "1", "--data-dir"])
            .arg(data)
            .args(args)
            .env_remove("MAILERQ_SMTP_PORT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mq-host serve");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Killed on drop, also if it never says where it listens.
        let mut serve = Serve {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            before: Vec::new(),
        };
        loop {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
                panic!("serve did not start: {:#?}", serve.before);
            };
            let addr = line
                .strip_prefix("mq-host: serving SMTP on ")
                .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap());
            serve.before.push(line);
            if let Some(addr) = addr {
                serve.addr = addr;
                return serve;
            }
        }
    }

    /// The reply to EHLO, all its lines.
    fn ehlo(&self) -> String {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut greeting = String::new();
        r.read_line(&mut greeting).unwrap();
        assert!(greeting.starts_with("220"), "{greeting}");
        s.write_all(b"EHLO client.example\r\n").unwrap();
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            assert!(r.read_line(&mut line).unwrap() > 0, "closed: {reply}");
            reply.push_str(&line);
            if line.as_bytes().get(3) == Some(&b' ') {
                break;
            }
        }
        s.write_all(b"QUIT\r\n").unwrap();
        let _ = r.read_to_end(&mut Vec::new());
        reply
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_files_settings_take_effect_and_other_mailerq_keys_are_reported_once() {
    let dir = PluginDir::new("config-file");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(rust_probe(), plugins.join("10-probe.so")).unwrap();
    let port = free_port();
    let config = dir.path().join("config.txt");
    std::fs::write(
        &config,
        format!(
            "# MailerQ's configuration, as in /etc/mailerq/config.txt\n\
             \n\
             plugin-directory:   {}\n\
             smtp-ip:            127.0.0.1\n\
             smtp-port:          {port}\n\
             smtp-maxsize:       2KB\n\
             smtp-threads:       1\n\
             rabbitmq-address:   amqp://guest:guest@localhost/\n\
             rabbitmq-address:   amqp://other/\n\
             smtp-prot:          25\n",
            plugins.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(&data, &["--config", config.to_str().unwrap()]);
    assert_eq!(serve.addr, SocketAddr::from(([127, 0, 0, 1], port)));
    let log = serve.before.join("\n");
    assert!(log.contains("with 1 plugin(s)"), "{log}");
    assert!(
        log.contains("loaded 10-probe (")
            && log.contains(&format!("from {}", plugins.join("10-probe.so").display())),
        "the plugin directory the file names: {log}"
    );
    let warned: Vec<&String> = serve
        .before
        .iter()
        .filter(|l| l.contains("rabbitmq-address"))
        .collect();
    assert_eq!(warned.len(), 1, "once per key: {log}");
    assert_eq!(
        warned[0],
        &format!(
            "mq-host: config: {}:8: `rabbitmq-address` is a MailerQ setting mq-host does not \
             implement; ignored",
            config.display()
        )
    );
    assert!(
        log.contains(&format!(
            "{}:10: `smtp-prot` is not a MailerQ setting; did you mean `smtp-port`? ignored",
            config.display()
        )),
        "{log}"
    );
    assert!(
        serve.ehlo().contains("250 SIZE 2048"),
        "smtp-maxsize applies"
    );
}

#[test]
fn flags_on_the_command_line_override_the_file() {
    let dir = PluginDir::new("config-override");
    let config = dir.path().join("config.txt");
    std::fs::write(
        &config,
        format!("smtp-port: {}\nsmtp-maxsize: 2KB\n", free_port()),
    )
    .unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--max-message-size",
            "4096",
            "--plugin",
            rust_probe().to_str().unwrap(),
        ],
    );
    assert!(serve.ehlo().contains("250 SIZE 4096"));
}

#[test]
fn a_line_that_is_not_a_setting_is_refused_with_file_and_line() {
    let dir = PluginDir::new("config-bad");
    let config = dir.path().join("config.txt");
    std::fs::write(&config, "# ok\nsmtp-port: 2525\nsmtp-ip 127.0.0.1\n").unwrap();
    let out = Command::new(host_binary())
        .args(["serve", "--no-tls", "--config", config.to_str().unwrap()])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .output()
        .expect("run mq-host");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end(),
        format!(
            "mq-host: config: {}:3: not a `key: value` setting: smtp-ip 127.0.0.1",
            config.display()
        )
    );
    std::fs::write(&config, "smtp-port: 2525\nsmtp-maxsize: lots\n").unwrap();
    let out = Command::new(host_binary())
        .args(["serve", "--no-tls", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .expect("run mq-host");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(":2: `smtp-maxsize: lots`: not a size (e.g. 25MB)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
