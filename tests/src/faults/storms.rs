//! Storms: many kills at once.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::KILL_TIMEOUT;
use crate::{
    cgroup::MemCgroup,
    collector::{Collector, Env},
    scenarios::{assert_cgroup, assert_exit_137, assert_identity, assert_matches_kernel},
    storm::{self, Ran, Shape, Storm, StormOutcome, StormProcess},
};

/// The storm tests: 20 cgroups, each killing 10 victims in a row, all at once.
pub(super) const STORM_CGROUPS: usize = 20;
pub(super) const STORM_KILLS_PER_CGROUP: usize = 10;
/// How long the storm's kill records may take to be written once it is
/// over: each waits at most --exit-wait (5 s by default) for its exit.
pub(super) const STORM_RECORDS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the storm's exits may take to be joined once every kill is
/// written: a pipeline's tail exits within some 2 s of its kill (the OOM
/// reaper's delay), so this is only reached when an exit never comes.
pub(super) const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a storm of `shape` and checks what the kernel says of it.
pub(super) fn run_storm(env: &Env, shape: Shape) -> StormOutcome {
    let outcome = storm::storm(env, shape, STORM_CGROUPS, STORM_KILLS_PER_CGROUP);
    eprintln!(
        "{} storm: {} processes, {} kills ({}) in {:.1} s",
        shape.name(),
        outcome.ran.processes.len(),
        outcome.kernel_kills(),
        victim_comms(&outcome.ran),
        outcome.ran.elapsed.as_secs_f64()
    );
    assert_storm_outcome(&outcome);
    outcome
}

/// The storm as the kernel saw it: every process ended as an OOM kill
/// makes it end (the allocator by SIGKILL, the pipeline's shell with 137
/// or by SIGKILL), the cgroups' oom_kill counters add up to one kill per
/// allocator, or at least one per pipeline (the kernel now and then takes
/// a second process of one: see [`Shape::Pipeline`]), and the kernel logged
/// each of those kills.
pub(super) fn assert_storm_outcome(outcome: &StormOutcome) {
    let ran = &outcome.ran;
    let what = ran.shape.name();
    let expected = STORM_CGROUPS * STORM_KILLS_PER_CGROUP;
    assert_eq!(ran.processes.len(), expected, "{what}s run");
    let not_killed: Vec<&StormProcess> = ran.processes.iter().filter(|p| !p.oom_killed()).collect();
    assert!(
        not_killed.is_empty(),
        "{what}s that did not end by an OOM kill: {not_killed:?}"
    );
    let kills = outcome.kernel_kills();
    match ran.shape {
        Shape::Allocator => assert_eq!(
            kills, expected as u64,
            "the kernel's oom_kill counters: one kill per allocator"
        ),
        Shape::Pipeline => assert!(
            kills >= expected as u64,
            "the kernel's oom_kill counters: {kills} kills for {expected} pipelines"
        ),
    }
    assert_eq!(
        ran.kernel_lines.len() as u64,
        kills,
        "the kernel's `Killed process` lines about the storm's victims, against its counters \
         (the log was overrun {} times)",
        ran.kmsg_overruns
    );
}

/// "N tail, M head": the victims' comms, as the kernel logged them.
pub(super) fn victim_comms(ran: &Ran) -> String {
    ran.shape
        .victim_comms()
        .iter()
        .map(|comm| {
            let n = ran.kernel_lines.iter().filter(|k| &k.comm == comm).count();
            format!("{n} {}", String::from_utf8_lossy(comm))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `record`'s victim lived in one of the storm's cgroups.
pub(super) fn in_cgroups(record: &Value, cgroups: &[MemCgroup]) -> bool {
    let path = record["victim"]["cgroup"]["path"].as_str();
    cgroups.iter().any(|c| path == Some(c.path.as_str()))
}

/// The kill records whose victim lived in one of `cgroups`.
pub(super) fn storm_kills<'a>(records: &'a [Value], cgroups: &[MemCgroup]) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["type"] == "oom_kill" && in_cgroups(r, cgroups))
        .collect()
}

/// Waits until the collector has written as many kill records for the
/// storm's cgroups as the kernel counted in them.
pub(super) fn wait_for_storm_kills(collector: &mut Collector, outcome: &StormOutcome) {
    let counted = outcome.kernel_kills() as usize;
    let all_in = collector.wait_until(STORM_RECORDS_TIMEOUT, |records| {
        storm_kills(records, &outcome.cgroups).len() >= counted
    });
    assert!(
        all_in,
        "{} of the kernel's {counted} kills written within {STORM_RECORDS_TIMEOUT:?} of the \
         storm's end",
        storm_kills(&collector.records, &outcome.cgroups).len()
    );
}

/// Every kill the kernel counted in the storm's cgroups is written exactly
/// once, about the victim the kernel logged: the pid, comm and figures of
/// its `Killed process` line, and its cgroup (path and id). Returns the
/// storm's kill records.
pub(super) fn assert_storm_kills_written_once<'a>(
    records: &'a [Value],
    outcome: &StormOutcome,
) -> Vec<&'a Value> {
    let kills = storm_kills(records, &outcome.cgroups);
    assert_eq!(
        kills.len() as u64,
        outcome.kernel_kills(),
        "records for the storm's cgroups, against the kernel's count"
    );
    let mut pids = HashSet::new();
    for record in &kills {
        let pid = record["victim"]["pid"].as_u64().expect("victim.pid") as u32;
        assert!(pids.insert(pid), "written twice: {record}");
        let kernel = outcome
            .ran
            .kernel_line(pid)
            .unwrap_or_else(|| panic!("not a victim the kernel logged in this storm: {record}"));
        assert!(
            outcome
                .ran
                .shape
                .victim_comms()
                .contains(&kernel.comm.as_slice()),
            "a victim of the storm's shape: {kernel:?}"
        );
        assert_matches_kernel(record, kernel);
        let path = record["victim"]["cgroup"]["path"].as_str().expect("path");
        let cgroup = outcome.cgroup(path).expect("one of the storm's cgroups");
        assert_cgroup(record, cgroup, kernel);
        if let Some(process) = outcome.ran.process(pid) {
            assert_eq!(process.cgroup, path, "the allocator's cgroup: {record}");
        }
    }
    kills
}

/// The `late_exit` records that name `kill`: its seq, in its run.
pub(super) fn late_exits_of<'a>(
    records: &'a [Value],
    kill: &'a Value,
) -> impl Iterator<Item = &'a Value> {
    records.iter().filter(move |r| {
        r["type"] == "late_exit" && r["seq"] == kill["seq"] && r["run_id"] == kill["run_id"]
    })
}

/// The storm's kills not joined to an exit (yet): neither in their own
/// record nor by a `late_exit` of the same run and seq.
pub(super) fn unjoined<'a>(records: &'a [Value], cgroups: &[MemCgroup]) -> Vec<&'a Value> {
    let late: HashSet<(&str, u64)> = records
        .iter()
        .filter(|r| r["type"] == "late_exit")
        .filter_map(|r| Some((r["run_id"].as_str()?, r["seq"].as_u64()?)))
        .collect();
    storm_kills(records, cgroups)
        .into_iter()
        .filter(|kill| {
            let key = kill["run_id"].as_str().zip(kill["seq"].as_u64());
            kill["exit"]["observed"] != true && !key.is_some_and(|key| late.contains(&key))
        })
        .collect()
}

/// `late` is `kill`'s late exit: the same seq and run, the victim's pid
/// and tid, exit 137 by SIGKILL, at least `waited` after the kill (what
/// the kill waited before it was written without its exit).
pub(super) fn assert_late_exit(late: &Value, kill: &Value, waited: Duration) {
    assert_eq!(late["seq"], kill["seq"], "{late}");
    assert_eq!(late["run_id"], kill["run_id"], "{late}");
    assert_eq!(late["pid"], kill["victim"]["pid"], "pid: {late} for {kill}");
    assert_eq!(late["tid"], kill["victim"]["tid"], "tid: {late} for {kill}");
    let exit = &late["exit"];
    assert_eq!(exit["observed"], true, "{late}");
    assert_eq!(exit["code"], 137, "exit code: {late}");
    assert_eq!(exit["signal"], 9, "exit signal: {late}");
    let delay = exit["delay_ms"].as_f64().expect("exit.delay_ms");
    assert!(
        delay >= waited.as_secs_f64() * 1e3,
        "a late exit {delay} ms after the kill, which waited {waited:?}: {late} for {kill}"
    );
    let (late_ns, kill_ns) = (late["boot_ns"].as_u64(), kill["boot_ns"].as_u64());
    assert!(
        late_ns.zip(kill_ns).is_some_and(|(l, k)| l > k),
        "written after the kill: {late} for {kill}"
    );
}

/// "seq S pid P" for the first 20 records, to name kills in a message.
pub(super) fn names(kills: &[&Value]) -> Vec<String> {
    let mut names: Vec<String> = kills
        .iter()
        .take(20)
        .map(|k| format!("seq {} pid {}", k["seq"], k["victim"]["pid"]))
        .collect();
    if kills.len() > names.len() {
        names.push(format!("and {} more", kills.len() - names.len()));
    }
    names
}

/// 200 OOM kills across 20 cgroups within a few seconds: every kill the
/// kernel counted is written exactly once, with the victim's pid, cgroup
/// (path and id) and figures as the kernel logged them, joined with its
/// exit 137.
pub fn storm_every_kill_once(env: &Env) {
    let mut collector = Collector::start(env, &[]);
    let outcome = run_storm(env, Shape::Allocator);
    wait_for_storm_kills(&mut collector, &outcome);
    let status = collector.stop_with(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
    for record in assert_storm_kills_written_once(&collector.records, &outcome) {
        assert_exit_137(record);
    }
    let stop = collector.stop_record();
    assert_eq!(stop["counters"]["lost_kills"], 0, "{stop}");
    assert_eq!(stop["counters"]["lost_exits"], 0, "{stop}");
    assert!(
        collector.records.iter().all(|r| r["type"] != "lost"),
        "no lost records"
    );
}

/// The storm in production's shape: 20 cgroups of 24 MiB, each running
/// `sh -c 'head -c 200000000 /dev/zero | tail'` ten times in a row, all at
/// once; the OOM killer takes each pipeline's `tail`, whose pid nobody knew
/// in advance (and now and then a second process of the same pipeline: see
/// [`Shape::Pipeline`]). oomtrace at its defaults: every kill the kernel
/// counted is written exactly once, about the victim the kernel logged,
/// and every one of them is joined with its exit 137 in its own record,
/// although about one victim in ten reaches its exit only some 2 s after
/// its kill (with the OOM reaper): the default --exit-wait has to outlast
/// that.
pub fn pipeline_storm_joins_every_exit(env: &Env) {
    let mut collector = Collector::start(env, &[]);
    let outcome = run_storm(env, Shape::Pipeline);
    wait_for_storm_kills(&mut collector, &outcome);
    let status = collector.stop_with(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
    let kills = assert_storm_kills_written_once(&collector.records, &outcome);
    let unjoined: Vec<&Value> = kills
        .iter()
        .copied()
        .filter(|k| k["exit"]["observed"] != true)
        .collect();
    let slowest = kills
        .iter()
        .filter_map(|k| k["exit"]["delay_ms"].as_f64())
        .fold(0.0, f64::max);
    assert!(
        unjoined.is_empty(),
        "{} of {} kills written without their exit at the default --exit-wait (the slowest \
         victim joined exited {slowest:.0} ms after its kill): {:?}",
        unjoined.len(),
        kills.len(),
        names(&unjoined)
    );
    for kill in &kills {
        assert_exit_137(kill);
    }
    eprintln!(
        "pipeline storm at the defaults: the slowest victim exited {slowest:.0} ms after its kill"
    );
    collector.assert_nothing_lost();
    assert!(
        collector.records.iter().all(|r| r["type"] != "lost"),
        "no lost records"
    );
    assert_identity(&collector.records);
}

/// The pipeline storm with `--exit-wait 100ms`, far below the ~2 s some
/// victims take to exit (and more than the time most take): those kills are written without their exit, and
/// each one's exit, when it comes, is written as exactly one `late_exit`
/// naming it (same seq and run_id; the victim's pid and tid; 137 by
/// SIGKILL; no sooner than the wait). No kill is joined twice, every kill
/// ends up joined one way or the other, and `stop` counts the late exits
/// apart from the exits joined inline.
pub fn pipeline_storm_late_exits_complete_the_join(env: &Env) {
    const WAIT: Duration = Duration::from_millis(100);
    let mut collector = Collector::start(env, &["--exit-wait", "100ms"]);
    let outcome = run_storm(env, Shape::Pipeline);
    wait_for_storm_kills(&mut collector, &outcome);
    let all_joined = collector.wait_until(JOIN_TIMEOUT, |records| {
        unjoined(records, &outcome.cgroups).is_empty()
    });
    if !all_joined {
        let never = unjoined(&collector.records, &outcome.cgroups);
        panic!(
            "{} of {} kills were never joined to an exit within {JOIN_TIMEOUT:?} of the last kill \
             record, neither in their own record nor by a late_exit ({} late_exit records in \
             all): {:?}",
            never.len(),
            outcome.kernel_kills(),
            collector.late_exits().count(),
            names(&never)
        );
    }
    let status = collector.stop_with(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
    let records = &collector.records;
    let kills = assert_storm_kills_written_once(records, &outcome);
    let mut joined_late = 0;
    for kill in &kills {
        let late: Vec<&Value> = late_exits_of(records, kill).collect();
        if kill["exit"]["observed"] == true {
            assert_exit_137(kill);
            assert!(late.is_empty(), "joined twice: {kill} and {late:?}");
        } else {
            assert!(kill["exit"]["code"].is_null(), "{kill}");
            assert_eq!(late.len(), 1, "one late exit for {kill}: {late:?}");
            assert_late_exit(late[0], kill, WAIT);
            joined_late += 1;
        }
    }
    assert!(
        joined_late > 0,
        "no tail took longer than {WAIT:?} to exit: the test proved nothing about late exits"
    );
    // Every late exit names a kill of this run, written before it.
    for (i, late) in records.iter().enumerate() {
        if late["type"] == "late_exit" {
            let kill = records[..i].iter().find(|r| {
                r["type"] == "oom_kill" && r["seq"] == late["seq"] && r["run_id"] == late["run_id"]
            });
            assert!(kill.is_some(), "a late exit for no earlier kill: {late}");
        }
    }
    let inline = collector
        .kills()
        .filter(|k| k["exit"]["observed"] == true)
        .count();
    let stop = collector.stop_record();
    let counters = &stop["counters"];
    assert_eq!(
        counters["late_exits"],
        collector.late_exits().count(),
        "{stop}"
    );
    assert_eq!(counters["exits_observed"], inline, "inline joins: {stop}");
    assert_eq!(counters["kills"], collector.kills().count(), "{stop}");
    collector.assert_nothing_lost();
    assert_identity(records);
    eprintln!(
        "pipeline storm, --exit-wait 100ms: {} kills, {} joined inline, {joined_late} by a \
         late_exit",
        kills.len(),
        kills.len() - joined_late
    );
}

/// SIGTERM while a storm is under way: every kill the kernel had counted by
/// then (its record is queued before the count, in __oom_kill_process())
/// is written, each line whole and each victim once; the last line is
/// `stop` with counters that match what was written; exit status 0.
pub fn sigterm_mid_storm_flushes_everything(env: &Env) {
    let mut collector = Collector::start(env, &[]);
    let storm = Storm::create(STORM_CGROUPS, Shape::Allocator.limit());
    let in_storm = |r: &Value| in_cgroups(r, storm.cgroups());
    let (counted_before_sigterm, sigterm_at, ran) = std::thread::scope(|scope| {
        let running = scope.spawn(|| storm.run(env, Shape::Allocator, STORM_KILLS_PER_CGROUP));
        // A quarter of the storm written: well under way, far from done.
        let mut seen = HashSet::new();
        while seen.len() < STORM_CGROUPS * STORM_KILLS_PER_CGROUP / 4 {
            let record = collector.kill_matching(
                |r| in_storm(r) && !seen.contains(&r["victim"]["pid"]),
                KILL_TIMEOUT,
            );
            seen.insert(record["victim"]["pid"].clone());
        }
        let counted = storm.kernel_kills();
        let sigterm_at = Instant::now();
        let status = collector.stop_with(libc::SIGTERM);
        assert_eq!(status.code(), Some(0), "oomtrace's exit status");
        let ran = running.join().expect("the storm");
        (counted, sigterm_at, ran)
    });
    assert!(
        sigterm_at < ran.ended,
        "SIGTERM came after the storm: the test proves nothing"
    );
    assert_eq!(
        ran.processes.len(),
        STORM_CGROUPS * STORM_KILLS_PER_CGROUP,
        "allocators run"
    );
    assert!(
        ran.processes.iter().all(StormProcess::oom_killed),
        "every allocator died of SIGKILL"
    );
    let written: Vec<&Value> = collector.kills().filter(|r| in_storm(r)).collect();
    eprintln!(
        "SIGTERM mid-storm: {counted_before_sigterm} kills counted before it, {} written, {} in \
         the whole storm",
        written.len(),
        ran.processes.len()
    );
    assert!(
        written.len() as u64 >= counted_before_sigterm,
        "{counted_before_sigterm} kills counted by the kernel before SIGTERM, {} written",
        written.len()
    );
    let mut pids = HashSet::new();
    for record in &written {
        let pid = record["victim"]["pid"].as_u64().expect("pid") as u32;
        assert!(pids.insert(pid), "written twice: {record}");
        let process = ran
            .process(pid)
            .unwrap_or_else(|| panic!("not a storm victim: {record}"));
        assert_eq!(
            record["victim"]["cgroup"]["path"],
            process.cgroup.as_str(),
            "{record}"
        );
        // Joined, or written at shutdown without its exit; never anything else.
        if record["exit"]["observed"] == true {
            assert_exit_137(record);
        } else {
            assert!(record["exit"]["code"].is_null(), "{record}");
        }
    }
    let stop = collector.stop_record();
    assert_eq!(stop["reason"], "SIGTERM", "{stop}");
    assert_eq!(stop["counters"]["lost_kills"], 0, "{stop}");
    assert_eq!(
        stop["counters"]["kills"].as_u64(),
        Some(collector.kills().count() as u64),
        "every kill the collector read was written: {stop}"
    );
}
