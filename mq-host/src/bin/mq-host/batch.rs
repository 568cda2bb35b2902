//! `mq-host run` (messages through the message hooks, no network) and
//! `mq-host demo` (the examples on built-in messages).

use crate::*;
use mq_host::Direction;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

pub(crate) fn run(
    args: HostArgs,
    direction: DirectionArg,
    input: Option<PathBuf>,
    output: Option<PathBuf>,
) -> Result<(), String> {
    if args.plugins.is_none() && args.plugin_files.is_empty() {
        return Err("no plugins: give --plugins DIR or --plugin FILE".into());
    }
    let host = start(&args, None)?;
    let direction = match direction {
        DirectionArg::In => Direction::Incoming,
        DirectionArg::Out => Direction::Outgoing,
    };
    let reader: Box<dyn std::io::BufRead> = match input.as_deref() {
        None => Box::new(std::io::stdin().lock()),
        Some(p) if p == Path::new("-") => Box::new(std::io::stdin().lock()),
        Some(p) => {
            Box::new(BufReader::new(std::fs::File::open(p).map_err(|e| {
                format!("cannot open input {}: {e}", p.display())
            })?))
        }
    };
    let writer: Box<dyn Write> = match &output {
        None => Box::new(std::io::stdout().lock()),
        Some(p) => Box::new(
            std::fs::File::create(p)
                .map_err(|e| format!("cannot create output {}: {e}", p.display()))?,
        ),
    };
    let summary =
        mq_host::batch::run_jsonl(&host, direction, reader, writer).map_err(|e| e.to_string())?;
    eprintln!(
        "mq-host: {} message(s): {} accepted, {} refused, {} error(s)",
        summary.messages, summary.accepted, summary.refused, summary.errors
    );
    finish(host, &args);
    Ok(())
}

pub(crate) const DEMO_MESSAGES: &str = include_str!("demo-messages.jsonl");

pub(crate) fn demo(args: HostArgs) -> Result<(), String> {
    let examples = ExamplePlugins::link()?;
    let host = start(&args, Some(&examples.dir))?;
    eprintln!(
        "mq-host demo: {} plugin(s), {} worker(s); sample messages in, results out:",
        host.plugins().len(),
        host.workers()
    );
    let summary = mq_host::batch::run_jsonl(
        &host,
        Direction::Incoming,
        DEMO_MESSAGES.as_bytes(),
        std::io::stdout().lock(),
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "mq-host demo: {} message(s): {} accepted, {} refused, {} error(s)",
        summary.messages, summary.accepted, summary.refused, summary.errors
    );
    finish(host, &args);
    Ok(())
}
