//! Fills a kill record's attribution from what the kernel recorded: the
//! container and pod, their Kubernetes names, the limit that fired and
//! whose it was, and whether the container outlives the kill.

use std::path::{Path, PathBuf};

use oomtrace_record::{
    Constraint, Container, K8s, LimitScope, MemcgLevel, MemcgSource, MemcgUnknown, OomKill,
};

use super::{
    ChargeSlack, KubeletNames, RuntimeRoots, RuntimeState,
    cgroup_path::{components, locate},
    identify, limit_scope, nearest_limited_ancestor,
};

/// Per-collector attribution state: the kubelet and runtime name caches,
/// and what is known of this host.
pub struct Attributor {
    kubelet: KubeletNames,
    runtime_state: RuntimeState,
    slack: ChargeSlack,
    pub(super) host: HostView,
}

/// Whose a cgroup path is: container, pod and systemd unit.
#[derive(Clone, Debug, Default)]
pub struct Names {
    pub container: Option<Container>,
    pub k8s: Option<K8s>,
    pub systemd_unit: Option<String>,
}

/// What attribution needs to know of the host beyond the record.
#[derive(Clone, Debug, Default)]
pub struct HostView {
    /// The host's pid namespace (`start.host.pid_ns`).
    pub pid_ns: Option<u64>,
    /// Where cgroup paths from the kernel can be opened (the hierarchy's
    /// root, as `kernel::host::cgroup_root_dir` finds it); None when they
    /// cannot.
    pub cgroup_root: Option<PathBuf>,
    /// Where each runtime keeps its state, inside the host root.
    pub runtime_roots: RuntimeRoots,
}

impl Attributor {
    pub fn new(host_root: &Path, page_size: u64, host: HostView) -> Self {
        Self {
            kubelet: KubeletNames::new(host_root),
            runtime_state: RuntimeState::new(host_root, &host.runtime_roots),
            slack: ChargeSlack::for_this_host(page_size),
            host,
        }
    }

    /// Names the container, pod and limit of a kill about to be written
    /// (after [`Self::fired_memcg`] and the kernel's log line had their say).
    pub fn attribute(&mut self, kill: &mut OomKill) {
        let victim_path = kill.victim.cgroup.path.clone();
        let global = kill.oom.constraint == Some(Constraint::Global);
        kill.oom.limit_scope = match (&victim_path, &kill.oom.memcg_path) {
            (Some(victim), fired) => limit_scope(victim, fired.as_deref(), global),
            // Classic tracepoint: the victim's cgroup is unknown, but the
            // fired memcg's own path says whether it is a container's or a
            // pod's cgroup.
            (None, Some(fired)) => limit_scope(fired, Some(fired), global),
            (None, None) => global.then_some(LimitScope::Node),
        };
        kill.oom.group_kill = oom_group_level(kill).map(|group| group.is_some());
        let Some(victim_path) = victim_path else {
            return;
        };
        let names = self.names(&victim_path);
        kill.systemd_unit = names.systemd_unit;
        kill.k8s = names.k8s;
        kill.container_survives = names
            .container
            .is_some()
            .then(|| self.container_survives(kill, &victim_path))
            .flatten();
        kill.container = names.container;
    }

    /// The container, pod and unit a cgroup path names.
    ///
    /// The path gives the container's id and (mostly) its runtime; the
    /// runtime's state files its name, its image, and the Kubernetes names
    /// the kubelet's log directories leave null.
    pub fn names(&mut self, path: &str) -> Names {
        let identity = identify(path);
        let mut container = identity.container;
        let state = container
            .as_ref()
            .and_then(|c| self.runtime_state.lookup(&c.id, c.runtime));
        if let (Some(container), Some(state)) = (&mut container, &state) {
            state.name(container);
        }
        let k8s = identity.k8s.as_ref().map(|pod| {
            let names = self.kubelet.lookup(
                Some(&pod.pod_uid),
                container.as_ref().map(|c| c.id.as_str()),
            );
            let mut k8s = K8s {
                namespace: names.namespace,
                pod: names.pod,
                pod_uid: Some(pod.pod_uid.clone()),
                container: names.container,
                qos: Some(pod.qos),
            };
            if let Some(state) = &state {
                state.fill_k8s(&mut k8s);
            }
            k8s
        });
        Names {
            container,
            k8s,
            systemd_unit: identity.systemd_unit,
        }
    }

    /// `oom.memcg_path` as far as the ring buffer record knows it: from
    /// oom_kill_process when it is hooked (its `constraint` is then set),
    /// else derived from the levels read at the kill. The kernel's log line,
    /// read later, overrides a derived value (pipeline/kernel_log.rs).
    ///
    /// The derivation only considers the memcgs that hold the allocating
    /// task too (`shared_levels`, counted from the root): the kernel charges
    /// the allocating task's memcg and its ancestors, so the limit that
    /// fired is one of those. A sibling of the allocating task's cgroup can
    /// sit at its own limit by chance, and must not be blamed.
    pub fn fired_memcg(&self, kill: &mut OomKill, shared_levels: Option<usize>) {
        if kill.oom.constraint.is_some() {
            kill.oom.memcg_source = Some(MemcgSource::OomKillProcess);
            return;
        }
        let Some(memcg) = &kill.memcg else {
            kill.oom.memcg_unknown = Some(MemcgUnknown::LevelsUnknown);
            return;
        };
        let Some(shared) = shared_levels else {
            kill.oom.memcg_unknown = Some(MemcgUnknown::TriggerUnknown);
            return;
        };
        let first_shared = memcg.levels.len().saturating_sub(shared);
        let found = nearest_limited_ancestor(&memcg.levels[first_shared..], self.slack)
            .map(|i| &memcg.levels[first_shared + i]);
        match found {
            Some(level) if level.path.is_some() => {
                kill.oom.memcg_path = level.path.clone();
                kill.oom.memcg_path_hex = level.path_hex.clone();
                kill.oom.memcg_source = Some(MemcgSource::UsageAtLimit);
            }
            Some(_) => kill.oom.memcg_unknown = Some(MemcgUnknown::PathNotCarried),
            None => kill.oom.memcg_unknown = Some(MemcgUnknown::NoSharedLevelAtLimit),
        }
    }
}

impl Attributor {
    /// Whether the victim's container keeps running after this kill.
    ///
    /// In a pid namespace of its own, a container ends with its PID 1: false
    /// when the victim was its PID 1, or when `memory.oom.group` makes the
    /// kernel kill the whole container with it; true when neither.
    ///
    /// In the host's pid namespace (`--pid=host`, `hostPID: true`) no
    /// process is the container's PID 1, and the shim being the victim's
    /// parent proves nothing (shims are child subreapers: orphans get them
    /// as parent too). What is known for sure: once the victim has exited,
    /// a container cgroup holding no other process has ended (false).
    /// Anything else is null, never a guess.
    fn container_survives(&self, kill: &OomKill, victim_path: &str) -> Option<bool> {
        let container_path = container_path(victim_path)?;
        let own_pid_ns = kill.victim.pid_ns? != self.host.pid_ns?;
        if own_pid_ns {
            return survives_its_init(kill, &container_path);
        }
        if !kill.exit.observed {
            return None;
        }
        self.host_container_ended(&container_path, kill.victim.pid)
            .then_some(false)
    }

    /// In the host's pid namespace: whether the container whose cgroup is
    /// `container_path` has ended now that process `pid` has exited: its
    /// cgroup holds no other process, or the runtime removed it. False
    /// when that cannot be told.
    pub(super) fn host_container_ended(&self, container_path: &str, pid: Option<u32>) -> bool {
        let Some(root) = &self.host.cgroup_root else {
            return false;
        };
        let procs = root
            .join(container_path.trim_start_matches('/'))
            .join("cgroup.procs");
        match std::fs::read_to_string(&procs) {
            // The victim itself may still be listed for a moment:
            // sched_process_exit fires before cgroup_exit() unlinks it.
            Ok(text) => text
                .split_whitespace()
                .all(|listed| listed.parse::<u32>().ok() == pid),
            // The runtime removed the container's cgroup: it has ended.
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }
}

/// The container's own cgroup, from a path inside it.
pub(super) fn container_path(path: &str) -> Option<String> {
    let parts = components(path)?;
    let container_depth = locate(&parts).container_depth?;
    Some(format!("/{}", parts[..container_depth].join("/")))
}

/// The memcg level whose every task the kernel kills with this victim
/// (`Some(None)`: no group kill), or None when that is unknown.
/// mem_cgroup_get_oom_group(): from the victim's memcg up to the OOM domain
/// (the memcg that fired; the root for a global OOM), the highest memcg
/// with oom_group set is killed whole.
fn oom_group_level(kill: &OomKill) -> Option<Option<&MemcgLevel>> {
    let levels = &kill.memcg.as_ref()?.levels;
    let domain = match &kill.oom.memcg_path {
        Some(fired) => levels
            .iter()
            .position(|l| l.path.as_deref() == Some(fired.as_str()))?,
        None if kill.oom.constraint == Some(Constraint::Global) => levels.len().checked_sub(1)?,
        None => return None,
    };
    let mut group = None;
    for level in levels.get(..=domain)? {
        if level.oom_group? {
            group = Some(level);
        }
    }
    Some(group)
}

/// A container with its own pid namespace: see
/// [`Attributor::container_survives`].
fn survives_its_init(kill: &OomKill, container_path: &str) -> Option<bool> {
    if kill.victim.container_init? {
        return Some(false);
    }
    let Some(group) = oom_group_level(kill)? else {
        return Some(true);
    };
    let group_path = group.path.as_deref()?;
    let covers_container = group_path == "/"
        || container_path == group_path
        || container_path.starts_with(&format!("{group_path}/"));
    // A group below the container's cgroup may or may not hold PID 1.
    if covers_container { Some(false) } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oomtrace_record::{Memcg, MemcgLevel};
    use serde_json::json;

    const ID: &str = "8d0a26fbd2dec0fbc2ffd5e0d4ff5cb2aab6ea8ab3f8e2a17e1d7ab92b53b0c4";
    const POD: &str = "/kubepods/burstable/pod0f4e3c53-1a2b-4c5d-9e8f-0123456789ab";
    const MIB: u64 = 1 << 20;

    fn container() -> String {
        format!("{POD}/{ID}")
    }

    /// A kill of a process in `path` whose memcg levels (leaf first, up to
    /// the root) are `levels`: (usage, limit, oom_group).
    fn kill(
        path: Option<&str>,
        init: Option<bool>,
        levels: &[(u64, Option<u64>, Option<bool>)],
    ) -> OomKill {
        let mut kill: OomKill = serde_json::from_value(json!({
            "schema": 1, "seq": 0, "time": "t", "boot_ns": 0, "source": "raw_tracepoint",
            "victim": {"pid": 7, "tid": 7, "ns_pid": null, "container_init": init,
                       "comm": "x", "comm_hex": null, "uid": 0, "oom_score_adj": 0,
                       "total_vm_bytes": 0, "pgtables_bytes": 0,
                       "rss": {"anon_bytes": 0, "file_bytes": 0, "shmem_bytes": 0},
                       "cgroup": {"id": 1, "path": path}},
            "trigger": {"pid": 7, "tid": 7, "comm": null, "comm_hex": null},
            "oom": {"constraint": null, "memcg_path": null, "points": null, "totalpages": null,
                    "chosen_pid": null, "memcg_source": null, "limit_scope": null},
            "memcg": null,
            "exit": {"observed": false, "code": null, "signal": null, "delay_ms": null},
            "container": null, "k8s": null, "systemd_unit": null, "container_survives": null
        }))
        .expect("a valid record");
        kill.victim.pid_ns = Some(HOST_PID_NS + 1);
        if let Some(path) = path.filter(|_| !levels.is_empty()) {
            // Level i's path: the victim's path minus i trailing names.
            let mut paths = vec![path.to_string()];
            while paths.len() < levels.len() {
                let last = paths.last().expect("non-empty");
                let parent = last
                    .rsplit_once('/')
                    .map_or("/", |(p, _)| if p.is_empty() { "/" } else { p });
                paths.push(parent.to_string());
            }
            let levels: Vec<MemcgLevel> = levels
                .iter()
                .zip(paths)
                .map(
                    |(&(usage_bytes, limit_bytes, oom_group), path)| MemcgLevel {
                        path: Some(path),
                        path_hex: None,
                        usage_bytes,
                        limit_bytes,
                        oom_group,
                        ..MemcgLevel::default()
                    },
                )
                .collect();
            kill.memcg = Some(Memcg {
                path: levels[0].path.clone(),
                path_hex: None,
                usage_bytes: levels[0].usage_bytes,
                limit_bytes: levels[0].limit_bytes,
                levels,
            });
        }
        kill
    }

    /// Attributes a kill whose allocating task was in the victim's memcg.
    fn attribute(kill: OomKill) -> OomKill {
        let shared = kill.memcg.as_ref().map(|m| m.levels.len());
        attribute_with_trigger(kill, shared)
    }

    /// The host's pid namespace in these tests; victims are in another one
    /// unless a test says otherwise.
    const HOST_PID_NS: u64 = 4026531836;

    fn attribute_with_trigger(kill: OomKill, shared_levels: Option<usize>) -> OomKill {
        attribute_on(kill, shared_levels, None)
    }

    fn attribute_on(
        mut kill: OomKill,
        shared_levels: Option<usize>,
        cgroup_root: Option<PathBuf>,
    ) -> OomKill {
        let host = HostView {
            pid_ns: Some(HOST_PID_NS),
            cgroup_root,
            ..HostView::default()
        };
        let mut attributor = Attributor::new(Path::new("/nonexistent-host-root"), 4096, host);
        attributor.fired_memcg(&mut kill, shared_levels);
        attributor.attribute(&mut kill);
        kill
    }

    /// Issue 12's case: /P (64 MiB) holds B and C. The victim is in B, which
    /// happens to sit at its own limit, and the allocation in C hit P's limit.
    #[test]
    fn a_sibling_at_its_own_limit_is_not_blamed() {
        // B, P, root: B at its limit, P at its limit.
        let levels = [
            (24 * MIB, Some(24 * MIB), Some(false)),
            (64 * MIB, Some(64 * MIB), Some(false)),
            (900 * MIB, None, Some(false)),
        ];
        let victim = kill(Some("/P/B"), None, &levels);
        // The trigger shares P and the root with the victim, not B.
        let k = attribute_with_trigger(victim.clone(), Some(2));
        assert_eq!(k.oom.memcg_path.as_deref(), Some("/P"));
        assert_eq!(k.oom.memcg_source, Some(MemcgSource::UsageAtLimit));
        // Had P not been at its limit, nothing would be at it: null, and why.
        let levels = [
            levels[0],
            (40 * MIB, Some(64 * MIB), Some(false)),
            levels[2],
        ];
        let k = attribute_with_trigger(kill(Some("/P/B"), None, &levels), Some(2));
        assert_eq!(k.oom.memcg_path, None);
        assert_eq!(
            k.oom.memcg_unknown,
            Some(MemcgUnknown::NoSharedLevelAtLimit)
        );
        // Without the trigger's ancestry, no derivation at all.
        let k = attribute_with_trigger(victim, None);
        assert_eq!(k.oom.memcg_path, None);
        assert_eq!(k.oom.memcg_unknown, Some(MemcgUnknown::TriggerUnknown));
        assert_eq!(k.oom.limit_scope, None);
    }

    /// container, pod, burstable, kubepods, root.
    fn pod_levels(
        container_limit: Option<u64>,
        pod_limit: Option<u64>,
        group: Option<bool>,
    ) -> Vec<(u64, Option<u64>, Option<bool>)> {
        vec![
            (64 * MIB, container_limit, group),
            (64 * MIB, pod_limit, Some(false)),
            (64 * MIB, None, Some(false)),
            (64 * MIB, None, Some(false)),
            (900 * MIB, None, Some(false)),
        ]
    }

    #[test]
    fn the_hook_names_the_limit_and_the_path_says_whose() {
        let mut k = kill(
            Some(&container()),
            Some(false),
            &pod_levels(None, Some(64 * MIB), Some(false)),
        );
        k.oom.constraint = Some(Constraint::Memcg);
        k.oom.memcg_path = Some(POD.into());
        let k = attribute(k);
        assert_eq!(k.oom.memcg_source, Some(MemcgSource::OomKillProcess));
        assert_eq!(k.oom.limit_scope, Some(LimitScope::Pod));
        assert_eq!(k.container.as_ref().map(|c| c.id.as_str()), Some(ID));
        let k8s = k.k8s.expect("a pod");
        assert_eq!(
            k8s.pod_uid.as_deref(),
            Some("0f4e3c53-1a2b-4c5d-9e8f-0123456789ab")
        );
        assert_eq!(k8s.qos, Some(oomtrace_record::Qos::Burstable));
        // No log layout under the host root: names are unknown, not guessed.
        assert_eq!((k8s.namespace, k8s.pod, k8s.container), (None, None, None));
        assert_eq!(k.container_survives, Some(true));
    }

    #[test]
    fn without_the_hook_the_nearest_level_at_its_limit_fired() {
        let k = attribute(kill(
            Some(&container()),
            Some(false),
            &pod_levels(None, Some(64 * MIB), Some(false)),
        ));
        assert_eq!(k.oom.memcg_path.as_deref(), Some(POD));
        assert_eq!(k.oom.memcg_source, Some(MemcgSource::UsageAtLimit));
        assert_eq!(k.oom.limit_scope, Some(LimitScope::Pod));
        let k = attribute(kill(
            Some(&container()),
            Some(false),
            &pod_levels(Some(64 * MIB), None, Some(false)),
        ));
        assert_eq!(k.oom.memcg_path, Some(container()));
        assert_eq!(k.oom.limit_scope, Some(LimitScope::Container));
    }

    #[test]
    fn no_level_at_its_limit_says_nothing() {
        let k = attribute(kill(
            Some(&container()),
            Some(false),
            &pod_levels(Some(512 * MIB), None, Some(false)),
        ));
        assert_eq!(k.oom.memcg_path, None);
        assert_eq!(k.oom.memcg_source, None);
        assert_eq!(k.oom.limit_scope, None);
    }

    #[test]
    fn a_global_oom_is_the_nodes() {
        let mut k = kill(
            Some(&container()),
            Some(false),
            &pod_levels(None, None, Some(false)),
        );
        k.oom.constraint = Some(Constraint::Global);
        let k = attribute(k);
        assert_eq!(k.oom.limit_scope, Some(LimitScope::Node));
        assert_eq!(k.oom.memcg_path, None);
        assert_eq!(k.container_survives, Some(true));
    }

    #[test]
    fn the_container_dies_with_its_init_or_its_oom_group() {
        let levels = pod_levels(Some(64 * MIB), None, Some(false));
        assert_eq!(
            attribute(kill(Some(&container()), Some(true), &levels)).container_survives,
            Some(false)
        );
        assert_eq!(
            attribute(kill(Some(&container()), Some(false), &levels)).container_survives,
            Some(true)
        );
        let grouped = pod_levels(Some(64 * MIB), None, Some(true));
        assert_eq!(
            attribute(kill(Some(&container()), Some(false), &grouped)).container_survives,
            Some(false)
        );
    }

    #[test]
    fn unknown_facts_give_null_not_a_guess() {
        // oom_group unreadable on this kernel.
        let levels = pod_levels(Some(64 * MIB), None, None);
        assert_eq!(
            attribute(kill(Some(&container()), Some(false), &levels)).container_survives,
            None
        );
        // PID-namespace facts unreadable.
        let levels = pod_levels(Some(64 * MIB), None, Some(false));
        assert_eq!(
            attribute(kill(Some(&container()), None, &levels)).container_survives,
            None
        );
        // A group below the container's cgroup may or may not hold PID 1.
        let inner = format!("{}/worker", container());
        let mut levels = pod_levels(None, None, Some(false));
        levels.insert(0, (64 * MIB, Some(64 * MIB), Some(true)));
        assert_eq!(
            attribute(kill(Some(&inner), Some(false), &levels)).container_survives,
            None
        );
        // Not in a container: nothing to survive.
        let k = attribute(kill(
            Some("/system.slice/nginx.service"),
            Some(false),
            &[
                (64 * MIB, Some(64 * MIB), Some(false)),
                (0, None, Some(false)),
                (0, None, Some(false)),
            ],
        ));
        assert_eq!(k.container_survives, None);
        assert_eq!(k.systemd_unit.as_deref(), Some("nginx.service"));
        assert_eq!(k.oom.limit_scope, Some(LimitScope::Cgroup));
    }

    #[test]
    fn classic_tracepoint_scope_comes_from_the_fired_path() {
        let mut k = kill(None, None, &[]);
        k.oom.constraint = Some(Constraint::Memcg);
        k.oom.memcg_path = Some(container());
        let k = attribute(k);
        assert_eq!(k.oom.limit_scope, Some(LimitScope::Container));
        assert!(k.container.is_none() && k.k8s.is_none() && k.container_survives.is_none());
    }

    /// `docker run --pid=host`: the container's main process is in the
    /// host's pid namespace, so `container_init` says nothing. Once the
    /// victim has exited, an empty container cgroup (or one that lists only
    /// the victim, not yet unlinked) has ended; one that holds others is
    /// unknown; one the runtime removed has ended.
    #[test]
    fn without_a_pid_namespace_the_cgroup_decides() {
        let root = std::env::temp_dir().join(format!("oomtrace-attr-{}", std::process::id()));
        let dir = root.join(format!("docker/{ID}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = format!("/docker/{ID}");
        let levels = [
            (64 * MIB, Some(64 * MIB), Some(false)),
            (900 * MIB, None, Some(false)),
        ];
        let survives = |procs: Option<&str>, observed: bool| {
            match procs {
                Some(text) => std::fs::write(dir.join("cgroup.procs"), text).expect("write"),
                None => {
                    let _ = std::fs::remove_file(dir.join("cgroup.procs"));
                }
            }
            let mut k = kill(Some(&path), Some(false), &levels);
            k.victim.pid_ns = Some(HOST_PID_NS);
            k.exit.observed = observed;
            attribute_on(k, Some(2), Some(root.clone())).container_survives
        };
        assert_eq!(survives(Some(""), true), Some(false), "empty: ended");
        assert_eq!(
            survives(Some("7\n"), true),
            Some(false),
            "only the victim, exiting"
        );
        assert_eq!(
            survives(Some("7\n12\n"), true),
            None,
            "others: unknown, not a guess"
        );
        assert_eq!(
            survives(Some(""), false),
            None,
            "the victim may still be alive"
        );
        std::fs::remove_dir_all(dir.join("..")).expect("cleanup");
        assert_eq!(survives(None, true), Some(false), "cgroup removed: ended");
        // Without a cgroup root to look in, or without the pid namespace: null.
        let mut k = kill(Some(&path), Some(false), &levels);
        k.victim.pid_ns = Some(HOST_PID_NS);
        k.exit.observed = true;
        assert_eq!(
            attribute_on(k.clone(), Some(2), None).container_survives,
            None
        );
        k.victim.pid_ns = None;
        assert_eq!(
            attribute_on(k, Some(2), Some(root.clone())).container_survives,
            None
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
