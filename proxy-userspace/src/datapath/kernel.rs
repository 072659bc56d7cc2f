//! The real datapath: sockeye's programs loaded into the kernel, attached to a cgroup
//! through pinned links, and their maps pinned under one bpffs directory.

use std::{
    collections::BTreeSet,
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Instant,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, SockHash},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SkMsg, SockOps,
        links::{FdLink, PinnedLink},
    },
};
use proxy_common::{
    AgentState, Counter, FourTuple, SockAddr, agent::HEARTBEAT_MAX_AGE_NS, map_names,
};
use tracing::{debug, info, warn};

use super::{Datapath, DatapathError, mounts::require_bpffs};
use crate::sys;

/// The object built from `proxy-ebpf` by this crate's build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf"));

/// Programs attached to the cgroup, in attach order.
const PROGRAMS: [&str; 3] = ["sk_connect4", "sk_connect6", "sk_sockops"];

pub struct KernelOptions {
    /// The cgroup v2 directory to attach to.
    pub cgroup: PathBuf,
    /// The directory on bpffs that holds this agent's pinned maps and links.
    pub pin_dir: PathBuf,
    pub listen4: SocketAddr,
    pub listen6: Option<SocketAddr>,
    /// Let the kernel programs' debug log lines through (aya-log).
    pub kernel_debug_log: bool,
    /// Move Pod↔agent bytes socket to socket (sockmap and sk_msg).
    pub accel: bool,
}

pub struct Kernel {
    ebpf: Ebpf,
    links: Vec<PinnedLink>,
    pin_dir: PathBuf,
    state: AgentState,
    enrolled: Mutex<HashMap<MapData, u64, u8>>,
    vips: Mutex<HashMap<MapData, SockAddr, u8>>,
    agent: Mutex<Array<MapData, AgentState>>,
    orig_dst: Mutex<HashMap<MapData, FourTuple, SockAddr>>,
    counters: PerCpuArray<MapData, u64>,
}

impl Kernel {
    /// Loads and attaches the programs. Steering starts only with the first [`beat`].
    ///
    /// [`beat`]: Datapath::beat
    pub fn load(options: &KernelOptions) -> Result<Self, DatapathError> {
        prepare_pin_dir(&options.pin_dir)?;
        Self::load_pinned(options).inspect_err(|_| {
            // Leave nothing attached or pinned behind a failed start.
            let _ = remove_pins(&options.pin_dir);
            let _ = std::fs::remove_dir(&options.pin_dir);
        })
    }

    fn load_pinned(options: &KernelOptions) -> Result<Self, DatapathError> {
        let started = Instant::now();
        let pin_dir = &options.pin_dir;
        let cgroup = File::open(&options.cgroup).map_err(DatapathError::io(&options.cgroup))?;

        let level: u8 = if options.kernel_debug_log { 4 } else { 2 }; // aya-log: debug / warn
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .override_global("AYA_LOG_LEVEL", &level, false)
            .load(OBJECT)
            .map_err(DatapathError::program("loading the object"))?;
        start_log_pump(&mut ebpf);

        let mut links = Vec::new();
        for name in PROGRAMS {
            let link = attach(&mut ebpf, name, &cgroup)?;
            let path = pin_dir.join(format!("link_{name}"));
            links.push(link.pin(&path).map_err(DatapathError::program(format!("pinning {name}")))?);
        }

        let accel = options.accel && accelerate(&mut ebpf);
        let state = AgentState {
            heartbeat_ns: 0,
            max_age_ns: HEARTBEAT_MAX_AGE_NS,
            listen4: SockAddr::from(options.listen4),
            listen6: options.listen6.map(SockAddr::from).unwrap_or_default(),
            flags: if accel { AgentState::ACCEL } else { 0 },
            reserved: 0,
        };
        let kernel = Self {
            enrolled: Mutex::new(take_map(&mut ebpf, map_names::ENROLLED)?),
            vips: Mutex::new(take_map(&mut ebpf, map_names::VIPS)?),
            agent: Mutex::new(take_map(&mut ebpf, map_names::AGENT)?),
            orig_dst: Mutex::new(take_map(&mut ebpf, map_names::ORIG_BY_TUPLE)?),
            counters: take_map(&mut ebpf, map_names::COUNTERS)?,
            ebpf,
            links,
            pin_dir: pin_dir.clone(),
            state,
        };
        info!(
            cgroup = %options.cgroup.display(),
            pins = %pin_dir.display(),
            accel,
            "kernel programs attached in {:?}",
            started.elapsed()
        );
        Ok(kernel)
    }

    /// Detaches the programs and removes every pin: the kernel forgets sockeye.
    pub fn shutdown(self) -> Result<(), DatapathError> {
        let Self { links, pin_dir, ebpf, .. } = self;
        for link in links {
            // Unpinning and dropping the last descriptor detaches the program.
            link.unpin().map_err(DatapathError::io(&pin_dir))?;
        }
        drop(ebpf);
        remove_pins(&pin_dir)?;
        std::fs::remove_dir(&pin_dir).map_err(DatapathError::io(&pin_dir))?;
        info!(pins = %pin_dir.display(), "kernel programs detached and unpinned");
        Ok(())
    }
}

impl Datapath for Kernel {
    fn set_enrolled(&self, cookies: &BTreeSet<u64>) -> Result<(), DatapathError> {
        reconcile(&mut self.enrolled.lock().unwrap(), cookies, map_names::ENROLLED)
    }

    fn set_vips(&self, vips: &BTreeSet<SocketAddr>) -> Result<(), DatapathError> {
        let vips = vips.iter().map(|vip| SockAddr::from(*vip)).collect();
        reconcile(&mut self.vips.lock().unwrap(), &vips, map_names::VIPS)
    }

    fn beat(&self) -> Result<(), DatapathError> {
        let state = AgentState { heartbeat_ns: sys::monotonic_ns(), ..self.state };
        self.agent.lock().unwrap().set(0, state, 0).map_err(DatapathError::map(map_names::AGENT))
    }

    fn take_orig_dst(
        &self,
        client: SocketAddr,
        local: SocketAddr,
    ) -> Result<Option<SocketAddr>, DatapathError> {
        let key = FourTuple { src: SockAddr::from(client), dst: SockAddr::from(local) };
        let mut map = self.orig_dst.lock().unwrap();
        match map.get(&key, 0) {
            Ok(dst) => {
                // The LRU would reclaim it anyway; removing keeps the map small.
                let _ = map.remove(&key);
                Ok(Some(dst.into()))
            }
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(DatapathError::map(map_names::ORIG_BY_TUPLE)(err)),
        }
    }

    fn counters(&self) -> Result<Vec<(Counter, u64)>, DatapathError> {
        Counter::ALL
            .iter()
            .map(|&counter| {
                let per_cpu = self
                    .counters
                    .get(&(counter as u32), 0)
                    .map_err(DatapathError::map(map_names::COUNTERS))?;
                Ok((counter, per_cpu.iter().sum()))
            })
            .collect()
    }
}

fn attach(ebpf: &mut Ebpf, name: &str, cgroup: &File) -> Result<FdLink, DatapathError> {
    let program = ebpf.program_mut(name).ok_or_else(|| DatapathError::Setup {
        path: name.into(),
        problem: "program missing from the object".into(),
    })?;
    // Cgroup attachments through BPF links always coexist with other programs (the
    // kernel's multi mode) and refuse any flag: "Single" is aya's name for no flag.
    let mode = CgroupAttachMode::Single;
    if name == "sk_sockops" {
        let program: &mut SockOps = program.try_into().map_err(DatapathError::program(name))?;
        program.load().map_err(DatapathError::program(format!("verifying {name}")))?;
        let id = program.attach(cgroup, mode).map_err(DatapathError::program(name))?;
        let link = program.take_link(id).map_err(DatapathError::program(name))?;
        return FdLink::try_from(link).map_err(DatapathError::program(name));
    }
    let program: &mut CgroupSockAddr = program.try_into().map_err(DatapathError::program(name))?;
    program.load().map_err(DatapathError::program(format!("verifying {name}")))?;
    let id = program.attach(cgroup, mode).map_err(DatapathError::program(name))?;
    let link = program.take_link(id).map_err(DatapathError::program(name))?;
    FdLink::try_from(link).map_err(DatapathError::program(name))
}

/// Attaches sk_msg to the socket map (for as long as the map lives). On a kernel
/// without sockmap support it says so, and connections stay on plain TCP.
fn accelerate(ebpf: &mut Ebpf) -> bool {
    let attached = (|| -> Result<(), DatapathError> {
        let socks: SockHash<_, FourTuple> = ebpf
            .map(map_names::SOCKS)
            .ok_or_else(|| DatapathError::Setup {
                path: map_names::SOCKS.into(),
                problem: "map missing from the object".into(),
            })?
            .try_into()
            .map_err(DatapathError::map(map_names::SOCKS))?;
        let fd = socks.fd().try_clone().map_err(DatapathError::io(map_names::SOCKS))?;
        let program = ebpf.program_mut("sk_msg_redirect").ok_or_else(|| DatapathError::Setup {
            path: "sk_msg_redirect".into(),
            problem: "program missing from the object".into(),
        })?;
        let program: &mut SkMsg = program.try_into().map_err(DatapathError::program("sk_msg"))?;
        program.load().map_err(DatapathError::program("verifying sk_msg"))?;
        program.attach(&fd).map_err(DatapathError::program("sk_msg"))?;
        Ok(())
    })();
    match attached {
        Ok(()) => true,
        Err(err) => {
            warn!("socket acceleration is unavailable, Pod↔agent bytes take plain TCP: {err}");
            false
        }
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| DatapathError::Setup {
        path: name.into(),
        problem: "map missing from the object".into(),
    })?;
    T::try_from(map).map_err(DatapathError::map(name))
}

/// Makes the keys of `map` exactly `want` (values are always 1).
fn reconcile<K: aya::Pod + Ord>(
    map: &mut HashMap<MapData, K, u8>,
    want: &BTreeSet<K>,
    name: &str,
) -> Result<(), DatapathError> {
    let have: BTreeSet<K> = map.keys().filter_map(Result::ok).collect();
    for stale in have.difference(want) {
        map.remove(stale).map_err(DatapathError::map(name))?;
    }
    for new in want.difference(&have) {
        map.insert(new, 1, 0).map_err(DatapathError::map(name))?;
    }
    debug!(map = name, entries = want.len(), "map reconciled");
    Ok(())
}

/// Creates the pin directory, removing what a crashed agent left there: its pinned
/// links would keep stale programs attached.
fn prepare_pin_dir(dir: &Path) -> Result<(), DatapathError> {
    let parent = dir.parent().unwrap_or(dir);
    require_bpffs(parent)?;
    if dir.exists() {
        let removed = remove_pins(dir)?;
        if removed > 0 {
            warn!(pins = %dir.display(), removed, "removed pins a previous agent left behind");
        }
    }
    std::fs::create_dir_all(dir).map_err(DatapathError::io(dir))
}

fn remove_pins(dir: &Path) -> Result<usize, DatapathError> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(DatapathError::io(dir))? {
        let path = entry.map_err(DatapathError::io(dir))?.path();
        std::fs::remove_file(&path).map_err(DatapathError::io(&path))?;
        removed += 1;
    }
    Ok(removed)
}

/// Reads kernel-log records of the programs and forwards them to `log` (and from there
/// to tracing). Without a pump the ring buffer just fills and drops records.
fn start_log_pump(ebpf: &mut Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(err) => return warn!("kernel program logs are unavailable: {err}"),
    };
    let mut fd = match sys::readable_fd(logger) {
        Ok(fd) => fd,
        Err(err) => return warn!("kernel program logs are unavailable: {err}"),
    };
    tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
