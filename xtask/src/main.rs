//! `cargo xtask`: the project's tasks. Every task that builds or runs sockeye first
//! runs `setup`, so a fresh machine needs nothing but Rust and root.

mod fuzz;
mod run;
mod setup;

use std::{process::ExitCode, time::Instant};

const HELP: &str = "\
cargo xtask <task> [args]

tasks:
  setup          install what building and testing need (idempotent; seconds when present);
                 `setup --build-only` skips the bpf filesystem and cgroup checks (image builds)
  test [args]    setup, build, then run every test; args go to `cargo test`
  demo [args]    setup, build (release), then run the sandbox demo; `demo --help` lists args
  bench [args]   setup, build (release), then run the benchmarks; `bench --help` lists args
  fuzz [args]    setup, then run the cargo-fuzz targets (nightly); `fuzz --help` lists args
  help           this text

Needs root (eBPF, network namespaces, cgroups) and Debian's apt for missing packages.";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_else(|| "help".into());
    let rest: Vec<String> = args.collect();
    let started = Instant::now();
    let result = match task.as_str() {
        "setup" => setup::setup(rest.iter().any(|a| a == "--build-only")),
        "test" => setup::run().and_then(|()| run::test(&rest)),
        "demo" => setup::run().and_then(|()| run::demo(&rest)),
        "bench" => setup::run().and_then(|()| run::bench(&rest)),
        "fuzz" => setup::run().and_then(|()| fuzz::fuzz(&rest)),
        "help" | "--help" | "-h" => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        other => Err(format!("unknown task `{other}`\n\n{HELP}")),
    };
    match result {
        Ok(()) => {
            if task != "setup" {
                eprintln!("xtask {task}: done in {:.1?}", started.elapsed());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("xtask {task}: error: {err}");
            ExitCode::FAILURE
        }
    }
}
