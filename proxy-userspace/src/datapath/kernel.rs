//! The real datapath: sockeye's programs loaded into the kernel, attached to a cgroup
//! through pinned links, and their maps pinned under one bpffs directory, where the
//! next agent (after a crash or an upgrade) adopts them.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Instant,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapInfo, PerCpuArray, SockHash, SockMap},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SkMsg, SockOps,
        links::{FdLink, PinnedLink},
    },
};
use proxy_common::{
    AgentState, Counter, FourTuple, OrigDst, SockAddr,
    agent::HEARTBEAT_MAX_AGE_NS,
    enrolled,
    lb::{BackendSlot, ConnectStats, LbService, Rewrite},
    listener_slot, map_names, map_sizes,
};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use super::{
    Datapath, DatapathError, KernelConnects, KernelFailure, MapUsage,
    lb_maps::{LbMaps, failure_pump},
    mounts::{require_bpffs, require_cgroup2},
};
use crate::{config::Capacity, sync::lock, sys};

/// The object built from `proxy-ebpf` by this crate's build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf"));

/// Programs attached to the cgroup, in attach order.
const PROGRAMS: [&str; 5] =
    ["sk_connect4", "sk_connect6", "sk_sockops", "sk_getpeername4", "sk_getpeername6"];

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
    /// How many entries the sized maps hold.
    pub capacity: Capacity,
}

pub struct Kernel {
    /// The loaded programs (and the maps not taken out), alive as long as the agent.
    _ebpf: Ebpf,
    /// The attachments; taken out when the agent detaches or leaves.
    links: Mutex<Vec<PinnedLink>>,
    pin_dir: PathBuf,
    /// The agent's state as the kernel reads it; the heartbeat and the flags change.
    state: Mutex<AgentState>,
    capacity: Capacity,
    /// Entries the agent put in the VIP and enrolled maps.
    filled: Mutex<(usize, usize)>,
    enrolled: Mutex<HashMap<MapData, u64, u8>>,
    vips: Mutex<HashMap<MapData, SockAddr, u8>>,
    agent: Mutex<Array<MapData, AgentState>>,
    orig_dst: Mutex<HashMap<MapData, FourTuple, OrigDst>>,
    counters: PerCpuArray<MapData, u64>,
    listeners: Mutex<SockMap<MapData>>,
    lb: Mutex<LbMaps>,
    failures: Mutex<Option<tokio::sync::mpsc::Receiver<KernelFailure>>>,
}

impl Kernel {
    /// Loads and attaches the programs. Steering starts only with the first [`beat`].
    ///
    /// What a previous agent left pinned is adopted: its maps (services, enrolled
    /// namespaces, original destinations of connections not yet accepted) are reused,
    /// and its programs are replaced by this build's without a moment unattached.
    ///
    /// [`beat`]: Datapath::beat
    ///
    /// On an error, what this call pinned is removed again (a directory a previous
    /// agent left is left for the next one).
    pub fn load(options: &KernelOptions) -> Result<Self, DatapathError> {
        require_cgroup2(&options.cgroup)?;
        let created = !options.pin_dir.exists();
        prepare_pin_dir(&options.pin_dir, &options.capacity)?;
        Self::load_pinned(options).inspect_err(|_| {
            if created && let Err(err) = remove_pin_dir(&options.pin_dir) {
                warn!("cannot remove {}: {}", options.pin_dir.display(), crate::Chain(&err));
            }
        })
    }

    fn load_pinned(options: &KernelOptions) -> Result<Self, DatapathError> {
        let started = Instant::now();
        let pin_dir = &options.pin_dir;
        let cgroup = File::open(&options.cgroup).map_err(DatapathError::io(&options.cgroup))?;

        let level: u8 = if options.kernel_debug_log { 4 } else { 2 }; // aya-log: debug / warn
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pin_dir).override_global("AYA_LOG_LEVEL", &level, false);
        for (name, (_, _, entries)) in map_shapes(&options.capacity) {
            loader.map_max_entries(name, entries);
        }
        let mut ebpf = loader.load(OBJECT).map_err(DatapathError::program("loading the object"))?;
        start_log_pump(&mut ebpf);

        let mut links = Vec::new();
        for name in PROGRAMS {
            let link = attach(&mut ebpf, name, &cgroup)?;
            links.push(replace_pinned_link(link, &pin_dir.join(format!("link_{name}")))?);
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
            capacity: options.capacity,
            filled: Mutex::default(),
            enrolled: Mutex::new(take_map(&mut ebpf, map_names::ENROLLED)?),
            vips: Mutex::new(take_map(&mut ebpf, map_names::VIPS)?),
            agent: Mutex::new(take_map(&mut ebpf, map_names::AGENT)?),
            orig_dst: Mutex::new(take_map(&mut ebpf, map_names::ORIG_BY_TUPLE)?),
            counters: take_map(&mut ebpf, map_names::COUNTERS)?,
            listeners: Mutex::new(take_map(&mut ebpf, map_names::LISTENERS)?),
            lb: Mutex::new(LbMaps::new(
                take_map(&mut ebpf, map_names::LB_SERVICES)?,
                take_map(&mut ebpf, map_names::LB_BACKENDS)?,
                take_map(&mut ebpf, map_names::LB_CONNECTS)?,
            )),
            failures: Mutex::new(failure_pump(&mut ebpf)),
            _ebpf: ebpf,
            links: Mutex::new(links),
            pin_dir: pin_dir.clone(),
            state: Mutex::new(state),
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

    /// Tells the kernel which sockets are the agent's listeners. Connects are steered
    /// only while the listener of their family is open, so the moment this process
    /// dies (its sockets close) Pods take the DNAT path again.
    pub fn publish_listeners(&self, listeners: &[TcpListener]) -> Result<(), DatapathError> {
        let mut map = lock(&self.listeners);
        for listener in listeners {
            let addr = listener.local_addr().map_err(DatapathError::io(map_names::LISTENERS))?;
            let slot = if addr.is_ipv4() { listener_slot::V4 } else { listener_slot::V6 };
            map.set(slot, listener, 0).map_err(DatapathError::map(map_names::LISTENERS))?;
        }
        Ok(())
    }

    /// Takes the listeners out of the kernel's view: new connects take kube-proxy's path
    /// at once, while connections already steered here are still served.
    pub fn withdraw_listeners(&self) -> Result<(), DatapathError> {
        let mut map = lock(&self.listeners);
        for slot in [listener_slot::V4, listener_slot::V6] {
            match map.clear_index(&slot) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(err) => return Err(DatapathError::map(map_names::LISTENERS)(err)),
            }
        }
        Ok(())
    }

    /// Detaches the programs and removes every pin: the kernel forgets sockeye. Other
    /// holders of the kernel may still run; the programs are gone regardless.
    pub fn detach(&self) -> Result<(), DatapathError> {
        let links = std::mem::take(&mut *lock(&self.links));
        let mut first_error = None;
        for link in links {
            // Unpinning and dropping the last descriptor detaches the program.
            if let Err(err) = link.unpin() {
                first_error.get_or_insert(DatapathError::io(&self.pin_dir)(err));
            }
        }
        remove_pin_dir(&self.pin_dir)?;
        info!(pins = %self.pin_dir.display(), "kernel programs detached and unpinned");
        first_error.map_or(Ok(()), Err)
    }

    /// Leaves programs and maps pinned for the successor that adopted them.
    pub fn leave(&self) {
        drop(std::mem::take(&mut *lock(&self.links)));
        info!(pins = %self.pin_dir.display(), "kernel programs and maps left to the successor");
    }
}

impl Datapath for Kernel {
    fn capacity(&self) -> Capacity {
        self.capacity
    }

    fn set_enrolled(&self, cookies: &BTreeSet<u64>) -> Result<(), DatapathError> {
        reconcile(&mut lock(&self.enrolled), cookies, enrolled::STEER, map_names::ENROLLED)?;
        lock(&self.filled).1 = cookies.len();
        Ok(())
    }

    fn set_netns_full(&self, cookie: u64, full: bool) -> Result<(), DatapathError> {
        let mut map = lock(&self.enrolled);
        if map.get(&cookie, 0).is_err() {
            return Ok(()); // no longer enrolled
        }
        let value = if full { enrolled::FULL } else { enrolled::STEER };
        // Only the agent writes this map, under this lock: the entry is still there.
        map.insert(cookie, value, 0).map_err(DatapathError::map(map_names::ENROLLED))
    }

    fn set_vips(&self, vips: &BTreeSet<SocketAddr>) -> Result<(), DatapathError> {
        let vips = vips.iter().map(|vip| SockAddr::from(*vip)).collect();
        reconcile(&mut lock(&self.vips), &vips, 1, map_names::VIPS)?;
        lock(&self.filled).0 = vips.len();
        Ok(())
    }

    fn usage(&self) -> Vec<MapUsage> {
        let (services, pods) = *lock(&self.filled);
        MapUsage::of(&self.capacity, services, pods)
    }

    fn full(&self) -> bool {
        lock(&self.state).full()
    }

    fn set_full(&self, full: bool) -> Result<(), DatapathError> {
        let mut state = lock(&self.state);
        if state.full() == full {
            return Ok(());
        }
        state.flags =
            if full { state.flags | AgentState::FULL } else { state.flags & !AgentState::FULL };
        // Tell the kernel now, not at the next beat.
        lock(&self.agent).set(0, *state, 0).map_err(DatapathError::map(map_names::AGENT))
    }

    fn beat(&self) -> Result<(), DatapathError> {
        let mut state = lock(&self.state);
        state.heartbeat_ns = sys::monotonic_ns();
        lock(&self.agent).set(0, *state, 0).map_err(DatapathError::map(map_names::AGENT))
    }

    fn take_orig_dst(
        &self,
        client: SocketAddr,
        local: SocketAddr,
    ) -> Result<Option<OrigDst>, DatapathError> {
        let key = FourTuple { src: SockAddr::from(client), dst: SockAddr::from(local) };
        let mut map = lock(&self.orig_dst);
        match map.get(&key, 0) {
            Ok(orig) => {
                // The LRU would reclaim it anyway; removing keeps the map small.
                let _ = map.remove(&key);
                Ok(Some(orig))
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

    fn set_kernel_services(
        &self,
        services: &BTreeMap<SocketAddr, Vec<SocketAddr>>,
    ) -> Result<(), DatapathError> {
        lock(&self.lb).set(services)
    }

    fn take_kernel_failures(&self) -> Option<tokio::sync::mpsc::Receiver<KernelFailure>> {
        lock(&self.failures).take()
    }

    fn kernel_connects(&self) -> Result<Vec<KernelConnects>, DatapathError> {
        let totals = lock(&self.lb).connects()?;
        Ok(totals
            .into_iter()
            .map(|(key, stats)| ((key.vip.into(), key.to.into()), stats))
            .collect())
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
            warn!(
                "socket acceleration is unavailable, Pod↔agent bytes take plain TCP: {}",
                crate::Chain(&err)
            );
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

/// Makes the keys of `map` exactly `want`; new keys get `value`, kept ones keep theirs.
fn reconcile<K: aya::Pod + Ord>(
    map: &mut HashMap<MapData, K, u8>,
    want: &BTreeSet<K>,
    value: u8,
    name: &str,
) -> Result<(), DatapathError> {
    let have: BTreeSet<K> = map.keys().filter_map(Result::ok).collect();
    for stale in have.difference(want) {
        map.remove(stale).map_err(DatapathError::map(name))?;
    }
    for new in want.difference(&have) {
        map.insert(new, value, 0).map_err(DatapathError::map(name))?;
    }
    debug!(map = name, entries = want.len(), "map reconciled");
    Ok(())
}

/// Creates the pin directory, or finds what a previous agent left there. A pinned map
/// whose shape differs from this build's (an upgrade that changed it) is removed, to
/// be made anew; the others are reused as they are.
fn prepare_pin_dir(dir: &Path, capacity: &Capacity) -> Result<(), DatapathError> {
    require_bpffs(dir)?;
    std::fs::create_dir_all(dir).map_err(DatapathError::io(dir))?;
    let mut adopted = 0;
    for (name, shape) in map_shapes(capacity) {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(DatapathError::map(name))?;
        let found = (info.key_size(), info.value_size(), info.max_entries());
        if found == shape {
            adopted += 1;
        } else {
            warn!(map = name, ?found, expected = ?shape, "pinned map has another shape; made anew");
            std::fs::remove_file(&path).map_err(DatapathError::io(&path))?;
        }
    }
    if adopted > 0 {
        info!(pins = %dir.display(), maps = adopted, "adopting the maps a previous agent pinned");
    }
    Ok(())
}

/// Key size, value size and capacity of each pinned map, as this build and `capacity`
/// define them.
fn map_shapes(capacity: &Capacity) -> [(&'static str, (u32, u32, u32)); 13] {
    const fn size<T>() -> u32 {
        std::mem::size_of::<T>() as u32
    }
    let c = capacity;
    [
        (map_names::ENROLLED, (size::<u64>(), size::<u8>(), c.pods)),
        (map_names::VIPS, (size::<SockAddr>(), size::<u8>(), c.services)),
        (map_names::AGENT, (size::<u32>(), size::<AgentState>(), 1)),
        (map_names::ORIG_BY_COOKIE, (size::<u64>(), size::<OrigDst>(), c.pending_connects)),
        (map_names::ORIG_BY_TUPLE, (size::<FourTuple>(), size::<OrigDst>(), c.pending_connects)),
        (map_names::SOCKS, (size::<FourTuple>(), size::<u32>(), c.accelerated_sockets)),
        (map_names::NO_ACCEL, (size::<FourTuple>(), size::<u8>(), map_sizes::NO_ACCEL)),
        (map_names::LISTENERS, (size::<u32>(), size::<u32>(), map_sizes::LISTENERS)),
        (map_names::COUNTERS, (size::<u32>(), size::<u64>(), Counter::SLOTS)),
        // A kernel-mode VIP is a VIP.
        (map_names::LB_SERVICES, (size::<SockAddr>(), size::<LbService>(), c.services)),
        (
            map_names::LB_BACKENDS,
            (size::<BackendSlot>(), size::<SockAddr>(), map_sizes::LB_BACKENDS),
        ),
        (
            map_names::LB_CONNECTS,
            (size::<Rewrite>(), size::<ConnectStats>(), map_sizes::LB_CONNECTS),
        ),
        (map_names::REWRITES, (size::<u64>(), size::<Rewrite>(), map_sizes::REWRITES)),
    ]
}

/// Pins `link` at `path`, where a previous agent's link to the same program may be:
/// the new program is attached before the old one is detached, so every connect meets
/// at least one of them.
fn replace_pinned_link(link: FdLink, path: &Path) -> Result<PinnedLink, DatapathError> {
    if path.exists() {
        let old = PinnedLink::from_pin(path).map_err(DatapathError::program("adopting a link"))?;
        // Dropping the unpinned link detaches the old program (once its agent exits).
        drop(old.unpin().map_err(DatapathError::io(path))?);
    }
    link.pin(path).map_err(DatapathError::program(format!("pinning {}", path.display())))
}

/// Removes the pin directory and every pin in it; a directory already gone is fine.
pub fn remove_pin_dir(dir: &Path) -> Result<(), DatapathError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(DatapathError::io(dir)(err)),
    };
    for entry in entries {
        let path = entry.map_err(DatapathError::io(dir))?.path();
        std::fs::remove_file(&path).map_err(DatapathError::io(&path))?;
    }
    std::fs::remove_dir(dir).map_err(DatapathError::io(dir))
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
