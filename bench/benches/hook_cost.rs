//! What a hook costs in C and in Rust, in the same host.
//!
//! `cargo bench -p mq-bench --bench hook_cost` builds the two bench plugins
//! (`bench/plugins/c-hooks`, `bench/plugins/rust-hooks`: the same hooks
//! doing the same work), runs each case's chain on a host with one worker
//! and one of them loaded, and prints per chain run:
//!
//! - instructions and `malloc` calls from `valgrind --tool=callgrind`, the
//!   process run with `N` and with `N + M` chain runs and the difference
//!   divided by `M`, so start-up cancels out. Two views: *in the plugin's
//!   calls* (collection on only inside the hook and the plugin's timer and
//!   fd callbacks, with the host functions they call; repeatable to well
//!   under 1%) and *on the worker* (the worker thread's whole count minus
//!   the same run on a host without plugins: dispatch, loop turns and
//!   timers too; the median of three runs, whose spread is printed);
//! - nanoseconds: the chain's duration as the worker measures it (from its
//!   start to its end), median of many runs, minus the empty chain's; the
//!   three hosts run in turn so that they see the same machine;
//!
//! then the heap and resident memory per held async hook with many held at
//! once on one worker. `--quick` runs small counts and only the `nothing`
//! case under valgrind (a CI smoke run); without valgrind the instruction
//! and allocation columns are left out.
//!
//! Not a test: it asserts nothing about speed. The callgrind output files
//! stay in `target/hook-cost/`; `callgrind_annotate --inclusive=yes` on
//! `<case>-rust-plugin-<N+M>.out-02` shows where the Rust path spends.

use mq_bench::{
    build_plugins, callgrind, memory_in_use, open_sessions, run_batch, Case, Lang, PluginDir,
};
use mq_host::{Direction, Event, Host};
use std::process::Command;
use std::time::Duration;

/// How much each part runs.
struct Plan {
    /// Connections per batch in the valgrind runs (one chain run each).
    sessions: usize,
    /// Timed chain runs per case and host (the 1 ms timer case: a tenth).
    timed_runs: usize,
    /// Batches of the short and the long valgrind run.
    valgrind_batches: (usize, usize),
    /// Cases measured under valgrind.
    valgrind_cases: &'static [Case],
    /// Repeats of each worker-view measurement (the median is shown).
    worker_repeats: usize,
    /// Async hooks held at once for the memory figure.
    holds: usize,
}

const FULL: Plan = Plan {
    sessions: 200,
    timed_runs: 20_000,
    valgrind_batches: (2, 12),
    valgrind_cases: &Case::ALL,
    worker_repeats: 3,
    holds: 10_000,
};

const QUICK: Plan = Plan {
    sessions: 50,
    timed_runs: 300,
    valgrind_batches: (1, 3),
    valgrind_cases: &[Case::Nothing],
    worker_repeats: 1,
    holds: 500,
};

const LANGS: [Lang; 3] = [Lang::Baseline, Lang::C, Lang::Rust];

/// The plugin's entry points: its hooks, and the callbacks it gives the
/// host (C: `go_on`, `readable`; Rust: mq-plugin's timer, fd and executor
/// callbacks). Callgrind collects only inside these.
const PLUGIN_ENTRIES: &[&str] = &[
    "mq_smtp_in_*",
    "go_on",
    "readable",
    "mq_plugin::executor::run_from_timer",
    "mq_plugin::executor::hold::resume_from_loop",
    "mq_plugin::fd::ready",
    "mq_plugin::timer::fire",
    "mq_plugin::timer::sleeps::fire",
];

/// Per chain run, from callgrind. Allocations are counted only without
/// `--toggle-collect`: callgrind counts calls even while collection is off.
#[derive(Clone, Copy, Default)]
struct Counts {
    instructions: f64,
    allocations: f64,
    /// Instructions: the largest minus the smallest of the repeats.
    spread: f64,
}

/// One case's figures; the arrays are indexed like [`LANGS`].
struct Row {
    case: Case,
    ns: [f64; 3],
    /// (in the plugin's calls, on the worker), if measured.
    counted: Option<([Counts; 3], [Counts; 3])>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        child(&args[at + 1..]);
        // Skip the shutdown: it is the same in both runs of a pair.
        std::process::exit(0);
    }
    let plan = if args.iter().any(|a| a == "--quick") {
        &QUICK
    } else {
        &FULL
    };
    build_plugins();
    let valgrind = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());

    let rows: Vec<Row> = Case::ALL
        .into_iter()
        .map(|case| Row {
            case,
            ns: timed(case, plan),
            counted: (valgrind && plan.valgrind_cases.contains(&case)).then(|| {
                (
                    LANGS.map(|lang| match lang {
                        Lang::Baseline => Counts::default(),
                        _ => per_run(case, lang, plan, View::Plugin),
                    }),
                    LANGS.map(|lang| per_run(case, lang, plan, View::Worker)),
                )
            }),
        })
        .collect();
    if std::ptr::eq(plan, &QUICK) {
        println!("--quick: small counts, a smoke run; compare the numbers of a full run");
    }
    print_tables(&rows);
    if !valgrind {
        println!("(valgrind not found: no instruction or allocation counts)");
    }
    held_memory(plan);
}

/// The `--child <case> <lang> <batches> <sessions>` run that valgrind
/// measures.
fn child(args: &[String]) {
    let [case, lang, batches, sessions] = args else {
        panic!("usage: --child <case> <lang> <batches> <sessions>");
    };
    let case = Case::from_name(case).expect("a case name");
    let lang = Lang::from_name(lang).expect("a language name");
    let batches: usize = batches.parse().expect("a batch count");
    let sessions: usize = sessions.parse().expect("a session count");
    let dir = PluginDir::new(lang);
    let host = dir.start();
    let open = open_sessions(&host, sessions);
    let event = case.event();
    for _ in 0..batches {
        run_batch(&open, &event);
    }
}

/// Median nanoseconds per chain run, as the worker measures the chain,
/// for each of [`LANGS`]; the three hosts take turns run by run.
fn timed(case: Case, plan: &Plan) -> [f64; 3] {
    let dirs = LANGS.map(PluginDir::new);
    let hosts: Vec<Host> = dirs.iter().map(PluginDir::start).collect();
    let mut sessions: Vec<_> = hosts
        .iter()
        .map(|h| h.open(Direction::Incoming).expect("open a session"))
        .collect();
    let runs = match case {
        Case::Timer => plan.timed_runs / 10,
        _ => plan.timed_runs,
    };
    let event = case.event();
    let mut times = vec![Vec::with_capacity(runs); LANGS.len()];
    for i in 0..runs + 100 {
        for (session, times) in sessions.iter_mut().zip(&mut times) {
            let result = session.run(event.clone()).expect("chain run");
            // The first 100 runs warm up.
            if i >= 100 {
                times.push(result.elapsed);
            }
        }
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2].as_nanos() as f64
    };
    let mut out = [0.0; 3];
    for (o, t) in out.iter_mut().zip(&mut times) {
        *o = median(t);
    }
    out
}

/// Which instructions a callgrind run counts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum View {
    /// Only inside the plugin's entry points ([`PLUGIN_ENTRIES`]).
    Plugin,
    /// Every thread but the main one (the worker).
    Worker,
}

/// Instructions and allocations per chain run: the difference between a
/// long and a short run of the child.
///
/// The worker view is repeated [`Plan::worker_repeats`] times and the
/// median taken: how the worker's loop turns interleave with the main
/// thread's submissions varies from run to run (the plugin view does not
/// see the loop and varies by well under 1%).
fn per_run(case: Case, lang: Lang, plan: &Plan, view: View) -> Counts {
    let (short, long) = plan.valgrind_batches;
    let runs = ((long - short) * plan.sessions) as f64;
    let repeats = match view {
        View::Plugin => 1,
        View::Worker => plan.worker_repeats,
    };
    let mut samples: Vec<(f64, f64)> = (0..repeats)
        .map(|_| {
            let a = counted(case, lang, short, plan.sessions, view);
            let b = counted(case, lang, long, plan.sessions, view);
            (
                (b.instructions - a.instructions) / runs,
                (b.allocations - a.allocations) / runs,
            )
        })
        .collect();
    let spread = samples.iter().map(|s| s.0).fold(f64::MIN, f64::max)
        - samples.iter().map(|s| s.0).fold(f64::MAX, f64::min);
    let median = |samples: &mut Vec<(f64, f64)>, key: fn(&(f64, f64)) -> f64| {
        samples.sort_by(|x, y| key(x).total_cmp(&key(y)));
        key(&samples[samples.len() / 2])
    };
    Counts {
        instructions: median(&mut samples, |s| s.0),
        allocations: median(&mut samples, |s| s.1),
        spread,
    }
}

/// Runs the child under callgrind and returns its totals.
fn counted(case: Case, lang: Lang, batches: usize, sessions: usize, view: View) -> Counts {
    let out_dir = mq_bench::profile_dir()
        .parent()
        .expect("target dir")
        .join("hook-cost");
    std::fs::create_dir_all(&out_dir).expect("create target/hook-cost");
    let stem = format!(
        "{}-{}-{}-{batches}.out",
        case.name(),
        lang.name(),
        match view {
            View::Plugin => "plugin",
            View::Worker => "worker",
        }
    );
    let out = out_dir.join(&stem);
    let mut cmd = Command::new("valgrind");
    cmd.args(["--tool=callgrind", "--separate-threads=yes"])
        .arg(format!("--callgrind-out-file={}", out.display()));
    if view == View::Plugin {
        for entry in PLUGIN_ENTRIES {
            cmd.arg(format!("--toggle-collect={entry}"));
        }
    }
    let output = cmd
        .arg(std::env::current_exe().expect("bench executable"))
        .args(["--child", case.name(), lang.name()])
        .arg(batches.to_string())
        .arg(sessions.to_string())
        .output()
        .expect("run valgrind");
    assert!(
        output.status.success(),
        "valgrind run of {} / {} failed: {}\n{}",
        case.name(),
        lang.name(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let files = callgrind::thread_files(&out_dir, &stem);
    assert!(!files.is_empty(), "callgrind wrote no {stem}-NN file");
    let mut total = Counts::default();
    // Thread 1 is this bench's main thread, which submits and waits.
    let skip = usize::from(view == View::Worker);
    for file in &files[skip..] {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let totals = callgrind::parse(&text)
            .unwrap_or_else(|| panic!("no summary line in {}", file.display()));
        total.instructions += totals.instructions as f64;
        total.allocations += totals.allocations as f64;
    }
    total
}

fn ratio(c: f64, rust: f64) -> String {
    if c.abs() < 0.5 {
        "-".into()
    } else {
        format!("{:.1}x", rust / c)
    }
}

fn print_tables(rows: &[Row]) {
    println!();
    println!("instructions per chain run (callgrind)");
    println!();
    println!(
        "| {:<46} | {:>7} | {:>7} | {:>6} | {:>8} | {:>8} | {:>6} |",
        "case", "C", "Rust", "ratio", "C wkr", "Rust wkr", "ratio"
    );
    println!(
        "|{:-<48}|{:->9}|{:->9}|{:->8}|{:->10}|{:->10}|{:->8}|",
        "", ":", ":", ":", ":", ":", ":"
    );
    for row in rows {
        let cells: Vec<String> = match &row.counted {
            Some((plugin, worker)) => {
                let (pc, pr) = (plugin[1].instructions, plugin[2].instructions);
                let wc = worker[1].instructions - worker[0].instructions;
                let wr = worker[2].instructions - worker[0].instructions;
                vec![
                    format!("{pc:.0}"),
                    format!("{pr:.0}"),
                    ratio(pc, pr),
                    format!("{wc:.0}"),
                    format!("{wr:.0}"),
                    ratio(wc, wr),
                ]
            }
            None => vec!["n/a".into(); 6],
        };
        println!(
            "| {:<46} | {:>7} | {:>7} | {:>6} | {:>8} | {:>8} | {:>6} |",
            row.case.title(),
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5]
        );
    }
    println!();
    println!("C, Rust: in the plugin's calls (its hook and callbacks, with the host functions they call)");
    println!("wkr: the worker thread's whole count minus the empty chain's (dispatch, loop and timers too),");
    println!("     the median of repeated runs; spread (largest minus smallest) per run, baseline / C / Rust:");
    for row in rows {
        if let Some((_, worker)) = &row.counted {
            println!(
                "     {:<10} {:.0} / {:.0} / {:.0}",
                row.case.name(),
                worker[0].spread,
                worker[1].spread,
                worker[2].spread
            );
        }
    }
    println!();
    println!("allocations and time per chain run");
    println!();
    println!(
        "| {:<46} | {:>8} | {:>11} | {:>7} | {:>7} | {:>6} |",
        "case", "C allocs", "Rust allocs", "C ns", "Rust ns", "ratio"
    );
    println!(
        "|{:-<48}|{:->10}|{:->13}|{:->9}|{:->9}|{:->8}|",
        "", ":", ":", ":", ":", ":"
    );
    for row in rows {
        let cells: Vec<String> = match &row.counted {
            Some((_, worker)) => vec![
                format!("{:.1}", worker[1].allocations - worker[0].allocations),
                format!("{:.1}", worker[2].allocations - worker[0].allocations),
            ],
            None => vec!["n/a".into(); 2],
        };
        let (c_ns, rs_ns) = (row.ns[1] - row.ns[0], row.ns[2] - row.ns[0]);
        println!(
            "| {:<46} | {:>8} | {:>11} | {:>7.0} | {:>7.0} | {:>6} |",
            row.case.title(),
            cells[0],
            cells[1],
            c_ns,
            rs_ns,
            ratio(c_ns, rs_ns)
        );
    }
    println!();
    println!(
        "allocs: calls to malloc & co. on the worker minus the empty chain's (the host's share included)"
    );
    println!("ns: the chain's duration on the worker, median, minus the empty chain's");
    println!();
    println!("the empty chain (host without plugins, per chain run; subtracted above):");
    for row in rows {
        let counts = match &row.counted {
            Some((_, worker)) => format!(
                "{:.0} instructions, {:.1} allocations on the worker, ",
                worker[0].instructions, worker[0].allocations
            ),
            None => String::new(),
        };
        println!("  {:<10} {counts}{:.0} ns", row.case.name(), row.ns[0]);
    }
}

/// Heap and RSS per held async hook (`smtp_in_authenticate`: a 2 s timer),
/// with `plan.holds` held at once on one worker.
fn held_memory(plan: &Plan) {
    println!();
    println!(
        "memory per held hook (smtp_in_authenticate, a 2 s timer; {} held at once on one worker)",
        plan.holds
    );
    let mut heap = [0.0; 2];
    for (i, lang) in [Lang::C, Lang::Rust].into_iter().enumerate() {
        let (h, rss) = per_hold(lang, plan.holds);
        heap[i] = h;
        println!(
            "  {:<4}: {h:>7.0} B heap, {rss:>7.0} B resident per hold",
            lang.name()
        );
    }
    println!(
        "  Rust / C: {}; the Rust framework's share (Rust minus C): {:.0} B heap",
        ratio(heap[0], heap[1]),
        heap[1] - heap[0]
    );
}

fn per_hold(lang: Lang, holds: usize) -> (f64, f64) {
    let dir = PluginDir::new(lang);
    let host = dir.start();
    let sessions = open_sessions(&host, holds);
    let mut probe = host.open(Direction::Incoming).expect("open");
    let event = Event::Authenticate {
        login: b"user".to_vec(),
        password: b"secret".to_vec(),
    };
    // Warm: one hold and its round trip, so lazily made state is made.
    run_batch(&sessions[..1], &event);
    probe.run(Event::MailFrom(String::new())).expect("probe");
    let before = memory_in_use();
    let pending: Vec<_> = sessions
        .iter()
        .map(|s| s.submit(event.clone()).expect("submit"))
        .collect();
    // The worker takes posted work in order: when this returns, every
    // submitted chain has started (and is held, for C and Rust).
    probe.run(Event::MailFrom(String::new())).expect("probe");
    let after = memory_in_use();
    for p in pending {
        p.wait().expect("held chain");
    }
    let per = |a: u64, b: u64| (b as f64 - a as f64) / holds as f64;
    (per(before.0, after.0), per(before.1, after.1))
}
