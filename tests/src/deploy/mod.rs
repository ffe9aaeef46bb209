//! What ships in `deploy/`: the image, the DaemonSet, the systemd unit and
//! the logrotate configuration, each tested with the real tool:
//! - [`privileges`]: the image, built here, run by Podman with exactly the
//!   DaemonSet's capabilities, mounts, seccomp profile and limits (read
//!   from the manifest), records a storm of real kills;
//! - [`manifest`]: the manifest against the Kubernetes API schema
//!   (PyPI's kubernetes-validate);
//! - [`systemd`]: the unit, through `systemd-analyze verify` and
//!   `security --offline`;
//! - [`rotation`]: `logrotate -f` with the shipped configuration while
//!   kills happen.

use std::path::{Path, PathBuf};

use serde_json::Value;

pub mod manifest;
pub mod privileges;
pub mod rotation;
pub mod systemd;

/// `deploy/NAME` in the workspace.
pub fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

/// The DaemonSet's collector container, as deploy/daemonset.yaml says.
#[derive(Debug)]
pub struct Manifest {
    /// The whole DaemonSet object.
    pub daemonset: Value,
}

/// One read-only (or not) host mount of the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMount {
    pub host: String,
    pub container: String,
    pub read_only: bool,
}

impl Manifest {
    /// Reads deploy/daemonset.yaml (its documents: the Namespace and the
    /// DaemonSet).
    pub fn load() -> Self {
        let path = deploy_file("daemonset.yaml");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let daemonset = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|doc| {
                serde::Deserialize::deserialize(doc)
                    .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
            })
            .find(|doc: &Value| doc["kind"] == "DaemonSet")
            .unwrap_or_else(|| panic!("{}: no DaemonSet", path.display()));
        Self { daemonset }
    }

    pub fn pod(&self) -> &Value {
        &self.daemonset["spec"]["template"]["spec"]
    }

    /// The one container, `oomtrace`.
    pub fn container(&self) -> &Value {
        let containers = self.pod()["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "one container: {containers:?}");
        &containers[0]
    }

    pub fn security(&self) -> &Value {
        &self.container()["securityContext"]
    }

    /// `capabilities.add`, as the kernel names them (`CAP_BPF`).
    pub fn capabilities(&self) -> Vec<String> {
        let caps = &self.security()["capabilities"];
        assert_eq!(
            caps["drop"],
            serde_json::json!(["ALL"]),
            "the manifest drops every capability it does not add"
        );
        caps["add"]
            .as_array()
            .expect("capabilities.add")
            .iter()
            .map(|c| format!("CAP_{}", c.as_str().expect("a capability name")))
            .collect()
    }

    /// The container's arguments.
    pub fn args(&self) -> Vec<String> {
        self.container()["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("string args").to_string())
            .collect()
    }

    /// Every hostPath volume and where the container mounts it.
    pub fn host_mounts(&self) -> Vec<HostMount> {
        let volumes = self.pod()["volumes"].as_array().expect("volumes");
        self.container()["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .map(|m| {
                let volume = volumes
                    .iter()
                    .find(|v| v["name"] == m["name"])
                    .unwrap_or_else(|| panic!("no volume for {m}"));
                HostMount {
                    host: volume["hostPath"]["path"]
                        .as_str()
                        .unwrap_or_else(|| panic!("not a hostPath: {volume}"))
                        .to_string(),
                    container: m["mountPath"].as_str().expect("mountPath").to_string(),
                    read_only: m["readOnly"] == true,
                }
            })
            .collect()
    }

    /// `resources.limits.memory` in bytes; requests must equal limits
    /// (Guaranteed QoS).
    pub fn memory_limit(&self) -> u64 {
        let resources = &self.container()["resources"];
        assert_eq!(
            resources["requests"], resources["limits"],
            "requests = limits (Guaranteed QoS)"
        );
        quantity_bytes(
            resources["limits"]["memory"]
                .as_str()
                .expect("memory limit"),
        )
    }

    /// `resources.limits.cpu` in millicores.
    pub fn cpu_millis(&self) -> u64 {
        let cpu = &self.container()["resources"]["limits"]["cpu"];
        match cpu {
            Value::String(s) if s.ends_with('m') => s[..s.len() - 1].parse().expect("cpu"),
            Value::String(s) => (s.parse::<f64>().expect("cpu") * 1000.0) as u64,
            Value::Number(n) => (n.as_f64().expect("cpu") * 1000.0) as u64,
            other => panic!("cpu limit: {other}"),
        }
    }

    /// `seccompProfile.type` (`Unconfined`, `RuntimeDefault`, `Localhost`).
    pub fn seccomp(&self) -> String {
        self.security()["seccompProfile"]["type"]
            .as_str()
            .expect("seccompProfile.type")
            .to_string()
    }
}

/// A Kubernetes memory quantity (`64Mi`, `100M`, `1Gi`, `1048576`) in bytes.
pub fn quantity_bytes(q: &str) -> u64 {
    let units: [(&str, u64); 6] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().expect("a whole quantity") * factor;
        }
    }
    q.parse()
        .unwrap_or_else(|_| panic!("memory quantity {q:?}"))
}

/// Where this checkout's deploy tests keep their files:
/// `<workspace>/target/oomtrace-deploy`.
pub fn scratch_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/oomtrace-deploy");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    dir.canonicalize().expect("scratch dir")
}

/// The records in a CRI-format log (Podman's `k8s-file`, the kubelet's
/// /var/log/pods): `TIME STREAM P|F TEXT`, a line split in `P` pieces
/// joined up to its `F` piece. Only stdout; every whole line must be JSON.
pub fn cri_log_records(text: &str) -> Vec<Value> {
    let mut records = Vec::new();
    let mut partial = String::new();
    for line in text.lines() {
        let mut fields = line.splitn(4, ' ');
        let (_time, stream, tag) = (fields.next(), fields.next(), fields.next());
        let content = fields.next().unwrap_or("");
        if stream != Some("stdout") {
            continue;
        }
        partial.push_str(content);
        if tag == Some("F") {
            let whole = std::mem::take(&mut partial);
            let record: Value = serde_json::from_str(&whole)
                .unwrap_or_else(|e| panic!("a stdout line that is not a record ({e}): {whole}"));
            records.push(record);
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("64Mi"), 64 << 20);
        assert_eq!(quantity_bytes("100M"), 100_000_000);
        assert_eq!(quantity_bytes("4096"), 4096);
    }

    #[test]
    fn cri_pieces_are_joined() {
        let log = "2026-12-06T13:00:00.1+00:00 stdout P {\"a\":\n\
                   2026-12-06T13:00:00.2+00:00 stderr F noise\n\
                   2026-12-06T13:00:00.3+00:00 stdout F 1}\n";
        assert_eq!(cri_log_records(log), vec![serde_json::json!({"a": 1})]);
    }
}
