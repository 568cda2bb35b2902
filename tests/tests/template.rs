//! `mq-host new`: the crate it makes outside the repository builds and
//! its test passes (offline, sharing this build's target directory so
//! that only the new crate and this workspace's crates are compiled).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn a_new_plugin_crate_passes_its_own_test() {
    let host = mq_e2e::host_binary();
    let dir = std::env::temp_dir().join(format!("mq-host-new-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let crate_dir: PathBuf = dir.join("spam-gate");

    let out = Command::new(&host)
        .arg("new")
        .arg(&crate_dir)
        .output()
        .expect("run mq-host new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in ["Cargo.toml", "src/lib.rs", "tests/plugin.rs", "README.md"] {
        assert!(crate_dir.join(file).is_file(), "{file} is missing");
    }
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("crate-type = [\"cdylib\"]"), "{manifest}");
    assert!(manifest.contains("\n[workspace]\n"), "{manifest}");

    // A second `new` into the same folder is refused.
    let again = Command::new(&host)
        .arg("new")
        .arg(&crate_dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    let target = mq_e2e::profile_dir().parent().unwrap().to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let test = Command::new(cargo)
        .args(["test", "--offline"])
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO_NET_OFFLINE", "true")
        .current_dir(&crate_dir)
        .output()
        .expect("run cargo test in the new crate");
    let stdout = String::from_utf8_lossy(&test.stdout);
    assert!(
        test.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(
        stdout.contains("test a_session_through_every_hook ... ok"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
