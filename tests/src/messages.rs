//! What the collector tells its operator, checked against the real binary:
//! errors that name the real cause once and say what to do, `check`'s
//! promises held against real records, and `check` leaving the mounts as it
//! found them. The unprivileged cases run in namespaces of their own
//! (`unshare`), so nothing here changes the machine.

use std::{
    os::unix::fs::PermissionsExt as _,
    process::{Command, Output},
    time::Duration,
};

use serde_json::Value;

use crate::{
    cgroup::MemCgroup,
    collector::{Collector, Env},
    scenarios::{LIMIT, Workload, assert_sigkilled},
};

const KILL_TIMEOUT: Duration = Duration::from_secs(30);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn oomtrace_str(env: &Env) -> &str {
    env.oomtrace.to_str().expect("utf-8 path")
}

/// `sh -c SCRIPT` in a private mount namespace: its mounts and unmounts
/// are its own. `$OOMTRACE` is the collector under test.
fn in_mount_namespace(env: &Env, script: &str) -> Output {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("OOMTRACE", &env.oomtrace)
        .output()
        .expect("run unshare (util-linux)")
}

/// Inside a user namespace (`unshare -U -r`: uid 0 and every capability,
/// inside it only), bpf(2) refuses every map. `run` and `check` say that
/// the namespace is the cause and what to do, instead of blaming the
/// machine and naming whichever map aya created first.
pub fn user_namespace_is_named(env: &Env) {
    for command in ["run", "check"] {
        let output = Command::new("unshare")
            .args(["--user", "--map-root-user", oomtrace_str(env), command])
            .output()
            .expect("run unshare (util-linux)");
        let said = format!("{}{}", text(&output.stdout), text(&output.stderr));
        assert_eq!(output.status.code(), Some(1), "{command}: {said}");
        assert_eq!(
            said.matches("user namespace other than the host's").count(),
            1,
            "{command} names the cause, once: {said}"
        );
        assert!(
            said.contains("Run oomtrace on the host"),
            "{command} says what to do: {said}"
        );
        assert!(
            !said.contains("failed to create map") && !said.contains("this machine"),
            "{command} blames no map and no machine: {said}"
        );
        assert!(!said.contains("panicked"), "{said}");
    }
}

/// The kernel's BTF hidden (a private bind mount of an unreadable file
/// over it) from a process without CAP_SYS_ADMIN or CAP_DAC_OVERRIDE, and
/// tracefs not mounted (so the classic fallback cannot mount it either):
/// `run` gives the real cause (permission denied on the BTF file) and what
/// to do, and `check`'s header does not list a BTF file it could not read.
pub fn hidden_btf_is_named(env: &Env) {
    let hidden = std::env::temp_dir().join(format!("oomtrace-hidden-btf-{}", std::process::id()));
    std::fs::write(&hidden, b"").expect("write");
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let drop_caps = "setpriv --inh-caps=-all \
                     --bounding-set=-sys_admin,-dac_override,-dac_read_search --";
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; \
         mount --bind {hidden} /sys/kernel/btf/vmlinux || exit 99; \
         {drop_caps} \"$OOMTRACE\" run; echo \"run-status $?\"; \
         {drop_caps} \"$OOMTRACE\" check 2>&1; echo \"check-status $?\"",
        hidden = hidden.display()
    );
    let output = in_mount_namespace(env, &script);
    let _ = std::fs::remove_file(&hidden);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_ne!(output.status.code(), Some(99), "bind mount: {stderr}");
    assert!(stdout.contains("run-status 1"), "{stdout}\n{stderr}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("oomtrace: error:"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    for needed in [
        "/sys/kernel/btf/vmlinux",
        "Permission denied",
        "--btf PATH",
        "--no-btf",
    ] {
        assert!(
            error.contains(needed),
            "run's error lacks {needed:?}: {error}"
        );
    }
    assert_eq!(
        error.matches("Permission denied").count(),
        1,
        "the cause once: {error}"
    );
    let header = stdout
        .lines()
        .find(|l| l.starts_with("BTF "))
        .unwrap_or_else(|| panic!("no BTF line in check's header: {stdout}"));
    assert!(
        header.contains("none usable") && header.contains("Permission denied"),
        "{header}"
    );
    assert!(stdout.contains("check-status 1"), "{stdout}");
}

/// A file that is not BTF: the error names it, with its cause printed
/// once (not `X: X`), and says what to do.
pub fn bad_btf_cause_once(env: &Env) {
    let output = Command::new(&env.oomtrace)
        .args(["run", "--btf", "/etc/passwd"])
        .output()
        .expect("run");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty());
    let error = stderr
        .lines()
        .find(|l| l.starts_with("oomtrace: error:"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        error.contains("/etc/passwd") && error.contains("--no-btf"),
        "{error}"
    );
    // btf-rs's words for a file that is not BTF.
    let cause = "Invalid BTF magic";
    assert_eq!(error.matches(cause).count(), 1, "the cause once: {error}");
}

/// Bad places to write to or read from, each refused at once with a message
/// that names the argument and its cause, once: a `--host-root` that does not
/// exist or is a file, a `-o` FIFO that nobody reads (which used to block
/// forever before attaching), a `-o` that cannot take a line
/// (/proc/version: EIO at the first write, after which nothing would ever
/// be written), a negative duration.
pub fn bad_places_are_clear_errors(env: &Env) {
    let fifo = std::env::temp_dir().join(format!("oomtrace-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let status = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(status.success());
    let fifo_arg = fifo.to_str().expect("utf-8");
    let cases: &[(&[&str], &[&str], &str)] = &[
        (
            &["--host-root", "/nonexistent"],
            &["--host-root", "/nonexistent"],
            "No such file",
        ),
        (
            &["--host-root", "/etc/passwd"],
            &["--host-root", "not a directory"],
            "not a directory",
        ),
        (
            &["-o", fifo_arg],
            &["FIFO with no reader", "start its reader first"],
            "FIFO",
        ),
        (
            &["-o", "/proc/version"],
            &["/proc/version", "cannot take records"],
            "Input/output error",
        ),
        (
            &["--exit-wait", "-5s"],
            &["--exit-wait", "cannot be negative"],
            "negative",
        ),
    ];
    for (args, says, cause) in cases {
        let mut child = Command::new(&env.oomtrace)
            .arg("run")
            .args(*args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run");
        // None of these may hang: bounded wait, then a failure that says so.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = std::fs::remove_file(&fifo);
                panic!("`oomtrace run {args:?}` did not end");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
            .expect("stderr");
        assert!(!status.success(), "{args:?} accepted: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        for said in *says {
            assert!(stderr.contains(said), "{args:?}: `{said}` not in: {stderr}");
        }
        assert!(stderr.contains(cause), "{args:?}: {stderr}");
        let error = stderr
            .lines()
            .filter(|l| l.contains("error"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            error.matches(cause).count(),
            1,
            "{args:?}: the cause once: {error}"
        );
    }
    let _ = std::fs::remove_file(&fifo);
}

/// `check` mounts tracefs only when a classic tracepoint needs it, and
/// unmounts what it mounted; a tracefs it found mounted stays mounted.
pub fn check_leaves_mounts_as_found(env: &Env) {
    let script = "umount /sys/kernel/tracing 2>/dev/null; \
                  umount /sys/kernel/debug/tracing 2>/dev/null; \
                  echo \"before $(grep -c ' tracefs ' /proc/self/mounts)\"; \
                  \"$OOMTRACE\" check --victim-probe tracepoint; echo \"status $?\"; \
                  echo \"after $(grep -c ' tracefs ' /proc/self/mounts)\"; \
                  mount -t tracefs nodev /sys/kernel/tracing; \
                  \"$OOMTRACE\" check --victim-probe tracepoint >/dev/null; \
                  echo \"kept $(grep -c ' tracefs ' /proc/self/mounts)\"";
    let output = in_mount_namespace(env, script);
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    for line in ["before 0", "status 0", "after 0", "kept 1"] {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line:?} missing:\n{stdout}\n{stderr}"
        );
    }
    assert!(
        stdout.contains("mounted tracefs at /sys/kernel/tracing")
            && stdout.contains("unmounted it again"),
        "check says what it did: {stdout}"
    );
}

/// `check --json` is the `start` record `run` writes, `type` included: it
/// validates against `oomtrace schema` and reads back as a start record.
pub fn check_json_is_a_start_record(env: &Env) {
    let output = Command::new(&env.oomtrace)
        .args(["check", "--json"])
        .output()
        .expect("check --json");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let json = text(&output.stdout);
    let value: Value = serde_json::from_str(&json).expect("check --json is JSON");
    assert_eq!(value["type"], "start", "{json}");
    crate::contract::assert_record(&json, &value);
}

/// The fields `oomtrace check ARGS` promises (its `gives:` lines).
pub fn promised_fields(env: &Env, args: &[&str]) -> Vec<String> {
    let output = Command::new(&env.oomtrace)
        .arg("check")
        .args(&env.collector_args)
        .args(args)
        .output()
        .expect("check");
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "check {args:?}: {stdout}");
    let fields: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("gives: "))
        .flat_map(|l| l.split(", "))
        .map(str::to_string)
        .collect();
    assert!(
        !fields.is_empty(),
        "check {args:?} promises nothing: {stdout}"
    );
    fields
}

/// Panics unless every promised field is non-null in `record`; `[]` in a
/// path means every element of the array there (at least one).
pub fn assert_promises_kept(record: &Value, promised: &[String], mode: &str) {
    fn values<'a>(value: &'a Value, path: &[&str]) -> Vec<&'a Value> {
        let Some((first, rest)) = path.split_first() else {
            return vec![value];
        };
        match first.strip_suffix("[]") {
            Some(array) => value[array]
                .as_array()
                .map(|items| items.iter().flat_map(|i| values(i, rest)).collect())
                .unwrap_or_default(),
            None => values(&value[*first], rest),
        }
    }
    for field in promised {
        let path: Vec<&str> = field.split('.').collect();
        let found = values(record, &path);
        assert!(
            !found.is_empty() && found.iter().all(|v| !v.is_null()),
            "{mode}: `oomtrace check` promised {field}, the record has null: {record}"
        );
    }
}

/// In the default mode (and in the VM matrix, every mode `collector_args`
/// selects), every field `check` promises is in a real record.
pub fn check_promises_hold(env: &Env) {
    let promised = promised_fields(env, &[]);
    let cg = MemCgroup::create("promises", Some(LIMIT));
    let mut collector = Collector::start(env, &[]);
    let mut victim = Workload::spawn(env, "alloc", &["--cgroup", cg.dir_str(), "--adj", "600"]);
    assert_sigkilled(victim.wait(), "the allocator");
    let pid = victim.pid();
    let record = collector.kill_matching(|r| r["victim"]["tid"] == pid, KILL_TIMEOUT);
    let mode = format!("{:?}", env.collector_args);
    assert_promises_kept(&record, &promised, &mode);
}
