//! `slate train-ranker …`, `slate bench …` and `slate compress …` are run by the `slate-tools` binary:
//! `slate` execs the one beside it (else the one on PATH) with the same arguments, and says how to build
//! it when there is none.
//! The real `slate-tools` is not built for this package's tests, so a copy of `slate` runs in a folder of
//! its own, beside a stand-in script or beside nothing. One test, so no other thread of this process
//! forks while a freshly written executable is still open (exec would fail with ETXTBSY).
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A folder holding a copy of the `slate` binary; returns it and the copy's path.
fn lone_slate() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let slate = dir.path().join("slate");
    std::fs::copy(env!("CARGO_BIN_EXE_slate"), &slate).unwrap();
    (dir, slate)
}

/// Runs `slate args…` with PATH set to `path` only.
fn run(slate: &Path, args: &[&str], path: &Path) -> Output {
    Command::new(slate).args(args).env("PATH", path).output().unwrap()
}

#[test]
fn offline_commands_run_slate_tools() {
    beside_slate_with_the_same_arguments();
    on_path();
    missing_says_how_to_build_it();
}

fn beside_slate_with_the_same_arguments() {
    let (dir, slate) = lone_slate();
    let tools = dir.path().join("slate-tools");
    std::fs::write(&tools, "#!/bin/sh\necho \"args: $*\"\nexit 3\n").unwrap();
    std::fs::set_permissions(&tools, std::fs::Permissions::from_mode(0o755)).unwrap();
    let empty = tempfile::tempdir().unwrap();
    for args in [
        &["train-ranker", "--epochs", "2", "--help"][..],
        &["bench", "ranker", "--quick", "--no-peer"],
        &["bench", "slm", "--streams", "1,8"],
        &["compress", "--method", "magnitude", "--pattern", "2:4"],
    ] {
        let out = run(&slate, args, empty.path());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.trim(), format!("args: {}", args.join(" ")), "slate {args:?}");
        assert_eq!(out.status.code(), Some(3), "slate {args:?} exits with slate-tools' status");
    }
}

fn on_path() {
    let (_dir, slate) = lone_slate();
    let bin = tempfile::tempdir().unwrap();
    let tools = bin.path().join("slate-tools");
    std::fs::write(&tools, "#!/bin/sh\necho \"on PATH: $*\"\n").unwrap();
    std::fs::set_permissions(&tools, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(&slate, &["bench", "ranker", "--help"], bin.path());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "on PATH: bench ranker --help");
    assert!(out.status.success());
}

fn missing_says_how_to_build_it() {
    let (_dir, slate) = lone_slate();
    let empty = tempfile::tempdir().unwrap();
    for args in [&["train-ranker", "--help"][..], &["bench", "slm"]] {
        let out = run(&slate, args, empty.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "slate {args:?}: {stderr}");
        assert!(stderr.contains(&format!("`slate {}`", args[0])), "{stderr}");
        assert!(stderr.contains("cargo build --release -p slate-tools"), "{stderr}");
    }
    // Other names are not handed over.
    let out = run(&slate, &["frobnicate"], empty.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand 'frobnicate'"));
}
