//! `mq-host new PATH`: a new plugin crate outside this repository, from
//! the files in `template/`: a `cdylib` depending on this checkout's
//! mq-plugin (a path dependency), hooks in `src/lib.rs`, a passing test in
//! `tests/plugin.rs` with mq-plugin-test, and a README.

use std::path::{Path, PathBuf};

/// The template's files: where each goes, and its text with placeholders.
const FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("template/Cargo.toml.in")),
    ("src/lib.rs", include_str!("template/lib.rs.in")),
    ("tests/plugin.rs", include_str!("template/test.rs.in")),
    ("README.md", include_str!("template/README.md.in")),
    (".gitignore", include_str!("template/gitignore.in")),
];

/// The checkout this `mq-host` was built from (its workspace root).
fn this_checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("mq-host is a member of the workspace")
        .to_owned()
}

/// Creates the crate at `path`, named `name` (default: the folder's
/// name), depending on the checkout at `checkout` (default: this one).
pub(crate) fn new(
    path: &Path,
    name: Option<String>,
    checkout: Option<PathBuf>,
) -> Result<(), String> {
    let name = match name {
        Some(name) => name,
        None => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                format!(
                    "{}: no folder name to name the crate; give --name",
                    path.display()
                )
            })?,
    };
    check_name(&name)?;
    let checkout = checkout.unwrap_or_else(this_checkout);
    let checkout = checkout
        .canonicalize()
        .map_err(|e| format!("{}: {e}", checkout.display()))?;
    if !checkout.join("mq-plugin/Cargo.toml").is_file() {
        return Err(format!(
            "{} is no mq-plugin checkout (no mq-plugin/Cargo.toml); give --checkout DIR",
            checkout.display()
        ));
    }
    if path.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return Err(format!(
            "{}: exists and is not empty; choose a new folder",
            path.display()
        ));
    }
    let checkout_text = checkout
        .to_str()
        .ok_or_else(|| format!("{}: the checkout's path is not UTF-8", checkout.display()))?;
    if checkout_text.contains(['"', '\\']) {
        return Err(format!(
            "{checkout_text}: a checkout path with `\"` or `\\` cannot go into Cargo.toml"
        ));
    }
    let lib = name.replace('-', "_");
    for (file, template) in FILES {
        let text = template
            .replace("{{name}}", &name)
            .replace("{{lib}}", &lib)
            .replace("{{checkout}}", checkout_text)
            .replace("{{delay}}", "2");
        write(&path.join(file), &text)?;
    }
    // The checkout's lock file pins the same dependency versions, so the
    // first build resolves offline and shares a target directory's builds.
    let lock = checkout.join("Cargo.lock");
    if lock.is_file() {
        std::fs::copy(&lock, path.join("Cargo.lock"))
            .map_err(|e| format!("{}: {e}", path.join("Cargo.lock").display()))?;
    }
    println!("created plugin crate `{name}` in {}", path.display());
    println!("  cd {} && cargo test", path.display());
    Ok(())
}

fn write(file: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(file, text).map_err(|e| format!("{}: {e}", file.display()))
}

/// A crate name cargo takes: ASCII letters, digits, `-` and `_`, starting
/// with a letter.
fn check_name(name: &str) -> Result<(), String> {
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is no crate name: use ASCII letters, digits, `-` and `_`, starting with a \
             letter (give --name NAME)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_names_are_checked() {
        assert!(check_name("my-plugin_2").is_ok());
        for bad in ["", "2fast", "my plugin", "ü", "a/b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        let dir = std::env::temp_dir().join(format!("mq-host-new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        new(&dir.join("greylist"), None, None).unwrap();
        for (file, _) in FILES {
            let text = std::fs::read_to_string(dir.join("greylist").join(file)).unwrap();
            assert!(!text.contains("{{"), "{file}: {text}");
        }
        let manifest = std::fs::read_to_string(dir.join("greylist/Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"greylist\""), "{manifest}");
        let again = new(&dir.join("greylist"), None, None).unwrap_err();
        assert!(again.contains("not empty"), "{again}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
