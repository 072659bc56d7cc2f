//! Building and running: the test suite and the demo.

use std::{path::PathBuf, process::Command};

/// Runs a command, inheriting stdio; an error names the command.
pub fn cmd(program: &str, args: &[&str]) -> Result<(), String> {
    let status = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("cannot start `{program}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{program} {}` failed ({status})", args.join(" ")))
    }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").into()
}

/// Builds the agent and the sandbox's helper binaries, then runs every test.
pub fn test(args: &[String]) -> Result<(), String> {
    eprintln!("xtask test: building the agent and test helpers");
    cmd("cargo", &["build", "--bins"])?;
    let mut test_args = vec!["test"];
    test_args.extend(args.iter().map(String::as_str));
    eprintln!("xtask test: running the tests (integration tests need root: they build sandboxes)");
    cmd("cargo", &test_args)
}

/// Builds in release mode and runs the sandbox demo.
pub fn demo(args: &[String]) -> Result<(), String> {
    release_run("demo", "sockeye-demo", args)
}

/// Builds in release mode and runs the benchmarks.
pub fn bench(args: &[String]) -> Result<(), String> {
    release_run("bench", "sockeye-bench", args)
}

fn release_run(task: &str, binary: &str, args: &[String]) -> Result<(), String> {
    eprintln!("xtask {task}: building (release)");
    cmd("cargo", &["build", "--release", "--bins"])?;
    let path = workspace_root().join("target/release").join(binary);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cmd(path.to_str().expect("a UTF-8 path"), &args)
}
