//! Which container, which Kubernetes pod and which systemd unit a cgroup
//! path names, read from the path alone.
//!
//! The path is the one the kernel walked: inside the hierarchy that carries
//! the memory controller (cgroup v1's memory hierarchy or the unified v2
//! one; the managers below name their cgroups the same way in both).
//!
//! Only layouts whose names say what they are count:
//!
//! | who | cgroupfs driver | systemd driver |
//! | --- | --- | --- |
//! | Docker | `/docker/<id>` | `…/docker-<id>.scope` |
//! | containerd (CRI) | `/kubepods/…/pod<uid>/<id>` | `…/cri-containerd-<id>.scope` |
//! | containerd (nerdctl) | (`/<namespace>/<id>`: not recognized) | `…/nerdctl-<id>.scope` |
//! | CRI-O | `…/pod<uid>/crio-<id>` | `…/crio-<id>.scope` |
//! | Podman | `…/libpod-<id>` | `…/libpod-<id>.scope` |
//! | kubelet pod | `/kubepods[/burstable\|/besteffort]/pod<uid>` | `…kubepods[-burstable\|-besteffort]-pod<uid_>.slice` |
//!
//! A bare 64-hex name is a container only where its parent says so
//! (`docker` or a kubelet pod cgroup): anything else could be a name someone
//! chose. A layout not listed gives nothing, never a guess; the raw path is
//! in the record beside it.

use oomtrace_record::{Container, Qos, Runtime};

/// Who a cgroup belongs to, as far as its path tells.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The innermost container whose cgroup is this one or an ancestor of
    /// it. Null when the path has no container layout oomtrace knows, and
    /// for a pod-level cgroup.
    pub container: Option<Container>,
    /// The Kubernetes pod, from the kubelet's pod cgroup. Null outside one.
    pub k8s: Option<K8sCgroup>,
    /// The innermost systemd unit (`.service` or `.scope`) in the path that
    /// is not a container's own scope: `nginx.service`, `session-3.scope`,
    /// `user@1000.service`, `crio-conmon-<id>.scope`.
    pub systemd_unit: Option<String>,
}

/// A Kubernetes pod as its kubelet cgroup names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct K8sCgroup {
    /// The pod's UID in its usual dashed form (the systemd driver writes
    /// `_` for `-`; it is put back). For a static pod this is the kubelet's
    /// 32-hex-digit hash, not the mirror pod's UID in the API.
    pub pod_uid: String,
    pub qos: Qos,
}

/// Who a cgroup belongs to, from its path. Never fails: an unknown layout
/// gives an all-null identity.
pub fn identify(path: &str) -> Identity {
    components(path)
        .map(|parts| locate(&parts).identity)
        .unwrap_or_default()
}

/// An identity plus where in the path its container and pod cgroups are,
/// counted in components: the container's own cgroup is
/// `parts[..container_depth]`.
#[derive(Debug, Default)]
pub(crate) struct Located {
    pub identity: Identity,
    pub container_depth: Option<usize>,
    pub pod_depth: Option<usize>,
}

/// The names of a cgroup path, root first. None for what cannot be a
/// kernel cgroup path: empty, relative, or with `.`/`..` components. The
/// root `/` has no names. Doubled and trailing slashes are tolerated.
pub(crate) fn components(path: &str) -> Option<Vec<&str>> {
    let rest = path.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return None;
    }
    Some(parts)
}

/// Reads the identity from the path's names, root first.
pub(crate) fn locate(parts: &[&str]) -> Located {
    let mut container: Option<(usize, Container)> = None;
    let mut pod: Option<(usize, K8sCgroup)> = None;
    let mut unit: Option<&str> = None;
    for (i, name) in parts.iter().enumerate() {
        let parent = i.checked_sub(1).map(|p| parts[p]);
        let parent_is_pod = pod.as_ref().is_some_and(|(depth, _)| *depth == i);
        let parent_is_container = container.as_ref().is_some_and(|(depth, _)| *depth == i);
        if let Some(found) = container_cgroup(name, parent, parent_is_pod) {
            container = Some((i + 1, found));
        } else if parent_is_container
            && *name == "conmon"
            && parent.is_some_and(|p| p.starts_with("libpod-") && !p.ends_with(".scope"))
        {
            // Older Podman's cgroupfs layout put conmon in
            // `libpod-<id>/conmon` (and the container in `libpod-<id>/ctr`):
            // the monitor, not the container.
            container = None;
        } else if let Some(found) = pod_cgroup(&parts[..=i]) {
            pod = Some((i + 1, found));
        } else if is_systemd_unit(name, parent, parent_is_container) {
            unit = Some(name);
        }
    }
    // A pod found below a container (Kubernetes in Docker: kind, k3d) makes
    // that container the node's, not the victim's: the victim is at the
    // pod level, outside any of the pod's containers.
    if let (Some((container_depth, _)), Some((pod_depth, _))) = (&container, &pod)
        && pod_depth > container_depth
    {
        container = None;
    }
    Located {
        container_depth: container.as_ref().map(|(depth, _)| *depth),
        pod_depth: pod.as_ref().map(|(depth, _)| *depth),
        identity: Identity {
            container: container.map(|(_, c)| c),
            k8s: pod.map(|(_, p)| p),
            systemd_unit: unit.map(str::to_string),
        },
    }
}

/// systemd scope prefixes of container engines: `<prefix>-<id>.scope`, the
/// "slice:prefix:name" convention of runc/crun's systemd driver.
const SCOPE_PREFIXES: [(&str, Runtime); 5] = [
    ("docker-", Runtime::Docker),
    ("cri-containerd-", Runtime::Containerd),
    ("nerdctl-", Runtime::Containerd),
    ("crio-", Runtime::CriO),
    ("libpod-", Runtime::Podman),
];

/// cgroupfs-driver names that carry their engine: `crio-<id>` (CRI-O under
/// a kubelet pod cgroup) and `libpod-<id>` (Podman under its
/// `--cgroup-parent`, `/libpod_parent` by default).
const CGROUPFS_PREFIXES: [(&str, Runtime); 2] =
    [("crio-", Runtime::CriO), ("libpod-", Runtime::Podman)];

fn container_cgroup(name: &str, parent: Option<&str>, parent_is_pod: bool) -> Option<Container> {
    let found = |id: &str, runtime| {
        is_container_id(id).then(|| Container {
            id: id.to_string(),
            runtime,
            // Named from the runtime's state files afterwards, if at all.
            name: None,
            image: None,
        })
    };
    if let Some(stem) = name.strip_suffix(".scope") {
        // `crio-conmon-<id>.scope` and `libpod-conmon-<id>.scope` fall out
        // here: `conmon-<id>` is not an id.
        return SCOPE_PREFIXES
            .iter()
            .find_map(|(prefix, runtime)| found(stem.strip_prefix(prefix)?, Some(*runtime)));
    }
    if let Some(found) = CGROUPFS_PREFIXES
        .iter()
        .find_map(|(prefix, runtime)| found(name.strip_prefix(prefix)?, Some(*runtime)))
    {
        return Some(found);
    }
    if parent == Some("docker") {
        // Docker's cgroupfs driver: `/docker/<id>` (the default
        // `--cgroup-parent`).
        return found(name, Some(Runtime::Docker));
    }
    if parent_is_pod {
        // The kubelet's cgroupfs driver: containerd and dockershim both put
        // the bare id under the pod cgroup.
        return found(name, None);
    }
    None
}

/// A kubelet pod cgroup, given the names from the root down to it.
fn pod_cgroup(parts: &[&str]) -> Option<K8sCgroup> {
    let (name, ancestors) = parts.split_last()?;
    let parent = ancestors.last().copied();
    if let Some(uid) = name.strip_prefix("pod") {
        // cgroupfs: `kubepods/pod<uid>` or `kubepods/<qos>/pod<uid>`, with
        // the UID as is (dashed).
        let grandparent = ancestors.len().checked_sub(2).map(|i| ancestors[i]);
        let qos = match (grandparent, parent) {
            (_, Some("kubepods")) => Qos::Guaranteed,
            (Some("kubepods"), Some("burstable")) => Qos::Burstable,
            (Some("kubepods"), Some("besteffort")) => Qos::BestEffort,
            _ => return None,
        };
        return is_pod_uid(uid, '-').then(|| K8sCgroup {
            pod_uid: uid.to_string(),
            qos,
        });
    }
    // systemd: the kubelet turns the cgroup name [.., kubepods, <qos>,
    // pod<uid>] into `kubepods-<qos>-pod<uid>.slice`, with `-` in the UID
    // escaped to `_` because `-` is systemd's slice separator. A slice
    // `a-b.slice` is always the child of `a.slice`, so the parent is
    // checked too: a lone directory with that name is not a pod.
    let stem = name.strip_suffix(".slice")?;
    let (prefix, last) = stem.rsplit_once('-')?;
    let uid = last.strip_prefix("pod")?;
    if parent != Some(format!("{prefix}.slice").as_str()) || !is_pod_uid(uid, '_') {
        return None;
    }
    // `prefix` is `[<kubelet --cgroup-root>-]kubepods[-<qos>]`.
    let (above, level) = prefix.rsplit_once('-').unwrap_or(("", prefix));
    let under_kubepods = above == "kubepods" || above.ends_with("-kubepods");
    let qos = match level {
        "kubepods" => Qos::Guaranteed,
        "burstable" if under_kubepods => Qos::Burstable,
        "besteffort" if under_kubepods => Qos::BestEffort,
        _ => return None,
    };
    Some(K8sCgroup {
        pod_uid: uid.replace('_', "-"),
        qos,
    })
}

/// A pod UID as the kubelet puts it in a cgroup name: a UUID (what the API
/// server assigns) with `separator` between its groups, or the 32 hex
/// digits of a static pod's hash.
fn is_pod_uid(uid: &str, separator: char) -> bool {
    let bytes = uid.as_bytes();
    match bytes.len() {
        32 => bytes.iter().all(|b| is_lower_hex(*b)),
        36 => bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => char::from(*b) == separator,
            _ => is_lower_hex(*b),
        }),
        _ => false,
    }
}

/// Container ids are 64 lowercase hex digits in every engine above; a
/// shorter or mixed-case name is someone else's.
pub(crate) fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(is_lower_hex)
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// A systemd unit cgroup: a valid unit name ending in `.service` or
/// `.scope` whose parent is where systemd puts units: the root, a slice, a
/// service that delegates (`user@1000.service/init.scope`), or a container
/// that runs its own systemd.
fn is_systemd_unit(name: &str, parent: Option<&str>, parent_is_container: bool) -> bool {
    let Some(stem) = name
        .strip_suffix(".service")
        .or_else(|| name.strip_suffix(".scope"))
    else {
        return false;
    };
    let placed = match parent {
        None => true,
        Some(parent) => {
            parent.ends_with(".slice") || parent.ends_with(".service") || parent_is_container
        }
    };
    // systemd's unit_name_is_valid(): at most 255 bytes of [A-Za-z0-9:_.\-]
    // and `\` escapes, `@` once for a template instance.
    placed
        && !stem.is_empty()
        && name.len() <= 255
        && name.bytes().filter(|b| *b == b'@').count() <= 1
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_.\\@-".contains(&b))
}
