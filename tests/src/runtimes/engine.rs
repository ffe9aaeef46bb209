//! A real container engine for the tests: Docker (a private dockerd, with
//! the containerd it starts) or Podman, all of its state private to this
//! checkout. Bulky data (data roots, the image, logs) lives under
//! `<workspace>/target/oomtrace-runtimes/`; what must have a short path
//! (sockets, Podman's runroot, exec roots) under
//! `/run/oomtrace-test-<hash of the workspace path>/`.
//!
//! Every start first sweeps what an interrupted earlier run left (see
//! [`Engine::start`]); dropping an engine, on success or panic, removes our
//! containers, stops the daemon and removes the containers' cgroups.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::sweep;

/// Which engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Docker,
    Podman,
}

impl Kind {
    /// As `container.runtime` names it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Docker => "docker",
            Kind::Podman => "podman",
        }
    }
}

/// Always by full path: another `docker` client may come first on PATH.
const DOCKER: &str = "/usr/bin/docker";
/// Debian's docker.io puts it in /usr/sbin.
const DOCKERD: [&str; 2] = ["/usr/sbin/dockerd", "/usr/bin/dockerd"];
const PODMAN: &str = "/usr/bin/podman";
pub const CTR: &str = "/usr/bin/ctr";
/// Prefix of every container, image and cgroup the tests create.
pub const PREFIX: &str = "oomtrace-test-";

/// This checkout's private directories.
#[derive(Clone, Debug)]
pub struct Dirs {
    /// `<workspace>/target/oomtrace-runtimes`.
    pub data: PathBuf,
    /// `/run/oomtrace-test-<8 hex>`: short, for sockets and runroots.
    pub run: PathBuf,
}

impl Dirs {
    pub fn new() -> Self {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .canonicalize()
            .expect("workspace dir");
        let data = workspace.join("target/oomtrace-runtimes");
        let run = PathBuf::from(format!(
            "/run/{PREFIX}{:08x}",
            fnv1a(workspace.as_os_str().as_encoded_bytes())
        ));
        for dir in [&data, &run] {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        }
        Self { data, run }
    }

    pub fn docker_root(&self) -> PathBuf {
        self.data.join("docker")
    }
    pub fn docker_exec_root(&self) -> PathBuf {
        self.run.join("docker")
    }
    fn docker_socket(&self) -> PathBuf {
        self.run.join("docker.sock")
    }
    fn docker_pidfile(&self) -> PathBuf {
        self.run.join("docker.pid")
    }
    /// The socket of the containerd that our dockerd starts.
    pub fn containerd_socket(&self) -> PathBuf {
        self.docker_exec_root().join("containerd/containerd.sock")
    }
    /// That containerd's state dir (holding `io.containerd.runtime.v2.task/`).
    pub fn containerd_state(&self) -> PathBuf {
        self.docker_exec_root().join("containerd/daemon")
    }
    pub fn podman_root(&self) -> PathBuf {
        self.data.join("podman")
    }
    fn podman_runroot(&self) -> PathBuf {
        self.run.join("podman")
    }
    fn podman_tmpdir(&self) -> PathBuf {
        self.run.join("podman-tmp")
    }
    /// Kubelet-shaped cgroups of the containerd tests, one file each, so a
    /// later start finds them again.
    pub fn cgroup_notes(&self) -> PathBuf {
        self.data.join("cgroups")
    }

    /// Removes `kind`'s part of the short directory under /run once its
    /// daemon and containers are gone, and the directory itself when that
    /// leaves it empty: nothing of ours stays in /run after a test. (The
    /// data under target/ stays: a later start sweeps by it.)
    fn remove_run_state(&self, kind: Kind) {
        let parts = match kind {
            Kind::Docker => vec![
                self.docker_exec_root(),
                self.docker_socket(),
                self.docker_pidfile(),
            ],
            Kind::Podman => vec![self.podman_runroot(), self.podman_tmpdir()],
        };
        for part in parts {
            let removed = if part.is_dir() {
                std::fs::remove_dir_all(&part)
            } else {
                std::fs::remove_file(&part)
            };
            if let Err(e) = removed
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("runtimes: could not remove {}: {e}", part.display());
            }
        }
        let _ = std::fs::remove_dir(&self.run);
    }

    /// The directories whose paths a runtime's processes name.
    fn of(&self, kind: Kind) -> Vec<PathBuf> {
        match kind {
            Kind::Docker => vec![self.docker_root(), self.docker_exec_root()],
            Kind::Podman => vec![
                self.podman_root(),
                self.podman_runroot(),
                self.podman_tmpdir(),
            ],
        }
    }
}

impl Default for Dirs {
    fn default() -> Self {
        Self::new()
    }
}

/// FNV-1a, 32 bits.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// A container we started: its name, full id and PID 1's host pid.
#[derive(Clone, Debug)]
pub struct Container {
    pub name: String,
    pub id: String,
    pub pid: u32,
    /// Bind-mounted at `/gate`: the entrypoint waits for `go` in it.
    pub gate: PathBuf,
}

impl Container {
    /// Lets the gated entrypoint exec its workload.
    pub fn release(&self) {
        std::fs::write(self.gate.join("go"), "").expect("open the gate");
    }
}

pub struct Engine {
    pub kind: Kind,
    pub dirs: Dirs,
    dockerd: Option<Child>,
    /// `oomtrace-test-image:<tag>` as given to import.
    pub image: String,
    /// The unpacked image, for `ctr run --rootfs`.
    pub rootfs: PathBuf,
    /// Names of the containers this engine started.
    created: Vec<String>,
    /// Their ids: their cgroups go on drop (Podman leaves v1 ones).
    ids: Vec<String>,
}

impl Engine {
    /// Sweeps what an interrupted run left, starts the engine (a private
    /// dockerd for Docker) and imports the test image.
    pub fn start(kind: Kind) -> Self {
        let dirs = Dirs::new();
        let (tarball, rootfs, tag) = super::image::build(&dirs.data);
        let image = match kind {
            Kind::Docker => format!("{PREFIX}image:{tag}"),
            // The full name: a short one would be resolved through the
            // system's short-name alias cache.
            Kind::Podman => format!("localhost/{PREFIX}image:{tag}"),
        };
        let mut engine = Self {
            kind,
            dirs,
            dockerd: None,
            image,
            rootfs,
            created: Vec::new(),
            ids: Vec::new(),
        };
        engine.sweep_processes();
        if kind == Kind::Podman {
            for dir in [
                engine.dirs.podman_tmpdir(),
                engine.dirs.data.join("podman-networks"),
            ] {
                std::fs::create_dir_all(&dir).expect("podman dir");
            }
        }
        if kind == Kind::Docker {
            engine.start_dockerd();
        }
        engine.sweep_containers();
        if engine
            .try_cli(&["image", "inspect", &engine.image])
            .is_err()
        {
            engine.import(&tarball);
        }
        engine
    }

    /// Imports the image (see [`Engine::cli_private_cache`]).
    fn import(&self, tarball: &Path) {
        let tar = tarball.to_str().expect("utf-8");
        self.cli_private_cache(&["import", tar, &self.image]);
    }

    /// Runs the CLI with `args` (an image import or build) and returns its
    /// stdout. Podman's image copy keeps a blob cache in
    /// `/var/lib/containers/cache` whatever its `--root`: it runs in a
    /// private mount namespace with a tmpfs there (or on `/var/lib`), so
    /// the system's stays untouched. Docker needs no such care.
    pub fn cli_private_cache(&self, args: &[&str]) -> String {
        if self.kind == Kind::Docker {
            return self.cli(args);
        }
        let podman = self.command();
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "if [ -d /var/lib/containers ]; then m=/var/lib/containers; else m=/var/lib; fi; \
                 mount -t tmpfs oomtrace-test \"$m\" && exec \"$@\"",
            )
            .arg("sh")
            .arg(podman.get_program())
            .args(podman.get_args())
            .args(args);
        for (k, v) in podman.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        run_command(&mut c).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Ends the processes an earlier run left (dockerd, containerd, shims,
    /// conmons: whatever names our private dirs) and the processes of the
    /// containers in our state, whose runtimes would wait for them.
    fn sweep_processes(&self) {
        for id in self.state_ids() {
            sweep::kill_container_processes(&id);
        }
        let paths = self.dirs.of(self.kind);
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        sweep::terminate_naming(&refs, Duration::from_secs(20));
        sweep::unmount_under(&refs);
        if self.kind == Kind::Docker {
            // A stale pidfile makes dockerd refuse to start.
            let _ = std::fs::remove_file(self.dirs.docker_pidfile());
        }
    }

    /// Removes the containers named `oomtrace-test-*` in our state, and
    /// every cgroup of a container id in it.
    fn sweep_containers(&self) {
        let ids = self.state_ids();
        let names = self
            .try_cli(&["ps", "-a", "--format", "{{.Names}}"])
            .unwrap_or_default();
        for name in names.lines().map(str::trim) {
            let name = name.trim_start_matches('/');
            if name.starts_with(PREFIX) {
                eprintln!("runtimes: removing leftover container {name}");
                let _ = self.try_cli(&["rm", "-f", name]);
            }
        }
        for id in ids.iter().chain(&self.state_ids()) {
            sweep::remove_container_cgroups(id);
        }
        if self.kind == Kind::Docker {
            super::containerd::sweep(self);
        }
    }

    fn start_dockerd(&mut self) {
        let log = self.dirs.data.join("dockerd.log");
        let config = self.dirs.data.join("dockerd/daemon.json");
        std::fs::create_dir_all(self.dirs.data.join("dockerd")).expect("dockerd dir");
        let key = self.dirs.data.join("dockerd/key.json");
        let settings = serde_json::json!({ "deprecated-key-path": key });
        std::fs::write(&config, format!("{settings}\n")).expect("daemon.json");
        let d = &self.dirs;
        let host = format!("unix://{}", d.docker_socket().display());
        let dockerd = DOCKERD
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("no dockerd at {DOCKERD:?}: `cargo xtask setup` installs it")
            });
        let child = Command::new(dockerd)
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--storage-driver=vfs",
                "--default-ulimit",
                "nofile=1024:1024",
                "--default-ulimit",
                "nproc=1024:1024",
            ])
            // Not the system's daemon.json, nor its /etc/docker/key.json:
            // the key goes where this file says.
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(d.docker_root())
            .arg("--exec-root")
            .arg(d.docker_exec_root())
            .arg("--pidfile")
            .arg(d.docker_pidfile())
            .args(["-H", &host])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("dockerd.log"))
            .stderr(
                std::fs::File::options()
                    .append(true)
                    .open(&log)
                    .expect("log"),
            )
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {dockerd}: {e}"));
        self.dockerd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.try_cli(&["version"]).is_ok() {
                return;
            }
            if let Some(status) = self
                .dockerd
                .as_mut()
                .and_then(|c| c.try_wait().ok())
                .flatten()
            {
                panic!(
                    "dockerd exited ({status}) at start; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "dockerd not up within 60 s; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The engine's CLI with our private state: `docker -H SOCK` or
    /// `podman --root ... --runroot ...`.
    pub fn command(&self) -> Command {
        let d = &self.dirs;
        match self.kind {
            Kind::Docker => {
                let mut c = Command::new(DOCKER);
                c.arg("-H")
                    .arg(format!("unix://{}", d.docker_socket().display()));
                c
            }
            Kind::Podman => {
                let mut c = Command::new(PODMAN);
                c.arg("--root")
                    .arg(d.podman_root())
                    .arg("--runroot")
                    .arg(d.podman_runroot())
                    .arg("--tmpdir")
                    .arg(d.podman_tmpdir())
                    .arg("--network-config-dir")
                    .arg(d.data.join("podman-networks"))
                    // Image copies stage here, not in /var/tmp.
                    .env("TMPDIR", d.podman_tmpdir())
                    .args([
                        "--cgroup-manager",
                        "cgroupfs",
                        "--storage-driver",
                        "vfs",
                        "--events-backend",
                        "file",
                        "--runtime",
                        "runc",
                    ]);
                c
            }
        }
    }

    /// Runs the CLI with `args`; its stdout, or the command and its stderr.
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        run_command(self.command().args(args))
    }

    /// Runs the CLI with `args` and returns its stdout; panics with the
    /// command and its stderr if it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `inspect NAME`: the one object of its answer.
    pub fn inspect(&self, name: &str) -> Value {
        let text = self.cli(&["inspect", "--type", "container", name]);
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("inspect {name}: not JSON ({e}): {text}"));
        value[0].clone()
    }

    /// Starts a container named `oomtrace-test-<what>-<pid>` with a 32 MiB
    /// limit (no swap) running `/bin/oomtrace-gated CMD...`, detached: PID 1
    /// waits for [`Container::release`] before it execs CMD.
    pub fn run(&mut self, what: &str, options: &[&str], cmd: &[&str]) -> Container {
        let name = format!("{PREFIX}{what}-{}", std::process::id());
        let gate = self.dirs.data.join("gates").join(&name);
        let _ = std::fs::remove_dir_all(&gate);
        std::fs::create_dir_all(&gate).expect("gate dir");
        let volume = format!("{}:/gate", gate.display());
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--memory",
            "32m",
            "--memory-swap",
            "32m",
            "-v",
            &volume,
        ];
        if self.kind == Kind::Podman {
            args.extend([
                "--network",
                "none",
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ]);
        }
        args.extend_from_slice(options);
        args.push(&self.image);
        args.push("/bin/oomtrace-gated");
        args.extend_from_slice(cmd);
        self.created.push(name.clone());
        let id = self.cli(&args).trim().to_string();
        self.ids.push(id.clone());
        let state = self.inspect(&name);
        assert_eq!(state["Id"], id.as_str(), "{state}");
        let pid = state["State"]["Pid"].as_u64().expect("State.Pid") as u32;
        assert!(pid > 0, "not running: {state}");
        Container {
            name,
            id,
            pid,
            gate,
        }
    }

    /// Has dropping this engine remove container `name` as well: one
    /// started with [`Engine::cli`] rather than [`Engine::run`].
    pub fn remove_on_drop(&mut self, name: &str) {
        self.created.push(name.to_string());
    }

    /// Waits for the container to exit; its exit code.
    pub fn wait(&self, c: &Container) -> i64 {
        let out = self.cli(&["wait", &c.name]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("wait {}: {out:?}", c.name))
    }

    /// The container's memory cgroup path, as /proc/PID/cgroup shows it.
    pub fn cgroup_path(&self, id: &str) -> String {
        match self.kind {
            Kind::Docker => format!("/docker/{id}"),
            Kind::Podman => format!("/libpod_parent/libpod-{id}"),
        }
    }

    /// The image name as the runtime records it for the container.
    pub fn image_of(&self, state: &Value) -> String {
        let v = match self.kind {
            Kind::Docker => &state["Config"]["Image"],
            Kind::Podman => &state["ImageName"],
        };
        v.as_str().expect("image name").to_string()
    }

    /// The ids of the containers in our private state.
    pub fn state_ids(&self) -> Vec<String> {
        match self.kind {
            Kind::Docker => sweep::ids_in(&self.dirs.docker_root().join("containers")),
            Kind::Podman => sweep::ids_in(&self.dirs.podman_root().join("vfs-containers")),
        }
    }

    /// dockerd's pid (Docker only).
    pub fn dockerd_pid(&self) -> Option<u32> {
        self.dockerd.as_ref().map(Child::id)
    }

    /// Forgets this engine without any cleanup, as an interrupted run
    /// would: daemon and containers stay up for the next start to sweep.
    pub fn abandon(self) {
        std::mem::forget(self);
    }
}

/// Runs `command`; its stdout, or a message with the command and stderr.
pub fn run_command(command: &mut Command) -> Result<String, String> {
    let shown = format!("{command:?}");
    match command.stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(format!(
            "`{shown}` failed ({}):\nstderr: {}\nstdout: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )),
        Err(e) => Err(format!("`{shown}` could not run: {e}")),
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let mut ids = std::mem::take(&mut self.ids);
        ids.extend(self.state_ids());
        for name in std::mem::take(&mut self.created) {
            let _ = match self.kind {
                Kind::Docker => self.try_cli(&["rm", "-f", &name]),
                Kind::Podman => self.try_cli(&["rm", "-f", "-t", "0", &name]),
            };
            let _ = std::fs::remove_dir_all(self.dirs.data.join("gates").join(&name));
        }
        if self.kind == Kind::Docker {
            super::containerd::sweep(self);
        }
        if let Some(mut dockerd) = self.dockerd.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(dockerd.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while dockerd.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    eprintln!("runtimes: dockerd ignored SIGTERM for 30 s: SIGKILL");
                    let _ = dockerd.kill();
                    let _ = dockerd.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.sweep_processes();
        ids.extend(self.state_ids());
        for id in ids {
            sweep::remove_container_cgroups(&id);
        }
        self.dirs.remove_run_state(self.kind);
    }
}
