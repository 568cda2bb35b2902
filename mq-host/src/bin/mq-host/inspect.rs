//! `mq-host inspect`: what a plugin file is, without running it.

use mq_host::{PluginInfo, PluginKind};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

pub(crate) fn inspect(files: &[PathBuf], verbose: bool) -> ExitCode {
    let mut failed = false;
    for file in files {
        match mq_host::inspect(file) {
            Ok(info) => print_info(&info),
            Err(e) => {
                failed = true;
                eprintln!("mq-host: {e}");
                if let (true, Some(report)) = (verbose, e.report()) {
                    eprintln!("{report}");
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

pub(crate) fn print_info(info: &PluginInfo) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", info.file.display());
    let _ = writeln!(out, "  name:        {}", info.name);
    if let Some(p) = &info.package {
        let _ = writeln!(out, "  package:     {p}");
    }
    if let Some(v) = &info.version {
        let _ = writeln!(out, "  version:     {v}");
    }
    if let Some(d) = &info.description {
        let _ = writeln!(out, "  description: {d}");
    }
    let _ = writeln!(out, "  api version: {}", info.api_version);
    let kind = match &info.kind {
        PluginKind::Rust { framework_abi } => {
            format!("Rust (mq-plugin, framework ABI {framework_abi}; ABI check passed)")
        }
        PluginKind::RustWithoutRootModule => "Rust (root module not checked)".to_owned(),
        PluginKind::C => "C (no root module)".to_owned(),
    };
    let _ = writeln!(out, "  kind:        {kind}");
    let _ = writeln!(out, "  hooks:");
    for hook in &info.hooks {
        let note = match &info.authored_hooks {
            Some(authored) if !authored.contains(hook) => " (framework housekeeping)",
            _ => "",
        };
        let control = if hook.may_take_control {
            "may take control"
        } else {
            "lifecycle"
        };
        let _ = writeln!(out, "    {:<22} {control}{note}", hook.symbol);
    }
}
