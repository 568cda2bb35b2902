//! MailerQ's chain rules with three real plugins: every action at every
//! position, order by file name, the retry bound — with Rust and C probes.

use mq_e2e::*;
use mq_host::{ChainEnd, Direction, Event, Host};

/// Three probes; the plugin at `position` gets `action` for smtp_in_message.
fn three(position: usize, action: &str, kinds: [&std::path::Path; 3]) -> (PluginDir, Host) {
    let dir = PluginDir::new("chain");
    for (i, (name, so)) in ["10-a.so", "20-b.so", "30-c.so"]
        .iter()
        .zip(kinds)
        .enumerate()
    {
        let plan = if i == position {
            format!("smtp_in_message {action}\n")
        } else {
            String::new()
        };
        dir.add(name, so, &plan);
    }
    let host = dir.start();
    (dir, host)
}

fn check_table(kinds: [&std::path::Path; 3]) {
    let names = ["10-a", "20-b", "30-c"];
    for position in 0..3 {
        for action in ["false", "continue", "complete", "retry-once"] {
            let (_dir, host) = three(position, action, kinds);
            let r = run_message(&host);
            let what = format!("{action} at position {position}");
            let expected_calls: Vec<&str> = match action {
                "false" | "continue" => names.to_vec(),
                "complete" => names[..=position].to_vec(),
                "retry-once" => names[..=position]
                    .iter()
                    .chain(names.iter())
                    .copied()
                    .collect(),
                _ => unreachable!(),
            };
            assert_eq!(called(&r), expected_calls, "{what}");
            let expected_end = match action {
                "complete" => ChainEnd::Completed {
                    plugin: names[position].to_owned(),
                },
                _ => ChainEnd::Finished,
            };
            assert_eq!(r.end, expected_end, "{what}");
            assert_eq!(r.retries, u32::from(action == "retry-once"), "{what}");
            let took: Vec<bool> = r.calls.iter().map(|c| c.took_control).collect();
            let expected_took: Vec<bool> = expected_calls
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    *n == names[position]
                        && action != "false"
                        && (action != "retry-once" || i == position)
                })
                .collect();
            assert_eq!(took, expected_took, "{what}");
            let counters = host.shutdown().counters;
            assert_eq!(
                counters.double_resumes + counters.stray_resumes + counters.wrong_thread_resumes,
                0,
                "{what}"
            );
        }
    }
}

#[test]
fn every_action_at_every_position_rust_plugins() {
    let p = rust_probe();
    check_table([&p, &p, &p]);
}

#[test]
fn every_action_at_every_position_c_plugins() {
    let p = c_probe();
    check_table([&p, &p, &p]);
}

#[test]
fn every_action_at_every_position_mixed_plugins() {
    let (r, c) = (rust_probe(), c_probe());
    check_table([&c, &r, &c]);
    check_table([&r, &c, &r]);
}

#[test]
fn plugins_run_in_byte_order_of_file_name() {
    let dir = PluginDir::new("order");
    let p = rust_probe();
    for name in ["b.so", "2-x.so", "10-y.so", "B.so", "a.so"] {
        dir.add(name, &p, "");
    }
    std::fs::write(dir.path().join("notes.txt"), "not a plugin").unwrap();
    let host = dir.start();
    let names: Vec<String> = host.plugins().iter().map(|p| p.name.clone()).collect();
    assert_eq!(names, ["10-y", "2-x", "B", "a", "b"]);
    let r = run_message(&host);
    assert_eq!(called(&r), names);
    let logged: Vec<String> = probe_lines(&r)
        .into_iter()
        .filter_map(|l| l.strip_suffix(" smtp_in_message").map(str::to_owned))
        .collect();
    assert_eq!(logged, names, "each plugin knows its own file name");
}

#[test]
fn a_retry_loop_is_cut_after_the_limit() {
    let dir = PluginDir::new("retry-loop");
    dir.add("10-a.so", &rust_probe(), "");
    dir.add("20-b.so", &c_probe(), "smtp_in_message retry\n");
    let host = dir.builder().retry_limit(5).start().unwrap();
    let r = run_message(&host);
    assert_eq!(r.end, ChainEnd::RetryLimit);
    assert_eq!(r.retries, 6);
    assert_eq!(r.calls.len(), 12, "two plugins, six rounds");
    assert!(
        r.log
            .iter()
            .any(|l| l.text.contains("retried 6 times (limit 5)")),
        "{:#?}",
        r.log
    );
    assert_eq!(host.counters().retry_loops_cut, 1);
}

#[test]
fn a_hook_nobody_defines_finishes_at_once() {
    let dir = PluginDir::new("empty");
    dir.add("10-stamp.so", &plugin_so("mq-example-stamp"), "");
    let host = dir.start();
    let r = host.run_event(Direction::Incoming, Event::Connect).unwrap();
    assert_eq!(r.end, ChainEnd::Finished);
    assert!(r.calls.is_empty());
}

#[test]
fn complete_and_retry_from_different_plugins_on_one_connection() {
    let dir = PluginDir::new("session");
    dir.add(
        "10-a.so",
        &rust_probe(),
        "smtp_in_rcptto complete\nsmtp_in_mailfrom retry-once\n",
    );
    dir.add("20-b.so", &c_probe(), "smtp_in_mailfrom continue\n");
    let host = dir.start();
    let mut session = host.open(Direction::Incoming).unwrap();
    let r = session
        .run(Event::MailFrom("a@example.com".into()))
        .unwrap();
    assert_eq!(called(&r), ["10-a", "10-a", "20-b"]);
    assert_eq!(r.retries, 1);
    assert_eq!(r.end, ChainEnd::Finished);
    let r = session.run(Event::RcptTo("b@example.org".into())).unwrap();
    assert_eq!(
        r.end,
        ChainEnd::Completed {
            plugin: "10-a".into()
        }
    );
    assert_eq!(r.calls.len(), 1);
    session.close().unwrap();
}
