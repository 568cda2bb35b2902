//! Finding the plugin files a test loads: the crate under test's own
//! cdylib (cargo builds it for the crate's integration tests), another
//! package's (built with cargo on demand), or a file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// A plugin file for a [`TestHost`](crate::TestHost) to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugin {
    path: PathBuf,
}

impl Plugin {
    /// The plugin of the crate whose tests run: its `cdylib`. Cargo does
    /// not build a `cdylib`-only library for the crate's integration tests
    /// (they cannot link it), so this runs `cargo build --lib` for the
    /// crate once per test process, into the test binary's target
    /// directory and profile (a no-op when it is fresh). Its name comes
    /// from the crate's `Cargo.toml` (`[lib] name`, else the package name
    /// with `-` as `_`).
    ///
    /// Panics, saying what to do, when the tests do not run under cargo
    /// or no `.so` is built (a crate without `crate-type = ["cdylib"]`).
    ///
    /// ```no_run
    /// let plugin = mq_plugin_test::Plugin::this_crate();
    /// println!("{}", plugin.path().display());
    /// ```
    pub fn this_crate() -> Plugin {
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| {
            panic!(
                "mq-plugin-test: CARGO_MANIFEST_DIR is not set; run the tests with `cargo test` \
                 (or load the plugin with `Plugin::file`)"
            )
        });
        let manifest = PathBuf::from(manifest_dir).join("Cargo.toml");
        build(&manifest.display().to_string(), |cmd| {
            cmd.arg("--lib").arg("--manifest-path").arg(&manifest);
        });
        let text = std::fs::read_to_string(&manifest)
            .unwrap_or_else(|e| panic!("mq-plugin-test: cannot read {}: {e}", manifest.display()));
        let name = lib_name(&text).unwrap_or_else(|| {
            panic!(
                "mq-plugin-test: {} names no package (`[package] name`)",
                manifest.display()
            )
        });
        let file = format!("lib{name}.so");
        let profile = profile_dir();
        let path = profile.join(&file);
        if !path.is_file() {
            panic!(
                "mq-plugin-test: `{file}` is not next to this test binary (looked for {}). The \
                 crate under test must build a shared object: put `[lib] crate-type = \
                 [\"cdylib\"]` in {}",
                path.display(),
                manifest.display()
            );
        }
        Plugin::file(path)
    }

    /// The plugin built by package `package` of the workspace of the
    /// crate under test (e.g. another plugin of your workspace, for a
    /// chain): built with `cargo build -p PACKAGE` into the same target
    /// directory once per test process. Its file is
    /// `lib<package with - as _>.so` (also for a C plugin whose build
    /// script puts it there, as `examples/c-allowlist` does).
    ///
    /// ```no_run
    /// let stamp = mq_plugin_test::Plugin::package("mq-example-stamp");
    /// ```
    pub fn package(package: &str) -> Plugin {
        build(package, |cmd| {
            cmd.args(["-p", package]);
            if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
                cmd.current_dir(dir);
            }
        });
        let file = format!("lib{}.so", package.replace('-', "_"));
        let path = profile_dir().join(&file);
        assert!(
            path.is_file(),
            "mq-plugin-test: `cargo build -p {package}` made no {} (is it a cdylib plugin \
             package?)",
            path.display()
        );
        Plugin::file(path)
    }

    /// A plugin file (a Rust or C plugin's `.so`).
    ///
    /// ```
    /// let plugin = mq_plugin_test::Plugin::file("target/debug/libgreylist.so");
    /// assert!(plugin.path().ends_with("libgreylist.so"));
    /// ```
    pub fn file(path: impl Into<PathBuf>) -> Plugin {
        Plugin { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name the host gives the plugin in a [`TestHost`](crate::TestHost):
    /// its file's name without `lib` and `.so` (`libmy_plugin.so` is
    /// `my_plugin`; a second copy of one plugin in a chain is `my_plugin-2`).
    /// Steps match names with `-` and `_` alike, so `"my-plugin"` finds it.
    ///
    /// ```
    /// let plugin = mq_plugin_test::Plugin::file("target/debug/libmy_plugin.so");
    /// assert_eq!(plugin.name(), "my_plugin");
    /// ```
    pub fn name(&self) -> String {
        let stem = self
            .path
            .file_stem()
            .map_or_else(|| "plugin".into(), |s| s.to_string_lossy().into_owned());
        match stem.strip_prefix("lib") {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => stem,
        }
    }
}

/// The cargo profile directory the test binary runs from
/// (`<target>/<profile>`; the binary itself is in its `deps/`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("mq-plugin-test: the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_owned)
        .unwrap_or_else(|| {
            panic!(
                "mq-plugin-test: {} is not in a cargo target directory (`<target>/<profile>/deps/`)",
                exe.display()
            )
        })
}

/// Runs `cargo build` (with the arguments `what` adds) once per process
/// for each `key`, into this test binary's target directory and profile.
fn build(key: &str, what: impl FnOnce(&mut Command)) {
    static BUILT: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if built.contains(key) {
        return;
    }
    let profile = profile_dir();
    let target = profile.parent().expect("a target directory").to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet"])
        .arg("--target-dir")
        .arg(&target);
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    what(&mut cmd);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("mq-plugin-test: cannot run cargo to build {key}: {e}"));
    assert!(
        status.success(),
        "mq-plugin-test: building {key} failed ({status}): {cmd:?}"
    );
    built.insert(key.to_owned());
}

/// The library name in a `Cargo.toml`: `[lib] name`, else `[package]
/// name` with `-` as `_`. A line scan for these two keys (enough for a
/// plugin crate's manifest), so that no TOML parser is needed.
fn lib_name(manifest: &str) -> Option<String> {
    let (mut section, mut package, mut lib) = (String::new(), None, None);
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() != "name" {
            continue;
        }
        let value = value.trim().trim_matches('"').to_owned();
        match section.as_str() {
            "package" => package = Some(value),
            "lib" => lib = Some(value),
            _ => {}
        }
    }
    lib.or(package).map(|name| name.replace('-', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lib_name_is_the_package_name_unless_lib_names_one() {
        let package = "[package]\nname = \"my-plugin\" # a comment\nversion = \"0.1.0\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n";
        assert_eq!(lib_name(package).as_deref(), Some("my_plugin"));
        let named = format!("{package}name = \"greylist\"\n");
        assert_eq!(lib_name(&named).as_deref(), Some("greylist"));
        let dependency = "[package]\nname = \"a\"\n[dependencies.b]\nname = \"c\"\n";
        assert_eq!(lib_name(dependency).as_deref(), Some("a"));
        assert_eq!(lib_name("[workspace]\n"), None);
    }
}
