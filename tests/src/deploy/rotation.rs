//! deploy/logrotate.conf with Debian's logrotate, run for real (`-f`)
//! several times while a storm of kills is being written.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{deploy_file, scratch_dir};
use crate::{
    collector::Env,
    runtimes::engine::run_command,
    storm::{Shape, Storm},
};

const SHIPPED_LOG: &str = "/var/log/oomtrace/oomtrace.ndjson";
const SHIPPED_POSTROTATE: &str = "systemctl reload oomtrace.service";
/// 4 cgroups, 25 allocators in a row each: 100 kills over a few seconds.
const STORM_CGROUPS: usize = 4;
const STORM_KILLS_PER_CGROUP: usize = 25;
const ROTATE_EVERY: Duration = Duration::from_millis(300);
/// Fewer than the configuration keeps (`rotate 14`): none is deleted.
const MAX_ROTATIONS: usize = 10;
const RECORDS_TIMEOUT: Duration = Duration::from_secs(30);

/// Every line of every file of the rotation (plain or gzip): each must be
/// one whole record.
fn all_records(dir: &Path) -> (Vec<Value>, Vec<(PathBuf, usize)>) {
    let mut records = Vec::new();
    let mut files = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("oomtrace.ndjson"))
        })
        .collect();
    // Oldest first: the highest number, ..., `.1`, then the live file.
    let age = |p: &PathBuf| -> u32 {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let number = name
            .trim_start_matches("oomtrace.ndjson")
            .trim_start_matches('.');
        number.trim_end_matches(".gz").parse().unwrap_or(0)
    };
    paths.sort_by_key(|p| std::cmp::Reverse(age(p)));
    for path in paths {
        let text = if path.extension().is_some_and(|e| e == "gz") {
            run_command(Command::new("gzip").arg("-dc").arg(&path))
                .unwrap_or_else(|e| panic!("{e}"))
        } else {
            std::fs::read_to_string(&path).expect("read")
        };
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} ends in the middle of a line",
            path.display()
        );
        let mut n = 0;
        for line in text.lines() {
            let record: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "{}: a line that is not a whole record ({e}): {line}",
                    path.display()
                )
            });
            if record["type"] == "oom_kill" {
                n += 1;
            }
            records.push(record);
        }
        files.push((path, n));
    }
    (records, files)
}

/// The collector appends to a file that the shipped logrotate
/// configuration rotates (`logrotate -f`, its paths and postrotate command
/// pointed at this test's file and collector: `systemctl reload` needs
/// systemd, whose ExecReload= sends the same SIGHUP) every 300 ms while 100
/// kills happen. Every line of every file, plain or compressed, is one
/// whole record; every kill the kernel counted is in exactly one file,
/// with the pid the storm started; the kills spread over several files.
pub fn logrotate_while_kills_happen_loses_and_splits_nothing(env: &Env) {
    let dir = scratch_dir().join("logrotate");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    let log = dir.join("oomtrace.ndjson");
    let mut collector = Command::new(&env.oomtrace)
        .arg("run")
        .args(&env.collector_args)
        .args(["--exit-wait", "500ms", "--output"])
        .arg(&log)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr")).expect("stderr"))
        .spawn()
        .expect("spawn oomtrace");
    let shipped = std::fs::read_to_string(deploy_file("logrotate.conf")).expect("logrotate.conf");
    assert!(shipped.contains(SHIPPED_LOG) && shipped.contains(SHIPPED_POSTROTATE));
    assert!(
        shipped.contains("rotate 14"),
        "MAX_ROTATIONS stays below `rotate`"
    );
    let config = dir.join("logrotate.conf");
    std::fs::write(
        &config,
        shipped
            .replace(SHIPPED_LOG, log.to_str().expect("utf-8"))
            .replace(SHIPPED_POSTROTATE, &format!("kill -HUP {}", collector.id())),
    )
    .expect("config");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("\"type\":\"start\"")
    {
        assert!(Instant::now() < deadline, "no start record");
        std::thread::sleep(Duration::from_millis(50));
    }

    let storm = Storm::create(STORM_CGROUPS, Shape::Allocator.limit());
    let storming = AtomicBool::new(true);
    let mut rotations = 0;
    let ran = std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let ran = storm.run(env, Shape::Allocator, STORM_KILLS_PER_CGROUP);
            storming.store(false, Ordering::SeqCst);
            ran
        });
        while storming.load(Ordering::SeqCst) && rotations < MAX_ROTATIONS {
            std::thread::sleep(ROTATE_EVERY);
            run_command(
                Command::new("logrotate")
                    .arg("--force")
                    .arg("--state")
                    .arg(dir.join("logrotate.state"))
                    .arg(&config),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            rotations += 1;
        }
        worker
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    });
    let kernel_kills = storm.kernel_kills();
    assert_eq!(
        kernel_kills as usize,
        ran.processes.len(),
        "one kill per allocator"
    );
    let ours = |r: &&Value| {
        r["type"] == "oom_kill"
            && storm
                .cgroups()
                .iter()
                .any(|c| r["victim"]["cgroup"]["path"] == c.path.as_str())
    };
    let deadline = Instant::now() + RECORDS_TIMEOUT;
    while (all_records(&dir).0.iter().filter(ours).count() as u64) < kernel_kills
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: kill(2) on the collector this test started.
    unsafe { libc::kill(collector.id() as i32, libc::SIGTERM) };
    let status = collector.wait().expect("wait");
    assert!(status.success(), "{status:?}");

    let (records, files) = all_records(&dir);
    eprintln!("{rotations} rotations during the storm; kills per file: {files:?}");
    let kills: Vec<&Value> = records.iter().filter(ours).collect();
    let mut pids = HashSet::new();
    for kill in &kills {
        let pid = kill["victim"]["pid"].as_u64().expect("pid") as u32;
        assert!(pids.insert(pid), "written twice: {kill}");
        assert!(ran.process(pid).is_some(), "not one of the storm's: {kill}");
    }
    assert_eq!(
        kills.len() as u64,
        kernel_kills,
        "kills in all the rotated files against the kernel's count"
    );
    assert!(
        files.iter().filter(|(_, n)| *n > 0).count() >= 2,
        "the rotations fell during the storm: {files:?}"
    );
    assert_eq!(
        records.iter().filter(|r| r["type"] == "start").count(),
        1,
        "one run"
    );
    assert_eq!(
        records.last().map(|r| r["type"].clone()),
        Some(Value::from("stop")),
        "stop last, in the live file"
    );
}
