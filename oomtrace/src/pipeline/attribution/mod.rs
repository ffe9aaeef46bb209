//! Attribution: which container, which pod, which limit.
//!
//! Data flow, all in userspace from what the kernel recorded at the kill:
//!
//! 1. The kernel gives the victim's cgroup path (`victim.cgroup.path`), the
//!    memcg levels from the victim's memcg up to the root
//!    (`memcg.levels`, usage and limit of each) and, when oom_kill_process
//!    is hooked, the memcg whose limit fired (`oom.memcg_path`).
//! 2. [`identify`] reads the container (id, runtime), the Kubernetes pod
//!    (UID, QoS class) and the systemd unit from the victim's path alone.
//! 3. [`limit_scope`] says whose limit fired (container, pod, another
//!    cgroup, or the node) from the victim's path and the fired memcg;
//!    without `oom.memcg_path`, [`nearest_limited_ancestor`] derives the
//!    fired memcg from the levels.
//! 4. [`KubeletNames`] turns the pod UID and container id into namespace,
//!    pod and container names from the kubelet's log directories on disk.
//! 5. [`RuntimeState`] names the container and its image from its runtime's
//!    own state files (and fills the Kubernetes names the kubelet's
//!    directories did not give, and the runtime the path did not name).
//!
//! Nothing here guesses: a layout it does not know gives nulls, and the
//! raw path stays in the record for a human to read.

mod attribute;
mod cgroup_path;
mod kubelet;
mod runtime_state;
mod scope;
mod signals;
#[cfg(test)]
mod tests;

pub use attribute::{Attributor, HostView, Names};
pub use cgroup_path::identify;
pub use kubelet::KubeletNames;
pub use runtime_state::{
    CONTAINERD_ROOT, CONTAINERS_STORAGE_ROOT, DOCKER_ROOT, RuntimeRoots, RuntimeState,
};
pub use scope::{ChargeSlack, limit_scope, nearest_limited_ancestor};
pub use signals::memory_hierarchy_path;
