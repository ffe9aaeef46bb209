//! Facts about the machine (kernel, cgroup layout, BTF, privileges) and the
//! collector's own process settings. The facts go into the `start` record and
//! `oomtrace check`, and they pick the attach plan.

use std::path::{Path, PathBuf};

use oomtrace_record::{CgroupMode, HostFacts, MemoryController, Origin, SelfSetting};

pub const DEFAULT_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Reads the facts of this machine.
pub fn gather() -> HostFacts {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let (cgroup_mode, memory_controller) = cgroup_layout(&mounts, |p| {
        std::fs::read_to_string(p.join("cgroup.controllers")).unwrap_or_default()
    });
    HostFacts {
        hostname: read_trimmed("/proc/sys/kernel/hostname").unwrap_or_default(),
        kernel_release: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
        cgroup_mode,
        memory_controller,
        btf: Path::new(DEFAULT_BTF).exists(),
        tracefs: super::tracefs::find().map(|p| p.display().to_string()),
        page_size: page_size(),
        pid_ns: pid_namespace(),
    }
}

/// The collector's own pid namespace: the inode of /proc/self/ns/pid.
fn pid_namespace() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}

/// The directory where cgroup paths as the kernel walks them (from the
/// hierarchy's root) can be opened: the memory controller's mount, if
/// /proc/self/mountinfo says it shows the hierarchy from its root. In a
/// cgroup namespace, or with a sub-tree bind-mounted, it does not: then
/// None, and nothing is looked up by path.
pub fn cgroup_root_dir(facts: &HostFacts) -> Option<PathBuf> {
    let mount = &facts.memory_controller.as_ref()?.mount;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_shows_root(&mountinfo, mount).then(|| PathBuf::from(mount))
}

/// Whether the mount at `mount` in `mountinfo` has root `/` (the fourth
/// field of a mountinfo line is the mount's root within its file system).
fn mount_shows_root(mountinfo: &str, mount: &str) -> bool {
    mountinfo
        .lines()
        .map(|line| line.split(' ').collect::<Vec<_>>())
        .rfind(|fields| fields.len() > 4 && fields[4] == mount)
        .is_some_and(|fields| fields[3] == "/")
}

/// Where this collector's records come from: the host, its boot, and this
/// run (a random id, new at every start).
pub fn origin(host: &HostFacts) -> Origin {
    Origin {
        hostname: Some(host.hostname.clone()),
        boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        run_id: Some(run_id()),
    }
}

/// 128 random bits as 32 hex digits, from the kernel's random pool (the
/// same source as /proc/sys/kernel/random/uuid).
fn run_id() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`.
    let filled = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if filled != bytes.len() as isize {
        // Never expected after boot; the time and pid still make it unique
        // per start on this node.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (nanos ^ (u128::from(std::process::id()) << 96)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

/// Works out the cgroup mode from /proc/self/mounts. `controllers` reads a
/// cgroup2 mount's `cgroup.controllers` (injected for tests).
pub fn cgroup_layout(
    mounts: &str,
    controllers: impl Fn(&Path) -> String,
) -> (CgroupMode, Option<MemoryController>) {
    let mut v1_memory = None;
    let mut any_v1 = false;
    let mut v2_mounts = Vec::new();
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, dir, fstype, options, ..] = fields[..] else {
            continue;
        };
        match fstype {
            "cgroup" => {
                any_v1 = true;
                if options.split(',').any(|o| o == "memory") {
                    v1_memory = Some(dir.to_string());
                }
            }
            "cgroup2" => v2_mounts.push(PathBuf::from(dir)),
            _ => {}
        }
    }
    let mode = match (any_v1, !v2_mounts.is_empty()) {
        (true, true) => CgroupMode::Hybrid,
        (true, false) => CgroupMode::V1,
        (false, true) => CgroupMode::V2,
        (false, false) => CgroupMode::None,
    };
    let memory = if let Some(mount) = v1_memory {
        Some(MemoryController { version: 1, mount })
    } else {
        v2_mounts
            .iter()
            .find(|m| controllers(m).split_whitespace().any(|c| c == "memory"))
            .map(|m| MemoryController {
                version: 2,
                mount: m.display().to_string(),
            })
    };
    (mode, memory)
}

/// Writes `requested` to /proc/self/oom_score_adj: the recorder must outlive
/// the processes it records. Failure (lowering needs CAP_SYS_RESOURCE) is
/// reported, never fatal.
pub fn protect_self(requested: i32) -> SelfSetting {
    let path = "/proc/self/oom_score_adj";
    let error = std::fs::write(path, requested.to_string()).err().map(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (lowering oom_score_adj needs CAP_SYS_RESOURCE)"
        } else {
            ""
        };
        format!("cannot set {path} to {requested}: {e}{hint}")
    });
    let applied = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    SelfSetting {
        requested,
        applied,
        error,
    }
}

/// Sets the collector's nice value. setpriority(PRIO_PROCESS, 0) applies to
/// the calling thread only on Linux, and threads inherit their creator's: so
/// this runs on the main thread before it starts the others.
pub fn prioritize_self(requested: i32) -> SelfSetting {
    // SAFETY: setpriority takes plain integers.
    let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, requested) };
    let error = (set != 0).then(|| {
        let e = std::io::Error::last_os_error();
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (a negative nice value needs CAP_SYS_NICE)"
        } else {
            ""
        };
        format!("cannot set the collector's nice value to {requested}: {e}{hint}")
    });
    // getpriority can legitimately return -1, so errno tells failure apart.
    // SAFETY: errno is thread-local; getpriority takes plain integers.
    let applied = unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        (*libc::__errno_location() == 0).then_some(nice)
    };
    SelfSetting {
        requested,
        applied,
        error,
    }
}

/// Runs `f`, which allocates and frees tens of MB at once (aya's parses of
/// the kernel's BTF), so that the memory is reused while it runs and handed
/// back to the kernel after.
///
/// glibc serves a large allocation with mmap and, when it is freed, raises
/// its mmap threshold to that size (its dynamic threshold): aya's second
/// parse (for fentry) then lands on the heap, on fresh pages, and stays
/// resident after it is freed. Measured here: peak 27.2 MiB and a steady
/// 29 MiB that way; with large allocations kept on the heap during `f`, the
/// second parse reuses the first's memory (peak 24.0 MiB) and malloc_trim()
/// returns it (steady 7.3 MiB). musl (the static builds) needs neither.
pub fn reusing_heap<T>(f: impl FnOnce() -> T) -> T {
    /// glibc's default M_MMAP_THRESHOLD.
    #[cfg(target_env = "gnu")]
    const DEFAULT_MMAP_THRESHOLD: libc::c_int = 128 << 10;
    // SAFETY: mallopt takes plain integers.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
    }
    let result = f();
    // SAFETY: as above; malloc_trim takes a plain integer.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, DEFAULT_MMAP_THRESHOLD);
        libc::malloc_trim(0);
    }
    result
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK. Raising it needs
/// CAP_SYS_RESOURCE; later kernels charge the memcg instead, so a failure
/// here is only worth a debug line.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads one rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK: {} (fine on Linux 5.11+)",
            std::io::Error::last_os_error()
        );
    }
}

/// Capabilities, from /proc/self/status.
pub mod privileges {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;

    #[derive(Debug, thiserror::Error)]
    #[error(
        "oomtrace needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN alone) to load and attach \
         its eBPF programs, and this process is missing {missing}. Run it as root (`sudo \
         oomtrace run`), or in a container granted those two (Kubernetes: \
         `capabilities.add: [BPF, PERFMON]`, as deploy/daemonset.yaml does)"
    )]
    pub struct MissingCapabilities {
        pub missing: String,
    }

    fn effective() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .unwrap_or(0)
    }

    fn has(caps: u64, cap: u32) -> bool {
        caps & (1 << cap) != 0
    }

    /// Whether a seccomp filter is on this process (`Seccomp: 2` in
    /// /proc/self/status). Container runtimes' default profiles allow
    /// bpf(2) only with CAP_SYS_ADMIN, so with CAP_BPF alone the first map
    /// creation fails with EPERM, which says nothing of the filter.
    pub fn seccomp_filtered() -> bool {
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))
                .is_some_and(|v| v.trim() == "2")
        })
    }

    /// Ok when the process can load and attach tracing programs.
    pub fn check() -> Result<(), MissingCapabilities> {
        check_caps(effective())
    }

    pub fn check_caps(caps: u64) -> Result<(), MissingCapabilities> {
        if has(caps, CAP_SYS_ADMIN) || (has(caps, CAP_BPF) && has(caps, CAP_PERFMON)) {
            return Ok(());
        }
        let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
            .into_iter()
            .filter(|(c, _)| !has(caps, *c))
            .map(|(_, n)| n)
            .collect();
        Err(MissingCapabilities {
            missing: missing.join(", "),
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn sys_admin_or_bpf_plus_perfmon_is_enough() {
            assert!(check_caps(1 << CAP_SYS_ADMIN).is_ok());
            assert!(check_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_ok());
            let err = check_caps(1 << CAP_BPF).expect_err("perfmon missing");
            assert_eq!(err.missing, "CAP_PERFMON");
            let err = check_caps(0).expect_err("nothing");
            assert_eq!(err.missing, "CAP_BPF, CAP_PERFMON");
            assert!(err.to_string().contains("Run it as root"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_mounts_from_their_root_only() {
        let info = "30 25 0:26 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n\
                    40 30 0:26 /kubepods/pod1 /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                    41 25 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        // The last mount on a mount point is the one visible there.
        assert!(!mount_shows_root(info, "/sys/fs/cgroup/memory"));
        assert!(mount_shows_root(info, "/sys/fs/cgroup/unified"));
        assert!(!mount_shows_root(info, "/sys/fs/cgroup/cpu"));
    }

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn hybrid_with_v1_memory() {
        let (mode, mem) = cgroup_layout(HYBRID, |_| "hugetlb".into());
        assert_eq!(mode, CgroupMode::Hybrid);
        let mem = mem.expect("memory");
        assert_eq!(
            (mem.version, mem.mount.as_str()),
            (1, "/sys/fs/cgroup/memory")
        );
    }

    #[test]
    fn unified_with_memory_controller() {
        let mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec 0 0\n";
        let (mode, mem) = cgroup_layout(mounts, |p| {
            assert_eq!(p, Path::new("/sys/fs/cgroup"));
            "cpuset cpu io memory hugetlb pids".into()
        });
        assert_eq!(mode, CgroupMode::V2);
        assert_eq!(mem.expect("memory").version, 2);
    }

    #[test]
    fn unified_without_memory_controller() {
        let mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        let (mode, mem) = cgroup_layout(mounts, |_| "cpu pids".into());
        assert_eq!(mode, CgroupMode::V2);
        assert!(mem.is_none());
        assert_eq!(cgroup_layout("", |_| String::new()).0, CgroupMode::None);
    }
}
