//! Picks the `MQ_API_VERSION` that the plugins built with this crate return
//! from `mq_version()`: `MQ_API_VERSION=N`, else the `mailerq.h` named by
//! `MQ_PLUGIN_MAILERQ_HEADER`, else MailerQ's installed `mailerq.h`, else
//! this project's default (rules: `mq_hook_table::api_version`).

use mq_hook_table::api_version::{self, Source, DEFAULT_HEADERS, ENV_HEADER, ENV_VERSION};
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed={ENV_VERSION}");
    println!("cargo:rerun-if-env-changed={ENV_HEADER}");
    let env_version = std::env::var(ENV_VERSION).ok();
    let env_header = std::env::var_os(ENV_HEADER).map(PathBuf::from);
    // Only headers that exist are watched: cargo reruns a build script on
    // every build for a watched path that is missing. (A header installed
    // later is seen after `cargo clean -p mq-plugin`, or name it in
    // MQ_PLUGIN_MAILERQ_HEADER.)
    let candidates = env_header
        .iter()
        .cloned()
        .chain(DEFAULT_HEADERS.iter().map(PathBuf::from));
    for path in candidates.filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let read = |path: &Path| path.exists().then(|| std::fs::read_to_string(path));
    let picked = match api_version::pick(env_version.as_deref(), env_header.as_deref(), read) {
        Ok(picked) => picked,
        Err(e) => {
            eprintln!("error: mq-plugin: cannot pick MQ_API_VERSION: {e}");
            std::process::exit(1);
        }
    };
    let source = match &picked.source {
        Source::Env => format!("the environment variable {ENV_VERSION}"),
        Source::Header(path) => path.display().to_string(),
        Source::Default => "mq-plugin's default".to_owned(),
    };
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let code = format!(
        "/// The `MQ_API_VERSION` this crate was built for: what every plugin\n\
         /// built with it returns from `mq_version()`.\n\
         pub const API_VERSION: ::core::ffi::c_int = {};\n\
         /// Where [`API_VERSION`] came from.\n\
         pub const API_VERSION_SOURCE: &str = {:?};\n",
        picked.version, source
    );
    std::fs::write(out.join("api_version.rs"), code).expect("write api_version.rs");
}
