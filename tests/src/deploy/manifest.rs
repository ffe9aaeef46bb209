//! deploy/daemonset.yaml against the Kubernetes API schema, with PyPI's
//! kubernetes-validate (which `cargo xtask setup` installs in a venv under
//! target/), in strict mode: an unknown field (a typo such as `hostPid`)
//! fails, as `kubectl apply --validate=strict` would.

use std::{path::PathBuf, process::Command};

use super::{Manifest, deploy_file, scratch_dir};
use crate::{collector::Env, runtimes::engine::run_command};

/// The oldest Kubernetes the manifest claims (CAP_BPF and CAP_PERFMON
/// need the runtime and kernel of its era: Linux 5.8), and the newest the
/// validator knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.28", "1.37"];

/// kubernetes-validate, from its venv (`cargo xtask setup`), or from
/// OOMTRACE_KUBERNETES_VALIDATE.
pub fn validator() -> PathBuf {
    let path = std::env::var_os("OOMTRACE_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/tools/kubernetes-validate/bin/kubernetes-validate")
        });
    assert!(
        path.exists(),
        "{} does not exist: `cargo xtask setup` installs PyPI's kubernetes-validate there",
        path.display()
    );
    path
}

fn validate(file: &std::path::Path, version: &str) -> Result<String, String> {
    run_command(
        Command::new(validator())
            .args(["--strict", "--kubernetes-version", version])
            .arg(file),
    )
}

/// The DaemonSet (and its Namespace) validate against the Kubernetes API
/// schema of the oldest and newest versions it is meant for; the same file
/// with one field misspelled does not (the validator really looks); and
/// the manifest says what the deploy tests rely on: hostPID, Guaranteed
/// QoS, every taint tolerated, the /healthz liveness probe on the metrics
/// port its arguments open, and no privileged mode.
pub fn daemonset_validates_against_the_kubernetes_schema(_env: &Env) {
    let file = deploy_file("daemonset.yaml");
    for version in KUBERNETES_VERSIONS {
        let out = validate(&file, version).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{}", out.trim());
    }
    let text = std::fs::read_to_string(&file).expect("daemonset.yaml");
    let misspelled = scratch_dir().join("daemonset-misspelled.yaml");
    std::fs::write(&misspelled, text.replace("hostPID:", "hostPid:")).expect("write");
    let refused = validate(&misspelled, KUBERNETES_VERSIONS[1]);
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("hostPid")),
        "a misspelled field must fail strict validation: {refused:?}"
    );

    let manifest = Manifest::load();
    let pod = manifest.pod();
    assert_eq!(pod["hostPID"], true);
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}]),
        "every taint tolerated"
    );
    assert_ne!(manifest.security()["privileged"], true);
    assert!(manifest.memory_limit() > 0);
    let probe = &manifest.container()["livenessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/healthz");
    let args = manifest.args();
    let addr = args
        .iter()
        .position(|a| a == "--metrics-addr")
        .map(|i| args[i + 1].clone())
        .expect("--metrics-addr");
    assert_eq!(
        addr.rsplit(':').next().map(str::parse::<u64>),
        Some(Ok(probe["port"].as_u64().expect("probe port"))),
        "the probe asks the port the collector listens on"
    );
}
