//! containers/storage's `<driver>-containers/containers.json`: a JSON array
//! with one entry per container of that storage driver, whoever made it.
//! Each entry's `metadata` is a JSON *string* holding another JSON object,
//! written by the tool that made the container: Podman's has `name` and
//! `image-name` (libpod's RuntimeContainerMetadata); CRI-O's also has
//! `pod-name` and `pod-id`.

use oomtrace_record::Runtime;
use serde::Deserialize;

use super::{K8sNames, ParseError, StateNames, non_empty, sources::Found};

#[derive(Deserialize)]
struct Entry {
    /// Every field may be left out (containers/storage writes them with
    /// `omitempty`), so one odd entry does not spoil the list.
    #[serde(default)]
    id: String,
    #[serde(default)]
    names: Option<Vec<String>>,
    /// The image's id.
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    metadata: Option<String>,
}

#[derive(Default, Deserialize)]
struct Metadata {
    #[serde(rename = "image-name", default)]
    image_name: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "pod-id", default)]
    pod_id: Option<String>,
}

pub fn parse(bytes: &[u8], found: &Found<'_>) -> Result<Option<StateNames>, ParseError> {
    let entries: Vec<Entry> = serde_json::from_slice(bytes)?;
    let Some(entry) = entries.into_iter().find(|e| e.id == found.id) else {
        return Ok(None);
    };
    // A metadata string that is not the JSON it should be still leaves
    // the entry's own names.
    let metadata: Metadata = entry
        .metadata
        .as_deref()
        .and_then(|text| {
            serde_json::from_str(text)
                .inspect_err(|e| log::debug!("containers.json: {}: metadata: {e}", found.id))
                .ok()
        })
        .unwrap_or_default();
    let image = non_empty(metadata.image_name).or(non_empty(entry.image));
    if non_empty(metadata.pod_id).is_some() {
        // CRI-O's: its `names` are storage names (`k8s_<container>_<pod>…`),
        // not what `crictl ps` lists; its userdata/config.json names it.
        return Ok(Some(StateNames {
            runtime: Runtime::CriO,
            name: None,
            image,
            k8s: K8sNames::default(),
        }));
    }
    Ok(Some(StateNames {
        runtime: Runtime::Podman,
        name: non_empty(entry.names.into_iter().flatten().next()).or(non_empty(metadata.name)),
        image,
        k8s: K8sNames::default(),
    }))
}
