//! Memory cgroups the tests create: cgroup v1 (`memory.limit_in_bytes`) or
//! v2 (`memory.max`), whichever carries the memory controller here. Each is
//! uniquely named, and removed on drop, after killing the processes the test
//! put in it (nothing else is ever in a test's cgroup).

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The mount carrying the memory controller, from /proc/self/mounts.
pub fn memory_mount() -> (Version, PathBuf) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    let mut v2 = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        if f[2] == "cgroup" && f[3].split(',').any(|o| o == "memory") {
            return (Version::V1, PathBuf::from(f[1]));
        }
        if f[2] == "cgroup2" {
            let controllers = std::fs::read_to_string(Path::new(f[1]).join("cgroup.controllers"))
                .unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "memory") {
                v2 = Some(PathBuf::from(f[1]));
            }
        }
    }
    match v2 {
        Some(path) => (Version::V2, path),
        None => panic!("no memory cgroup controller is mounted (v1 or v2)"),
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct MemCgroup {
    pub version: Version,
    /// Directory in the cgroup filesystem.
    pub dir: PathBuf,
    /// Path inside the hierarchy, as /proc/PID/cgroup shows it.
    pub path: String,
    children: Vec<MemCgroup>,
    removed: bool,
}

fn write(path: &Path, value: &str) {
    std::fs::write(path, value)
        .unwrap_or_else(|e| panic!("write {value:?} to {}: {e}", path.display()));
}

impl MemCgroup {
    /// A new cgroup directly under the memory hierarchy's root, limited to
    /// `limit` bytes (None: no limit of its own).
    pub fn create(hint: &str, limit: Option<u64>) -> Self {
        let name = format!(
            "oomtrace-test-{}-{}-{hint}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        Self::create_named(&name, limit)
    }

    /// As [`MemCgroup::create`], named exactly `name` (the README's
    /// examples show their paths).
    pub fn create_named(name: &str, limit: Option<u64>) -> Self {
        let (version, root) = memory_mount();
        if version == Version::V2 {
            // Children of the root get a memory controller only if the root
            // delegates it.
            let control = root.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&control).unwrap_or_default();
            if !enabled.split_whitespace().any(|c| c == "memory") {
                write(&control, "+memory");
            }
        }
        Self::make(version, root.join(name), format!("/{name}"), limit)
    }

    /// A cgroup inside this one (a container inside a pod, say).
    pub fn child(&mut self, name: &str, limit: Option<u64>) -> &mut MemCgroup {
        if self.version == Version::V2 {
            write(&self.dir.join("cgroup.subtree_control"), "+memory");
        }
        let child = Self::make(
            self.version,
            self.dir.join(name),
            format!("{}/{name}", self.path),
            limit,
        );
        self.children.push(child);
        self.children.last_mut().expect("just pushed")
    }

    fn make(version: Version, dir: PathBuf, path: String, limit: Option<u64>) -> Self {
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let cg = Self {
            version,
            dir,
            path,
            children: Vec::new(),
            removed: false,
        };
        if let Some(limit) = limit {
            match version {
                Version::V1 => {
                    write(&cg.dir.join("memory.limit_in_bytes"), &limit.to_string());
                    // With swap accounting, keep the test from swapping instead.
                    let memsw = cg.dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        let _ = std::fs::write(memsw, limit.to_string());
                    }
                }
                Version::V2 => {
                    write(&cg.dir.join("memory.max"), &limit.to_string());
                    let swap = cg.dir.join("memory.swap.max");
                    if swap.exists() {
                        let _ = std::fs::write(swap, "0");
                    }
                }
            }
        }
        cg
    }

    /// The memory charged to this cgroup now, in bytes.
    pub fn usage(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        };
        let text = std::fs::read_to_string(self.dir.join(file)).expect("read usage");
        text.trim().parse().expect("a byte count")
    }

    /// The most memory ever charged to this cgroup, in bytes.
    pub fn peak(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.max_usage_in_bytes",
            Version::V2 => "memory.peak",
        };
        let text = std::fs::read_to_string(self.dir.join(file)).expect("read peak");
        text.trim().parse().expect("a byte count")
    }

    /// Sets this cgroup's limit (v1 `memory.limit_in_bytes`, v2 `memory.max`).
    /// On v1 with swap accounting the memory+swap limit follows, in the
    /// order the kernel accepts: it may never be below the memory limit.
    pub fn set_limit(&self, bytes: u64) {
        let value = bytes.to_string();
        match self.version {
            Version::V1 => {
                let memory = self.dir.join("memory.limit_in_bytes");
                let memsw = self.dir.join("memory.memsw.limit_in_bytes");
                if !memsw.exists() {
                    return write(&memory, &value);
                }
                let raising = bytes > self.limit_file("memory.limit_in_bytes");
                let order = if raising {
                    [&memsw, &memory]
                } else {
                    [&memory, &memsw]
                };
                for file in order {
                    write(file, &value);
                }
            }
            Version::V2 => write(&self.dir.join("memory.max"), &value),
        }
    }

    fn limit_file(&self, name: &str) -> u64 {
        let text = std::fs::read_to_string(self.dir.join(name))
            .unwrap_or_else(|e| panic!("read {name}: {e}"));
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}: {text:?}"))
    }

    /// The kernel's own count of OOM kills in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        oom_kill_count(&self.dir, self.version)
    }

    /// The cgroup's kernfs id: its directory's inode number.
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.dir).expect("stat cgroup").ino()
    }

    pub fn dir_str(&self) -> &str {
        self.dir.to_str().expect("utf-8 path")
    }

    /// Removes the cgroup now (and its children), killing what the test left in it.
    pub fn remove(&mut self) {
        if self.removed {
            return;
        }
        for child in &mut self.children {
            child.remove();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // Only the test's own processes are ever in this cgroup.
                // SAFETY: kill(2) with a pid read from our cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() > deadline => {
                    eprintln!("warning: could not remove {}: {e}", self.dir.display());
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        self.removed = true;
    }
}

/// The `oom_kill` counter of the memory cgroup at `dir`: v1's
/// `memory.oom_control` counts kills of this cgroup's own tasks; v2's
/// `memory.events` counts this cgroup and its descendants.
pub fn oom_kill_count(dir: &Path, version: Version) -> u64 {
    let file = match version {
        Version::V1 => "memory.oom_control",
        Version::V2 => "memory.events",
    };
    let text = std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.join(file).display()));
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no oom_kill in {file}: {text}"))
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}
