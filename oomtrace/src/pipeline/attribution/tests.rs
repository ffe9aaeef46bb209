//! identify() against paths that the kubelet, Docker, containerd, CRI-O,
//! Podman and systemd really create, and against ones they do not.

use oomtrace_record::{Container, Qos, Runtime};

use super::cgroup_path::{Identity, K8sCgroup, identify};

const A: &str = "8d0a26fbd2dec0fbc2ffd5e0d4ff5cb2aab6ea8ab3f8e2a17e1d7ab92b53b0c4";
const B: &str = "2b5e1c9a7f3d4e6b8a0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708";
const UID: &str = "0f4e3c53-1a2b-4c5d-9e8f-0123456789ab";
const UID_: &str = "0f4e3c53_1a2b_4c5d_9e8f_0123456789ab";
/// A static pod's UID: the kubelet's hash of the manifest.
const STATIC_UID: &str = "d41d8cd98f00b204e9800998ecf8427e";
const PODMAN_POD: &str = "5b3c0f9a8e7d6c5b4a3928170615f4e3d2c1b0a99887766554433221100ffeed";

fn ctr(id: &str, runtime: Option<Runtime>) -> Option<Container> {
    Some(Container {
        id: id.into(),
        runtime,
        name: None,
        image: None,
    })
}

fn pod(uid: &str, qos: Qos) -> Option<K8sCgroup> {
    Some(K8sCgroup {
        pod_uid: uid.into(),
        qos,
    })
}

fn unit(name: &str) -> Option<String> {
    Some(name.into())
}

fn id(
    container: Option<Container>,
    k8s: Option<K8sCgroup>,
    systemd_unit: Option<String>,
) -> Identity {
    Identity {
        container,
        k8s,
        systemd_unit,
    }
}

use Qos::{BestEffort, Burstable, Guaranteed};
use Runtime::{Containerd, CriO, Docker, Podman};

/// Every path with the identity it must give.
fn table() -> Vec<(String, Identity)> {
    let burstable =
        format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
    let besteffort =
        format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice");
    let guaranteed = format!("/kubepods.slice/kubepods-pod{UID_}.slice");
    let kind_pod = format!(
        "/system.slice/docker-{A}.scope/kubelet.slice/kubelet-kubepods.slice/\
         kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice"
    );
    let user = "/user.slice/user-1000.slice/user@1000.service";
    let none = Identity::default();
    vec![
        // Docker.
        (format!("/docker/{A}"), id(ctr(A, Some(Docker)), None, None)),
        (format!("/system.slice/docker-{A}.scope"), id(ctr(A, Some(Docker)), None, None)),
        (format!("/system.slice/docker-{A}.scope/"), id(ctr(A, Some(Docker)), None, None)),
        (format!("/docker/{A}/docker/{B}"), id(ctr(B, Some(Docker)), None, None)),
        (
            format!("{user}/user.slice/docker-{A}.scope"),
            id(ctr(A, Some(Docker)), None, unit("user@1000.service")),
        ),
        (
            format!("/system.slice/docker-{A}.scope/system.slice/nginx.service"),
            id(ctr(A, Some(Docker)), None, unit("nginx.service")),
        ),
        (
            format!("/docker/{A}/init.scope"),
            id(ctr(A, Some(Docker)), None, unit("init.scope")),
        ),
        // Kubernetes with containerd, systemd driver, each QoS class.
        (
            format!("{burstable}/cri-containerd-{A}.scope"),
            id(ctr(A, Some(Containerd)), pod(UID, Burstable), None),
        ),
        (
            format!("{besteffort}/cri-containerd-{A}.scope"),
            id(ctr(A, Some(Containerd)), pod(UID, BestEffort), None),
        ),
        (
            format!("{guaranteed}/cri-containerd-{A}.scope"),
            id(ctr(A, Some(Containerd)), pod(UID, Guaranteed), None),
        ),
        (
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/cri-containerd-{A}.scope"
            ),
            id(ctr(A, Some(Containerd)), pod(STATIC_UID, Burstable), None),
        ),
        // The pod level itself.
        (burstable.clone(), id(None, pod(UID, Burstable), None)),
        (guaranteed.clone(), id(None, pod(UID, Guaranteed), None)),
        // Kubernetes, cgroupfs driver: containerd or dockershim, unknown.
        (
            format!("/kubepods/burstable/pod{UID}/{A}"),
            id(ctr(A, None), pod(UID, Burstable), None),
        ),
        (
            format!("/kubepods/besteffort/pod{UID}/{A}"),
            id(ctr(A, None), pod(UID, BestEffort), None),
        ),
        (format!("/kubepods/pod{UID}/{A}"), id(ctr(A, None), pod(UID, Guaranteed), None)),
        (format!("/kubepods/burstable/pod{UID}"), id(None, pod(UID, Burstable), None)),
        (format!("/kubepods/pod{UID}/"), id(None, pod(UID, Guaranteed), None)),
        // dockershim / cri-dockerd with the systemd driver.
        (
            format!("{burstable}/docker-{A}.scope"),
            id(ctr(A, Some(Docker)), pod(UID, Burstable), None),
        ),
        // CRI-O.
        (
            format!("{burstable}/crio-{A}.scope"),
            id(ctr(A, Some(CriO)), pod(UID, Burstable), None),
        ),
        (
            format!("{guaranteed}/crio-{A}.scope/container"),
            id(ctr(A, Some(CriO)), pod(UID, Guaranteed), None),
        ),
        (
            format!("{burstable}/crio-conmon-{A}.scope"),
            id(None, pod(UID, Burstable), unit(&format!("crio-conmon-{A}.scope"))),
        ),
        (
            format!("/kubepods/burstable/pod{UID}/crio-{A}"),
            id(ctr(A, Some(CriO)), pod(UID, Burstable), None),
        ),
        (
            format!("/kubepods/burstable/pod{UID}/crio-conmon-{A}"),
            id(None, pod(UID, Burstable), None),
        ),
        // Kubernetes in Docker (kind: kubelet --cgroup-root=/kubelet).
        (
            format!("{kind_pod}/cri-containerd-{B}.scope"),
            id(ctr(B, Some(Containerd)), pod(UID, BestEffort), None),
        ),
        (kind_pod.clone(), id(None, pod(UID, BestEffort), None)),
        // k3d: k3s's cgroupfs kubepods inside a Docker container.
        (
            format!("/docker/{A}/kubepods/burstable/pod{UID}/{B}"),
            id(ctr(B, None), pod(UID, Burstable), None),
        ),
        // Podman.
        (format!("/machine.slice/libpod-{A}.scope"), id(ctr(A, Some(Podman)), None, None)),
        (
            format!("/machine.slice/libpod-{A}.scope/container"),
            id(ctr(A, Some(Podman)), None, None),
        ),
        (
            format!("/machine.slice/libpod-conmon-{A}.scope"),
            id(None, None, unit(&format!("libpod-conmon-{A}.scope"))),
        ),
        (
            format!("/machine.slice/machine-libpod_pod_{PODMAN_POD}.slice/libpod-{A}.scope"),
            id(ctr(A, Some(Podman)), None, None),
        ),
        (
            format!("{user}/user.slice/libpod-{A}.scope"),
            id(ctr(A, Some(Podman)), None, unit("user@1000.service")),
        ),
        (
            format!("{user}/user.slice/libpod-{A}.scope/container"),
            id(ctr(A, Some(Podman)), None, unit("user@1000.service")),
        ),
        (format!("/libpod_parent/libpod-{A}"), id(ctr(A, Some(Podman)), None, None)),
        (
            format!("/libpod_parent/{PODMAN_POD}/libpod-{A}"),
            id(ctr(A, Some(Podman)), None, None),
        ),
        // Podman 1.0's cgroupfs layout: the container in `ctr`, conmon beside.
        (format!("/libpod_parent/libpod-{A}/ctr"), id(ctr(A, Some(Podman)), None, None)),
        (format!("/libpod_parent/libpod-{A}/conmon"), none.clone()),
        // nerdctl with the systemd driver.
        (
            format!("/system.slice/nerdctl-{A}.scope"),
            id(ctr(A, Some(Containerd)), None, None),
        ),
        // systemd services and sessions.
        (
            // A service, whatever its name: only a scope is a container.
            format!("/system.slice/docker-{A}.service"),
            id(None, None, unit(&format!("docker-{A}.service"))),
        ),
        ("/system.slice/nginx.service".into(), id(None, None, unit("nginx.service"))),
        (
            "/system.slice/containerd.service".into(),
            id(None, None, unit("containerd.service")),
        ),
        ("/init.scope".into(), id(None, None, unit("init.scope"))),
        (
            "/user.slice/user-1000.slice/session-3.scope".into(),
            id(None, None, unit("session-3.scope")),
        ),
        (format!("{user}/init.scope"), id(None, None, unit("init.scope"))),
        (user.to_string(), id(None, None, unit("user@1000.service"))),
        (
            format!("{user}/app.slice/app-foo.scope"),
            id(None, None, unit("app-foo.scope")),
        ),
        (
            format!(
                "{user}/app.slice/app-org.gnome.Terminal.slice/vte-spawn-3f2b8c1e-9d4a-4b7e-8c6f-2a1d0e9b8c7a.scope"
            ),
            id(None, None, unit("vte-spawn-3f2b8c1e-9d4a-4b7e-8c6f-2a1d0e9b8c7a.scope")),
        ),
        (
            "/system.slice/system-getty.slice/getty@tty1.service".into(),
            id(None, None, unit("getty@tty1.service")),
        ),
        (
            r"/system.slice/system-systemd\x2dfsck.slice/systemd-fsck@dev-disk-by\x2duuid-1c2d.service".into(),
            id(None, None, unit(r"systemd-fsck@dev-disk-by\x2duuid-1c2d.service")),
        ),
        // Unknown or hostile: nothing at all.
        (String::new(), none.clone()),
        ("/".into(), none.clone()),
        ("/my/own/group".into(), none.clone()),
        ("/docker/notahex".into(), none.clone()),
        (format!("/docker/{}", &A[..12]), none.clone()),
        (format!("/docker/{}", A.to_uppercase()), none.clone()),
        (format!("/docker/{A}0"), none.clone()),
        (format!("docker/{A}"), none.clone()),
        (format!("/docker/../{A}"), none.clone()),
        // 64 hex under a parent that does not say "container": containerd's
        // own `/<namespace>/<id>`, or anyone's directory.
        (format!("/default/{A}"), none.clone()),
        (format!("/system.slice/{A}"), none.clone()),
        (format!("/kubepods/burstable/{A}"), none.clone()),
        (format!("/kubepods/burstable/podnot-a-uid/{A}"), none.clone()),
        (format!("/kubepods/burstable/pod{UID_}/{A}"), none.clone()),
        (format!("/kubepods/guaranteed/pod{UID}/{A}"), none.clone()),
        (format!("/my/kubepods-burstable-pod{UID_}.slice/{A}"), none.clone()),
        (format!("/kubepods.slice/kubepods-pod{UID}.slice"), none.clone()),
        (format!("/system.slice/docker-{A}.scope.d"), none.clone()),
        ("/foo/bar.service".into(), none.clone()),
        ("/system.slice/my unit.service".into(), none.clone()),
    ]
}

#[test]
fn identify_real_world_paths() {
    let table = table();
    assert!(table.len() >= 30, "{} rows", table.len());
    let nulls = table
        .iter()
        .filter(|(_, want)| *want == Identity::default())
        .count();
    assert!(nulls >= 6, "{nulls} unknown rows");
    let mut failures = Vec::new();
    for (path, want) in &table {
        let got = identify(path);
        if got != *want {
            failures.push(format!("{path:?}\n  got:  {got:?}\n  want: {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
