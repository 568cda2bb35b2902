//! Coverage-guided fuzzing of mq-host's SMTP-in: smtp-proto's request
//! parser and the session state machine (pipelining, DATA, BDAT, AUTH,
//! STARTTLS, early and abrupt ends), over real TCP connections to one
//! process-wide `Host` (no plugins, one worker).
//!
//! Each input is a script of client connections (`mq_host_fuzz::script`).
//! What must hold, whatever the input:
//! - every reply line is a three-digit code, CRLF-ended, no bare CR/LF;
//! - a session ends within 2 s once the client half-closes or falls idle;
//! - a fresh connection afterwards is greeted with `220` (the worker lives);
//! - the host caught no panic (`host_panics` stays 0);
//! - sessions do not leak (the process's open descriptors stay bounded).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mq_host_fuzz::client::{self, MUST_WITHIN};
use mq_host_fuzz::replies::Violation;
use mq_host_fuzz::script;
use mq_host_fuzz::server::{open_fds, Server};
use std::cell::Cell;
use std::time::Instant;

/// Messages are removed and descriptors counted every this many inputs.
const HOUSEKEEPING_EVERY: u64 = 128;

/// Descriptors above the count at start that count as a leak: a few
/// sessions may still be closing on the server when an input ends.
const FD_SLACK: usize = 64;

struct State {
    server: Server,
    baseline_fds: usize,
    runs: Cell<u64>,
}

thread_local! {
    // libFuzzer calls the target on one thread; leaked, so the host is
    // never shut down while the process exits.
    static STATE: &'static State = {
        let server = Server::start();
        let baseline_fds = open_fds();
        Box::leak(Box::new(State { server, baseline_fds, runs: Cell::new(0) }))
    };
}

fuzz_target!(|input: &[u8]| {
    STATE.with(|state| {
        if let Err(Violation(what)) = run(state, input) {
            panic!(
                "{what}\n--- the host's last log records ---\n{}",
                state.server.recent_log()
            );
        }
    });
});

fn run(state: &State, input: &[u8]) -> Result<(), Violation> {
    let server = &state.server;
    let mut lingering = Vec::new();
    for connection in script::parse(input) {
        let open = client::open(server, &connection)?;
        if connection.flags.linger {
            lingering.push(open);
        } else {
            open.finish()?;
        }
    }
    for open in lingering {
        open.finish()?;
    }
    client::check_alive(server)?;
    let panics = server.host.counters().host_panics;
    if panics != 0 {
        return Err(Violation(format!("the host caught {panics} panic(s)")));
    }
    housekeeping(state)
}

fn housekeeping(state: &State) -> Result<(), Violation> {
    let runs = state.runs.get() + 1;
    state.runs.set(runs);
    if !runs.is_multiple_of(HOUSEKEEPING_EVERY) {
        return Ok(());
    }
    state.server.prune_messages();
    let limit = state.baseline_fds + FD_SLACK;
    let deadline = Instant::now() + MUST_WITHIN;
    while open_fds() > limit {
        if Instant::now() > deadline {
            return Err(Violation(format!(
                "{} descriptors open, {} at start: sessions are not closed",
                open_fds(),
                state.baseline_fds
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}
