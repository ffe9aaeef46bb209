//! Fills a kill record's attribution from what the kernel recorded: the
//! container and pod, their Kubernetes names, the limit that fired and
//! whose it was, and whether the container outlives the kill.

use std::path::Path;

use super::{
    ChargeSlack, KubeletNames, LimitScope,
    cgroup_path::{components, locate},
    identify, limit_scope, nearest_limited_ancestor,
};
use crate::schema::{K8s, MemcgSource, OomKill};

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
        let global = kill.oom.constraint.as_deref() == Some("global");
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
            .and_then(|i| memcg.levels[i].path.clone())
        {
            kill.oom.memcg_path = Some(level);
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
        None if kill.oom.constraint.as_deref() == Some("global") => levels.len() - 1,
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
