//! `oomtrace report` over a fleet's day against jq (`--only report`).
//!
//! The day is generated from real records: one real OOM kill and one real
//! heartbeat, recorded by `oomtrace run` on this machine, are the templates
//! for 1,000 nodes' records (hostnames, runs, seqs, times, containers and
//! pods varied), one kill in 40 records, with a tenth of the lines other
//! log lines (a shipper's own messages), until the file holds at least
//! 2 million records and 1 GB.
//!
//! jq does the least equivalent work: select the kill records and count
//! them per container (`fromjson?` skips the other lines, as report does).
//! Both read the same file, alternating, three rounds; the figures are the
//! medians of wall time and peak RSS (wait4's ru_maxrss).
//! Target: report at most 0.25 of jq's time, peak RSS at most 64 MiB.

use std::{
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use oomtrace_tests::{cgroup::MemCgroup, collector::Collector, workload::Workload};
use serde_json::{Value, json};

use crate::{
    Config,
    report::{Report, fmt_mib, median},
    tool::{Cost, run_to_end},
};

const NODES: u64 = 1000;
const MIN_RECORDS: u64 = 2_000_000;
const MIN_BYTES: u64 = 1_000_000_000;
const KILL_EVERY: u64 = 40;
const TIME_TARGET: f64 = 0.25;
const RSS_TARGET_MIB: f64 = 64.0;
const JQ_PROGRAM: &str = r#"reduce (inputs | fromjson? | select(.type? == "oom_kill")) as $r ({}; .[$r.container.id // "none"] += 1) | length"#;

/// A real kill record and a real heartbeat from this machine's kernel.
fn templates(cfg: &Config) -> (Value, Value) {
    let cg = MemCgroup::create("bench-report", Some(32 << 20));
    let mut collector = Collector::start(&cfg.env, &["--heartbeat-interval", "1s"]);
    let mut victim = Workload::spawn(&cfg.env, "alloc", &["--cgroup", cg.dir_str()]);
    let _ = victim.wait();
    let kill = collector.kill_of(victim.pid(), Duration::from_secs(30));
    let heartbeat = collector.record_matching("heartbeat", |_| true, Duration::from_secs(10));
    let _ = collector.stop_with(libc::SIGTERM);
    (kill, heartbeat)
}

/// Writes the day to `path`; returns (records, other lines, bytes).
fn generate(path: &Path, kill: &Value, heartbeat: &Value) -> (u64, u64, u64) {
    let file = std::fs::File::create(path).unwrap();
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let (mut records, mut others, mut bytes) = (0u64, 0u64, 0u64);
    let mut seqs = vec![0u64; NODES as usize];
    let day_start = 1_765_000_000u64;
    let mut i = 0u64;
    while records < MIN_RECORDS || bytes < MIN_BYTES {
        i += 1;
        let node = i % NODES;
        let second = day_start + (i * 86_400 / (MIN_RECORDS + MIN_RECORDS / 9));
        let at = std::time::UNIX_EPOCH + Duration::new(second, (i % 1_000_000_000) as u32);
        let time = humantime::format_rfc3339_nanos(at).to_string();
        let line = if i.is_multiple_of(10) {
            others += 1;
            format!("{time} level=info msg=\"shipper flushed batch {i}\" component=fluent-bit")
        } else if i.is_multiple_of(KILL_EVERY) {
            records += 1;
            let mut r = kill.clone();
            stamp(&mut r, node, &time);
            r["seq"] = json!(seqs[node as usize]);
            seqs[node as usize] += 1;
            let container = (i / NODES) % 20;
            r["container"] = json!({"id": format!("{:064x}", node * 100 + container),
                "runtime": "containerd", "name": format!("app-{container}"), "image": "registry.local/app:1"});
            r["k8s"] = json!({"namespace": format!("team-{}", container % 5),
                "pod": format!("app-{node}-{container}"), "pod_uid": null,
                "container": format!("app-{container}"), "qos": "burstable"});
            r["victim"]["pid"] = json!(1000 + i % 30000);
            r.to_string()
        } else {
            records += 1;
            let mut r = heartbeat.clone();
            stamp(&mut r, node, &time);
            // The default interval: each node's heartbeats here are about
            // 40 s apart (the template was recorded at 1 s).
            r["interval_ms"] = json!(60_000);
            r.to_string()
        };
        bytes += line.len() as u64 + 1;
        out.write_all(line.as_bytes()).unwrap();
        out.write_all(b"\n").unwrap();
    }
    out.flush().unwrap();
    (records, others, bytes)
}

fn stamp(r: &mut Value, node: u64, time: &str) {
    r["hostname"] = json!(format!("node-{node:04}"));
    r["boot_id"] = json!(format!("{node:08x}-0000-4000-8000-000000000000"));
    r["run_id"] = json!(format!("{node:032x}"));
    r["time"] = json!(time);
}

pub(crate) fn report_speed(cfg: &Config, report: &mut Report) {
    let Ok(jq) = which("jq") else {
        println!("report speed: jq is not installed (apt-get install jq); skipped");
        return;
    };
    let (kill, heartbeat) = templates(cfg);
    let path = scratch().join("fleet-day.ndjson");
    let started = Instant::now();
    let (records, others, bytes) = generate(&path, &kill, &heartbeat);
    println!(
        "report speed: {records} records and {others} other lines, {:.2} GB, from {NODES} nodes \
         (generated in {:.0} s)",
        bytes as f64 / 1e9,
        started.elapsed().as_secs_f64()
    );
    let rounds = if cfg.idle >= Duration::from_secs(30) {
        3
    } else {
        1
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let mut command = Command::new(&cfg.env.oomtrace);
        command.args(["report", "--json"]).arg(&path);
        ours.push(run_to_end(command));
        let mut command = Command::new(&jq);
        command.args(["-nR", JQ_PROGRAM]).arg(&path);
        theirs.push(run_to_end(command));
    }
    let _ = std::fs::remove_file(&path);
    let wall = |v: &[Cost]| median(&v.iter().map(|c| c.wall_s).collect::<Vec<_>>());
    let rss = |v: &[Cost]| median(&v.iter().map(|c| c.peak_rss_kb).collect::<Vec<_>>());
    let ratio = wall(&ours) / wall(&theirs);
    report.row(
        &format!("report over a fleet's day ({:.1} GB)", bytes as f64 / 1e9),
        &format!("{:.1} s", wall(&ours)),
        &format!("{:.1} s (jq)", wall(&theirs)),
        &format!("{ratio:.2}x"),
        "<=0.25x",
        Some(ratio <= TIME_TARGET),
    );
    let peak = rss(&ours);
    report.row(
        "report peak RSS",
        &fmt_mib(peak),
        &format!("{} (jq)", fmt_mib(rss(&theirs))),
        "",
        "<=64 MiB",
        Some(peak / 1024.0 <= RSS_TARGET_MIB),
    );
    report.json.insert(
        "report".into(),
        json!({
            "records": records, "other_lines": others, "bytes": bytes, "nodes": NODES,
            "report": ours, "jq": theirs, "ratio": ratio,
        }),
    );
}

fn which(name: &str) -> Result<PathBuf, ()> {
    ["/usr/bin", "/usr/local/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .ok_or(())
}

/// Where the day is written: the target directory (on the build's disk,
/// not a tmpfs that would take a gigabyte of RAM).
fn scratch() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().join("bench-scratch");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
