//! `cargo xtask fuzz`: builds the cargo-fuzz targets in `fuzz/` and runs each for a
//! chosen time. Findings land in `fuzz/artifacts/<target>/`; each gets a regression
//! test where the code it broke lives.

use std::process::Command;

use crate::run::{cmd, workspace_root};

const TARGETS: [&str; 5] = ["sniff", "config", "orig_dst", "kube_objects", "health_messages"];
const HELP: &str = "\
cargo xtask fuzz [--seconds N] [TARGET...]

Runs each target (default: all of sniff, config, orig_dst, kube_objects,
health_messages) for N seconds
(default 600), one after another. Installs cargo-fuzz when it is missing.";

pub fn fuzz(args: &[String]) -> Result<(), String> {
    let mut seconds = 600u64;
    let mut targets = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let value = args.next().ok_or("--seconds needs a number")?;
                seconds = value.parse().map_err(|_| format!("--seconds {value}: not a number"))?;
            }
            "--help" | "-h" => {
                println!("{HELP}");
                return Ok(());
            }
            target if TARGETS.contains(&target) => targets.push(target),
            other => return Err(format!("unknown fuzz target or flag `{other}`\n\n{HELP}")),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    install_cargo_fuzz()?;
    for target in targets {
        eprintln!("xtask fuzz: {target} for {seconds} s");
        let time = format!("-max_total_time={seconds}");
        fuzz_cmd(&["run", "-O", target, "--", &time, "-print_final_stats=1"])?;
    }
    Ok(())
}

fn install_cargo_fuzz() -> Result<(), String> {
    let present = Command::new("cargo").args(["fuzz", "--version"]).output();
    if present.is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    eprintln!("xtask fuzz: installing cargo-fuzz (about a minute)");
    cmd("cargo", &["install", "cargo-fuzz", "--locked"])
}

/// `cargo +nightly fuzz ARGS` in `fuzz/`, sharing the workspace's target directory and
/// without building the kernel object (the targets only parse).
fn fuzz_cmd(args: &[&str]) -> Result<(), String> {
    let root = workspace_root();
    let status = Command::new("cargo")
        .arg("+nightly")
        .arg("fuzz")
        .args(args)
        .current_dir(root.join("fuzz"))
        .env("SOCKEYE_NO_KERNEL_OBJECT", "1")
        .env("CARGO_TARGET_DIR", root.join("target/fuzz"))
        .status()
        .map_err(|e| format!("cannot start cargo fuzz: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo fuzz {}` failed ({status}); see fuzz/artifacts/", args.join(" ")))
    }
}
