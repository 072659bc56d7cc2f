//! Named network namespaces (`ip netns`), deleted on drop.

use std::{
    fs::File,
    path::PathBuf,
    process::{Command, Output},
};

use anyhow::{Context as _, bail};

use crate::{names::NETNS_DIR, sys};

pub struct Netns {
    name: String,
    /// Whether dropping this handle deletes the namespace.
    owned: bool,
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        run("ip", &["netns", "add", name])?;
        let netns = Self { name: name.into(), owned: true };
        netns.ip(&["link set lo up"])?;
        Ok(netns)
    }

    /// A handle on an existing namespace that does not delete it on drop.
    pub fn borrowed(name: &str) -> Self {
        Self { name: name.into(), owned: false }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    pub fn open(&self) -> anyhow::Result<File> {
        File::open(self.path()).with_context(|| format!("opening netns {}", self.name))
    }

    /// Runs `ip` commands (one per line, without the leading `ip`) inside this namespace.
    pub fn ip(&self, lines: &[&str]) -> anyhow::Result<()> {
        let batch = lines.join("\n") + "\n";
        run_with_input("ip", &["-n", &self.name, "-batch", "-"], &batch)
    }

    /// Runs a program inside this namespace, feeding it `input`.
    pub fn exec(&self, program: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend(args);
        run_with_input("ip", &full, input)
    }

    /// Sets sysctls (`key=value`) in this namespace.
    pub fn sysctl(&self, settings: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["-qw"];
        args.extend(settings);
        self.exec("sysctl", &args, "")
    }

    /// Runs `f` on a thread inside this namespace. Sockets it opens stay in it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let ns = self.open()?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    sys::enter_netns(&ns).context("entering the namespace")?;
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("thread in netns {} panicked", self.name))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Err(err) = delete(&self.name) {
            eprintln!("sandbox: {err:#}");
        }
    }
}

pub fn delete(name: &str) -> anyhow::Result<()> {
    run("ip", &["netns", "delete", name]).with_context(|| format!("deleting netns {name}"))
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    run_with_input(program, args, "")
}

fn run_with_input(program: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program} (is it installed? `cargo xtask setup`)"))?;
    child.stdin.take().expect("piped").write_all(input.as_bytes())?;
    let Output { status, stdout, stderr } = child.wait_with_output()?;
    if !status.success() {
        bail!(
            "`{program} {}` failed ({status}): {}{}\n{input}",
            args.join(" "),
            String::from_utf8_lossy(&stderr),
            String::from_utf8_lossy(&stdout)
        );
    }
    Ok(())
}
