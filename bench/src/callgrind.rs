//! Reading what `valgrind --tool=callgrind` writes: one file per thread with
//! `--separate-threads=yes` (`<out>-01`, `<out>-02`, ...), each with its
//! instruction total and the calls it recorded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The functions whose calls count as allocations.
pub const ALLOCATORS: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "posix_memalign",
    "aligned_alloc",
];

/// What one callgrind file recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Instructions executed while collection was on (the `summary:` line).
    pub instructions: u64,
    /// Calls to the [`ALLOCATORS`]. Callgrind counts calls even while
    /// `--toggle-collect` has collection off, so this is only meaningful
    /// for a run without toggles.
    pub allocations: u64,
}

/// Reads a callgrind file's totals; `None` if it has no `summary:` (or
/// `totals:`) line.
pub fn parse(text: &str) -> Option<Totals> {
    let instructions = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())?;
    // Names are compressed: `cfn=(7) malloc` the first time, `cfn=(7)`
    // after; `fn=` and `cfn=` share the numbering.
    let mut names: HashMap<&str, &str> = HashMap::new();
    let mut callee_allocates = false;
    let mut allocations = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("cfn=") {
            let (id, name) = rest.split_once(' ').unwrap_or((rest, ""));
            if !name.is_empty() {
                names.insert(id, name);
            }
            callee_allocates = names.get(id).is_some_and(|n| ALLOCATORS.contains(n));
        } else if let Some(rest) = line.strip_prefix("fn=") {
            if let Some((id, name)) = rest.split_once(' ') {
                names.insert(id, name);
            }
        } else if let Some(rest) = line.strip_prefix("calls=") {
            if callee_allocates {
                allocations += rest
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            callee_allocates = false;
        }
    }
    Some(Totals {
        instructions,
        allocations,
    })
}

/// The per-thread files of one run whose `--callgrind-out-file` was
/// `dir/stem`, in thread order; empty if there are none.
pub fn thread_files(dir: &Path, stem: &str) -> Vec<PathBuf> {
    let prefix = format!("{stem}-");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(&prefix))
                .is_some_and(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()))
        })
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# callgrind format
events: Ir
summary: 122829

ob=(7) /bin/host
fn=(1042) __rustc::__rust_alloc
0 3
cob=(3) /lib/libc.so.6
cfn=(862) malloc
calls=1167 3281
0 429

fn=(1836) mq_host::runtime::worker::with_current
cfn=(1838) mq_host::api::session::start_event
calls=200 0
0 122829

fn=(1900) plugin
cfn=(862)
calls=3 3281
0 12
cfn=(1020) calloc
calls=4 3619
0 20
";

    #[test]
    fn summary_and_allocator_calls_by_compressed_name() {
        assert_eq!(
            parse(SAMPLE),
            Some(Totals {
                instructions: 122_829,
                allocations: 1167 + 3 + 4,
            })
        );
    }

    #[test]
    fn a_file_without_a_summary_is_none() {
        assert_eq!(parse("# callgrind format\nevents: Ir\n"), None);
    }

    #[test]
    fn totals_line_stands_in_for_summary() {
        assert_eq!(parse("totals: 42\n").map(|t| t.instructions), Some(42));
    }

    #[test]
    fn thread_files_are_the_numbered_ones_in_order() {
        let dir = std::env::temp_dir().join(format!("mq-bench-cg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "run.out",
            "run.out-02",
            "run.out-01",
            "run.out-x1",
            "other.out-01",
        ] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let files = thread_files(&dir, "run.out");
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(names, ["run.out-01", "run.out-02"]);
    }
}
