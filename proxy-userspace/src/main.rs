//! `sockeye`: the command line.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use sockeye::agent::{self, RunOptions, Source};
use tracing_subscriber::EnvFilter;

/// sockeye: an eBPF-accelerated node proxy that sends each request only to live, ready Pods.
#[derive(Parser)]
#[command(name = "sockeye", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent until SIGTERM or SIGINT (see README "Running the agent" for
    /// what each signal does).
    Run(RunArgs),
    /// Check a config file without running: parse it, validate every field, check that
    /// it fits the kernel maps it asks for; exit 1 with the field named if not.
    Check {
        /// The config file `run --config` would read.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Check it as node settings for `run --kube` (no services or enroll).
        #[arg(long)]
        kube: bool,
    },
    /// Show what the node's running agent is doing: services and their endpoints per
    /// state, kernel counters and map use, whether it fails open.
    Status {
        /// The agent's admin endpoint.
        #[arg(long, value_name = "ADDR", default_value = sockeye::config::DEFAULT_ADMIN)]
        admin: std::net::SocketAddr,
    },
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).multiple(true).args(["config", "kube"])))]
struct RunArgs {
    /// Configuration file (YAML), hot-reloaded when it changes. With --kube it holds
    /// only node settings (listen, listen6, admin).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Discover services, endpoints and opted-in Pods from the Kubernetes API (in a
    /// Pod: its service account; elsewhere: KUBECONFIG).
    #[arg(long)]
    kube: bool,
    /// This node's name, for --kube: only its Pods are enrolled.
    #[arg(long, env = "NODE_NAME", value_name = "NAME", required_if_eq("kube", "true"))]
    node_name: Option<String>,
    /// cgroup v2 directory to attach the kernel programs to [default: the cgroup v2
    /// root found in /proc/mounts].
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// Address of the read-only admin endpoint (/healthz, /readyz, /metrics,
    /// /debug/state): loopback or this node's IP, never 0.0.0.0. Overrides the
    /// config's `admin` [default: 127.0.0.1:15090].
    #[arg(long, value_name = "ADDR", value_parser = admin_addr)]
    admin: Option<std::net::SocketAddr>,
    /// Directory on a bpf filesystem for the agent's pinned maps and links.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/sockeye")]
    bpffs: PathBuf,
    /// Move bytes between enrolled Pods and the agent socket to socket (sockmap and
    /// sk_msg), skipping the TCP/IP stack on that hop. Without kernel support the agent
    /// says so and uses plain TCP.
    #[arg(long, value_enum, default_value_t = Toggle::Off)]
    accel: Toggle,
    /// Data-plane threads, each serving its connections start to end with upstream
    /// connections of its own [default: the CPUs the agent may use].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives.
    /// RUST_LOG, when set, takes precedence. At debug the kernel programs log too.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    log_level: String,
    /// Log lines for people (human) or one JSON object per line (json).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

fn admin_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    let addr = text.parse().map_err(|err| format!("{err} (expected IP:PORT)"))?;
    sockeye::config::check_admin(addr)?;
    Ok(addr)
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Toggle {
    On,
    Off,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Command::Run(args) => args,
        Command::Check { config, kube } => return print(sockeye::commands::check(&config, kube)),
        Command::Status { admin } => return print(sockeye::commands::status(admin)),
    };
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| log_directives(&args.log_level));
    let kernel_debug_log = filter.contains("debug") || filter.contains("trace");
    if let Err(err) = init_logging(&filter, args.log_format) {
        eprintln!("error: --log-level {filter:?}: {err}");
        return ExitCode::FAILURE;
    }
    // Panics go to the log, in its format; what a panic means for the agent is up to
    // whoever catches it (a connection ends, or the agent stops cleanly).
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!(" at {l}")).unwrap_or_default();
        tracing::error!("panic{at}: {}", sockeye::panic_message(info.payload()));
    }));
    // The control plane (discovery, health checks, accept); the data plane has its
    // own threads (`--workers`).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CONTROL_THREADS)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let source = match (args.kube, args.node_name) {
        (true, Some(node)) => Source::Kube { node, settings: args.config },
        (_, _) => match args.config {
            Some(config) => Source::File(config),
            None => {
                eprintln!("error: run needs --config FILE, or --kube");
                return ExitCode::FAILURE;
            }
        },
    };
    let options = RunOptions {
        source,
        cgroup: args.cgroup,
        bpffs: args.bpffs,
        admin: args.admin,
        kernel_debug_log,
        accel: args.accel == Toggle::On,
        workers: args.workers.map(usize::from),
    };
    match runtime.block_on(agent::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Threads of the control plane's runtime.
const CONTROL_THREADS: usize = 2;

/// Prints a command's result; an error goes to stderr and exits 1.
fn print(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// A bare level applies to sockeye and its kernel programs; libraries stay at warn.
fn log_directives(level: &str) -> String {
    const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
    if LEVELS.contains(&level) {
        format!("warn,sockeye={level},proxy_ebpf={level}")
    } else {
        level.into()
    }
}

fn init_logging(
    filter: &str,
    format: LogFormat,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let builder = tracing_subscriber::fmt().with_env_filter(EnvFilter::try_new(filter)?);
    match format {
        LogFormat::Human => {
            // Colours only for a terminal, never into a log file.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            builder.with_target(false).with_ansi(ansi).try_init()
        }
        LogFormat::Json => builder.json().try_init(),
    }
}
