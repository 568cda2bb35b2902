//! mq-plugin's build script picks `MQ_API_VERSION` from a MailerQ header or
//! the environment. Run here as cargo runs it (its own `OUT_DIR`), so the
//! shared target directory is not rebuilt for another version.

use mq_e2e::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// mq-plugin's compiled build script (the newest, if cargo kept several).
fn build_script() -> PathBuf {
    let build = built().join("build");
    std::fs::read_dir(&build)
        .expect("target/<profile>/build")
        .filter_map(|e| e.ok())
        // `mq-plugin-<hash>`, not another package's (`mq-plugin-test-<hash>`).
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("mq-plugin-")
                .is_some_and(|hash| hash.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .map(|e| e.path().join("build-script-build"))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect("mq-plugin's build script is built")
}

/// Runs the build script with `env` (and neither variable inherited);
/// returns its output and the file it wrote.
fn run_build_script(dir: &Path, env: &[(&str, &str)]) -> (Output, String) {
    let out_dir = dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut cmd = Command::new(build_script());
    cmd.env_remove("MQ_API_VERSION")
        .env_remove("MQ_PLUGIN_MAILERQ_HEADER")
        .env("OUT_DIR", &out_dir)
        .env(
            "CARGO_MANIFEST_DIR",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../mq-plugin"),
        )
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../mq-plugin"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = cmd.output().expect("run the build script");
    let generated = std::fs::read_to_string(out_dir.join("api_version.rs")).unwrap_or_default();
    (output, generated)
}

#[test]
fn the_version_is_read_from_the_header_named_in_the_environment() {
    let dir = PluginDir::new("api-header");
    let header = dir.path().join("mailerq.h");
    std::fs::write(
        &header,
        "/* MailerQ's header */\n#define MQ_API_VERSION 7\n#define MQ_READ 1\n",
    )
    .unwrap();
    let (output, generated) = run_build_script(
        dir.path(),
        &[("MQ_PLUGIN_MAILERQ_HEADER", header.to_str().unwrap())],
    );
    assert!(output.status.success(), "{output:?}");
    assert!(
        generated.contains("pub const API_VERSION: ::core::ffi::c_int = 7;"),
        "{generated}"
    );
    assert!(generated.contains(&format!("{:?}", header.display().to_string())));
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains(&format!("cargo:rerun-if-changed={}", header.display()))
            && said.contains("cargo:rerun-if-env-changed=MQ_PLUGIN_MAILERQ_HEADER")
            && said.contains("cargo:rerun-if-env-changed=MQ_API_VERSION"),
        "a changed header or variable rebuilds: {said}"
    );
}

#[test]
fn the_environment_variable_wins_and_a_bad_setting_stops_the_build() {
    let dir = PluginDir::new("api-env");
    let (output, generated) = run_build_script(
        dir.path(),
        &[
            ("MQ_API_VERSION", "12"),
            ("MQ_PLUGIN_MAILERQ_HEADER", "/no/such/mailerq.h"),
        ],
    );
    assert!(output.status.success(), "{output:?}");
    assert!(generated.contains("c_int = 12;"), "{generated}");

    let dir = PluginDir::new("api-bad");
    let (output, _) = run_build_script(
        dir.path(),
        &[("MQ_PLUGIN_MAILERQ_HEADER", "/no/such/mailerq.h")],
    );
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(
            "cannot pick MQ_API_VERSION: MQ_PLUGIN_MAILERQ_HEADER=/no/such/mailerq.h: no such file"
        ),
        "{output:?}"
    );
}

#[test]
fn the_plugins_built_here_return_the_default() {
    // Neither variable is set for the test build (CI sets none), and no
    // MailerQ is installed where the default headers are looked for.
    if std::env::var_os("MQ_API_VERSION").is_some()
        || std::env::var_os("MQ_PLUGIN_MAILERQ_HEADER").is_some()
        || mq_host::hook_table::api_version::DEFAULT_HEADERS
            .iter()
            .any(|h| Path::new(h).exists())
    {
        return;
    }
    let info = mq_host::inspect(&rust_probe()).unwrap();
    assert_eq!(info.api_version, mq_host::hook_table::MQ_API_VERSION);
}
