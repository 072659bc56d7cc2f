//! Builds the kernel programs of `proxy-ebpf` for the BPF target (with the nightly
//! toolchain and bpf-linker) and leaves the object in OUT_DIR for `include_bytes!`.

use std::{env, path::Path, process::Command};

fn main() -> anyhow::Result<()> {
    let manifest_dir = env::var("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest_dir).parent().expect("the workspace root");
    // The object embeds the shared map layouts too.
    println!("cargo:rerun-if-changed={}", root.join("proxy-common/src").display());
    println!("cargo:rerun-if-env-changed=SOCKEYE_NO_KERNEL_OBJECT");
    if env::var_os("SOCKEYE_NO_KERNEL_OBJECT").is_some() {
        // Fuzzing builds exercise parsers only; an agent built so cannot load programs.
        let out = Path::new(&env::var("OUT_DIR")?).join("proxy-ebpf");
        std::fs::write(out, [])?;
        return Ok(());
    }
    let found =
        Command::new("bpf-linker").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found && env::var_os("AYA_BUILD_SKIP").is_none() {
        anyhow::bail!(
            "bpf-linker is not on PATH: the kernel programs cannot be built. \
             Run `cargo xtask setup` (it installs bpf-linker, LLVM 22 and the nightly rust-src)."
        );
    }
    let ebpf_dir = root.join("proxy-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "proxy-ebpf",
            root_dir: ebpf_dir.to_str().expect("a UTF-8 path"),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
