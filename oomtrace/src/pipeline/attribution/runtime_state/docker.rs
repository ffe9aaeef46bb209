//! Docker's `containers/<id>/config.v2.json`: dockerd's record of one
//! container, rewritten on every state change. Only three things are read:
//! `Name` (`/web-1`: Docker keeps the leading `/`), `Config.Image` (the
//! reference as given to `docker run`) and, for containers cri-dockerd made
//! for the kubelet, the pod labels in `Config.Labels`.

use std::collections::HashMap;

use oomtrace_record::Runtime;
use serde::Deserialize;

use super::{K8sNames, ParseError, StateNames, non_empty, sources::Found};

#[derive(Deserialize)]
struct ConfigV2 {
    #[serde(rename = "ID", default)]
    id: Option<String>,
    #[serde(rename = "Name", default)]
    name: Option<String>,
    #[serde(rename = "Config", default)]
    config: Option<Config>,
}

#[derive(Deserialize)]
struct Config {
    #[serde(rename = "Image", default)]
    image: Option<String>,
    /// `null` when a container has none.
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
}

/// The labels cri-dockerd (formerly the kubelet's dockershim) puts on the
/// containers it creates.
const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const POD_NAME: &str = "io.kubernetes.pod.name";
const CONTAINER_NAME: &str = "io.kubernetes.container.name";

pub fn parse(bytes: &[u8], found: &Found<'_>) -> Result<Option<StateNames>, ParseError> {
    let state: ConfigV2 = serde_json::from_slice(bytes)?;
    if state.id.as_deref().is_some_and(|id| id != found.id) {
        return Err(ParseError::OtherId);
    }
    let config = state.config;
    let mut labels = config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let mut label = |key| non_empty(labels.remove(key));
    let k8s = K8sNames {
        namespace: label(POD_NAMESPACE),
        pod: label(POD_NAME),
        container: label(CONTAINER_NAME),
    };
    Ok(Some(StateNames {
        runtime: Runtime::Docker,
        name: non_empty(state.name.map(|n| n.trim_start_matches('/').to_string())),
        image: non_empty(config.and_then(|c| c.image)),
        k8s,
    }))
}
