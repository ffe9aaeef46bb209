//! The memory sampler: the usage, `memory.stat` and pressure of every
//! memcg that holds processes, every `--sample-interval`, kept for
//! `--sample-window`, so that a kill record can say how the memory got to
//! the limit (`oom_kill.memory`).
//!
//! It runs on a thread of its own: its reads of cgroup files never hold up
//! the ring drain or the pipeline. It holds the files open ([`files`]) and
//! re-reads them with pread; every [`RESCAN_EVERY`] samples it walks the
//! hierarchy again ([`scan`]) for memcgs that came or went. What it reads
//! goes into a [`Store`] behind a mutex, taken once per sample round (after
//! all the reads) and once per kill by the pipeline ([`MemoryView`]), so
//! neither waits on the other's I/O.

mod files;
mod growth;
mod record;
mod scan;
mod stall;
mod store;

use std::{
    collections::HashMap,
    fs::File,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        mpsc::{Receiver, RecvTimeoutError, Sender, channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use oomtrace_record::{Memory, OomKill, OomStall};

pub use self::files::{Buffer, CgroupFiles, Version, parse_v2_max};
use self::{
    files::parse_psi,
    stall::Stalls,
    store::{Limits, Point, Store, bytes_per_cgroup},
};
use crate::kernel::clock::boot_ns;

/// The hierarchy is walked again every this many samples: a walk reads a
/// file per memcg, too much for every sample, and a memcg younger than
/// this many intervals is missed (its kill has an empty history).
pub const RESCAN_EVERY: u64 = 3;
/// The most memory the histories may take, whatever the window.
pub const MAX_STORE_BYTES: usize = 32 << 20;
/// The most samples kept per memcg (a 1 h window at 1 s would be 3,600).
pub const MAX_POINTS: usize = 3600;
/// New memcgs tried per walk when the store is full (each may replace one
/// that has not grown for a window).
const CANDIDATES_AT_CAP: usize = 16;
/// The system-wide PSI file, read when memcgs have none of their own (v1).
const SYSTEM_PSI: &str = "/proc/pressure/memory";

/// How the sampler runs.
#[derive(Clone, Debug)]
pub struct SamplerConfig {
    pub interval: Duration,
    pub window: Duration,
    /// The memory hierarchy's root directory.
    pub mount: PathBuf,
    pub version: Version,
}

/// The open-file budget: a quarter of RLIMIT_NOFILE (the rest is for the
/// collector's own files and a reopened output), clamped to 256..=4096.
pub fn file_budget() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    };
    usize::try_from(soft / 4).unwrap_or(4096).clamp(256, 4096)
}

impl SamplerConfig {
    /// The caps from the window, the interval and the budgets.
    pub fn limits(&self) -> Limits {
        let interval = self.interval.as_secs_f64().max(0.001);
        let points = ((self.window.as_secs_f64() / interval).ceil() as usize).clamp(1, MAX_POINTS);
        let by_files = file_budget() / self.version.files_per_cgroup();
        let by_memory = MAX_STORE_BYTES / bytes_per_cgroup(points);
        Limits {
            max_cgroups: by_files.min(by_memory).max(1),
            points,
            idle_ns: self.window.as_nanos().min(u64::MAX as u128) as u64,
        }
    }
}

/// A running sampler.
pub struct Sampler {
    view: MemoryView,
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

/// The pipeline's handle on the samples.
#[derive(Clone)]
pub struct MemoryView {
    store: Arc<Mutex<Store>>,
    /// `oom_stall` records made by the sampler, for the pipeline to
    /// attribute and write.
    stalls: Arc<Mutex<Vec<OomStall>>>,
    version: Version,
    window: Duration,
}

impl MemoryView {
    /// (evictions, refusals) at the sampler's cap so far.
    pub fn cap_counts(&self) -> (u64, u64) {
        let store = lock(&self.store);
        (store.evictions, store.refusals)
    }
}

fn lock<T>(store: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere with the lock held leaves the samples as they were:
    // still good to read.
    store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryView {
    /// `oom_kill.memory` for a kill about to be written. None when the
    /// victim's memcg path is unknown.
    pub fn memory_of(&self, kill: &OomKill) -> Option<Memory> {
        let store = lock(&self.store);
        record::memory_of(&store, kill, self.version, self.window)
    }

    /// The `oom_stall` records made since the last call, oldest first.
    pub fn take_stalls(&self) -> Vec<OomStall> {
        std::mem::take(&mut *lock(&self.stalls))
    }
}

impl Sampler {
    pub fn spawn(config: SamplerConfig) -> std::io::Result<Self> {
        let limits = config.limits();
        log::info!(
            "sampling memory every {:?} for {:?}: up to {} memcgs of {} samples",
            config.interval,
            config.window,
            limits.max_cgroups,
            limits.points
        );
        let store = Arc::new(Mutex::new(Store::new(limits)));
        let stalls = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = channel();
        let view = MemoryView {
            store: Arc::clone(&store),
            stalls: Arc::clone(&stalls),
            version: config.version,
            window: config.window,
        };
        let thread = std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || Rounds::new(config, limits, store, stalls).run(&stopped))?;
        Ok(Self { view, stop, thread })
    }

    pub fn view(&self) -> MemoryView {
        self.view.clone()
    }

    /// Stops the thread and says what the caps cost.
    pub fn finish(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            log::error!("the sampler thread panicked");
        }
        let store = lock(&self.view.store);
        if store.evictions + store.refusals > 0 {
            log::info!(
                "memory sampler: {} memcgs evicted and {} refused at the cap",
                store.evictions,
                store.refusals
            );
        }
    }
}

/// The sampler thread's state.
struct Rounds {
    config: SamplerConfig,
    limits: Limits,
    store: Arc<Mutex<Store>>,
    files: HashMap<String, CgroupFiles>,
    system_psi: Option<File>,
    buffer: Buffer,
    stalls: Stalls,
}

impl Rounds {
    fn new(
        config: SamplerConfig,
        limits: Limits,
        store: Arc<Mutex<Store>>,
        stalls: Arc<Mutex<Vec<OomStall>>>,
    ) -> Self {
        // v2 memcgs have their own; v1 ones have none, so the system's.
        let system_psi = match config.version {
            Version::V1 => File::open(SYSTEM_PSI).ok(),
            Version::V2 => None,
        };
        Self {
            limits,
            store,
            files: HashMap::new(),
            system_psi,
            buffer: Buffer::default(),
            stalls: Stalls::new(config.version, stalls),
            config,
        }
    }

    fn run(mut self, stopped: &Receiver<()>) {
        let mut next = Instant::now();
        for round in 0u64.. {
            if round % RESCAN_EVERY == 0 {
                self.rescan();
            }
            self.sample();
            next += self.config.interval;
            let now = Instant::now();
            // Behind (a slow round, a suspended machine): skip, do not burst.
            if next < now {
                next = now + self.config.interval;
            }
            match stopped.recv_timeout(next - now) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Reads every tracked memcg, then stores the samples in one go.
    fn sample(&mut self) {
        let mut points = Vec::with_capacity(self.files.len());
        let mut gone = Vec::new();
        for (path, files) in &self.files {
            let at = boot_ns();
            match files.read(&mut self.buffer) {
                Ok(reading) => points.push((path, Sampled::new(at, &reading))),
                Err(error) => {
                    let cause = std::error::Error::source(&error)
                        .map(|cause| format!(": {cause}"))
                        .unwrap_or_default();
                    log::debug!("memory sampler: {error}{cause}");
                    gone.push(path.clone());
                }
            }
        }
        let system = self.system_psi.as_ref().and_then(|file| {
            let at = boot_ns();
            let text = self.buffer.pread(file, Path::new(SYSTEM_PSI)).ok()?;
            parse_psi(text).map(|psi| (at, psi))
        });
        let now = boot_ns();
        // Before the store's lock: it may open a file per memcg near its
        // limit.
        self.stalls.check(&points, &self.files, &gone, now);
        let mut store = lock(&self.store);
        for (path, point) in points {
            store.push(path, point.point);
        }
        if let Some((at, psi)) = system {
            store.push_system_pressure(at, psi);
        }
        for path in &gone {
            store.vanished(path, now);
        }
        store.expire(now);
        drop(store);
        for path in gone {
            self.files.remove(&path);
        }
    }

    /// Walks the hierarchy: memcgs gone are marked so, new ones admitted.
    fn rescan(&mut self) {
        for files in self.files.values_mut() {
            files.refresh_limit(&mut self.buffer);
        }
        let mount = &self.config.mount;
        let version = self.config.version;
        // Walk a little past the cap: admission decides who is kept.
        let files = &self.files;
        let found =
            scan::memcgs_with_processes(mount, version, self.limits.max_cgroups * 2, &|path| {
                files.contains_key(path)
            });
        let now = boot_ns();
        let gone: Vec<String> = self
            .files
            .keys()
            .filter(|path| !found.contains(*path))
            .cloned()
            .collect();
        // Opened before the lock is taken: opens cost more than reads, and
        // a kill's lookup must not wait for them. At most the room left, or
        // a few candidates to replace idle memcgs at the cap, so the files
        // open at once stay near the budget.
        let room = (self.limits.max_cgroups + gone.len())
            .saturating_sub(self.files.len())
            .max(CANDIDATES_AT_CAP);
        let opened: Vec<(String, CgroupFiles)> = found
            .into_iter()
            .filter(|path| !self.files.contains_key(path))
            .take(room)
            .filter_map(|path| {
                let dir = mount.join(path.trim_start_matches('/'));
                // An error: removed since the walk.
                CgroupFiles::open(&dir, version)
                    .ok()
                    .map(|files| (path, files))
            })
            .collect();
        let mut store = lock(&self.store);
        for path in gone {
            store.vanished(&path, now);
            self.files.remove(&path);
        }
        for (path, files) in opened {
            // Refused at the cap: its files close here, and the next walk
            // asks again.
            if let Ok(evicted) = store.admit(&path, now) {
                for path in evicted {
                    self.files.remove(&path);
                }
                let mut files = files;
                files.refresh_limit(&mut self.buffer);
                self.files.insert(path, files);
            }
        }
    }
}

/// One memcg's sample, with what the stall check needs beyond the point.
pub struct Sampled {
    point: Point,
    limit: Option<u64>,
}

impl Sampled {
    fn new(at: u64, reading: &files::Reading) -> Self {
        Self {
            point: Point::new(at, reading),
            limit: reading.limit,
        }
    }
}
