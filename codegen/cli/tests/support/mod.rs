//! Helpers shared by the CLI's tests.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `trellis` binary under test.
pub fn trellis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trellis"))
}

/// Runs `trellis ARGS` and returns its output.
pub fn run(args: &[&str]) -> Output {
    trellis().args(args).output().expect("run trellis")
}

/// Output as text, stdout then stderr.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The workspace's target directory, from this test binary's path
/// (`target/debug/deps/NAME`), so a scaffolded crate reuses what the
/// workspace compiled.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors().nth(3).expect("target/debug/deps/NAME").to_path_buf()
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// `cargo ARGS` in `dir`, offline, on the workspace's target directory.
pub fn cargo(dir: &Path, args: &[&str]) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    Command::new(cargo)
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir())
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("run cargo")
}

/// Makes the service `name` in a new folder under `parent`.
pub fn scaffold(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    let out = run(&["new", name, "--path", dir.to_str().unwrap()]);
    assert!(out.status.success(), "trellis new failed:\n{}", text(&out));
    dir
}
