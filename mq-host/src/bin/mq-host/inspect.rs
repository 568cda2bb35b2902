//! `mq-host inspect`: what a plugin file is, without running it.

use mq_host::{escape_controls, LoadError, LoadErrorKind, PluginInfo, PluginKind};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Shows each file; fails if any is refused, or its `mq_version()` is not
/// `api_version` (the file is still shown, the refusal on stderr).
pub(crate) fn inspect(files: &[PathBuf], verbose: bool, api_version: i32) -> ExitCode {
    let mut failed = false;
    for file in files {
        match mq_host::inspect(file) {
            Ok(info) => {
                // A closed stdout is no reason to fail.
                let _ = write_info(&mut std::io::stdout().lock(), &info, api_version);
                if info.api_version != api_version {
                    failed = true;
                    let refused = LoadError {
                        file: info.file.clone(),
                        kind: LoadErrorKind::WrongApiVersion {
                            found: info.api_version,
                            expected: api_version,
                        },
                    };
                    eprintln!("mq-host: {}", escape_controls(&refused.to_string()));
                }
            }
            Err(e) => {
                failed = true;
                eprintln!("mq-host: {}", escape_controls(&e.to_string()));
                if let (true, Some(report)) = (verbose, e.report()) {
                    // A multi-line report; each line escaped.
                    for line in report.lines() {
                        eprintln!("{}", escape_controls(line));
                    }
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

/// Writes what `info` says; its API version is compared with
/// `api_version`, the one the host runs. Name, package, version and
/// description come from the plugin (and the path from whoever named the
/// file): each is written escaped, so a plugin cannot add lines or
/// terminal controls.
pub(crate) fn write_info(
    out: &mut impl Write,
    info: &PluginInfo,
    api_version: i32,
) -> std::io::Result<()> {
    writeln!(out, "{}", escape_controls(&info.file.display().to_string()))?;
    writeln!(out, "  name:        {}", escape_controls(&info.name))?;
    if let Some(p) = &info.package {
        writeln!(out, "  package:     {}", escape_controls(p))?;
    }
    if let Some(v) = &info.version {
        writeln!(out, "  version:     {}", escape_controls(v))?;
    }
    if let Some(d) = &info.description {
        writeln!(out, "  description: {}", escape_controls(d))?;
    }
    let verdict = if info.api_version == api_version {
        "matches the host's".to_owned()
    } else {
        format!("the host runs {api_version}: refused")
    };
    writeln!(
        out,
        "  api version: {} (mq_version(); {verdict})",
        info.api_version
    )?;
    let kind = match &info.kind {
        PluginKind::Rust { framework_abi } => {
            format!("Rust (mq-plugin, framework ABI {framework_abi}; ABI check passed)")
        }
        PluginKind::RustWithoutRootModule => "Rust (root module not checked)".to_owned(),
        PluginKind::C => "C (no root module)".to_owned(),
    };
    writeln!(out, "  kind:        {kind}")?;
    writeln!(out, "  hooks:")?;
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
        writeln!(out, "    {:<22} {control}{note}", hook.symbol)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_plugin_says_about_itself_stays_on_its_line() {
        let info = PluginInfo {
            file: "/plugins/10-x\n.so".into(),
            name: "10-x\n".into(),
            package: Some("pkg\x1b[2J".into()),
            version: Some("1.0\r\n  hooks:".into()),
            description: Some("harmless\n  kind:        C\u{202e}".into()),
            api_version: 1,
            kind: PluginKind::C,
            hooks: Vec::new(),
            authored_hooks: None,
        };
        let mut out = Vec::new();
        write_info(&mut out, &info, 1).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            concat!(
                "/plugins/10-x\\n.so\n",
                "  name:        10-x\\n\n",
                "  package:     pkg\\x1b[2J\n",
                "  version:     1.0\\r\\n  hooks:\n",
                "  description: harmless\\n  kind:        C\\u{202e}\n",
                "  api version: 1 (mq_version(); matches the host's)\n",
                "  kind:        C (no root module)\n",
                "  hooks:\n",
            )
        );
    }
}
