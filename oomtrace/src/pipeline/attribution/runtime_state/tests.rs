//! Lookups against state files in the runtimes' real formats, trimmed to a
//! few fields but laid out as dockerd, containerd, CRI-O and Podman write
//! them.

use std::{
    os::unix::fs::symlink,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use oomtrace_record::Runtime;
use serde_json::json;

use super::{K8sNames, RuntimeRoots, RuntimeState, StateNames};

const ID: &str = "3f4e9a1c0b7d2e8f6a5c4b3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f";
const OTHER: &str = "8d0a26fbd2dec0fbc2ffd5e0d4ff5cb2aab6ea8ab3f8e2a17e1d7ab92b53b0c4";
const IMAGE_ID: &str = "b52e0b094bc0e26c9eddc9e4ab7a64ce0033c3360d8b7ad4ff4132c4e03e8f7b";

/// A temporary host root, removed on drop.
struct Host(PathBuf);

impl Host {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("oomtrace-runtime-state-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    fn write(&self, path: &str, contents: &str) {
        let path = self.0.join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("dirs");
        std::fs::write(path, contents).expect("write");
    }

    fn state(&self) -> RuntimeState {
        RuntimeState::new(&self.0, &RuntimeRoots::default())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// dockerd's config.v2.json for `docker run --name web-1 nginx:1.27`: the
/// top-level `Image` is the image's id, `Config.Image` what was asked for.
fn docker_config(id: &str, name: &str, labels: serde_json::Value) -> String {
    json!({
        "StreamConfig": {},
        "State": {"Running": true, "Paused": false, "Restarting": false, "OOMKilled": false,
                  "Dead": false, "Pid": 4242, "ExitCode": 0, "Error": "",
                  "StartedAt": "2026-11-28T09:00:00.123456789Z",
                  "FinishedAt": "0001-01-01T00:00:00Z", "Health": null},
        "ID": id,
        "Created": "2026-11-28T08:59:59.987654321Z",
        "Managed": false,
        "Path": "/docker-entrypoint.sh",
        "Args": ["nginx", "-g", "daemon off;"],
        "Config": {"Hostname": &id[..12], "Domainname": "", "User": "",
                   "AttachStdin": false, "Tty": false,
                   "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"],
                   "Cmd": ["nginx", "-g", "daemon off;"], "Image": "nginx:1.27",
                   "Volumes": null, "WorkingDir": "", "Entrypoint": ["/docker-entrypoint.sh"],
                   "OnBuild": null, "Labels": labels, "StopSignal": "SIGQUIT"},
        "Image": format!("sha256:{IMAGE_ID}"),
        "ImageManifest": null,
        "NetworkSettings": {"Bridge": "", "SandboxID": "", "Networks": {}},
        "LogPath": format!("/var/lib/docker/containers/{id}/{id}-json.log"),
        "Name": format!("/{name}"),
        "Driver": "overlay2",
        "OS": "linux",
        "RestartCount": 0,
        "HasBeenStartedBefore": true,
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "docker-default",
        "SeccompProfile": ""
    })
    .to_string()
}

/// An OCI runtime spec (config.json of a bundle) with these annotations.
fn oci_spec(annotations: serde_json::Value) -> String {
    json!({
        "ociVersion": "1.1.0",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["/app"], "cwd": "/",
                    "env": ["PATH=/usr/bin:/bin"], "noNewPrivileges": true},
        "root": {"path": "rootfs"},
        "hostname": "cart-5d8f7c9b6-x2x7q",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "annotations": annotations,
        "linux": {"resources": {"memory": {"limit": 268435456}},
                  "cgroupsPath": format!("kubepods-burstable-pod5f1c.slice:cri-containerd:{ID}"),
                  "namespaces": [{"type": "pid"}, {"type": "mount"}]}
    })
    .to_string()
}

/// The CRI plugin's annotations on a container of pod shop/cart-….
fn cri_annotations() -> serde_json::Value {
    json!({
        "io.kubernetes.cri.container-name": "cart",
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.image-name": "registry.example/shop/cart:2.3",
        "io.kubernetes.cri.sandbox-id": OTHER,
        "io.kubernetes.cri.sandbox-name": "cart-5d8f7c9b6-x2x7q",
        "io.kubernetes.cri.sandbox-namespace": "shop",
        "io.kubernetes.cri.sandbox-uid": "5f1c3b2a-9e8d-4c7b-a6f5-0e1d2c3b4a59"
    })
}

fn k8s(namespace: &str, pod: &str, container: &str) -> K8sNames {
    K8sNames {
        namespace: Some(namespace.into()),
        pod: Some(pod.into()),
        container: Some(container.into()),
    }
}

#[test]
fn docker_names_come_from_config_v2() {
    let host = Host::new();
    host.write(
        &format!("var/lib/docker/containers/{ID}/config.v2.json"),
        &docker_config(
            ID,
            "web-1",
            json!({"maintainer": "NGINX Docker Maintainers"}),
        ),
    );
    let names = host.state().lookup(ID, Some(Runtime::Docker));
    assert_eq!(
        names,
        Some(StateNames {
            runtime: Runtime::Docker,
            name: Some("web-1".into()),
            image: Some("nginx:1.27".into()),
            k8s: K8sNames::default(),
        })
    );
}

#[test]
fn cri_dockerd_labels_give_the_pod() {
    let host = Host::new();
    let labels = json!({
        "io.kubernetes.container.name": "cart",
        "io.kubernetes.docker.type": "container",
        "io.kubernetes.pod.name": "cart-5d8f7c9b6-x2x7q",
        "io.kubernetes.pod.namespace": "shop",
        "io.kubernetes.pod.uid": "5f1c3b2a-9e8d-4c7b-a6f5-0e1d2c3b4a59"
    });
    host.write(
        &format!("var/lib/docker/containers/{ID}/config.v2.json"),
        &docker_config(ID, "k8s_cart_cart-5d8f7c9b6-x2x7q_shop_5f1c3b2a_0", labels),
    );
    // The kubelet cgroupfs layout does not name the runtime: the file does.
    let names = host.state().lookup(ID, None).expect("found");
    assert_eq!(names.runtime, Runtime::Docker);
    assert_eq!(
        names.name.as_deref(),
        Some("k8s_cart_cart-5d8f7c9b6-x2x7q_shop_5f1c3b2a_0")
    );
    assert_eq!(names.k8s, k8s("shop", "cart-5d8f7c9b6-x2x7q", "cart"));
}

#[test]
fn containerd_bundles_are_found_in_any_namespace() {
    let host = Host::new();
    host.write(
        &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
        &oci_spec(cri_annotations()),
    );
    // Docker's own containerd: the bundle has no names, but says Docker.
    host.write(
        &format!("run/containerd/io.containerd.runtime.v2.task/moby/{OTHER}/config.json"),
        &oci_spec(json!({})),
    );
    let mut state = host.state();
    assert_eq!(
        state.lookup(ID, None),
        Some(StateNames {
            runtime: Runtime::Containerd,
            name: Some("cart".into()),
            image: Some("registry.example/shop/cart:2.3".into()),
            k8s: k8s("shop", "cart-5d8f7c9b6-x2x7q", "cart"),
        })
    );
    let moby = state.lookup(OTHER, None).expect("found");
    assert_eq!((moby.runtime, moby.name), (Runtime::Docker, None));
}

#[test]
fn docker_config_is_preferred_to_its_containerd_bundle() {
    let host = Host::new();
    host.write(
        &format!("run/containerd/io.containerd.runtime.v2.task/moby/{ID}/config.json"),
        &oci_spec(json!(null)),
    );
    host.write(
        &format!("var/lib/docker/containers/{ID}/config.v2.json"),
        &docker_config(ID, "web-1", json!(null)),
    );
    for hint in [None, Some(Runtime::Docker), Some(Runtime::Containerd)] {
        let names = host.state().lookup(ID, hint).expect("found");
        assert_eq!(names.runtime, Runtime::Docker, "{hint:?}");
        if hint != Some(Runtime::Containerd) {
            assert_eq!(names.name.as_deref(), Some("web-1"), "{hint:?}");
        }
    }
}

#[test]
fn crio_annotations_and_podmans_lookalike() {
    let host = Host::new();
    let crio = json!({
        "io.container.manager": "cri-o",
        "io.kubernetes.container.name": "cart",
        "io.kubernetes.cri-o.ContainerType": "container",
        "io.kubernetes.cri-o.ImageName": "quay.io/shop/cart:2.3",
        "io.kubernetes.cri-o.Name": "k8s_cart_cart-5d8f7c9b6-x2x7q_shop_5f1c3b2a_0",
        "io.kubernetes.pod.name": "cart-5d8f7c9b6-x2x7q",
        "io.kubernetes.pod.namespace": "shop"
    });
    let storage = "var/lib/containers/storage/overlay-containers";
    host.write(
        &format!("{storage}/{ID}/userdata/config.json"),
        &oci_spec(crio),
    );
    // Podman writes a config.json at the same place, without CRI-O's keys.
    host.write(
        &format!("{storage}/{OTHER}/userdata/config.json"),
        &oci_spec(json!({"io.container.manager": "libpod"})),
    );
    host.write(&format!("{storage}/containers.json"), &podman_list());
    let mut state = host.state();
    assert_eq!(
        state.lookup(ID, Some(Runtime::CriO)),
        Some(StateNames {
            runtime: Runtime::CriO,
            name: Some("cart".into()),
            image: Some("quay.io/shop/cart:2.3".into()),
            k8s: k8s("shop", "cart-5d8f7c9b6-x2x7q", "cart"),
        })
    );
    let podman = state.lookup(OTHER, None).expect("found");
    assert_eq!(podman.runtime, Runtime::Podman);
    assert_eq!(podman.name.as_deref(), Some("web-podman"));
}

/// containers/storage's containers.json: `metadata` is a string of JSON.
fn podman_list() -> String {
    let meta = |image: Option<&str>, name: &str| {
        let mut m = json!({"image-id": IMAGE_ID, "name": name,
                           "created-at": 1_764_320_400, "mountlabel": ""});
        if let Some(image) = image {
            m["image-name"] = image.into();
        }
        m.to_string()
    };
    json!([
        {"id": OTHER, "names": ["web-podman"], "image": IMAGE_ID,
         "layer": "4e1c8d3b2a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e5d6c7b8a9f0e1d",
         "metadata": meta(Some("docker.io/library/redis:7"), "web-podman"),
         "created": "2026-11-28T09:00:00.123456789Z",
         "flags": {"MountLabel": "", "ProcessLabel": ""}},
        {"id": ID, "names": [], "image": IMAGE_ID, "layer": "",
         "metadata": meta(None, "no-image-name"), "created": "2026-11-28T09:00:00Z"}
    ])
    .to_string()
}

#[test]
fn podman_metadata_is_json_in_a_string() {
    let host = Host::new();
    host.write(
        "var/lib/containers/storage/vfs-containers/containers.json",
        &podman_list(),
    );
    let mut state = host.state();
    let names = state.lookup(OTHER, Some(Runtime::Podman)).expect("found");
    assert_eq!(
        (names.name.as_deref(), names.image.as_deref()),
        (Some("web-podman"), Some("docker.io/library/redis:7"))
    );
    // No names: the metadata's; no image-name: the image's id.
    let names = state.lookup(ID, Some(Runtime::Podman)).expect("found");
    assert_eq!(
        (names.name.as_deref(), names.image.as_deref()),
        (Some("no-image-name"), Some(IMAGE_ID))
    );
}

#[test]
fn broken_files_give_no_names() {
    let host = Host::new();
    host.write(
        &format!("var/lib/docker/containers/{ID}/config.v2.json"),
        "{\"ID\": \"",
    );
    // Another container's file in this one's place.
    host.write(
        &format!("var/lib/docker/containers/{OTHER}/config.v2.json"),
        &docker_config(ID, "web-1", json!(null)),
    );
    host.write(
        "var/lib/containers/storage/overlay-containers/containers.json",
        &json!([{"id": ID, "names": ["x"], "metadata": "{not json"}]).to_string(),
    );
    let mut state = host.state();
    // The broken config.v2.json gives way to containers.json, whose broken
    // metadata still leaves the entry's names.
    let names = state.lookup(ID, Some(Runtime::Docker)).expect("found");
    assert_eq!(
        (names.runtime, names.name.as_deref(), names.image),
        (Runtime::Podman, Some("x"), None)
    );
    assert_eq!(state.lookup(OTHER, Some(Runtime::Docker)), None);
    // Not an id: nothing is read.
    assert_eq!(state.lookup("../../etc", None), None);
}

#[test]
fn a_symlink_out_of_the_host_root_is_not_followed() {
    let host = Host::new();
    let outside = Host::new();
    outside.write(
        &format!("containers/{ID}/config.v2.json"),
        &docker_config(ID, "outside", json!(null)),
    );
    std::fs::create_dir_all(host.0.join("var/lib/docker")).expect("dir");
    // A relative link that climbs out, and an absolute one.
    symlink(
        format!("../../../../{}/containers", outside.0.display()),
        host.0.join("var/lib/docker/containers"),
    )
    .expect("symlink");
    assert_eq!(host.state().lookup(ID, Some(Runtime::Docker)), None);
    std::fs::remove_file(host.0.join("var/lib/docker/containers")).expect("unlink");
    symlink(
        outside.0.join("containers"),
        host.0.join("var/lib/docker/containers"),
    )
    .expect("symlink");
    assert_eq!(host.state().lookup(ID, Some(Runtime::Docker)), None);
    // The same file inside the root is read.
    std::fs::remove_file(host.0.join("var/lib/docker/containers")).expect("unlink");
    host.write(
        &format!("var/lib/docker/containers/{ID}/config.v2.json"),
        &docker_config(ID, "inside", json!(null)),
    );
    let names = host.state().lookup(ID, None).expect("found");
    assert_eq!(names.name.as_deref(), Some("inside"));
}

#[test]
fn a_private_data_root_is_read_where_the_flag_says() {
    let host = Host::new();
    host.write(
        &format!("srv/dockerd-ci/containers/{ID}/config.v2.json"),
        &docker_config(ID, "ci-job", json!(null)),
    );
    let roots = RuntimeRoots::default().with("docker", "/srv/dockerd-ci".into());
    let mut state = RuntimeState::new(&host.0, &roots);
    let names = state.lookup(ID, Some(Runtime::Docker)).expect("found");
    assert_eq!(names.name.as_deref(), Some("ci-job"));
    assert_eq!(host.state().lookup(ID, None), None, "not at the default");
}

#[test]
fn hits_are_cached_and_misses_are_asked_again() {
    let host = Host::new();
    let file = format!("var/lib/docker/containers/{ID}/config.v2.json");
    let mut state = host.state().with_miss_ttl(Duration::from_secs(3600));
    assert_eq!(state.lookup(ID, None), None);
    host.write(&file, &docker_config(ID, "web-1", json!(null)));
    assert_eq!(state.lookup(ID, None), None, "a fresh miss is believed");

    let mut state = host.state().with_miss_ttl(Duration::ZERO);
    std::fs::remove_file(host.0.join(&file)).expect("remove");
    assert_eq!(state.lookup(ID, None), None);
    host.write(&file, &docker_config(ID, "web-1", json!(null)));
    let found = state.lookup(ID, None);
    assert_eq!(
        found.as_ref().and_then(|n| n.name.as_deref()),
        Some("web-1"),
        "the state appeared after the cgroup"
    );
    // Once found, the files are not read again: a storm reads them once.
    std::fs::remove_file(host.0.join(&file)).expect("remove");
    assert_eq!(state.lookup(ID, None), found);
}

/// The kubelet's log directories name the pod first; the runtime's state
/// fills in what they leave null, and the runtime the path cannot name.
#[test]
fn kubelet_names_win_and_state_fills_the_rest() {
    use crate::pipeline::attribution::{Attributor, HostView};

    const UID: &str = "5f1c3b2a-9e8d-4c7b-a6f5-0e1d2c3b4a59";
    let host = Host::new();
    host.write(
        &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
        &oci_spec(cri_annotations()),
    );
    let attributor = || Attributor::new(&host.0, 4096, HostView::default());
    // The kubelet cgroupfs layout: no runtime in the path.
    let path = format!("/kubepods/burstable/pod{UID}/{ID}");

    let names = attributor().names(&path);
    let container = names.container.expect("a container");
    assert_eq!(
        container.runtime,
        Some(Runtime::Containerd),
        "from the state"
    );
    assert_eq!(container.name.as_deref(), Some("cart"));
    assert_eq!(
        container.image.as_deref(),
        Some("registry.example/shop/cart:2.3")
    );
    let k8s = names.k8s.expect("a pod");
    assert_eq!(
        (k8s.namespace.as_deref(), k8s.pod.as_deref()),
        (Some("shop"), Some("cart-5d8f7c9b6-x2x7q")),
        "no kubelet logs: the state's names"
    );
    assert_eq!(k8s.pod_uid.as_deref(), Some(UID));

    // The kubelet's logs say otherwise (a pod recreated under the same
    // name elsewhere would): they win, field by field.
    let pod_dir = format!("shop-renamed_cart-0_{UID}");
    host.write(&format!("var/log/pods/{pod_dir}/main/0.log"), "");
    std::fs::create_dir_all(host.0.join("var/log/containers")).expect("dir");
    symlink(
        format!("/var/log/pods/{pod_dir}/main/0.log"),
        host.0.join(format!(
            "var/log/containers/cart-0_shop-renamed_main-{ID}.log"
        )),
    )
    .expect("symlink");
    let k8s = attributor().names(&path).k8s.expect("a pod");
    assert_eq!(
        (
            k8s.namespace.as_deref(),
            k8s.pod.as_deref(),
            k8s.container.as_deref()
        ),
        (Some("shop-renamed"), Some("cart-0"), Some("main"))
    );

    // A path that names its runtime keeps it, whatever file has the id.
    let path = format!("/kubepods.slice/kubepods-burstable.slice/crio-{ID}.scope");
    let container = attributor().names(&path).container.expect("a container");
    assert_eq!(container.runtime, Some(Runtime::CriO));
    assert_eq!(container.name.as_deref(), Some("cart"));
}
