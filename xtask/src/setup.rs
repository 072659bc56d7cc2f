//! `cargo xtask setup`: makes this machine able to build and test sockeye. Each step
//! checks first and installs only what is missing, so a second run takes seconds.

use std::{path::Path, process::Command, time::Instant};

use crate::run::cmd;

/// Debian packages: LLVM 22 for bpf-linker, the kube-proxy stand-in's firewall tools,
/// and iproute2 for the sandbox's namespaces and links.
const PACKAGES: [&str; 4] = ["llvm-22-dev", "nftables", "iptables", "iproute2"];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> Result<(), String> {
    setup(false)
}

/// `build_only`: what building needs, not what running needs (an image build has no
/// bpf filesystem or cgroups of its own).
pub fn setup(build_only: bool) -> Result<(), String> {
    let started = Instant::now();
    require_root()?;
    let mut installed = Vec::new();
    packages(&mut installed)?;
    nightly_rust_src(&mut installed)?;
    bpf_linker(&mut installed)?;
    if !build_only {
        bench_peers(&mut installed)?;
        bpffs(&mut installed)?;
        require_cgroup2()?;
    }
    if installed.is_empty() {
        eprintln!("xtask setup: everything present (checked in {:.1?})", started.elapsed());
    } else {
        eprintln!("xtask setup: installed {} in {:.1?}", installed.join(", "), started.elapsed());
    }
    Ok(())
}

fn require_root() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or("");
    if uid.split_whitespace().nth(1) == Some("0") {
        return Ok(());
    }
    Err("sockeye's build and tests need root (eBPF, network namespaces, cgroups): \
         run `sudo -E cargo xtask ...`"
        .into())
}

fn packages(installed: &mut Vec<String>) -> Result<(), String> {
    let missing: Vec<&str> = PACKAGES.into_iter().filter(|p| !package_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask setup: installing Debian packages {}", missing.join(" "));
    cmd("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| format!("cannot run apt-get ({e}); install {} by hand", missing.join(" ")))?;
    if !status.success() {
        return Err(format!("apt-get install {} failed ({status})", missing.join(" ")));
    }
    installed.extend(missing.iter().map(|p| p.to_string()));
    Ok(())
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn nightly_rust_src(installed: &mut Vec<String>) -> Result<(), String> {
    let has = |args: &[&str], needle: &str| {
        Command::new("rustup").args(args).output().is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout).lines().any(|l| l.starts_with(needle))
        })
    };
    if !has(&["toolchain", "list"], "nightly") {
        eprintln!("xtask setup: installing the nightly toolchain (kernel programs need it)");
        cmd("rustup", &["toolchain", "install", "nightly", "--profile", "minimal"])?;
        installed.push("nightly".into());
    }
    if !has(&["component", "list", "--toolchain", "nightly", "--installed"], "rust-src") {
        eprintln!("xtask setup: adding rust-src to nightly (build-std for the BPF target)");
        cmd("rustup", &["component", "add", "rust-src", "--toolchain", "nightly"])?;
        installed.push("rust-src".into());
    }
    Ok(())
}

/// bpf-linker must link against the LLVM of the nightly compiler (22).
fn bpf_linker(installed: &mut Vec<String>) -> Result<(), String> {
    let linked_to_llvm22 = Command::new("sh")
        .args(["-c", "ldd \"$(command -v bpf-linker)\" | grep -q 'libLLVM.so.22'"])
        .status()
        .is_ok_and(|s| s.success());
    if linked_to_llvm22 {
        return Ok(());
    }
    eprintln!("xtask setup: building bpf-linker against LLVM 22 (about two minutes)");
    let path = format!("{LLVM_PREFIX}/bin:{}", std::env::var("PATH").unwrap_or_default());
    let status = Command::new("cargo")
        .args([
            "install",
            "--force",
            "bpf-linker",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("PATH", path)
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .status()
        .map_err(|e| format!("cannot run cargo install: {e}"))?;
    if !status.success() {
        return Err(format!("cargo install bpf-linker failed ({status})"));
    }
    installed.push("bpf-linker".into());
    Ok(())
}

/// Pinned maps and links live on a bpf filesystem at /sys/fs/bpf.
fn bpffs(installed: &mut Vec<String>) -> Result<(), String> {
    if mounted("bpf", Path::new("/sys/fs/bpf")) {
        return Ok(());
    }
    eprintln!("xtask setup: mounting the bpf filesystem at /sys/fs/bpf");
    cmd("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])?;
    installed.push("bpffs mount".into());
    Ok(())
}

fn require_cgroup2() -> Result<(), String> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("cgroup2")) {
        return Ok(());
    }
    Err("no cgroup v2 hierarchy is mounted; sockeye needs cgroup v2 \
         (for example `mount -t cgroup2 none /sys/fs/cgroup/unified`)"
        .into())
}

fn mounted(fs_type: &str, at: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 2 && Path::new(fields[1]) == at && fields[2] == fs_type
    })
}

/// The peers `cargo xtask bench` measures sockeye against: HAProxy and nginx, from
/// Debian's packages, and perf for its system-call counts and profile. Their services
/// are not started (a `policy-rc.d` that says no is
/// in place during the install): the benchmark runs its own instances in a sandbox.
fn bench_peers(installed: &mut Vec<String>) -> Result<(), String> {
    const PEERS: [&str; 3] = ["haproxy", "nginx-light", "linux-perf"];
    let missing: Vec<&str> = PEERS.into_iter().filter(|p| !package_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask setup: installing {} for the benchmark (services not started)",
        missing.join(" ")
    );
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(
            policy,
            "#!/bin/sh\n# xtask bench: no service starts while peers install\nexit 101\n",
        )
        .map_err(|e| format!("writing {}: {e}", policy.display()))?;
        let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(policy, executable)
            .map_err(|e| format!("{}: {e}", policy.display()))?;
    }
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    let status =
        Command::new("apt-get").args(&args).env("DEBIAN_FRONTEND", "noninteractive").status();
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    match status {
        Ok(status) if status.success() => {
            installed.extend(missing.iter().map(|p| p.to_string()));
            Ok(())
        }
        Ok(status) => Err(format!("apt-get install {} failed ({status})", missing.join(" "))),
        Err(e) => Err(format!("cannot run apt-get ({e}); install {} by hand", missing.join(" "))),
    }
}
