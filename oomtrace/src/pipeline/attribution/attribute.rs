//! Fills a kill record's attribution from what the kernel recorded: the
//! container and pod, their Kubernetes names, the limit that fired and
//! whose it was, and whether the container outlives the kill.

use std::path::Path;

use oomtrace_record::{Constraint, K8s, LimitScope, MemcgSource, OomKill};

use super::{
    ChargeSlack, KubeletNames,
    cgroup_path::{components, locate},
    identify, limit_scope, nearest_limited_ancestor,
};

/// Per-collector attribution state: the kubelet name cache.
pub struct Attributor {
    kubelet: KubeletNames,
    slack: ChargeSlack,
}

impl Attributor {
    pub fn new(host_root: &Path, page_size: u64) -> Self {
        Self {
            kubelet: KubeletNames::new(host_root),
            slack: ChargeSlack::for_this_host(page_size),
        }
    }

    pub fn attribute(&mut self, kill: &mut OomKill) {
        self.fired_memcg(kill);
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
        let Some(victim_path) = victim_path else {
            return;
        };
        let identity = identify(&victim_path);
        kill.systemd_unit = identity.systemd_unit;
        if let Some(pod) = &identity.k8s {
            let names = self.kubelet.lookup(
                Some(&pod.pod_uid),
                identity.container.as_ref().map(|c| c.id.as_str()),
            );
            kill.k8s = Some(K8s {
                namespace: names.namespace,
                pod: names.pod,
                pod_uid: Some(pod.pod_uid.clone()),
                container: names.container,
                qos: Some(pod.qos),
            });
        }
        kill.container_survives = identity
            .container
            .is_some()
            .then(|| container_survives(kill, &victim_path))
            .flatten();
        kill.container = identity.container;
    }

    /// `oom.memcg_path` and how it is known: from oom_kill_process when it
    /// is hooked (its `constraint` is then set), else the nearest memcg at
    /// its limit among the levels read at the kill.
    fn fired_memcg(&self, kill: &mut OomKill) {
        if kill.oom.constraint.is_some() {
            kill.oom.memcg_source = Some(MemcgSource::OomKillProcess);
            return;
        }
        let Some(memcg) = &kill.memcg else {
            return;
        };
        if let Some(level) = nearest_limited_ancestor(&memcg.levels, self.slack)
            .map(|i| &memcg.levels[i])
            .filter(|level| level.path.is_some())
        {
            kill.oom.memcg_path = level.path.clone();
            kill.oom.memcg_path_hex = level.path_hex.clone();
            kill.oom.memcg_source = Some(MemcgSource::UsageAtLimit);
        }
    }
}

/// Whether the victim's container keeps running after this kill. False when
/// the victim was its PID 1, or when `memory.oom.group` makes the kernel
/// kill the whole container with it; true when neither; null when either is
/// unknown.
fn container_survives(kill: &OomKill, victim_path: &str) -> Option<bool> {
    if kill.victim.container_init? {
        return Some(false);
    }
    let parts = components(victim_path)?;
    let container_depth = locate(&parts).container_depth?;
    let container_path = format!("/{}", parts[..container_depth].join("/"));
    let levels = &kill.memcg.as_ref()?.levels;
    // mem_cgroup_get_oom_group(): from the victim's memcg up to the OOM
    // domain (the memcg that fired; the root for a global OOM), the highest
    // memcg with oom_group set is killed whole.
    let domain = match &kill.oom.memcg_path {
        Some(fired) => levels
            .iter()
            .position(|l| l.path.as_deref() == Some(fired.as_str()))?,
        None if kill.oom.constraint == Some(Constraint::Global) => levels.len() - 1,
        None => return None,
    };
    let mut group = None;
    for level in &levels[..=domain] {
        if level.oom_group? {
            group = Some(level);
        }
    }
    let Some(group) = group else {
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

    fn attribute(mut kill: OomKill) -> OomKill {
        let mut attributor = Attributor::new(Path::new("/nonexistent-host-root"), 4096);
        attributor.attribute(&mut kill);
        kill
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
}
