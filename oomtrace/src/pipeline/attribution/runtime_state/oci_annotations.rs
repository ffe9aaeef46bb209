//! The OCI runtime spec's `annotations` (config.json of an OCI bundle), as
//! containerd's task bundle and CRI-O's `userdata/config.json` carry them.
//! The CRI implementations put the Kubernetes names there; each spells the
//! keys its own way.

use std::collections::HashMap;

use oomtrace_record::Runtime;
use serde::Deserialize;

use super::{K8sNames, ParseError, StateNames, non_empty, sources::Found};

/// An OCI runtime spec, for its annotations alone.
#[derive(Deserialize)]
struct Spec {
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
}

/// The annotations of an OCI runtime spec (empty when it has none).
pub fn annotations(bytes: &[u8]) -> Result<HashMap<String, String>, ParseError> {
    let spec: Spec = serde_json::from_slice(bytes)?;
    Ok(spec.annotations.unwrap_or_default())
}

/// containerd's CRI plugin (pkg/cri/annotations).
const CRI_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
const CRI_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
const CRI_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
const CRI_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// The containerd namespace Docker (moby) runs its containers in.
const DOCKER_NAMESPACE: &str = "moby";

/// A containerd task bundle. The namespace directory it was found in
/// decides the runtime; the CRI plugin's annotations give the names. A
/// container of ctr or nerdctl has none: containerd keeps names and images
/// in its metadata database (meta.db), which is not read.
pub fn parse_containerd(bytes: &[u8], found: &Found<'_>) -> Result<Option<StateNames>, ParseError> {
    let mut notes = annotations(bytes)?;
    let namespace = found.matched.first().map(String::as_str);
    let runtime = if namespace == Some(DOCKER_NAMESPACE) {
        Runtime::Docker
    } else {
        Runtime::Containerd
    };
    let container = non_empty(notes.remove(CRI_CONTAINER_NAME));
    Ok(Some(StateNames {
        runtime,
        // `crictl ps` lists a CRI container by its name in the pod spec.
        name: container.clone(),
        image: non_empty(notes.remove(CRI_IMAGE_NAME)),
        k8s: K8sNames {
            namespace: non_empty(notes.remove(CRI_SANDBOX_NAMESPACE)),
            pod: non_empty(notes.remove(CRI_SANDBOX_NAME)),
            container,
        },
    }))
}

/// CRI-O (pkg/annotations and the kubelet's own keys, which CRI-O copies).
const CRIO_PREFIX: &str = "io.kubernetes.cri-o.";
const CRIO_IMAGE_NAME: &str = "io.kubernetes.cri-o.ImageName";
const K8S_CONTAINER_NAME: &str = "io.kubernetes.container.name";
const K8S_POD_NAME: &str = "io.kubernetes.pod.name";
const K8S_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";

/// CRI-O's `userdata/config.json`. Podman keeps a config.json at the same
/// place in the same storage, without CRI-O's annotations: such a file is
/// not CRI-O's, and Podman's containers.json answers for it.
pub fn parse_crio(bytes: &[u8], _found: &Found<'_>) -> Result<Option<StateNames>, ParseError> {
    let mut notes = annotations(bytes)?;
    if !notes.keys().any(|key| key.starts_with(CRIO_PREFIX)) {
        return Ok(None);
    }
    let container = non_empty(notes.remove(K8S_CONTAINER_NAME));
    Ok(Some(StateNames {
        runtime: Runtime::CriO,
        // `crictl ps` lists a CRI container by its name in the pod spec.
        name: container.clone(),
        image: non_empty(notes.remove(CRIO_IMAGE_NAME)),
        k8s: K8sNames {
            namespace: non_empty(notes.remove(K8S_POD_NAMESPACE)),
            pod: non_empty(notes.remove(K8S_POD_NAME)),
            container,
        },
    }))
}
