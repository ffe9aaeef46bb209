//! Loss the kernel counts, and a reader that stops reading.

use std::time::Duration;

use serde_json::Value;

use super::storms::{
    JOIN_TIMEOUT, STORM_RECORDS_TIMEOUT, assert_late_exit, assert_storm_kills_written_once,
    late_exits_of, names, run_storm, storm_kills, unjoined,
};
use crate::{
    cgroup::MemCgroup,
    collector::{Collector, Env},
    scenarios::{LIMIT, Workload, assert_exit_137, assert_identity, assert_sigkilled},
    storm::Shape,
};
/// A ring buffer with room for two kill records, and a collector that is
/// not reading (SIGSTOP) while six kills happen: the kernel counts every
/// record it could not queue, so the kills written plus the `lost` records'
/// counts equal the kernel's own oom_kill count, and every line is whole.
pub fn tiny_ring_buffer_counts_every_loss(env: &Env) {
    const KILLS: u64 = 6;
    // One page: a kill record is ~1.8 KiB, so two fit.
    let mut collector = Collector::start(
        env,
        &["--ring-buffer-bytes", "4096", "--exit-wait", "500ms"],
    );
    let cgroup = MemCgroup::create("pressure", Some(LIMIT));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(collector.pid() as i32, libc::SIGSTOP) };
    for _ in 0..KILLS {
        let mut victim = Workload::spawn(env, "alloc", &["--cgroup", cgroup.dir_str()]);
        assert_sigkilled(victim.wait(), "the allocator");
    }
    // SAFETY: as above.
    unsafe { libc::kill(collector.pid() as i32, libc::SIGCONT) };
    assert_eq!(cgroup.oom_kills(), KILLS, "the kernel's count");
    // Let it drain and write what waits for exits that were lost.
    std::thread::sleep(Duration::from_secs(2));
    let status = collector.stop_with(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
    let delivered = collector.kills().count() as u64;
    let lost: u64 = collector
        .records
        .iter()
        .filter(|r| r["type"] == "lost")
        .map(|r| r["kills"].as_u64().expect("lost.kills"))
        .sum();
    assert!(
        lost > 0,
        "six kills cannot fit in one page: {:?}",
        collector.records
    );
    assert_eq!(delivered + lost, KILLS, "{:?}", collector.records);
    let stop = collector.records.last().expect("records");
    assert_eq!(stop["type"], "stop", "{stop}");
    assert_eq!(stop["counters"]["lost_kills"], lost, "{stop}");
    assert_eq!(stop["counters"]["kills"], delivered, "{stop}");
}

/// A log shipper that stops reading: the collector's stdout is a pipe to a
/// reader process, stopped (SIGSTOP) through a storm of 200 kills and for
/// a few seconds after it. The pipe holds 64 KiB (16 pages), some 50 kill
/// records of ~1.2 KiB as JSON; the storm writes ~240 KiB of them (measured:
/// 248 KB), so the collector has to hold ~150 records (~180 KiB) while its
/// writes block. Its pipeline must go on draining the ring buffer
/// meanwhile, or the kernel loses records once the ring is full: the ring
/// is cut to 256 KiB here (~145 of the kernel's kill records, ~1.8 KiB each),
/// because the default 1 MiB (~500) holds a whole 200-kill storm even when
/// nothing drains it, and the test would prove nothing (measured: a
/// collector that stalls its drain behind the pipe lost 16 kills and 8
/// exits with 256 KiB, none with 1 MiB). Once the reader goes on, every
/// kill the kernel counted is delivered once, joined to its exit 137
/// (inline or late), with no `lost` record and nothing dropped.
pub fn blocked_reader_does_not_stall_the_ring(env: &Env) {
    let mut collector = Collector::start_behind_reader(env, &["--ring-buffer-bytes", "262144"]);
    let reader = collector.reader_pid().expect("a reader") as i32;
    let before = collector.bytes;
    // SAFETY: kill(2) on the reader this test started.
    unsafe { libc::kill(reader, libc::SIGSTOP) };
    let outcome = run_storm(env, Shape::Allocator);
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: as above.
    unsafe { libc::kill(reader, libc::SIGCONT) };
    // Until every kill is written and joined, or the kernel reports a loss.
    let counted = outcome.kernel_kills() as usize;
    collector.wait_until(STORM_RECORDS_TIMEOUT + JOIN_TIMEOUT, |records| {
        records.iter().any(|r| r["type"] == "lost")
            || (storm_kills(records, &outcome.cgroups).len() >= counted
                && unjoined(records, &outcome.cgroups).is_empty())
    });
    let status = collector.stop_with(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
    eprintln!(
        "blocked reader: {} bytes of records written after start, against a 64 KiB pipe",
        collector.bytes - before
    );
    let lost: Vec<&Value> = collector
        .records
        .iter()
        .filter(|r| r["type"] == "lost")
        .collect();
    assert!(
        lost.is_empty(),
        "the kernel dropped records while the reader was stopped (the ring buffer was not \
         drained behind the blocked pipe): {lost:?}"
    );
    collector.assert_nothing_lost();
    assert_storm_kills_written_once(&collector.records, &outcome);
    let never = unjoined(&collector.records, &outcome.cgroups);
    assert!(
        never.is_empty(),
        "kills never joined to their exit: {:?}",
        names(&never)
    );
    for kill in storm_kills(&collector.records, &outcome.cgroups) {
        match late_exits_of(&collector.records, kill).next() {
            Some(late) => assert_late_exit(late, kill, Duration::ZERO),
            None => assert_exit_137(kill),
        }
    }
    assert_identity(&collector.records);
}
