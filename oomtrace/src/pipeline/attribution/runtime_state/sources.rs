//! The one table of runtime state files: where each runtime keeps what it
//! knows of a container, below which root, and how to read it. Adding a
//! runtime is one entry in [`SOURCES`] (and, for a root of its own, an
//! `oomtrace run --<name>-root` flag).

use std::path::{Path, PathBuf};

use oomtrace_record::Runtime;

use super::{ParseError, StateNames, docker, oci_annotations, podman};

/// dockerd's `--data-root` default.
pub const DOCKER_ROOT: &str = "/var/lib/docker";
/// containerd's `state` directory default (config.toml), where the runc
/// shim keeps each running task's OCI bundle.
pub const CONTAINERD_ROOT: &str = "/run/containerd";
/// containers/storage's `graphroot` default (storage.conf), shared by CRI-O
/// and rootful Podman.
pub const CONTAINERS_STORAGE_ROOT: &str = "/var/lib/containers/storage";

/// Reads one state file's bytes: the names it gives for the container
/// `found` describes, `Ok(None)` when the file is not about that container
/// (or is another runtime's file of the same shape).
pub type Parse = fn(&[u8], &Found<'_>) -> Result<Option<StateNames>, ParseError>;

/// Where a runtime keeps one container's state.
#[derive(Debug)]
pub struct Source {
    /// Names the source in logs and in its root's flag (`--<name>-root`).
    pub name: &'static str,
    /// The runtime of a container found here, unless `parse` says better
    /// (containerd's `moby` namespace is Docker's own).
    pub runtime: Runtime,
    /// The root's default, inside `--host-root`.
    pub default_root: &'static str,
    /// The file's path below the root. `{id}` is the container's full id; a
    /// component with a `*` stands for each entry of that directory whose
    /// name has the same text around the `*` (one `*` per component).
    pub file: &'static str,
    pub parse: Parse,
}

/// What led to a state file.
#[derive(Debug)]
pub struct Found<'a> {
    pub id: &'a str,
    /// What each `*` component of the path matched, in order.
    pub matched: &'a [String],
}

/// In the order they are tried (after those of the runtime the cgroup path
/// names): Docker's own file before the containerd bundle it also leaves,
/// and CRI-O's per-container file before the shared containers.json.
pub const SOURCES: &[Source] = &[
    // dockerd's container record (daemon/container.go, CheckpointTo):
    // `Name`, `Config.Image`, `Config.Labels` (cri-dockerd's pod labels).
    Source {
        name: "docker",
        runtime: Runtime::Docker,
        default_root: DOCKER_ROOT,
        file: "containers/{id}/config.v2.json",
        parse: docker::parse,
    },
    // The runc v2 shim's bundle for a running task: the OCI runtime spec,
    // one directory per containerd namespace (`k8s.io` for the CRI plugin,
    // `moby` for Docker, `default` for ctr and nerdctl).
    Source {
        name: "containerd",
        runtime: Runtime::Containerd,
        default_root: CONTAINERD_ROOT,
        file: "io.containerd.runtime.v2.task/*/{id}/config.json",
        parse: oci_annotations::parse_containerd,
    },
    // CRI-O's copy of the OCI runtime spec it gave the OCI runtime.
    Source {
        name: "crio",
        runtime: Runtime::CriO,
        default_root: CONTAINERS_STORAGE_ROOT,
        file: "overlay-containers/{id}/userdata/config.json",
        parse: oci_annotations::parse_crio,
    },
    // containers/storage's list of every container of one storage driver
    // (`overlay-containers`, `vfs-containers`, `btrfs-containers`…).
    Source {
        name: "podman",
        runtime: Runtime::Podman,
        default_root: CONTAINERS_STORAGE_ROOT,
        file: "*-containers/containers.json",
        parse: podman::parse,
    },
];

/// The files `file` (a [`Source::file`]) names below `root` for container
/// `id`, each with what its `*` components matched. `list` gives a
/// directory's entries (empty when it cannot be read).
pub fn expand(
    root: &Path,
    file: &str,
    id: &str,
    mut list: impl FnMut(&Path) -> Vec<String>,
) -> Vec<(PathBuf, Vec<String>)> {
    let mut paths = vec![(root.to_path_buf(), Vec::new())];
    for component in file.split('/') {
        let mut next = Vec::new();
        for (dir, matched) in paths {
            match component.split_once('*') {
                Some((before, after)) => {
                    let mut names = list(&dir);
                    // Stable order: the same file wins every time.
                    names.sort();
                    for name in names {
                        let fits = name.len() > before.len() + after.len()
                            && name.starts_with(before)
                            && name.ends_with(after);
                        if fits {
                            let mut matched = matched.clone();
                            matched.push(name.clone());
                            next.push((dir.join(name), matched));
                        }
                    }
                }
                None => next.push((dir.join(component.replace("{id}", id)), matched)),
            }
        }
        paths = next;
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_match_directory_entries_and_ids_are_filled_in() {
        let listed = |dir: &Path| match dir.to_str() {
            Some("/s") => vec![
                "vfs-containers".to_string(),
                "overlay-containers".into(),
                "overlay-images".into(),
                "-containers".into(),
            ],
            Some("/c/io.containerd.runtime.v2.task") => vec!["moby".into(), "k8s.io".into()],
            _ => Vec::new(),
        };
        let got = expand(Path::new("/s"), SOURCES[3].file, "ab", listed);
        assert_eq!(
            got,
            [
                (
                    PathBuf::from("/s/overlay-containers/containers.json"),
                    vec!["overlay-containers".to_string()]
                ),
                (
                    PathBuf::from("/s/vfs-containers/containers.json"),
                    vec!["vfs-containers".to_string()]
                ),
            ]
        );
        let got = expand(Path::new("/c"), SOURCES[1].file, "ab", listed);
        let paths: Vec<_> = got
            .iter()
            .map(|(p, m)| (p.to_str(), m[0].as_str()))
            .collect();
        assert_eq!(
            paths,
            [
                (
                    Some("/c/io.containerd.runtime.v2.task/k8s.io/ab/config.json"),
                    "k8s.io"
                ),
                (
                    Some("/c/io.containerd.runtime.v2.task/moby/ab/config.json"),
                    "moby"
                ),
            ]
        );
        let got = expand(Path::new("/d"), SOURCES[0].file, "ab", listed);
        assert_eq!(
            got,
            [(PathBuf::from("/d/containers/ab/config.v2.json"), vec![])]
        );
    }

    #[test]
    fn every_source_names_a_file_with_the_id_or_a_list() {
        for source in SOURCES {
            assert!(
                source.file.contains("{id}") || source.file.contains('*'),
                "{}",
                source.name
            );
            assert!(source.default_root.starts_with('/'), "{}", source.name);
        }
    }
}
