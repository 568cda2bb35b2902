//! `serve` in this process (a host without plugins, real sockets), with
//! the store thread's commits held: a session's `250` waits for its
//! commit, and sessions waiting together share one.

use super::{Listener, ServeConfig};
use crate::api::Host;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn data_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mq-serve-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn serve(host: &Host, dir: &Path) -> Listener {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = ServeConfig {
        data_dir: dir.to_owned(),
        ..ServeConfig::default()
    };
    host.serve(listener, config).unwrap()
}

/// One reply (all its lines); fails the test on a closed connection.
fn reply(client: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = client.read_line(&mut line).expect("a reply");
        assert!(n > 0, "the server closed the connection after {all:?}");
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

/// A client that sent a whole message and waits for the reply to its data.
fn send_message(server: &Listener, n: usize) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(server.local_addr()).unwrap();
    // A guard against a hang, never reached when the host works.
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut client = BufReader::new(stream);
    assert!(reply(&mut client).starts_with("220"));
    let commands = format!(
        "EHLO client\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<r{n}@example.com>\r\nDATA\r\n"
    );
    client.get_mut().write_all(commands.as_bytes()).unwrap();
    for expected in ["250", "250", "250", "354"] {
        let got = reply(&mut client);
        assert!(got.starts_with(expected), "{got:?}, not {expected}");
    }
    let body = format!("Subject: {n}\r\n\r\nmessage {n}\r\n.\r\n");
    client.get_mut().write_all(body.as_bytes()).unwrap();
    client
}

fn stored(dir: &Path) -> usize {
    match std::fs::read_dir(dir.join("inbox")) {
        Ok(entries) => entries
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                let name = name.to_string_lossy();
                !name.starts_with('.') && name.ends_with(".json")
            })
            .count(),
        Err(_) => 0,
    }
}

#[test]
fn the_250_waits_for_the_commit() {
    let dir = data_dir("held");
    let host = Host::builder().workers(1).start().unwrap();
    let server = serve(&host, &dir);
    let gate = std::sync::Arc::clone(&server.store.gate);
    gate.close();
    let mut client = send_message(&server, 0);
    // The store thread holds the commit of this message's files.
    assert_eq!(gate.wait_holding(), 1);
    assert_eq!(
        stored(&dir),
        0,
        "no message under its name before the commit"
    );
    assert!(client.buffer().is_empty());
    client.get_ref().set_nonblocking(true).unwrap();
    let early = client.get_mut().read(&mut [0u8; 512]);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a reply before the commit: {early:?}"
    );
    client.get_ref().set_nonblocking(false).unwrap();
    gate.open();
    let answer = reply(&mut client);
    assert!(answer.starts_with("250"), "{answer:?}");
    assert_eq!(stored(&dir), 1, "the message is stored when the 250 comes");
    let counters = host.counters();
    assert_eq!(counters.messages_stored, 1);
    assert_eq!(counters.store_commits, 1);
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn concurrent_sessions_share_commits_and_fsyncs() {
    const SESSIONS: usize = 20;
    let dir = data_dir("shared");
    let host = Host::builder().workers(2).start().unwrap();
    let server = serve(&host, &dir);
    let gate = std::sync::Arc::clone(&server.store.gate);
    gate.close();
    let mut clients: Vec<_> = (0..SESSIONS).map(|n| send_message(&server, n)).collect();
    // Every session's files wait for a commit: the first one held, the
    // others queued behind it.
    gate.wait_submitted(SESSIONS as u64);
    gate.wait_holding();
    gate.open();
    for client in &mut clients {
        let answer = reply(client);
        assert!(answer.starts_with("250"), "{answer:?}");
    }
    assert_eq!(stored(&dir), SESSIONS);
    let counters = host.counters();
    assert_eq!(counters.messages_stored, SESSIONS as u64);
    // At most one held per store thread, then one for the rest.
    assert!(
        counters.store_commits <= crate::store::commit::THREADS as u64 + 1,
        "{} commits for {SESSIONS} messages",
        counters.store_commits
    );
    // One fsync per file and one of `inbox/` per commit, where storing one
    // message at a time took two per message.
    assert_eq!(
        counters.store_fsyncs,
        SESSIONS as u64 + counters.store_commits
    );
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
