//! A container's name and image (and, for a Kubernetes container, its pod's
//! names) from its runtime's own state files on the host's disk: no API,
//! no socket, nothing a runtime must be asked.
//!
//! [`SOURCES`] lists each runtime's file; [`RuntimeState::lookup`] tries
//! them for a container id (the runtime the cgroup path names first) and
//! caches the answer. Every file is opened inside `--host-root` without
//! following a link out of it (host_fs.rs), is read up to a size cap, and
//! a file that is absent, unreadable or not of the expected shape gives no
//! names (logged at debug level), never an error that holds up a record.
//!
//! What this cannot see: containers removed before their first record
//! (their state goes with them, so their names come out null), names a
//! runtime keeps only in a database (containerd's meta.db for ctr and
//! nerdctl, Podman's libpod database), and a `docker rename` after the
//! first record (names are cached per id).

mod cache;
mod docker;
mod host_fs;
mod oci_annotations;
mod podman;
mod sources;
#[cfg(test)]
mod tests;

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use oomtrace_record::{Container, K8s, Runtime};

use self::{
    cache::StateCache,
    host_fs::HostRoot,
    sources::{Found, Source},
};
use super::{cgroup_path::is_container_id, kubelet::K8sNames};

pub use sources::{CONTAINERD_ROOT, CONTAINERS_STORAGE_ROOT, DOCKER_ROOT, SOURCES};

/// What a runtime's state says of one container. Null fields: not said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateNames {
    /// The runtime whose file holds the container.
    pub runtime: Runtime,
    /// As its runtime lists it (`docker ps`, `podman ps`, `crictl ps`).
    pub name: Option<String>,
    /// The image reference it was created from.
    pub image: Option<String>,
    /// The pod's names, where the runtime keeps them (cri-dockerd's labels,
    /// the CRI annotations).
    pub k8s: K8sNames,
}

impl StateNames {
    /// Names `container` (whose id and runtime come from the cgroup path):
    /// its name and image, and its runtime where the path could not tell.
    pub fn name(&self, container: &mut Container) {
        container.runtime = container.runtime.or(Some(self.runtime));
        container.name.clone_from(&self.name);
        container.image.clone_from(&self.image);
    }

    /// Fills the Kubernetes names the kubelet's log directories left null:
    /// those are the kubelet's own words, these the runtime's copy.
    pub fn fill_k8s(&self, k8s: &mut K8s) {
        let fill = |field: &mut Option<String>, from: &Option<String>| {
            if field.is_none() {
                field.clone_from(from);
            }
        };
        fill(&mut k8s.namespace, &self.k8s.namespace);
        fill(&mut k8s.pod, &self.k8s.pod);
        fill(&mut k8s.container, &self.k8s.container);
    }
}

impl Default for StateNames {
    fn default() -> Self {
        Self {
            runtime: Runtime::Unknown,
            name: None,
            image: None,
            k8s: K8sNames::default(),
        }
    }
}

/// Why a state file gave no names.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not of the expected shape")]
    Json(#[from] serde_json::Error),
    #[error("the file is another container's")]
    OtherId,
}

/// Each source's root, inside `--host-root`: the defaults, or what the
/// `--<name>-root` flags say.
#[derive(Clone, Debug, Default)]
pub struct RuntimeRoots {
    overrides: Vec<(&'static str, PathBuf)>,
}

impl RuntimeRoots {
    /// The root for the source named `source` (a [`Source::name`]).
    pub fn with(mut self, source: &'static str, root: PathBuf) -> Self {
        debug_assert!(
            SOURCES.iter().any(|s| s.name == source),
            "no state source {source}"
        );
        self.overrides.retain(|(name, _)| *name != source);
        self.overrides.push((source, root));
        self
    }

    fn root(&self, source: &Source) -> PathBuf {
        self.overrides
            .iter()
            .find(|(name, _)| *name == source.name)
            .map_or_else(|| PathBuf::from(source.default_root), |(_, p)| p.clone())
    }
}

/// Runtime state lookups for the collector, cached by container id.
#[derive(Debug)]
pub struct RuntimeState {
    /// None when `--host-root` cannot be opened: nothing is read.
    host: Option<HostRoot>,
    roots: Vec<(&'static Source, PathBuf)>,
    cache: StateCache,
}

impl RuntimeState {
    pub fn new(host_root: &Path, roots: &RuntimeRoots) -> Self {
        let host = HostRoot::open(host_root)
            .inspect_err(|e| {
                log::debug!(
                    "runtime state: opening {}: {e}; no container names",
                    host_root.display()
                );
            })
            .ok();
        Self {
            host,
            roots: SOURCES.iter().map(|s| (s, roots.root(s))).collect(),
            cache: StateCache::new(cache::MAX_ENTRIES, cache::MISS_TTL),
        }
    }

    /// Changes how long a miss is believed; tests use it to see a file that
    /// appears after a miss without sleeping.
    #[cfg(test)]
    pub fn with_miss_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.cache = StateCache::new(cache::MAX_ENTRIES, ttl);
        self
    }

    /// What the runtimes' state says of container `id` (its full id), trying
    /// first the sources of `runtime` (from the cgroup path), then the
    /// others. None when no file has it.
    pub fn lookup(&mut self, id: &str, runtime: Option<Runtime>) -> Option<StateNames> {
        // An id is 64 hex digits, so it is safe as a path component.
        if !is_container_id(id) {
            return None;
        }
        let now = Instant::now();
        if let Some(known) = self.cache.get(id, now) {
            return known.cloned();
        }
        let found = self.read(id, runtime);
        self.cache.insert(id, found.clone(), now);
        found
    }

    fn read(&self, id: &str, runtime: Option<Runtime>) -> Option<StateNames> {
        let host = self.host.as_ref()?;
        let hinted = |s: &Source| runtime.is_some_and(|r| r == s.runtime);
        let ordered = self
            .roots
            .iter()
            .filter(|(s, _)| hinted(s))
            .chain(self.roots.iter().filter(|(s, _)| !hinted(s)));
        for (source, root) in ordered {
            let list = |dir: &Path| match host.list(dir) {
                Ok(names) => names
                    .into_iter()
                    .filter_map(|n| n.into_string().ok())
                    .collect(),
                Err(_) => Vec::new(),
            };
            for (path, matched) in sources::expand(root, source.file, id, list) {
                let bytes = match host.read(&path) {
                    Ok(bytes) => bytes,
                    Err(e) if e.is_absent() => continue,
                    Err(e) => {
                        log::debug!(
                            "runtime state ({}): reading {}: {e}",
                            source.name,
                            path.display()
                        );
                        continue;
                    }
                };
                let found = Found {
                    id,
                    matched: &matched,
                };
                match (source.parse)(&bytes, &found) {
                    Ok(Some(names)) => return Some(names),
                    Ok(None) => {}
                    Err(e) => {
                        log::debug!("runtime state ({}): {}: {e}", source.name, path.display())
                    }
                }
            }
        }
        None
    }
}

/// A name or image as the record carries it: an empty string says nothing.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}
