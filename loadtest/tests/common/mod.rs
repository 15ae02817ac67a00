//! What the load tester's tests share.

use std::path::PathBuf;

/// The `cascade` binary of this build profile (`target/<profile>/cascade`), built first if
/// missing: `cargo test --workspace` builds it, `cargo test -p cascade-loadtest` does not (a
/// dev-dependency cannot name a binary-only package).
pub fn focus_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let binary = profile_dir.join("cascade");
    if !binary.is_file() {
        let mut cargo = std::process::Command::new(env!("CARGO"));
        cargo.args(["build", "-p", "cascade"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("running cargo build -p cascade");
        assert!(status.success(), "cargo build -p cascade failed");
    }
    binary
}
