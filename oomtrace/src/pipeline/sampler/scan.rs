//! Finding the memcgs worth sampling: those that hold processes, and their
//! ancestors (a pod's memcg holds none itself, but its limit is the one
//! that fires), below the hierarchy's root (the root has no limit, and on
//! v2 no `memory.current`).

use std::{collections::BTreeSet, fs::File, io::Read, path::Path};

use super::files::Version;

/// How deep the walk goes: the kernel's own walk in oomtrace's eBPF side
/// carries 32 levels.
const MAX_DEPTH: usize = 32;

/// The memcgs under `mount` that hold processes, and their ancestors, as
/// paths from the hierarchy's root (`/a/b`, as `memcg.path` has them).
/// Stops adding at `max` paths (deepest first would be as arbitrary; a
/// node with more memcgs than the budget loses some either way).
///
/// A memcg for which `tracked` is true counts as holding processes without
/// its `cgroup.procs` (v1) or `cgroup.events` (v2) being read: the sampler
/// keeps a memcg it follows until its directory goes (or the cap evicts
/// it), and reading those files for every followed memcg at every walk was
/// most of the sampler's cost (on v1 the kernel builds the pid list of
/// each one).
pub fn memcgs_with_processes(
    mount: &Path,
    version: Version,
    max: usize,
    tracked: &dyn Fn(&str) -> bool,
) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let walk_state = Walk {
        version,
        max,
        tracked,
    };
    walk_state.walk(mount, "", 0, &mut found);
    found
}

/// What every step of the walk needs.
struct Walk<'a> {
    version: Version,
    max: usize,
    tracked: &'a dyn Fn(&str) -> bool,
}

impl Walk<'_> {
    /// Walks `dir` (at `path`); true when it or a descendant holds processes.
    fn walk(&self, dir: &Path, path: &str, depth: usize, found: &mut BTreeSet<String>) -> bool {
        let (version, max) = (self.version, self.max);
        let mut populated =
            (!path.is_empty() && (self.tracked)(path)) || holds_processes(dir, version);
        // On v2 `populated` already counts descendants: a memcg without any
        // has no descendant worth the walk. The root has no `cgroup.events`
        // (the kernel leaves it out there): it is always walked.
        let descend = depth < MAX_DEPTH && (version == Version::V1 || populated || path.is_empty());
        if descend && let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if found.len() >= max {
                    break;
                }
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    // memcg.path carries such names with U+FFFD: they could
                    // not be matched to a kill anyway.
                    continue;
                };
                let child = format!("{path}/{name}");
                populated |= self.walk(&entry.path(), &child, depth + 1, found);
            }
        }
        // The root is left out; on v2 a memcg without the memory controller
        // (its parent does not delegate it) has no memory files.
        let sampled =
            !path.is_empty() && (version == Version::V1 || dir.join(version.usage_file()).exists());
        if populated && sampled && found.len() < max {
            found.insert(path.to_string());
        }
        populated
    }
}

/// v2: `populated 1` in `cgroup.events` (this cgroup or a descendant).
/// v1: a non-empty `cgroup.procs` (this cgroup's own processes).
fn holds_processes(dir: &Path, version: Version) -> bool {
    let mut buffer = [0u8; 256];
    let read = |name: &str, buffer: &mut [u8]| {
        File::open(dir.join(name))
            .and_then(|mut f| f.read(buffer))
            .unwrap_or(0)
    };
    match version {
        Version::V1 => read("cgroup.procs", &mut buffer) > 0,
        Version::V2 => {
            let n = read("cgroup.events", &mut buffer);
            String::from_utf8_lossy(&buffer[..n])
                .lines()
                .any(|line| line == "populated 1")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(name: &str) -> std::path::PathBuf {
        let root =
            std::env::temp_dir().join(format!("oomtrace-scan-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("root");
        root
    }

    #[test]
    fn v1_takes_memcgs_with_processes_and_their_ancestors() {
        let root = tree("v1");
        for dir in ["pod/a", "pod/b", "idle/c"] {
            std::fs::create_dir_all(root.join(dir)).expect("dir");
        }
        std::fs::write(root.join("cgroup.procs"), "1\n").expect("root procs");
        std::fs::write(root.join("pod/a/cgroup.procs"), "42\n").expect("procs");
        std::fs::write(root.join("pod/b/cgroup.procs"), "").expect("procs");
        let found = memcgs_with_processes(&root, Version::V1, 100, &|_| false);
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            ["/pod", "/pod/a"],
            "the root, empty and idle memcgs are left out"
        );
        assert_eq!(
            memcgs_with_processes(&root, Version::V1, 1, &|_| false).len(),
            1,
            "the cap"
        );
        // One the sampler follows stays, processes or not (its
        // cgroup.procs is not read), with its ancestors.
        let found = memcgs_with_processes(&root, Version::V1, 100, &|p| p == "/idle/c");
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            ["/idle", "/idle/c", "/pod", "/pod/a"],
        );
        std::fs::remove_dir_all(&root).expect("clean");
    }

    #[test]
    fn v2_needs_populated_and_memory_files() {
        let root = tree("v2");
        for dir in ["kubepods/pod1/ctr", "nomem", "empty"] {
            std::fs::create_dir_all(root.join(dir)).expect("dir");
        }
        // As the kernel has it: every cgroup but the root has a
        // `cgroup.events`.
        let populated = ["kubepods", "kubepods/pod1", "kubepods/pod1/ctr", "nomem"];
        for dir in populated {
            std::fs::write(
                root.join(dir).join("cgroup.events"),
                "populated 1\nfrozen 0\n",
            )
            .expect("events");
        }
        std::fs::write(root.join("empty/cgroup.events"), "populated 0\nfrozen 0\n").expect("ev");
        for dir in ["kubepods", "kubepods/pod1", "kubepods/pod1/ctr", "empty"] {
            std::fs::write(root.join(dir).join("memory.current"), "0\n").expect("current");
        }
        let found = memcgs_with_processes(&root, Version::V2, 100, &|_| false);
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            ["/kubepods", "/kubepods/pod1", "/kubepods/pod1/ctr"]
        );
        std::fs::remove_dir_all(&root).expect("clean");
    }
}
