//! Kubernetes names (namespace, pod, container) from the kubelet's log
//! layout on the node's disk, for the pod UID and container id that a
//! cgroup path gives.
//!
//! The kubelet (Kubernetes 1.14 and later) writes every container's log to
//! `/var/log/pods/<namespace>_<pod>_<pod-uid>/<container>/<restart>.log`
//! and links it from
//! `/var/log/containers/<pod>_<namespace>_<container>-<container-id>.log`.
//! Kubernetes names cannot contain `_`, which is why it separates them.
//!
//! What this cannot see:
//! * labels, annotations, the owner (Deployment, Job, …) or anything else
//!   the API server knows: only the three names are on disk;
//! * static pods' API identity: their names come out, but their UID is the
//!   kubelet's hash of the manifest, not the mirror pod's UID in the API;
//! * pods whose log directories were removed (pod deleted and its logs
//!   cleaned up) before the first lookup that asked for them: a name is
//!   kept once seen, not recovered afterwards;
//! * a kubelet that writes pod logs elsewhere (`podLogsDir` in newer
//!   kubelets) or the pre-1.14 layouts (`/var/log/pods/<uid>/…`);
//! * containers of runtimes that do not go through the kubelet (plain
//!   Docker or Podman): those have no such logs.

use std::{
    collections::HashMap,
    io,
    path::{Component, Path, PathBuf},
    time::{Duration, Instant},
};

use super::cgroup_path::is_container_id;

/// The Kubernetes names of a victim. Null when not known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct K8sNames {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// The container's name in the pod spec. Null when only the pod is
    /// known.
    pub container: Option<String>,
}

/// A miss rescans the directories at most this often for the same
/// question. A kill storm (a fork bomb in a limited pod, a
/// `memory.oom.group` kill of hundreds of processes) asks the same question
/// many times within a second, and names absent a moment ago are rarely on
/// disk a moment later; one scan per question per second keeps the
/// collector's own cost flat while still picking up a pod that started
/// just before its first kill.
const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// Entries kept per map. Names are kept after their directories are gone
/// (a pod is often deleted right after its container is OOM-killed, and
/// its names must still come out), so something must bound the maps on a
/// node that runs pods for months; beyond this, the entries not seen on
/// disk for the longest go first. An entry is ~200 bytes.
const MAX_ENTRIES: usize = 16_384;

#[derive(Debug)]
struct PodEntry {
    namespace: String,
    pod: String,
    /// When a scan last saw its directory.
    seen: Instant,
}

#[derive(Debug)]
struct ContainerEntry {
    container: String,
    namespace: String,
    pod: String,
    /// From the symlink's target; None if that was not the kubelet's form.
    pod_uid: Option<String>,
    seen: Instant,
}

/// Names by pod UID and container id, read from the kubelet's log
/// directories under `host_root` and cached.
#[derive(Debug)]
pub struct KubeletNames {
    pods_dir: PathBuf,
    containers_dir: PathBuf,
    pods: HashMap<String, PodEntry>,
    containers: HashMap<String, ContainerEntry>,
    /// When each missed (pod UID, container id) question last rescanned.
    rescans: HashMap<(Option<String>, Option<String>), Instant>,
    rescan_interval: Duration,
}

impl KubeletNames {
    /// `host_root` is where the node's root filesystem is: `/` on the host,
    /// the hostPath mount point in a DaemonSet. Reads nothing yet.
    pub fn new(host_root: impl AsRef<Path>) -> Self {
        let root = host_root.as_ref();
        Self {
            pods_dir: root.join("var/log/pods"),
            containers_dir: root.join("var/log/containers"),
            pods: HashMap::new(),
            containers: HashMap::new(),
            rescans: HashMap::new(),
            rescan_interval: RESCAN_INTERVAL,
        }
    }

    /// Changes how often a miss may rescan (see [`RESCAN_INTERVAL`]); tests
    /// use it to exercise the refresh without sleeping.
    #[cfg(test)]
    pub fn with_rescan_interval(mut self, interval: Duration) -> Self {
        self.rescan_interval = interval;
        self
    }

    /// The names for a pod UID (dashed, as `identify()` gives it) and a
    /// container id (64 hex digits). Answers from the cache; on a miss
    /// rescans the directories (rate-limited) and answers what it then
    /// knows. Missing or unreadable directories give nulls, not errors.
    pub fn lookup(&mut self, pod_uid: Option<&str>, container_id: Option<&str>) -> K8sNames {
        let container_id = container_id.filter(|id| is_container_id(id));
        if pod_uid.is_none() && container_id.is_none() {
            return K8sNames::default();
        }
        let known = pod_uid.is_none_or(|uid| self.pods.contains_key(uid))
            && container_id.is_none_or(|id| self.containers.contains_key(id));
        if !known && self.may_rescan(pod_uid, container_id) {
            self.rescan();
        }
        self.answer(pod_uid, container_id)
    }

    fn answer(&self, pod_uid: Option<&str>, container_id: Option<&str>) -> K8sNames {
        let pod = pod_uid.and_then(|uid| self.pods.get(uid));
        // A container whose pod is not the one asked about is not this
        // victim's: leave it out rather than mix two pods' names.
        let container = container_id
            .and_then(|id| self.containers.get(id))
            .filter(|c| match (pod_uid, c.pod_uid.as_deref(), pod) {
                (Some(asked), Some(its), _) => asked == its,
                (Some(_), None, Some(pod)) => pod.namespace == c.namespace && pod.pod == c.pod,
                _ => true,
            });
        K8sNames {
            namespace: pod
                .map(|p| p.namespace.clone())
                .or_else(|| container.map(|c| c.namespace.clone())),
            pod: pod
                .map(|p| p.pod.clone())
                .or_else(|| container.map(|c| c.pod.clone())),
            container: container.map(|c| c.container.clone()),
        }
    }

    fn may_rescan(&mut self, pod_uid: Option<&str>, container_id: Option<&str>) -> bool {
        let now = Instant::now();
        let interval = self.rescan_interval;
        // Expired entries say nothing any more; dropping them keeps the map
        // as small as the questions of the last interval.
        self.rescans
            .retain(|_, at| now.duration_since(*at) < interval);
        let key = (
            pod_uid.map(str::to_string),
            container_id.map(str::to_string),
        );
        if self.rescans.contains_key(&key) {
            return false;
        }
        self.rescans.insert(key, now);
        true
    }

    /// Reads both directories, adds what is new, refreshes what is still
    /// there and keeps what is gone.
    fn rescan(&mut self) {
        let now = Instant::now();
        for name in dir_names(&self.pods_dir) {
            if let Some((namespace, pod, uid)) = parse_pod_dir(&name) {
                self.pods.insert(
                    uid.to_string(),
                    PodEntry {
                        namespace: namespace.to_string(),
                        pod: pod.to_string(),
                        seen: now,
                    },
                );
            }
        }
        for name in dir_names(&self.containers_dir) {
            let Some(link) = parse_container_link(&name) else {
                continue;
            };
            if let Some(entry) = self.containers.get_mut(link.id) {
                entry.seen = now;
                continue;
            }
            // The target is a path on the host (/var/log/pods/…), read as
            // text and never followed: under a DaemonSet's host root it
            // would point at the collector's own filesystem.
            let target = std::fs::read_link(self.containers_dir.join(&name)).ok();
            let pod_uid = target
                .as_deref()
                .and_then(|t| uid_from_log_target(t, &link))
                .map(str::to_string);
            if let Some(uid) = &pod_uid {
                self.pods.entry(uid.clone()).or_insert_with(|| PodEntry {
                    namespace: link.namespace.to_string(),
                    pod: link.pod.to_string(),
                    seen: now,
                });
            }
            self.containers.insert(
                link.id.to_string(),
                ContainerEntry {
                    container: link.container.to_string(),
                    namespace: link.namespace.to_string(),
                    pod: link.pod.to_string(),
                    pod_uid,
                    seen: now,
                },
            );
        }
        evict_oldest(&mut self.pods, |e| e.seen);
        evict_oldest(&mut self.containers, |e| e.seen);
    }
}

/// Entry names of a directory. A missing directory (no kubelet here) is
/// the normal case and says nothing; other errors are logged at debug
/// level only, since each rescan would repeat them.
fn dir_names(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect(),
        Err(error) => {
            if error.kind() != io::ErrorKind::NotFound {
                log::debug!("kubelet names: reading {}: {error}", dir.display());
            }
            Vec::new()
        }
    }
}

fn evict_oldest<V>(map: &mut HashMap<String, V>, seen: impl Fn(&V) -> Instant) {
    if map.len() <= MAX_ENTRIES {
        return;
    }
    let mut by_age: Vec<(Instant, String)> =
        map.iter().map(|(k, v)| (seen(v), k.clone())).collect();
    by_age.sort_unstable();
    for (_, key) in by_age.into_iter().take(map.len() - MAX_ENTRIES) {
        map.remove(&key);
    }
}

/// `<namespace>_<pod>_<uid>`, a directory of /var/log/pods.
fn parse_pod_dir(name: &str) -> Option<(&str, &str, &str)> {
    let mut parts = name.split('_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && is_dns_label(namespace) && is_dns_subdomain(pod) && is_uid(uid))
        .then_some((namespace, pod, uid))
}

/// The parts of `<pod>_<namespace>_<container>-<id>.log`.
#[derive(Debug, PartialEq, Eq)]
struct ContainerLink<'a> {
    pod: &'a str,
    namespace: &'a str,
    container: &'a str,
    id: &'a str,
}

fn parse_container_link(name: &str) -> Option<ContainerLink<'_>> {
    let mut parts = name.strip_suffix(".log")?.split('_');
    let (pod, namespace, rest) = (parts.next()?, parts.next()?, parts.next()?);
    // Container names may hold `-`; the id (hex) never does, so it is
    // after the last one.
    let (container, id) = rest.rsplit_once('-')?;
    let valid = parts.next().is_none()
        && is_dns_subdomain(pod)
        && is_dns_label(namespace)
        && is_dns_label(container)
        && is_container_id(id);
    valid.then_some(ContainerLink {
        pod,
        namespace,
        container,
        id,
    })
}

/// The pod UID in a link's target `…/<namespace>_<pod>_<uid>/<container>/<n>.log`,
/// if the target names the same namespace, pod and container as the link.
fn uid_from_log_target<'a>(target: &'a Path, link: &ContainerLink<'_>) -> Option<&'a str> {
    let names: Vec<&str> = target
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => name.to_str(),
            _ => None,
        })
        .collect();
    let [.., pod_dir, container, _log] = names.as_slice() else {
        return None;
    };
    let (namespace, pod, uid) = parse_pod_dir(pod_dir)?;
    (namespace == link.namespace && pod == link.pod && *container == link.container).then_some(uid)
}

/// RFC 1123 label (namespaces, container names): at most 63 of
/// `[a-z0-9-]`, alphanumeric at both ends.
fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && is_dns_name(name, b"-")
}

/// RFC 1123 subdomain (pod names): at most 253 of `[a-z0-9.-]`,
/// alphanumeric at both ends.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && is_dns_name(name, b"-.")
}

fn is_dns_name(name: &str, inner: &[u8]) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || inner.contains(b))
}

/// A UID as the kubelet writes it in directory names: a dashed UUID or a
/// static pod's hex hash. Loose on purpose: it is only a key.
fn is_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::symlink, sync::atomic::AtomicU32};

    use super::*;

    /// A temporary host root, removed on drop.
    struct HostRoot(PathBuf);

    impl HostRoot {
        fn new() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("oomtrace-kubelet-test-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }

        /// What the kubelet creates for one container: its log file under
        /// /var/log/pods and the absolute symlink to it.
        fn add_container(&self, namespace: &str, pod: &str, uid: &str, container: &str, id: &str) {
            let pod_dir = format!("{namespace}_{pod}_{uid}");
            let ctr_dir = self.0.join("var/log/pods").join(&pod_dir).join(container);
            std::fs::create_dir_all(&ctr_dir).expect("pod dir");
            std::fs::write(ctr_dir.join("0.log"), b"").expect("log");
            let links = self.0.join("var/log/containers");
            std::fs::create_dir_all(&links).expect("containers dir");
            symlink(
                format!("/var/log/pods/{pod_dir}/{container}/0.log"),
                links.join(format!("{pod}_{namespace}_{container}-{id}.log")),
            )
            .expect("symlink");
        }

        fn remove_logs(&self) {
            std::fs::remove_dir_all(self.0.join("var/log")).expect("remove");
        }
    }

    impl Drop for HostRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const UID: &str = "0f4e3c53-1a2b-4c5d-9e8f-0123456789ab";
    const ID: &str = "8d0a26fbd2dec0fbc2ffd5e0d4ff5cb2aab6ea8ab3f8e2a17e1d7ab92b53b0c4";
    const ID2: &str = "2b5e1c9a7f3d4e6b8a0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708";

    fn names(namespace: &str, pod: &str, container: Option<&str>) -> K8sNames {
        K8sNames {
            namespace: Some(namespace.into()),
            pod: Some(pod.into()),
            container: container.map(Into::into),
        }
    }

    #[test]
    fn by_uid_and_by_id() {
        let root = HostRoot::new();
        root.add_container("shop", "web-7d4b9c-x2x9q", UID, "nginx", ID);
        root.add_container("shop", "web-7d4b9c-x2x9q", UID, "log-shipper", ID2);
        let mut kubelet = KubeletNames::new(&root.0);
        assert_eq!(
            kubelet.lookup(Some(UID), Some(ID)),
            names("shop", "web-7d4b9c-x2x9q", Some("nginx"))
        );
        assert_eq!(
            kubelet.lookup(Some(UID), Some(ID2)),
            names("shop", "web-7d4b9c-x2x9q", Some("log-shipper"))
        );
        assert_eq!(
            kubelet.lookup(Some(UID), None),
            names("shop", "web-7d4b9c-x2x9q", None)
        );
        assert_eq!(
            kubelet.lookup(None, Some(ID)),
            names("shop", "web-7d4b9c-x2x9q", Some("nginx"))
        );
        assert_eq!(kubelet.lookup(None, None), K8sNames::default());
        // A short or uppercase id is not a container id.
        assert_eq!(kubelet.lookup(None, Some(&ID[..12])), K8sNames::default());
    }

    #[test]
    fn names_with_dots_and_dashes_and_static_pods() {
        let root = HostRoot::new();
        let static_uid = "d41d8cd98f00b204e9800998ecf8427e";
        root.add_container(
            "kube-system",
            "kube-apiserver-node-1.example.com",
            static_uid,
            "kube-apiserver",
            ID,
        );
        root.add_container("team-a", "db-0", UID, "pg-backup-2", ID2);
        let mut kubelet = KubeletNames::new(&root.0);
        assert_eq!(
            kubelet.lookup(Some(static_uid), Some(ID)),
            names(
                "kube-system",
                "kube-apiserver-node-1.example.com",
                Some("kube-apiserver")
            )
        );
        assert_eq!(
            kubelet.lookup(Some(UID), Some(ID2)),
            names("team-a", "db-0", Some("pg-backup-2"))
        );
    }

    #[test]
    fn a_miss_rescans_and_finds_what_appeared() {
        let root = HostRoot::new();
        let mut kubelet = KubeletNames::new(&root.0).with_rescan_interval(Duration::ZERO);
        assert_eq!(kubelet.lookup(Some(UID), Some(ID)), K8sNames::default());
        root.add_container("shop", "web-1", UID, "app", ID);
        assert_eq!(
            kubelet.lookup(Some(UID), Some(ID)),
            names("shop", "web-1", Some("app"))
        );
    }

    #[test]
    fn rescans_are_rate_limited_per_question() {
        let root = HostRoot::new();
        let mut kubelet =
            KubeletNames::new(&root.0).with_rescan_interval(Duration::from_secs(3600));
        assert_eq!(kubelet.lookup(Some(UID), Some(ID)), K8sNames::default());
        root.add_container("shop", "web-1", UID, "app", ID);
        // The same question within the interval does not rescan...
        assert_eq!(kubelet.lookup(Some(UID), Some(ID)), K8sNames::default());
        // ...another one does.
        assert_eq!(
            kubelet.lookup(None, Some(ID)),
            names("shop", "web-1", Some("app"))
        );
        assert_eq!(
            kubelet.lookup(Some(UID), Some(ID)),
            names("shop", "web-1", Some("app"))
        );
    }

    #[test]
    fn names_outlive_their_directories() {
        let root = HostRoot::new();
        root.add_container("shop", "web-1", UID, "app", ID);
        let mut kubelet = KubeletNames::new(&root.0).with_rescan_interval(Duration::ZERO);
        assert_eq!(
            kubelet.lookup(Some(UID), Some(ID)),
            names("shop", "web-1", Some("app"))
        );
        root.remove_logs();
        // A rescan caused by another miss must not forget them either.
        assert_eq!(kubelet.lookup(Some("other"), None), K8sNames::default());
        assert_eq!(
            kubelet.lookup(Some(UID), Some(ID)),
            names("shop", "web-1", Some("app"))
        );
    }

    #[test]
    fn missing_directories_and_garbage_give_nothing() {
        let root = HostRoot::new();
        let mut kubelet = KubeletNames::new(root.0.join("no/such/root"));
        assert_eq!(kubelet.lookup(Some(UID), Some(ID)), K8sNames::default());

        let pods = root.0.join("var/log/pods");
        let links = root.0.join("var/log/containers");
        std::fs::create_dir_all(&links).expect("dirs");
        for junk in [
            "README",
            "shop_web-1",
            &format!("shop_web_1_{UID}"),
            &format!("Shop_web-1_{UID}"),
            &format!("_web-1_{UID}"),
        ] {
            std::fs::create_dir_all(pods.join(junk)).expect("junk dir");
        }
        for junk in [
            "notes.txt".to_string(),
            format!("web-1_shop_app-{}.log", &ID[..12]),
            format!("web-1_shop_app{ID}.log"),
            format!("web-1_shop_app-{ID}.log.gz"),
            format!("web-1_shop_x_app-{ID}.log"),
        ] {
            std::fs::write(links.join(junk), b"").expect("junk file");
        }
        let mut kubelet = KubeletNames::new(&root.0);
        assert_eq!(kubelet.lookup(Some(UID), Some(ID)), K8sNames::default());
        assert!(kubelet.pods.is_empty() && kubelet.containers.is_empty());
    }

    #[test]
    fn a_container_of_another_pod_is_left_out() {
        let root = HostRoot::new();
        let other = "11111111-2222-3333-4444-555555555555";
        root.add_container("shop", "web-1", UID, "app", ID);
        root.add_container("shop", "web-2", other, "app", ID2);
        let mut kubelet = KubeletNames::new(&root.0);
        assert_eq!(
            kubelet.lookup(Some(UID), Some(ID2)),
            names("shop", "web-1", None)
        );
    }

    #[test]
    fn link_target_is_read_not_followed() {
        // The target is absolute on the host: it does not resolve here, yet
        // the pod UID comes from it.
        let root = HostRoot::new();
        let links = root.0.join("var/log/containers");
        std::fs::create_dir_all(&links).expect("dir");
        symlink(
            format!("/var/log/pods/shop_web-1_{UID}/app/3.log"),
            links.join(format!("web-1_shop_app-{ID}.log")),
        )
        .expect("symlink");
        let mut kubelet = KubeletNames::new(&root.0);
        assert_eq!(
            kubelet.lookup(Some(UID), None),
            names("shop", "web-1", None)
        );
        assert_eq!(kubelet.containers[ID].pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn link_names_parse() {
        assert_eq!(
            parse_container_link(&format!("web-1.a_shop_side-car-{ID}.log")),
            Some(ContainerLink {
                pod: "web-1.a",
                namespace: "shop",
                container: "side-car",
                id: ID,
            })
        );
        assert_eq!(
            parse_pod_dir(&format!("shop_web-1_{UID}")),
            Some(("shop", "web-1", UID))
        );
        assert_eq!(parse_pod_dir("shop_web-1_"), None);
        assert_eq!(parse_pod_dir("shop_-web_abc"), None);
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut map: HashMap<String, Instant> = HashMap::new();
        let start = Instant::now();
        for i in 0..MAX_ENTRIES + 10 {
            map.insert(i.to_string(), start + Duration::from_millis(i as u64));
        }
        evict_oldest(&mut map, |t| *t);
        assert_eq!(map.len(), MAX_ENTRIES);
        assert!(!map.contains_key("0") && !map.contains_key("9"));
        assert!(map.contains_key("10"));
    }
}
