//! The `mq-host` binary as a user runs it.

use mq_e2e::*;
use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(host_binary())
        .args(args)
        .output()
        .expect("run mq-host");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn inspect_shows_name_version_abi_and_hooks() {
    let rust = plugin_so("mq-example-allowlist");
    let c = plugin_so("mq-example-c-allowlist");
    let (ok, out, err) = run(&["inspect", rust.to_str().unwrap(), c.to_str().unwrap()]);
    assert!(ok, "{err}");
    let out: String = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") + "\n")
        .collect();
    assert!(out.contains("package: mq-example-allowlist"), "{out}");
    assert!(out.contains("version: 0.1.0"), "{out}");
    assert!(
        out.contains("description: Example MailerQ plugin: refuses recipients"),
        "{out}"
    );
    assert!(
        out.contains("api version: 1 (mq_version(); matches the host's)"),
        "{out}"
    );
    assert!(
        out.contains("Rust (mq-plugin, framework ABI 2; ABI check passed)"),
        "{out}"
    );
    assert!(
        out.contains("mq_smtp_in_rcptto may take control\n"),
        "{out}"
    );
    assert!(out.contains("mq_initialize lifecycle\n"), "{out}");
    assert!(
        out.contains("mq_smtp_in_close may take control (framework housekeeping)"),
        "{out}"
    );
    assert!(out.contains("C (no root module)"), "{out}");
}

#[test]
fn inspect_reports_bad_files_and_fails() {
    let dir = PluginDir::new("cli-inspect");
    let bad = dir.path().join("bad.so");
    std::fs::write(&bad, "x").unwrap();
    let abi = plugin_so("mq-test-abi-mismatch");
    let (ok, _, err) = run(&["inspect", bad.to_str().unwrap(), abi.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "mq-host: {}: not a shared object (no ELF header)",
            bad.display()
        )),
        "{err}"
    );
    assert!(err.contains("ABI layout mismatch"), "{err}");
    let (_, _, verbose) = run(&["inspect", "--verbose", abi.to_str().unwrap()]);
    assert!(
        verbose.lines().count() > err.lines().count(),
        "--verbose adds abi_stable's report"
    );
}

#[test]
fn inspect_shows_what_mq_version_returns_and_fails_for_another_version() {
    let c = plugin_so("mq-example-c-allowlist");
    let c = c.to_str().unwrap();
    let (ok, out, err) = run(&["inspect", c]);
    assert!(ok, "{err}");
    assert!(
        out.contains("api version: 1 (mq_version(); matches the host's)"),
        "{out}"
    );
    let (ok, out, err) = run(&["inspect", "--api-version", "7", c]);
    assert!(!ok, "a plugin this host would refuse");
    assert!(
        out.contains("api version: 1 (mq_version(); the host runs 7: refused)"),
        "still shown: {out}"
    );
    assert!(
        err.contains("wrong API version: `mq_version()` returned 1, this host runs 7;")
            && err.contains("`MQ_API_VERSION=7 cargo build`"),
        "{err}"
    );
}

#[test]
fn by_default_the_binary_waits_for_a_hold_and_reports_it() {
    let plugins = PluginDir::new("cli-hold");
    plugins.add("10-a.so", &c_probe(), "smtp_in_message delay 0.3\n");
    let inputs = PluginDir::new("cli-hold-input");
    let input = inputs.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"envelope\":\"a@example.com\",\"recipient\":\"b@example.org\",\"mime\":\"Subject: x\\r\\n\\r\\nx\\r\\n\"}\n",
    )
    .unwrap();
    let (ok, out, err) = run(&[
        "run",
        "--counters",
        "--plugins",
        plugins.path().to_str().unwrap(),
        "--hold-report",
        "0.05",
        input.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        err.contains("plugin 10-a has held control of mq_smtp_in_message for")
            && err.contains("the host waits for it, as MailerQ does"),
        "{err}"
    );
    assert!(!err.contains("hold deadline passed"), "no deadline: {err}");
    let counter = |name: &str| -> u64 {
        err.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("counter {name}: {err}"))
    };
    assert!(counter("hold_reports") >= 1, "{err}");
    assert_eq!(counter("held_past_deadline"), 0, "{err}");
}

#[test]
fn demo_runs_the_examples_on_sample_messages() {
    let (ok, out, err) = run(&["demo", "--counters"]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let queues: Vec<&str> = lines
        .iter()
        .map(|l| l["result"]["queue"].as_str().unwrap())
        .collect();
    assert_eq!(queues, ["inbox", "inbox", "refused", "inbox"]);
    assert!(lines[0]["mime"]
        .as_str()
        .unwrap()
        .starts_with("X-Stamped-By: mq-example-stamp"));
    assert!(
        err.contains("4 message(s): 3 accepted, 1 refused, 0 error(s)"),
        "{err}"
    );
    assert!(
        err.contains("c-allowlist: rejected victim@example.net"),
        "{err}"
    );
    assert!(
        err.contains("take_overs"),
        "--counters prints the counters: {err}"
    );
}

#[test]
fn run_without_plugins_says_what_is_missing() {
    let (ok, _, err) = run(&["run"]);
    assert!(!ok);
    assert!(
        err.contains("no plugins: give --plugins DIR or --plugin FILE"),
        "{err}"
    );
}

#[test]
fn json_log_format_prints_one_object_per_record() {
    let (ok, _, err) = run(&["demo", "--log-format", "json", "--counters"]);
    assert!(ok, "{err}");
    let records: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let stamped = records
        .iter()
        .find(|r| r["text"].as_str().unwrap().contains("stamped message"))
        .expect("the stamp plugin's record");
    assert_eq!(stamped["level"], "info");
    assert_eq!(stamped["source"], "plugin");
    assert!(stamped["worker"].is_u64());
    assert!(stamped["time"].as_str().unwrap().ends_with('Z'));
    // The counters at the end include the calls per hook.
    assert!(err.contains("  smtp_in_rcptto"), "{err}");
}

#[test]
fn run_answers_a_line_that_is_not_utf8_and_goes_on() {
    let dir = PluginDir::new("cli-run-utf8");
    let input = dir.path().join("batch.jsonl");
    let good = |n: u32| {
        serde_json::json!({"envelope": "a@shop.example", "recipient": format!("r{n}@example.org"),
                           "mime": format!("Subject: {n}\r\n\r\nbody\r\n")})
        .to_string()
    };
    let mut bytes = Vec::new();
    bytes.extend_from_slice(good(1).as_bytes());
    bytes.extend_from_slice(b"\n{\"recipient\": \"x\xff\xfe@example.org\"}\n");
    bytes.extend_from_slice(good(3).as_bytes());
    bytes.extend_from_slice(b"\r\n");
    std::fs::write(&input, bytes).unwrap();
    let stamp = plugin_so("mq-example-stamp");
    let (ok, out, err) = run(&[
        "run",
        "--quiet",
        "--plugin",
        stamp.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 3, "one output line per input line: {out}");
    assert_eq!(lines[0]["recipient"], "r1@example.org");
    assert_eq!(lines[0]["result"]["queue"], "inbox");
    assert_eq!(lines[1]["line"], 2);
    let error = lines[1]["error"].as_str().unwrap();
    assert!(
        error.starts_with("not UTF-8: invalid utf-8 sequence of 1 bytes from index 16"),
        "{error}"
    );
    assert_eq!(lines[2]["recipient"], "r3@example.org");
    assert_eq!(lines[2]["result"]["queue"], "inbox");
    assert!(
        err.contains("2 message(s): 2 accepted, 0 refused, 1 error(s)"),
        "{err}"
    );
}

#[test]
fn deliver_bounds_a_relay_that_dribbles_with_reply_timeout() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    // A relay whose greeting comes a byte each 100 ms and never ends.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let started = Instant::now();
        for b in b"220 slow".iter().cycle() {
            if started.elapsed() > Duration::from_secs(120) || stream.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let dir = PluginDir::new("cli-deliver-slow");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let input = dir.path().join("one.jsonl");
    std::fs::write(
        &input,
        "{\"recipient\": \"b@example.net\", \"mime\": \"x\\r\\n\"}\n",
    )
    .unwrap();
    let mut child = Command::new(host_binary())
        .args(["deliver", "--quiet", "--counters", "--max-attempts", "1"])
        .args(["--reply-timeout", "1", "--relay", &relay, "--plugins"])
        .arg(&plugins)
        .arg(&input)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The test's own watchdog: an unbounded attempt fails it, not hangs it.
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("mq-host deliver still running after 60 s: --reply-timeout did not bound it");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let attempt = &result["results"][0];
    assert_eq!(attempt["state"], "intro", "{result}");
    assert_eq!(attempt["result"], "timeout", "{result}");
    let expiry = &result["results"][1];
    assert_eq!(
        expiry["description"], "expired: 1 attempt(s) made, maxattempts is 1",
        "one attempt allowed: {result}"
    );
    let description = attempt["description"].as_str().unwrap();
    assert!(
        description.starts_with("the relay's greeting timed out after 1 s (the reply timeout)"),
        "{description}"
    );
    assert!(stderr.contains("relay_timeouts         1"), "{stderr}");
}

#[test]
fn deliver_refuses_a_zero_limit() {
    for flag in ["--reply-timeout", "--connect-timeout", "--send-timeout"] {
        let (ok, _, err) = run(&["deliver", "--relay", "127.0.0.1:1", flag, "0", "-"]);
        assert!(!ok);
        assert!(
            err.contains(&format!("{flag} 0: a limit must be more than 0 seconds")),
            "{err}"
        );
    }
}
