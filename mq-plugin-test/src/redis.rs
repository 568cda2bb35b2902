//! A real `redis-server` for a plugin's tests: on a free loopback port,
//! without persistence, killed when dropped.
//!
//! ```no_run
//! use mq_plugin_test::redis::RedisServer;
//!
//! let redis = RedisServer::start();
//! redis.command(&["SADD", "mq:allowed-recipients", "@example.com"]);
//! std::env::set_var("MQ_REDIS_ADDR", redis.addr());
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` (Debian's `redis-server` package).
pub struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts one on a free port. Fails the test, saying what to install,
    /// if `redis-server` is missing, and if it does not listen within 10 s.
    pub fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("mq-plugin-test: no free loopback port: {e}"));
        RedisServer::start_on(port)
    }

    /// Starts one on `port`, e.g. again where an earlier one was stopped to
    /// test what a plugin does while Redis is away.
    pub fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "this test needs redis-server ({e}): install it with `apt-get install \
                     redis-server` (scripts/test-deps.sh does)"
                )
            });
        let redis = RedisServer { child, port };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends one command and returns its raw RESP reply, e.g. `:1\r\n` (one
    /// read: enough for the short replies a test asks for).
    pub fn command(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("cannot reach redis-server on {}: {e}", self.addr()));
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("a read timeout");
        let mut request = format!("*{}\r\n", args.len());
        for a in args {
            request += &format!("${}\r\n{a}\r\n", a.len());
        }
        s.write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("redis-server on {}: {e}", self.addr()));
        let mut reply = vec![0u8; 64 * 1024];
        let n = s
            .read(&mut reply)
            .unwrap_or_else(|e| panic!("redis-server on {} did not answer: {e}", self.addr()));
        String::from_utf8_lossy(&reply[..n]).into_owned()
    }

    /// Stops it and waits until it is gone.
    pub fn stop(self) {}
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_server_answers_and_is_gone_after_stop() {
        let redis = RedisServer::start();
        assert_eq!(redis.command(&["SET", "k", "v"]), "+OK\r\n");
        assert_eq!(redis.command(&["GET", "k"]), "$1\r\nv\r\n");
        let port = redis.port();
        redis.stop();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
