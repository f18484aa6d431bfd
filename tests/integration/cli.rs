//! Helpers for tests that drive the `weft` binary's one-shot subcommands
//! (inject, init-iptables, await): running it, golden files, and tools the
//! test needs from the system (required under CI, skipped loudly elsewhere).

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What one run of the binary produced.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `weft ARGS` (from the repository root) with `stdin` piped in.
pub fn weft(args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .current_dir(root())
        .env_remove("WEFT_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    into_run(child.wait_with_output().unwrap())
}

pub fn into_run(output: Output) -> Run {
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// `UPDATE_GOLDEN=1` rewrites golden files instead of comparing with them.
pub fn updating_golden() -> bool {
    std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1")
}

/// Compares `actual` with the golden file (or rewrites it); a difference is
/// added to `failures` so one run lists every changed file.
pub fn check_golden(path: &Path, actual: &str, failures: &mut Vec<String>) {
    if updating_golden() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected != actual {
        failures.push(format!(
            "{} differs (UPDATE_GOLDEN=1 rewrites it)\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        ));
    }
}

pub fn assert_no_failures(failures: &[String]) {
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Whether `program` runs (`program ARGS` exits 0). Missing under CI fails
/// the test; elsewhere the caller skips, and this says so.
pub fn have_tool(program: &str, args: &[&str], test: &str) -> bool {
    let ok = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let command = [&[program], args].concat().join(" ");
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: `{command}` must work under CI (.ci/run installs it)"
        );
        eprintln!("SKIPPED {test}: `{command}` does not work here");
    }
    ok
}
