//! Crafted multi-node days of records, in every input shape, with exact
//! expected findings.

use std::{io::Write as _, path::PathBuf};

use serde_json::{Value, json};

use super::{input::MAX_LINE, model::Action, *};

use crate::fixtures::record as fixture;

const MIB: u64 = 1 << 20;

fn time(minute: u32) -> String {
    format!("2026-12-05T{:02}:{:02}:07.5Z", minute / 60, minute % 60)
}

fn origin(v: &mut Value, host: &str, run: &str) {
    v["hostname"] = json!(host);
    v["boot_id"] = json!(format!("boot-{host}"));
    v["run_id"] = json!(run);
}

struct Kill<'a> {
    host: &'a str,
    run: &'a str,
    seq: u64,
    minute: u32,
    comm: &'a str,
    k8s: Option<(&'a str, &'a str, &'a str, &'a str)>,
    container: Option<&'a str>,
    survives: Option<bool>,
    growth: &'a str,
    limit: u64,
    scope: &'a str,
    global: bool,
}

impl Default for Kill<'_> {
    fn default() -> Self {
        Self {
            host: "node-a",
            run: "run-a1",
            seq: 0,
            minute: 0,
            comm: "app",
            k8s: None,
            container: None,
            survives: None,
            growth: "unknown",
            limit: 256 * MIB,
            scope: "container",
            global: false,
        }
    }
}

fn kill(k: Kill) -> Value {
    let mut v = fixture("oom_kill");
    origin(&mut v, k.host, k.run);
    v["seq"] = json!(k.seq);
    v["time"] = json!(time(k.minute));
    v["boot_ns"] = json!(u64::from(k.minute) * 60_000_000_000 + k.seq);
    v["victim"]["comm"] = json!(k.comm);
    v["trigger"]["comm"] = json!(k.comm);
    let path = format!("/kubepods/{}", k.container.unwrap_or(k.comm));
    v["victim"]["cgroup"]["path"] = json!(path);
    v["oom"]["memcg_path"] = json!(path);
    v["oom"]["limit_scope"] = json!(k.scope);
    v["memcg"]["path"] = json!(path);
    v["memcg"]["limit_bytes"] = json!(k.limit);
    v["memcg"]["levels"][0]["path"] = json!(path);
    v["memcg"]["levels"][0]["limit_bytes"] = json!(k.limit);
    if k.global {
        v["oom"]["constraint"] = json!("global");
        v["oom"]["memcg_path"] = Value::Null;
        v["oom"]["limit_scope"] = json!("node");
    }
    if let Some(id) = k.container {
        v["container"] =
            json!({"id": format!("{id:0<64}"), "runtime": "docker", "name": id, "image": "img:1"});
    }
    if let Some((ns, pod, ctr, qos)) = k.k8s {
        v["k8s"] = json!({"namespace": ns, "pod": pod, "pod_uid": format!("uid-{pod}"), "container": ctr, "qos": qos});
    }
    v["container_survives"] = json!(k.survives);
    v["memory"] = json!({
        "stat": null, "fired_stat": null, "working_set_bytes": 200 * MIB, "pressure": null,
        "history_path": path, "history": [[3000, 100 * MIB, 90 * MIB, 10 * MIB], [0, 250 * MIB, 240 * MIB, 10 * MIB]],
        "growth": {"kind": k.growth, "slope_bytes_per_s": 2.0 * MIB as f64, "seconds_to_limit": 3.0},
    });
    v
}

fn session(kind: &str, host: &str, run: &str, minute: u32) -> Value {
    let mut v = fixture(kind);
    origin(&mut v, host, run);
    v["time"] = json!(time(minute));
    v
}

/// A day of two nodes: a leaking pod in a crash loop, a spiking batch
/// job, a child killed in a Docker container that kept running, a
/// BestEffort pod taken by a node OOM, and node-b's collector killed and
/// restarted, with a loss.
fn day() -> Vec<Value> {
    let leak = Some(("shop", "cart-7d9", "app", "burstable"));
    let mut records = vec![session("start", "node-a", "run-a1", 0)];
    for (i, minute) in [120, 123, 126, 129].into_iter().enumerate() {
        records.push(kill(Kill {
            seq: i as u64,
            minute,
            k8s: leak,
            container: Some(["c1", "c2", "c3", "c4"][i]),
            survives: Some(false),
            growth: "leak",
            ..Kill::default()
        }));
    }
    records.push(kill(Kill {
        seq: 10,
        minute: 300,
        comm: "report-gen",
        k8s: Some(("batch", "report-2912", "job", "guaranteed")),
        container: Some("b1"),
        survives: Some(false),
        growth: "spike",
        limit: 1024 * MIB,
        scope: "pod",
        ..Kill::default()
    }));
    records.push(kill(Kill {
        seq: 11,
        minute: 400,
        comm: "worker",
        container: Some("web"),
        survives: Some(true),
        growth: "at_limit",
        ..Kill::default()
    }));
    records.push(session("stop", "node-a", "run-a1", 1400));
    records.push(session("start", "node-b", "run-b1", 0));
    records.push(kill(Kill {
        host: "node-b",
        run: "run-b1",
        minute: 500,
        comm: "sh",
        k8s: Some(("dev", "scratch", "sh", "besteffort")),
        container: Some("s1"),
        survives: Some(false),
        global: true,
        ..Kill::default()
    }));
    // Killed without a stop; restarted 30 minutes later.
    records.push(session("start", "node-b", "run-b2", 530));
    let mut lost = json!({"type": "lost", "schema": 1, "time": time(600), "boot_ns": 1,
        "kills": 2, "exits": 0, "untracked_victims": 0});
    origin(&mut lost, "node-b", "run-b2");
    records.push(lost);
    records.push(session("stop", "node-b", "run-b2", 1400));
    records
}

fn options(inputs: Vec<PathBuf>) -> Options {
    Options {
        inputs,
        field: None,
        strict: false,
        loop_count: 3,
        loop_window_s: 600.0,
        filters: Filters::default(),
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("oomtrace-report-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn report_of(options: &Options) -> (Report, String) {
    let mut warnings = Vec::new();
    let outcome = run(options, &mut warnings).expect("report");
    (outcome.report, String::from_utf8(warnings).expect("utf-8"))
}

fn ndjson(records: &[Value]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}

/// The findings every shape must give for [`day`].
fn assert_day(r: &Report) {
    let names: Vec<&str> = r.subjects.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "shop/cart-7d9/app",
            "batch/report-2912/job",
            "dev/scratch/sh",
            "web"
        ],
        "{r:#?}"
    );
    let s = &r.subjects[0];
    assert_eq!((s.kills, s.container_died, s.child_killed), (4, 4, 0));
    assert_eq!(s.container_ids.len(), 4, "a new container per restart");
    let l = s.crash_loop.as_ref().expect("crash loop");
    assert_eq!(l.kills, 4);
    assert_eq!(l.intervals_s, [180.0, 180.0, 180.0]);
    assert_eq!(s.advice.action, Action::FixLeak);
    assert_eq!(s.growth, "leak");
    assert_eq!(s.limit_bytes, Some(256 * MIB));
    assert_eq!(r.subjects[1].advice.action, Action::BoundBatch);
    assert_eq!(r.subjects[1].limit_scope.as_deref(), Some("pod"));
    assert_eq!(r.subjects[2].advice.action, Action::GuaranteedQos);
    let web = &r.subjects[3];
    assert_eq!((web.child_killed, web.container_died), (1, 0));
    assert_eq!(web.advice.action, Action::RaiseLimit);
    assert!(web.advice.text.contains("250.0MiB"), "{}", web.advice.text);
    assert_eq!(r.causes.kernel_oom_memcg, 6);
    assert_eq!(r.causes.kernel_oom_node, 1);
    assert_eq!(r.child_kills.len(), 1);
    assert_eq!(r.node_ooms.len(), 1);
    assert_eq!(r.node_ooms[0].qos.as_deref(), Some("besteffort"));
    let b = &r.nodes[1];
    assert_eq!(
        (
            b.hostname.as_str(),
            b.runs,
            b.runs_without_stop,
            b.lost_kills
        ),
        ("node-b", 2, 1, 2)
    );
    assert_eq!(b.gaps.len(), 1);
    assert_eq!(b.gaps[0].kind, "no_stop");
    assert_eq!(b.gaps[0].seconds, 1800.0);
    assert!(r.nodes[0].gaps.is_empty());
    assert_eq!(r.input.by_type["oom_kill"], 7);
}

#[test]
fn a_day_in_plain_ndjson_names_everything_on_the_first_screen() {
    let dir = temp_dir("plain");
    let file = dir.join("a.ndjson");
    std::fs::write(&file, ndjson(&day())).expect("write");
    let (r, warnings) = report_of(&options(vec![file]));
    assert_eq!(warnings, "");
    assert_day(&r);
    let text = text::render(&r);
    let screen: Vec<&str> = text.lines().take(24).collect();
    eprintln!("{}", screen.join("\n"));
    let first = screen.join("\n");
    for (who, advice) in [
        ("shop/cart-7d9/app", "fix the leak"),
        ("batch/report-2912/job", "stream or bound the batch"),
        ("web", "raise the limit above the observed working set"),
        ("dev/scratch/sh", "requests = limits"),
    ] {
        assert!(first.contains(who), "{who} on the first screen:\n{first}");
        assert!(
            first.contains(advice),
            "{advice} on the first screen:\n{first}"
        );
    }
    assert!(first.contains("CRASH LOOP: 4 in 9m00s"), "{first}");
    assert!(
        first.contains("web: 1 kill, child killed, container kept running"),
        "{first}"
    );
    assert!(
        first.contains("node node-b: 1 unwatched gap (30m00s), 2 lost kill records"),
        "{first}"
    );
    assert!(screen.iter().all(|l| l.chars().count() <= 80), "{first}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Docker's json-file lines for `text`, split into 16 KiB pieces.
fn docker_lines(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = format!("{line}\n");
        let bytes = line.as_bytes();
        for chunk in bytes.chunks(16 * 1024) {
            let piece = std::str::from_utf8(chunk).expect("ascii");
            let line = json!({"log": piece, "stream": "stdout", "time": "2026-12-05T00:00:00.1Z"});
            out.push_str(&format!("{line}\n"));
        }
    }
    out
}

fn write_gz(path: &std::path::Path, text: &str) {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(text.as_bytes()).expect("gzip");
    std::fs::write(path, e.finish().expect("gzip")).expect("write");
}

#[test]
fn every_shape_and_duplicates_give_the_same_story() {
    let mut records = day();
    // One record longer than Docker's 16 KiB: an unknown field, read.
    records[1]["future_field"] = json!("x".repeat(40_000));
    let plain = ndjson(&records);
    let dir = temp_dir("shapes");
    std::fs::create_dir_all(dir.join("pods/x")).expect("mkdir");
    let docker = docker_lines(&plain);
    assert!(docker.lines().count() > records.len(), "some lines split");
    std::fs::write(dir.join("c-json.log"), &docker).expect("write");
    write_gz(&dir.join("c-json.log.1.gz"), &docker);
    let cri: String = plain
        .lines()
        .flat_map(|l| {
            let (a, b) = l.split_at(l.len() / 2);
            [
                format!("2026-12-05T00:00:00.000000001Z stdout P {a}\n"),
                format!("2026-12-05T00:00:00.000000002Z stdout F {b}\n"),
            ]
        })
        .collect();
    std::fs::write(dir.join("pods/x/0.log"), cri).expect("write");
    let journal: String = plain
        .lines()
        .map(|l| format!("{}\n", json!({"MESSAGE": l, "_PID": "1"})))
        .collect();
    std::fs::write(dir.join("journal.json"), journal).expect("write");
    let mixed = format!("starting up\n{plain}level=info msg=done\n");
    write_gz(&dir.join("plain.ndjson.gz"), &mixed);
    let (r, warnings) = report_of(&options(vec![dir.clone()]));
    assert_eq!(warnings, "");
    assert_day(&r);
    assert_eq!(r.input.sources, 5);
    let n = records.len() as u64;
    assert_eq!(r.input.records, 5 * n);
    assert_eq!(r.input.duplicates, 4 * n);
    assert_eq!(r.input.other_lines, 2);

    // The same, forced: a Vector export with the record under a path.
    let vector: String = plain
        .lines()
        .map(|l| format!("{}\n", json!({"kubernetes": {"log": l}, "log": "not it"})))
        .collect();
    let file = dir.join("vector.json");
    std::fs::write(&file, vector).expect("write");
    let mut forced = options(vec![file]);
    forced.field = Some("kubernetes.log".into());
    let (r, _) = report_of(&forced);
    assert_day(&r);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_named_skipped_and_counted() {
    let dir = temp_dir("bad");
    let records = day();
    let good = ndjson(&records);
    let cut = records[1].to_string();
    let mut bytes = format!(
        "{}\n{}\n",
        &cut[..cut.len() / 2],
        r#"{"type":"oom_kill","schema":1}"#
    )
    .into_bytes();
    bytes.extend_from_slice(b"\x00\xff\xfe binary\n");
    bytes.extend_from_slice("y".repeat(MAX_LINE + 10).as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(
        br#"{"type":"gc_pause","schema":1,"hostname":"node-a","time":"2026-12-05T00:00:00Z"}"#,
    );
    bytes.push(b'\n');
    let mut newer = records[5].clone();
    newer["schema"] = json!(2);
    newer["new_thing"] = json!({"a": 1});
    bytes.extend_from_slice(format!("{newer}\n").as_bytes());
    bytes.extend_from_slice(good.as_bytes());
    let file = dir.join("bad.log");
    std::fs::write(&file, &bytes).expect("write");
    let whole = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(good.repeat(50).as_bytes()).expect("gzip");
        e.finish().expect("gzip")
    };
    let truncated = dir.join("truncated.gz");
    std::fs::write(&truncated, &whole[..whole.len() * 2 / 3]).expect("write");

    let (r, warnings) = report_of(&options(vec![file.clone(), truncated.clone()]));
    assert_day(&r);
    let name = file.display();
    let lines: Vec<&str> = warnings.lines().collect();
    assert!(
        lines[0].starts_with(&format!("{name}:1: not a whole JSON object")),
        "{warnings}"
    );
    assert!(
        lines[1].starts_with(&format!("{name}:2: not an oomtrace `oom_kill` record")),
        "{warnings}"
    );
    assert_eq!(lines[2], format!("{name}:3: not UTF-8 text (binary?)"));
    assert_eq!(lines[3], format!("{name}:4: longer than 1 MiB: skipped"));
    assert!(
        lines[4].starts_with(&format!("{name}:6: schema 2 is newer")),
        "{warnings}"
    );
    assert!(
        lines[5].starts_with(&format!("{}:", truncated.display())),
        "{warnings}"
    );
    assert!(
        lines[5].contains("read error, the rest is not read"),
        "{warnings}"
    );
    assert_eq!(lines.len(), 6, "{warnings}");
    assert_eq!(
        (r.input.malformed, r.input.too_long, r.input.read_errors),
        (3, 1, 1)
    );
    assert_eq!(r.input.newer_schema, 1);
    assert_eq!(r.input.unknown_types["gc_pause"], 1);
    assert!(r.input.duplicates > 0);

    let mut strict = options(vec![file]);
    strict.strict = true;
    let mut w = Vec::new();
    let outcome = run(&strict, &mut w).expect("runs");
    assert!(outcome.strict_failure);
    assert_eq!(String::from_utf8(w).expect("utf-8").lines().count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn filters_narrow_the_story() {
    let dir = temp_dir("filters");
    let file = dir.join("a.ndjson");
    std::fs::write(&file, ndjson(&day())).expect("write");
    let narrowed = |f: Filters| {
        let mut o = options(vec![file.clone()]);
        o.filters = f;
        let names: Vec<String> = report_of(&o)
            .0
            .subjects
            .into_iter()
            .map(|s| s.name)
            .collect();
        names
    };
    let ns = narrowed(Filters {
        namespace: Some("shop".into()),
        ..Filters::default()
    });
    assert_eq!(ns, ["shop/cart-7d9/app"]);
    let node = narrowed(Filters {
        node: Some("node-b".into()),
        ..Filters::default()
    });
    assert_eq!(node, ["dev/scratch/sh"]);
    let ctr = narrowed(Filters {
        container: Some("web".into()),
        ..Filters::default()
    });
    assert_eq!(ctr, ["web"]);
    let late = narrowed(Filters {
        since: parse_time(&time(200)).ok(),
        until: parse_time(&time(450)).ok(),
        ..Filters::default()
    });
    assert_eq!(late, ["batch/report-2912/job", "web"]);
    let pod = narrowed(Filters {
        pod: Some("report-2912".into()),
        ..Filters::default()
    });
    assert_eq!(pod, ["batch/report-2912/job"]);
    assert!(parse_time("2h").is_ok());
    assert!(parse_time("soon").is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_json_document_matches_its_schema_names() {
    let schema = json_schema();
    let props = &schema["properties"];
    for key in [
        "input",
        "causes",
        "subjects",
        "child_kills",
        "node_ooms",
        "nodes",
    ] {
        assert!(props.get(key).is_some(), "{key} in {schema}");
    }
}

fn heartbeat(host: &str, run: &str, minute: u32) -> Value {
    let mut v = json!({"type": "heartbeat", "schema": 1, "time": time(minute), "boot_ns": minute,
        "interval_ms": 60_000, "counters": fixture("stop")["counters"].clone()});
    origin(&mut v, host, run);
    v
}

#[test]
fn silence_between_heartbeats_is_a_gap() {
    let mut records = vec![session("start", "node-c", "run-c1", 0)];
    for minute in [1, 2, 3, 10, 11] {
        records.push(heartbeat("node-c", "run-c1", minute));
    }
    // Another node's records go on to minute 30; node-c's stop none.
    records.push(session("start", "node-d", "run-d1", 0));
    for minute in 1..=30 {
        records.push(heartbeat("node-d", "run-d1", minute));
    }
    let dir = temp_dir("beats");
    let file = dir.join("a.ndjson");
    std::fs::write(&file, ndjson(&records)).expect("write");
    let (r, warnings) = report_of(&options(vec![file]));
    assert_eq!(warnings, "");
    let c = &r.nodes[0];
    assert_eq!((c.hostname.as_str(), c.heartbeats), ("node-c", 5));
    let gaps: Vec<(f64, &str)> = c
        .gaps
        .iter()
        .map(|g| (g.seconds, g.kind.as_str()))
        .collect();
    assert_eq!(gaps, [(420.0, "silent"), (1140.0, "silent")]);
    assert!(r.nodes[1].gaps.is_empty(), "{:?}", r.nodes[1].gaps);
    let text = text::render(&r);
    assert!(
        text.contains("node node-c: 2 unwatched gaps (26m00s)"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_same_input_gives_the_same_document() {
    let dir = temp_dir("same");
    let file = dir.join("a.ndjson");
    // Subjects that tie on every sort key but their identity.
    let mut records = day();
    for i in 0..20u32 {
        let id = format!("{i:064x}");
        let mut k = kill(Kill {
            host: "node-c",
            run: "r9",
            seq: 100 + u64::from(i),
            minute: 50,
            container: Some(&id),
            ..Kill::default()
        });
        k["container"]["name"] = json!("same-name");
        records.push(k);
    }
    std::fs::write(&file, ndjson(&records)).expect("write");
    let documents: Vec<String> = (0..4)
        .map(|_| {
            let (r, _) = report_of(&options(vec![file.clone()]));
            serde_json::to_string(&r).expect("json")
        })
        .collect();
    assert!(documents.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn a_flapping_collector_lists_its_longest_gaps_and_counts_all() {
    let dir = temp_dir("flapping");
    let file = dir.join("a.ndjson");
    // A heartbeat every 5 minutes at a 60 s interval: every pair is a gap.
    let records: Vec<Value> = (0..100).map(|i| heartbeat("node-f", "r1", i * 5)).collect();
    std::fs::write(&file, ndjson(&records)).expect("write");
    let (r, _) = report_of(&options(vec![file]));
    let node = &r.nodes[0];
    assert_eq!(node.gaps.len(), 64, "the longest listed");
    assert!(node.gaps_total >= 99, "{}", node.gaps_total);
    assert!(node.gap_seconds >= 99.0 * 240.0, "{}", node.gap_seconds);
}
