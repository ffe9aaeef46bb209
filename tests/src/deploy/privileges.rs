//! The DaemonSet's privileges, proven: the image built from
//! deploy/Containerfile runs under Podman with exactly what
//! deploy/daemonset.yaml grants (read from it, so the two cannot drift),
//! and records every kill of a storm.
//!
//! Podman, not Docker: Docker 20.10 (Debian's) refuses `--cap-add BPF`
//! ("unknown capability"), so it cannot express the manifest's grant.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    process::Command,
    str::FromStr,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{Manifest, cri_log_records, deploy_file, scratch_dir};
use crate::{
    cgroup::MemCgroup,
    collector::Env,
    kmsg::{KilledProcess, Kmsg},
    runtimes::{
        Engine, Kind,
        engine::{PREFIX, fnv1a, run_command},
    },
    scenarios::{assert_matches_kernel, assert_sigkilled},
    storm::{Shape, Storm},
    workload::Workload,
};

/// The ulimits every container here needs (runc cannot raise them without
/// CAP_SYS_RESOURCE, which this machine lacks).
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// The storm: pipelines (`sh -c 'head | tail'`, the shape whose victim
/// nobody started) in 10 cgroups, 6 in a row each; 4 multi-threaded
/// allocators; one allocator in a Podman container.
const STORM_CGROUPS: usize = 10;
const STORM_KILLS_PER_CGROUP: usize = 6;
const THREADED_VICTIMS: usize = 4;
/// How long the collector may take to start inside its limits.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the storm's records may take once it is over: each waits up to
/// --exit-wait (5 s) for its victim's exit.
const RECORDS_TIMEOUT: Duration = Duration::from_secs(60);
const KILL_TIMEOUT: Duration = Duration::from_secs(30);

/// The image, built from deploy/Containerfile with the static collector
/// (a context directory holding only the binary); its name.
fn build_image(engine: &Engine) -> String {
    let binary = static_oomtrace();
    let bytes = std::fs::read(&binary).unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    let containerfile = deploy_file("Containerfile");
    let recipe = std::fs::read(&containerfile).expect("deploy/Containerfile");
    let tag = format!("{:08x}{:08x}", fnv1a(&bytes), fnv1a(&recipe));
    let image = format!("localhost/{PREFIX}oomtrace:{tag}");
    if engine.try_cli(&["image", "inspect", &image]).is_ok() {
        return image;
    }
    // Earlier builds (another collector) take room in target/ only.
    let images = engine
        .try_cli(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .unwrap_or_default();
    let repository = format!("localhost/{PREFIX}oomtrace:");
    for old in images.lines().filter(|i| i.starts_with(&repository)) {
        let _ = engine.try_cli(&["rmi", "--force", old]);
    }
    let context = scratch_dir().join("image");
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context).expect("image context");
    std::fs::copy(&binary, context.join("oomtrace")).expect("copy the collector");
    engine.cli_private_cache(&[
        "build",
        "--quiet",
        "--file",
        containerfile.to_str().expect("utf-8"),
        "--tag",
        &image,
        context.to_str().expect("utf-8"),
    ]);
    image
}

/// The static (musl) collector: beside the static workload
/// (OOMTRACE_STATIC_WORKLOAD), which `cargo xtask test` builds with it.
pub fn static_oomtrace() -> PathBuf {
    let path = crate::runtimes::image::static_workload().with_file_name("oomtrace");
    assert!(
        path.exists(),
        "{} does not exist: `cargo build --release --target x86_64-unknown-linux-musl -p \
         oomtrace` (cargo xtask test builds it)",
        path.display()
    );
    path
}

/// `podman run` options for what the manifest grants, one for one.
fn run_options(manifest: &Manifest) -> Vec<String> {
    let pod = manifest.pod();
    let security = manifest.security();
    let mut o: Vec<String> = vec!["--cap-drop".into(), "all".into()];
    for cap in manifest.capabilities() {
        o.extend(["--cap-add".into(), cap]);
    }
    assert_ne!(security["privileged"], true, "not privileged");
    if pod["hostPID"] == true {
        o.extend(["--pid".into(), "host".into()]);
    }
    if pod["hostNetwork"] == true {
        // A pod on the host network also has the host's UTS namespace.
        o.extend(["--network", "host", "--uts", "host"].map(String::from));
    }
    match manifest.seccomp().as_str() {
        "Unconfined" => o.extend(["--security-opt".into(), "seccomp=unconfined".into()]),
        // Podman's own default, as the kubelet's is the runtime's.
        "RuntimeDefault" => {}
        "Localhost" => {
            let profile = security["seccompProfile"]["localhostProfile"]
                .as_str()
                .expect("localhostProfile");
            let file = deploy_file(
                Path::new(profile)
                    .file_name()
                    .expect("a file")
                    .to_str()
                    .expect("utf-8"),
            );
            o.extend([
                "--security-opt".into(),
                format!("seccomp={}", file.display()),
            ]);
        }
        other => panic!("seccompProfile.type {other}"),
    }
    if security["allowPrivilegeEscalation"] == false {
        o.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    if security["readOnlyRootFilesystem"] == true {
        // No tmpfs on /tmp and /run either: Kubernetes mounts none.
        o.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    let user = security["runAsUser"].as_u64().expect("runAsUser");
    let group = security["runAsGroup"].as_u64().unwrap_or(user);
    o.extend(["--user".into(), format!("{user}:{group}")]);
    let memory = manifest.memory_limit().to_string();
    // No swap, as on a kubelet's node.
    o.extend([
        "--memory".into(),
        memory.clone(),
        "--memory-swap".into(),
        memory,
    ]);
    o.extend([
        "--cpus".into(),
        format!("{}", manifest.cpu_millis() as f64 / 1000.0),
    ]);
    for mount in manifest.host_mounts() {
        if !Path::new(&mount.host).exists() {
            // The kubelet would mount an empty directory: nothing to read
            // either way.
            eprintln!("deploy: {} does not exist here; not mounted", mount.host);
            continue;
        }
        let ro = if mount.read_only { ":ro" } else { "" };
        o.extend([
            "--volume".into(),
            format!("{}:{}{ro}", mount.host, mount.container),
        ]);
    }
    o
}

/// The manifest's arguments, less `--metrics-addr ADDR` when this
/// collector does not have that flag yet (it comes with the metrics
/// branch; the liveness probe then has nothing to ask).
fn collector_args(manifest: &Manifest, binary: &Path) -> (Vec<String>, bool) {
    let help =
        run_command(Command::new(binary).args(["run", "--help"])).unwrap_or_else(|e| panic!("{e}"));
    let metrics = help.contains("--metrics-addr");
    let mut args = manifest.args();
    if !metrics {
        let at = args
            .iter()
            .position(|a| a == "--metrics-addr")
            .expect("the manifest passes --metrics-addr for its liveness probe");
        eprintln!(
            "deploy: this collector has no --metrics-addr yet: run without `--metrics-addr {}` \
             (the liveness probe is not exercised)",
            args[at + 1]
        );
        args.drain(at..at + 2);
    }
    (args, metrics)
}

/// The records the container has written so far (its CRI-format log).
fn logged(log: &Path) -> Vec<Value> {
    cri_log_records(&std::fs::read_to_string(log).unwrap_or_default())
}

fn wait_for(log: &Path, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let records = logged(log);
        if done(&records) || Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A process's capability set (`CapEff`, `CapBnd`) from /proc/PID/status.
fn cap_set(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field}"));
    u64::from_str_radix(line.trim(), 16).expect("hex")
}

fn memcg_file(dir: &Path, name: &str) -> u64 {
    let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    text.trim().parse().unwrap_or(0)
}

/// The DaemonSet's image and privileges record a storm: built from
/// deploy/Containerfile (FROM scratch, the static collector), run by Podman
/// with exactly the manifest's capabilities (`--cap-drop all` and its
/// `add`s, checked in the running collector's CapEff), hostPID, host
/// network, seccomp profile, read-only root, no-new-privileges, host
/// mounts, CPU and memory limits and arguments; then 60 pipelines, 4
/// multi-threaded allocators and one allocator in another container are
/// OOM-killed. Every kill the kernel logged is in the container's stdout
/// exactly once, with the kernel's pid and figures; the collector is never
/// OOM-killed itself, stops cleanly on SIGTERM with nothing lost, and
/// `oomtrace report` reads the container's log back.
pub fn image_records_a_storm_with_the_manifest_privileges(env: &Env) {
    let manifest = Manifest::load();
    let mut engine = Engine::start(Kind::Podman);
    let image = build_image(&engine);
    let (mut args, metrics) = collector_args(&manifest, &static_oomtrace());
    let name = format!("{PREFIX}deploy-collector-{}", std::process::id());
    let mut run: Vec<String> = [
        "run",
        "--detach",
        "--name",
        &name,
        "--log-driver",
        "k8s-file",
    ]
    .map(String::from)
    .to_vec();
    run.extend(ULIMITS.map(String::from));
    run.extend(run_options(&manifest));
    // Test-only: the private Podman's state, where the node's would be
    // (`/host` + its path), so the victim container is named.
    let podman_root = engine.dirs.podman_root();
    let containers = podman_root.join("vfs-containers");
    run.extend([
        "--volume".into(),
        format!("{}:/host{}:ro", containers.display(), containers.display()),
    ]);
    args.extend(["--podman-root".into(), podman_root.display().to_string()]);
    run.push(image.clone());
    run.extend(args);
    let refs: Vec<&str> = run.iter().map(String::as_str).collect();
    engine.remove_on_drop(&name);
    let id = engine.cli(&refs).trim().to_string();
    let state = engine.inspect(&name);
    let pid = state["State"]["Pid"].as_u64().expect("State.Pid") as u32;
    let log = PathBuf::from(
        state["HostConfig"]["LogConfig"]["Path"]
            .as_str()
            .unwrap_or_else(|| panic!("no log path: {state}")),
    );
    let records = wait_for(&log, START_TIMEOUT, |r| {
        r.iter().any(|r| r["type"] == "start")
    });
    let start = records
        .iter()
        .find(|r| r["type"] == "start")
        .unwrap_or_else(|| {
            panic!(
                "no start record within {START_TIMEOUT:?}: the collector needs more than the \
                 manifest grants? state {}\nstdout: {records:?}\nlogs: {}",
                engine.inspect(&name)["State"],
                engine.try_cli(&["logs", &name]).unwrap_or_default()
            )
        })
        .clone();
    eprintln!("deploy: start record: {start}");

    // Exactly the manifest's capabilities, effective and bounding.
    let granted: u64 = manifest
        .capabilities()
        .iter()
        .map(|c| {
            caps::Capability::from_str(c)
                .expect("a capability")
                .bitmask()
        })
        .fold(0, |a, b| a | b);
    assert_eq!(cap_set(pid, "CapEff"), granted, "CapEff of the collector");
    assert_eq!(cap_set(pid, "CapBnd"), granted, "CapBnd of the collector");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert_eq!(
        start["host"]["hostname"],
        hostname.trim(),
        "the node's name"
    );
    let probe = |name: &str| {
        start["probes"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == name))
            .map(|p| p["mode"].clone())
    };
    assert!(
        probe("mark_victim").is_some_and(|m| !m.is_null()),
        "mark_victim attached: {start}"
    );
    let probe_port = manifest.container()["livenessProbe"]["httpGet"]["port"].clone();
    let liveness = |when: &str| {
        if !metrics {
            return;
        }
        // The kubelet's probe, from the node: the pod is on its network.
        let health = run_command(Command::new("curl").args([
            "--silent",
            "--fail",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{probe_port}/healthz"),
        ]));
        assert!(
            health.is_ok(),
            "the liveness probe's /healthz {when}: {health:?}"
        );
    };
    liveness("after the start");

    // The storm: threaded allocators and a container first, then the
    // pipelines, all while the collector runs in its limits. The first
    // ones' `Killed process` lines are read before the pipelines start:
    // the pipelines' OOM reports overrun the kernel's 128 KiB log ring
    // (see `Kmsg::overruns`), and a line overwritten unread is lost to the
    // test, not to the collector.
    let mut kmsg = Kmsg::open();
    let threaded: Vec<(MemCgroup, Workload)> = (0..THREADED_VICTIMS)
        .map(|i| {
            let cg = MemCgroup::create(&format!("deploy-threads{i}"), Some(24 << 20));
            let victim =
                Workload::spawn(env, "alloc", &["--cgroup", cg.dir_str(), "--threads", "4"]);
            (cg, victim)
        })
        .collect();
    let victim = engine.run("deploy-victim", &[], &["/oomtrace-workload", "alloc"]);
    victim.release();
    let mut expected: HashMap<u32, KilledProcess> = HashMap::new();
    let mut cgroups: HashSet<String> = HashSet::new();
    let mut kernel_kills = 0;
    for (cg, mut w) in threaded {
        assert_sigkilled(w.wait(), "the threaded allocator");
        expected.insert(w.pid(), kmsg.killed(w.pid(), KILL_TIMEOUT));
        cgroups.insert(cg.path.clone());
        kernel_kills += cg.oom_kills();
    }
    assert_eq!(engine.wait(&victim), 137, "the container's allocator");
    expected.insert(victim.pid, kmsg.killed(victim.pid, KILL_TIMEOUT));
    cgroups.insert(engine.cgroup_path(&victim.id));
    kernel_kills += 1;
    let storm = Storm::create(STORM_CGROUPS, Shape::Pipeline.limit());
    let ran = storm.run(env, Shape::Pipeline, STORM_KILLS_PER_CGROUP);
    kernel_kills += storm.kernel_kills();
    assert!(
        ran.processes.iter().all(|p| p.oom_killed()),
        "every pipeline ended by an OOM kill"
    );
    assert_eq!(
        ran.kernel_lines.len() as u64,
        storm.kernel_kills(),
        "the kernel's lines about the pipelines against its counters (log overruns: {})",
        ran.kmsg_overruns
    );
    for line in &ran.kernel_lines {
        expected.insert(line.pid, line.clone());
    }
    cgroups.extend(storm.cgroups().iter().map(|c| c.path.clone()));
    assert_eq!(expected.len() as u64, kernel_kills, "one victim per kill");

    let ours = |r: &&Value| {
        r["type"] == "oom_kill"
            && r["victim"]["cgroup"]["path"]
                .as_str()
                .is_some_and(|p| cgroups.contains(p))
    };
    let records = wait_for(&log, RECORDS_TIMEOUT, |r| {
        r.iter().filter(ours).count() as u64 >= kernel_kills
    });
    let kills: Vec<&Value> = records.iter().filter(ours).collect();
    let mut written = HashSet::new();
    for record in &kills {
        let pid = record["victim"]["pid"].as_u64().expect("victim.pid") as u32;
        assert!(written.insert(pid), "written twice: {record}");
        let kernel = expected
            .get(&pid)
            .unwrap_or_else(|| panic!("not a victim the kernel logged: {record}"));
        assert_matches_kernel(record, kernel);
    }
    let missing: Vec<&u32> = expected.keys().filter(|p| !written.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "{} of the kernel's {kernel_kills} kills not in the container's stdout within \
         {RECORDS_TIMEOUT:?}: pids {missing:?}",
        missing.len()
    );
    let in_container = kills
        .iter()
        .find(|r| r["victim"]["pid"] == victim.pid)
        .expect("the container's kill");
    assert_eq!(
        in_container["container"]["id"],
        victim.id.as_str(),
        "{in_container}"
    );
    assert_eq!(
        in_container["container"]["name"],
        victim.name.as_str(),
        "{in_container}"
    );

    liveness("after the storm");

    // What the collector took, in its own memory cgroup of the manifest's
    // limit: never OOM-killed itself.
    let (_, mount) = crate::cgroup::memory_mount();
    let memcg = mount.join(engine.cgroup_path(&id).trim_start_matches('/'));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?");
    eprintln!(
        "deploy: {} kills recorded; the collector's memcg peak {:.1} MiB (limit {:.0} MiB, \
         failcnt {}), its {}",
        kills.len(),
        memcg_file(&memcg, "memory.max_usage_in_bytes") as f64 / f64::from(1 << 20),
        manifest.memory_limit() as f64 / f64::from(1 << 20),
        memcg_file(&memcg, "memory.failcnt"),
        hwm.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    let oom_control = std::fs::read_to_string(memcg.join("memory.oom_control")).unwrap_or_default();
    assert!(
        oom_control.contains("oom_kill 0"),
        "the collector's own memcg: {oom_control}"
    );

    // SIGTERM, as the kubelet stops it: `stop`, nothing lost.
    let grace = manifest.pod()["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30)
        .to_string();
    engine.cli(&["stop", "--time", &grace, &name]);
    let records = logged(&log);
    let stop = records
        .iter()
        .find(|r| r["type"] == "stop")
        .unwrap_or_else(|| panic!("no stop record: {:?}", records.last()));
    assert_eq!(stop["reason"], "SIGTERM", "{stop}");
    assert_eq!(stop["counters"]["lost_kills"], 0, "{stop}");
    assert!(
        records.iter().all(|r| r["type"] != "lost"),
        "no lost records"
    );
    let exit = engine.inspect(&name)["State"]["ExitCode"].clone();
    assert_eq!(exit, 0, "the collector's exit status");

    // The container's log, as a pipeline would ship it, read back.
    let report = run_command(
        Command::new(&env.oomtrace)
            .args(["report", "--json"])
            .arg(&log),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let report: Value = serde_json::from_str(&report).expect("report --json");
    let written_kills = records.iter().filter(|r| r["type"] == "oom_kill").count();
    assert_eq!(report["input"]["malformed"], 0, "{}", report["input"]);
    assert_eq!(
        report["input"]["by_type"]["oom_kill"], written_kills,
        "report reads every kill of the CRI log: {}",
        report["input"]
    );

    default_seccomp_is_named(&mut engine, &manifest, &image);
}

/// The manifest's `seccompProfile: Unconfined` is needed, and a collector
/// run without it (Podman's default profile, as the kubelet's
/// `RuntimeDefault` is the runtime's) refuses to start and says that the
/// filter is why and how to lift it, rather than a bare EPERM.
fn default_seccomp_is_named(engine: &mut Engine, manifest: &Manifest, image: &str) {
    let mut options = run_options(manifest);
    // A manifest with a profile of its own is proven by the run above.
    let Some(at) = options.iter().position(|o| o == "seccomp=unconfined") else {
        return;
    };
    options.drain(at - 1..=at);
    let name = format!("{PREFIX}deploy-default-profile-{}", std::process::id());
    engine.remove_on_drop(&name);
    let mut run: Vec<String> = ["run", "--rm", "--name", &name].map(String::from).to_vec();
    run.extend(ULIMITS.map(String::from));
    run.extend(options);
    run.extend([image.to_string(), "--no-kernel-log".into()]);
    let refs: Vec<&str> = run.iter().map(String::as_str).collect();
    let refused = engine
        .try_cli(&refs)
        .expect_err("the collector started under the runtime's default seccomp profile");
    let stderr = refused.split_once("stderr:").map_or("", |(_, e)| e);
    assert!(
        stderr.contains("A seccomp filter is on this process") && stderr.contains("Unconfined"),
        "the refusal names the seccomp filter and the fix: {refused}"
    );
    let said = stderr.lines().find(|l| l.contains("seccomp filter"));
    eprintln!(
        "deploy: under the default seccomp profile: {}",
        said.unwrap_or_default()
    );
}
