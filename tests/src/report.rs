//! `oomtrace report` over records of real kills: three in one cgroup (a
//! crash loop at the default 3 in 10 minutes), one in another, and a
//! Docker container's child (the container kept running), read
//! as the collector wrote them and as a real dockerd's json-file log
//! driver kept them (a container that prints them twice, one record padded
//! past Docker's 16 KiB split).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::{Value, json};

use crate::{
    cgroup::MemCgroup,
    collector::{Collector, Env},
    kmsg::Kmsg,
    runtimes::{Engine, Kind},
    scenarios::{LIMIT, assert_sigkilled},
    workload::Workload,
};

const KILL_TIMEOUT: Duration = Duration::from_secs(30);

/// A private directory for the test's files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("oomtrace-report-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `oomtrace report ARGS`: its exit status, stdout and stderr.
fn report(env: &Env, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(&env.oomtrace)
        .arg("report")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {} report: {e}", env.oomtrace.display()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn report_json(env: &Env, input: &Path) -> Value {
    let path = input.to_str().expect("utf-8");
    let (code, out, err) = report(env, &["--json", path]);
    assert_eq!(code, 0, "report --json {path}: {err}");
    assert_eq!(err, "", "no bad lines in {path}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("--json is not JSON ({e}): {out}"))
}

fn subject<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["subjects"]
        .as_array()
        .expect("subjects")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no subject {name}: {report:#}"))
}

/// What the report must say of these kills, whatever the wrapping.
fn assert_story(report: &Value, looped: &str, single: &str, records: usize) {
    let s = subject(report, looped);
    assert_eq!(s["kind"], "cgroup", "{s:#}");
    assert_eq!(s["kills"], 3, "{s:#}");
    assert_eq!(s["causes"]["kernel_oom_memcg"], 3, "{s:#}");
    assert_eq!(s["victims"], json!(["oomtrace-worklo"]), "{s:#}");
    assert_eq!(s["limit_bytes"], LIMIT, "{s:#}");
    assert_eq!(s["limit_scope"], "cgroup", "{s:#}");
    let l = &s["crash_loop"];
    assert_eq!(l["kills"], 3, "{s:#}");
    assert_eq!(l["intervals_s"].as_array().map(Vec::len), Some(2), "{s:#}");
    let one = subject(report, single);
    assert_eq!(one["kills"], 1, "{one:#}");
    assert_eq!(one["crash_loop"], Value::Null, "{one:#}");
    assert!(
        one["advice"]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{one:#}"
    );
    assert_eq!(report["subjects"][0]["name"], looped, "the loop first");
    let nodes = report["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{report:#}");
    assert_eq!(nodes[0]["runs"], 1, "{report:#}");
    assert_eq!(nodes[0]["runs_without_stop"], 0, "{report:#}");
    assert_eq!(nodes[0]["gaps"], json!([]), "{report:#}");
    let input = &report["input"];
    let kept: u64 = input["by_type"]
        .as_object()
        .expect("by_type")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(kept, records as u64, "{input}");
    assert_eq!(input["malformed"], 0, "{input}");
}

/// Three kills in one cgroup and one in another, recorded by a real
/// collector, then reported from its NDJSON and from a real Docker
/// json-file log of it.
pub fn real_kills_plain_and_docker_json_file(env: &Env) {
    let looped = MemCgroup::create("report-loop", Some(LIMIT));
    let single = MemCgroup::create("report-one", Some(LIMIT));
    let mut engine = Engine::start(Kind::Docker);
    let mut collector = crate::runtimes::collector(env, &engine);
    for cg in [&looped, &looped, &looped, &single] {
        let mut victim = Workload::spawn(env, "alloc", &["--cgroup", cg.dir_str()]);
        assert_sigkilled(victim.wait(), "the allocator");
        collector.kill_of(victim.pid(), KILL_TIMEOUT);
    }
    // A Docker container whose child is killed while PID 1 runs on.
    let parent = engine.run("report-child", &[], &["/oomtrace-workload", "parent"]);
    parent.release();
    let id = parent.id.clone();
    collector.kill_matching(|r| r["container"]["id"] == id.as_str(), KILL_TIMEOUT);
    assert_eq!(engine.wait(&parent), 0, "PID 1 lived on and exited 0");
    collector.container_exit_of(parent.pid, KILL_TIMEOUT);
    let status = collector.stop_with(libc::SIGTERM);
    assert!(status.success(), "collector: {status}");
    collector.assert_nothing_lost();
    let mut records = collector.records.clone();
    // One record past Docker's 16 KiB: an unknown field, which the report
    // reads through.
    let first_kill = records
        .iter()
        .position(|r| r["type"] == "oom_kill")
        .expect("a kill");
    records[first_kill]["padding_from_a_newer_oomtrace"] = json!("x".repeat(40_000));
    let ndjson: String = records.iter().map(|r| format!("{r}\n")).collect();
    let dir = TempDir::new("plain");
    let plain = dir.0.join("oomtrace.ndjson");
    std::fs::write(&plain, &ndjson).expect("write the records");

    let report_plain = report_json(env, &plain);
    assert_story(&report_plain, &looped.path, &single.path, records.len());
    assert_eq!(report_plain["input"]["duplicates"], 0);
    let child = subject(&report_plain, &parent.name);
    assert_eq!(child["kind"], "container", "{child:#}");
    assert_eq!(child["container_ids"], json!([parent.id]), "{child:#}");
    assert_eq!(
        (
            &child["kills"],
            &child["child_killed"],
            &child["container_died"]
        ),
        (&json!(1), &json!(1), &json!(0)),
        "{child:#}"
    );
    assert_eq!(
        report_plain["child_kills"][0]["subject"],
        parent.name.as_str(),
        "listed on its own"
    );

    let (code, text, err) = report(env, &[plain.to_str().expect("utf-8")]);
    assert_eq!((code, err.as_str()), (0, ""), "{text}");
    let screen: Vec<&str> = text.lines().take(24).collect();
    let screen = screen.join("\n");
    eprintln!("{screen}");
    assert!(
        screen.contains(&format!("! {}: 3 kills, CRASH LOOP: 3 in", looped.path)),
        "{screen}"
    );
    assert!(
        screen.contains(&format!("* {}: 1 kill", single.path)),
        "{screen}"
    );
    assert!(
        screen.contains(&format!(
            "* {}: 1 kill, child killed, container kept running",
            parent.name
        )),
        "{screen}"
    );

    let chart = dir.0.join("chart.svg");
    let (code, _, err) = report(
        env,
        &[
            "--svg",
            chart.to_str().expect("utf-8"),
            plain.to_str().expect("utf-8"),
        ],
    );
    assert_eq!((code, err.as_str()), (0, ""));
    assert_chart(&chart, 5);

    // The same records through a real dockerd's json-file log driver:
    // a container prints them twice.
    let c = engine.run(
        "report-cat",
        &[],
        &["cat", "/gate/oomtrace.ndjson", "/gate/oomtrace.ndjson"],
    );
    std::fs::write(c.gate.join("oomtrace.ndjson"), &ndjson).expect("records into the gate");
    c.release();
    assert_eq!(engine.wait(&c), 0, "cat exits 0");
    let state = engine.inspect(&c.name);
    let log = PathBuf::from(state["LogPath"].as_str().expect("LogPath"));
    let kept =
        std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("read {}: {e}", log.display()));
    let pieces: Vec<Value> = kept
        .lines()
        .map(|l| serde_json::from_str(l).expect("json-file lines are JSON"))
        .collect();
    assert!(
        pieces
            .iter()
            .any(|p| p["log"].as_str().is_some_and(|l| !l.ends_with('\n'))),
        "dockerd split the long record into pieces"
    );
    assert!(pieces.len() > 2 * records.len(), "pieces: {}", pieces.len());
    let report_docker = report_json(env, &log);
    assert_story(&report_docker, &looped.path, &single.path, records.len());
    assert_eq!(report_docker["input"]["duplicates"], records.len());
    assert_eq!(
        report_docker["subjects"], report_plain["subjects"],
        "the same story from Docker's log"
    );
    drop(engine);
}

/// The records in a Docker json-file log: each line's `log`, pieces
/// joined up to the one that ends the line.
fn records_in_json_file(log: &Path) -> Vec<Value> {
    let kept =
        std::fs::read_to_string(log).unwrap_or_else(|e| panic!("read {}: {e}", log.display()));
    let mut records = Vec::new();
    let mut line = String::new();
    for entry in kept.lines() {
        let entry: Value = serde_json::from_str(entry).expect("json-file lines are JSON");
        line.push_str(entry["log"].as_str().expect("log"));
        if let Some(whole) = line.strip_suffix('\n') {
            if let Ok(record) = serde_json::from_str::<Value>(whole)
                && record["type"].is_string()
            {
                records.push(record);
            }
            line.clear();
        }
    }
    records
}

/// Waits for a record in the container's json-file log that `pred` takes.
fn logged(log: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + KILL_TIMEOUT;
    loop {
        if log.exists()
            && let Some(found) = records_in_json_file(log).into_iter().find(|r| pred(r))
        {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} in {} after {KILL_TIMEOUT:?}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// oomtrace's static binary running in a Docker container of the test
/// image (the capabilities it needs, `--pid=host`, /sys and dockerd's state
/// mounted), its stdout kept by Docker's json-file log driver; a container
/// is OOM-killed; the collector's container is stopped (SIGTERM: it
/// flushes); the report over its json-file log finds the kill, named,
/// counted once, the pid the kernel's `Killed process` line gives.
pub fn oomtrace_in_a_container_reported_from_its_docker_log(env: &Env) {
    let workload = crate::runtimes::image::static_workload();
    let oomtrace = workload.with_file_name("oomtrace");
    assert!(
        oomtrace.exists(),
        "{} does not exist: `cargo xtask test` builds it (or `cargo build --release --target \
         x86_64-unknown-linux-musl -p oomtrace -p oomtrace-tests --bins`)",
        oomtrace.display()
    );
    let mut engine = Engine::start(Kind::Docker);
    let docker_root = engine.dirs.docker_root();
    let root = docker_root.to_str().expect("utf-8");
    let binary = format!("{}:/oomtrace:ro", oomtrace.display());
    let state = format!("{root}:{root}:ro");
    let collector = engine.run(
        "report-collector",
        &[
            // What `--privileged` would give, but every capability (this
            // machine's bounding set lacks some, and runc refuses them).
            // SYS_ADMIN stands for BPF and PERFMON, which this Docker does
            // not know.
            "--cap-add",
            "SYS_ADMIN",
            "--cap-add",
            "SYS_PTRACE",
            "--cap-add",
            "SYSLOG",
            "--cap-add",
            "DAC_READ_SEARCH",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            "--device",
            "/dev/kmsg",
            "--pid=host",
            // The collector's own limit, not the test image's 32 MiB.
            "--memory",
            "512m",
            "--memory-swap",
            "512m",
            "-v",
            "/sys:/sys",
            "-v",
            &binary,
            "-v",
            &state,
        ],
        &["/oomtrace", "run", "--docker-root", root],
    );
    let log = PathBuf::from(
        engine.inspect(&collector.name)["LogPath"]
            .as_str()
            .expect("LogPath"),
    );
    collector.release();
    logged(&log, "start record", |r| r["type"] == "start");

    let mut kmsg = Kmsg::open();
    let victim = engine.run("report-victim", &[], &["/oomtrace-workload", "alloc"]);
    victim.release();
    assert_eq!(engine.wait(&victim), 137, "the victim was OOM-killed");
    let kernel = kmsg.killed(victim.pid, KILL_TIMEOUT);
    let record = logged(&log, "kill record", |r| {
        r["type"] == "oom_kill" && r["container"]["id"] == victim.id.as_str()
    });
    assert_eq!(record["victim"]["pid"], kernel.pid, "{record}");

    engine.cli(&["stop", "--time", "30", &collector.name]);
    assert_eq!(engine.wait(&collector), 0, "the collector stopped cleanly");
    logged(&log, "stop record", |r| r["type"] == "stop");

    let report = report_json(env, &log);
    let s = subject(&report, &victim.name);
    assert_eq!(s["kind"], "container", "{s:#}");
    assert_eq!(s["container_ids"], json!([victim.id]), "{s:#}");
    assert_eq!(
        (&s["kills"], &s["container_died"], &s["child_killed"]),
        (&json!(1), &json!(1), &json!(0)),
        "{s:#}"
    );
    assert_eq!(report["causes"]["kernel_oom_memcg"], 1, "{report:#}");
    assert_eq!(report["input"]["malformed"], 0, "{report:#}");
    assert_eq!(report["nodes"][0]["runs_without_stop"], 0, "{report:#}");
    drop(engine);
}

/// `--heartbeat-interval 1s`: a `heartbeat` a second with the counters,
/// valid against the schema (the harness checks every line); `0`: none.
/// The report reads them: no gap while they come.
pub fn heartbeats_at_the_interval(env: &Env) {
    let cg = MemCgroup::create("report-beat", Some(LIMIT));
    let mut collector = Collector::start(env, &["--heartbeat-interval", "1s"]);
    let mut victim = Workload::spawn(env, "alloc", &["--cgroup", cg.dir_str()]);
    assert_sigkilled(victim.wait(), "the allocator");
    collector.kill_of(victim.pid(), KILL_TIMEOUT);
    let beats = |records: &[Value]| records.iter().filter(|r| r["type"] == "heartbeat").count();
    assert!(
        collector.wait_until(Duration::from_secs(10), |r| beats(r) >= 3),
        "three heartbeats within 10 s: {:?}",
        collector.records
    );
    collector.stop_with(libc::SIGTERM);
    let all: Vec<&Value> = collector.of_type("heartbeat").collect();
    let last = all.last().expect("a heartbeat");
    assert_eq!(last["interval_ms"], 1000, "{last}");
    assert_eq!(last["counters"]["kills"], 1, "counters so far: {last}");
    assert_eq!(
        all[0]["counters"]["kills"].as_u64().map(|k| k <= 1),
        Some(true)
    );
    let ndjson: String = collector.records.iter().map(|r| format!("{r}\n")).collect();
    let dir = TempDir::new("beats");
    let file = dir.0.join("oomtrace.ndjson");
    std::fs::write(&file, ndjson).expect("write the records");
    let r = report_json(env, &file);
    assert_eq!(r["nodes"][0]["heartbeats"], all.len(), "{r:#}");
    assert_eq!(r["nodes"][0]["gaps"], json!([]), "{r:#}");

    let mut quiet = Collector::start(env, &["--heartbeat-interval", "0"]);
    std::thread::sleep(Duration::from_millis(2500));
    quiet.stop_with(libc::SIGTERM);
    assert_eq!(quiet.of_type("heartbeat").count(), 0, "{:?}", quiet.records);
}

/// The chart has one kill marker per kill: in its SVG text, and in what
/// Chromium renders of it (blobs of the cgroup-limit marker colour).
pub fn assert_chart(svg: &Path, kills: usize) {
    let text = std::fs::read_to_string(svg).expect("read the chart");
    assert!(text.starts_with("<svg "), "{text}");
    assert_eq!(text.matches(r#"class="kill""#).count(), kills, "{text}");
    let height: u32 = text
        .split("height=\"")
        .nth(1)
        .and_then(|h| h.split('"').next())
        .and_then(|h| h.parse::<f64>().ok())
        .expect("the chart's height") as u32;
    let png = svg.with_extension("png");
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            &format!("--window-size=1000,{height}"),
            &format!("--screenshot={}", png.display()),
        ])
        .arg(format!("file://{}", svg.display()))
        .output()
        .unwrap_or_else(|e| panic!("{CHROMIUM} ({e}): `cargo xtask setup` installs it"));
    assert!(
        png.exists(),
        "chromium wrote no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (width, height, pixels) = decode(&png);
    let distinct: std::collections::HashSet<&[u8]> = pixels.chunks(3).collect();
    assert!(
        distinct.len() > 10,
        "a blank rendering ({} colours)",
        distinct.len()
    );
    if let Some(keep) = std::env::var_os("OOMTRACE_REPORT_CHART_DIR") {
        // For docs/: the chart of real kills, and Chromium's rendering.
        let keep = PathBuf::from(keep);
        let _ = std::fs::copy(svg, keep.join("report-chart.svg"));
        let _ = std::fs::copy(&png, keep.join("report-chart.png"));
    }
    // Below the legend (whose sample marker is one too).
    let blobs = blobs_of(&pixels, width, height, [0xd6, 0x27, 0x28], 70);
    assert_eq!(
        blobs,
        kills,
        "kill markers in the rendering of {}",
        svg.display()
    );
}

const CHROMIUM: &str = "/usr/bin/chromium";

/// RGB pixels of a PNG.
fn decode(path: &Path) -> (usize, usize, Vec<u8>) {
    let file = std::fs::File::open(path).expect("open the PNG");
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let channels = info.color_type.samples();
    let rgb: Vec<u8> = buf[..info.buffer_size()]
        .chunks(channels)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    (info.width as usize, info.height as usize, rgb)
}

/// Connected areas (4-neighbours, 10 pixels or more) of exactly `color`,
/// at or below row `min_y`.
fn blobs_of(rgb: &[u8], width: usize, height: usize, color: [u8; 3], min_y: usize) -> usize {
    let hit = |i: usize| i / width >= min_y && rgb[i * 3..i * 3 + 3] == color;
    let mut seen = vec![false; width * height];
    let mut count = 0;
    for start in 0..width * height {
        if seen[start] || !hit(start) {
            continue;
        }
        let mut stack = vec![start];
        seen[start] = true;
        let mut size = 0;
        while let Some(i) = stack.pop() {
            size += 1;
            let (x, y) = (i % width, i / width);
            let mut near = Vec::with_capacity(4);
            if x > 0 {
                near.push(i - 1);
            }
            if x + 1 < width {
                near.push(i + 1);
            }
            if y > 0 {
                near.push(i - width);
            }
            if y + 1 < height {
                near.push(i + width);
            }
            for j in near {
                if !seen[j] && hit(j) {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        if size >= 10 {
            count += 1;
        }
    }
    count
}
