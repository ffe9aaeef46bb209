//! The joiner's rules, one test each.

use super::*;
use crate::kernel::ring::KillEvent;
use oomtrace_ebpf::{KillRecord, Known};

/// The record of a kill of pid 100 + seq, as convert makes it.
fn kill(seq: u64) -> OomKill {
    // SAFETY: all-zero is a valid KillRecord (the programs start so).
    let mut rec: KillRecord = unsafe { std::mem::zeroed() };
    rec.seq = seq;
    rec.boot_ns = 1_000_000;
    rec.victim_tgid = Known::new(100 + seq as u32);
    rec.victim_tid = rec.victim_tgid;
    convert::kill(
        &KillEvent::without_names(rec),
        &Origin::default(),
        4096,
        false,
    )
    .0
}

fn exit(seq: u64) -> ExitRecord {
    ExitRecord {
        kill_seq: seq,
        boot_ns: 3_000_000,
        exit_code: Known::new(9),
        ..Default::default()
    }
}

fn joiner(max_waiting: usize, max_tracked: usize) -> Joiner {
    Joiner::new(
        JoinLimits {
            exit_wait: Duration::from_secs(5),
            retention: Duration::from_secs(600),
            max_waiting,
            max_tracked,
        },
        Origin::default(),
    )
}

fn kills(out: &[Outcome]) -> Vec<(u64, bool)> {
    out.iter()
        .filter_map(|o| match o {
            Outcome::Kill(Held::Oom(k)) => Some((k.seq, k.exit.observed)),
            _ => None,
        })
        .collect()
}

fn late(out: &[Outcome]) -> Vec<u64> {
    out.iter()
        .filter_map(|o| match o {
            Outcome::LateExit(l) => Some(l.seq),
            _ => None,
        })
        .collect()
}

fn forgotten(out: &[Outcome]) -> Vec<(u64, Option<u32>)> {
    out.iter()
        .filter_map(|o| match o {
            Outcome::Forget { seq, key } => Some((*seq, *key)),
            _ => None,
        })
        .collect()
}

#[test]
fn exits_join_by_sequence_never_crossed() {
    let now = Instant::now();
    let mut j = joiner(16, 16);
    assert!(
        j.add_kill(kill(1), Tracking::Key(101), now, None)
            .is_empty()
    );
    assert!(
        j.add_kill(kill(2), Tracking::Key(102), now, None)
            .is_empty()
    );
    let out = j.add_exit(&exit(2));
    assert_eq!(kills(&out), [(2, true)]);
    match &out[0] {
        Outcome::Kill(Held::Oom(k)) => {
            assert_eq!((k.exit.code, k.exit.signal), (Some(137), Some(9)));
            assert_eq!(k.exit.delay_ms, Some(2.0));
        }
        other => panic!("{other:?}"),
    }
    assert!(j.add_exit(&exit(2)).is_empty(), "joined once");
    assert!(j.add_exit(&exit(9)).is_empty(), "unknown kill");
    assert_eq!(j.waiting(), 1);
}

#[test]
fn a_slow_exit_becomes_a_late_exit_record() {
    let now = Instant::now();
    let mut j = joiner(16, 16);
    j.add_kill(kill(1), Tracking::Key(101), now, None);
    assert!(j.tick(now + Duration::from_millis(4999)).is_empty());
    let out = j.tick(now + Duration::from_secs(5));
    assert_eq!(kills(&out), [(1, false)], "written without its exit");
    assert_eq!(j.watched(), 1);
    let out = j.add_exit(&exit(1));
    assert_eq!(late(&out), [1]);
    match &out[0] {
        Outcome::LateExit(l) => {
            assert_eq!(l.pid, Some(101));
            assert_eq!(l.exit.code, Some(137));
            assert!(l.exit.observed);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(j.watched(), 0);
}

#[test]
fn victims_are_forgotten_after_the_retention_horizon() {
    let now = Instant::now();
    let mut j = joiner(16, 16);
    j.add_kill(kill(1), Tracking::Key(101), now, None);
    j.tick(now + Duration::from_secs(5));
    assert!(forgotten(&j.tick(now + Duration::from_secs(604))).is_empty());
    let out = j.tick(now + Duration::from_secs(605));
    assert_eq!(forgotten(&out), [(1, Some(101))]);
    assert!(
        j.add_exit(&exit(1)).is_empty(),
        "too late even for late_exit"
    );
}

#[test]
fn the_waiting_table_is_capped_oldest_out_first() {
    let now = Instant::now();
    let mut j = joiner(3, 100);
    for seq in 0..3 {
        assert!(
            j.add_kill(kill(seq), Tracking::Key(seq as u32), now, None)
                .is_empty()
        );
    }
    let out = j.add_kill(kill(3), Tracking::Key(3), now, None);
    assert_eq!(kills(&out), [(0, false)]);
    assert_eq!((j.waiting(), j.watched()), (3, 1));
    // Evicted early, still watched: its exit is not lost.
    assert_eq!(late(&j.add_exit(&exit(0))), [0]);
    let out = j.finish(now);
    assert_eq!(kills(&out), [(1, false), (2, false), (3, false)]);
    assert_eq!(forgotten(&out).len(), 3);
}

#[test]
fn under_pressure_watched_victims_go_first_waiting_ones_keep_their_places() {
    let now = Instant::now();
    let mut j = joiner(100, 3);
    j.add_kill(kill(0), Tracking::Key(100), now, None);
    j.add_kill(kill(1), Tracking::Key(101), now, None);
    j.tick(now + Duration::from_secs(5)); // both watched now
    j.add_kill(
        kill(2),
        Tracking::Key(102),
        now + Duration::from_secs(5),
        None,
    );
    let out = j.add_kill(
        kill(3),
        Tracking::Key(103),
        now + Duration::from_secs(5),
        None,
    );
    assert_eq!(forgotten(&out), [(0, Some(100))], "the oldest watched one");
    let out = j.add_kill(
        kill(4),
        Tracking::Key(104),
        now + Duration::from_secs(5),
        None,
    );
    assert_eq!(forgotten(&out), [(1, Some(101))]);
    // Only waiting victims left: none is pushed out; the kernel's own
    // bound (an untracked kill) takes over from here.
    let out = j.add_kill(
        kill(5),
        Tracking::Key(105),
        now + Duration::from_secs(5),
        None,
    );
    assert!(forgotten(&out).is_empty());
    assert_eq!(j.waiting(), 4);
}

#[test]
fn kills_of_the_same_process_close_together() {
    let now = Instant::now();
    let mut j = joiner(16, 16);
    j.add_kill(kill(1), Tracking::Key(101), now, None);
    j.add_kill(kill(2), Tracking::SameAs(1), now, None);
    let out = j.add_exit(&exit(1));
    assert_eq!(kills(&out), [(1, true), (2, true)]);
    // The alias of a watched kill gets its exit too.
    j.add_kill(kill(3), Tracking::Key(103), now, None);
    j.tick(now + Duration::from_secs(5));
    j.add_kill(
        kill(4),
        Tracking::SameAs(3),
        now + Duration::from_secs(5),
        None,
    );
    let out = j.add_exit(&exit(3));
    assert_eq!(late(&out), [3]);
    assert_eq!(kills(&out), [(4, true)]);
    // An alias of a forgotten kill is written at once.
    let out = j.add_kill(kill(5), Tracking::SameAs(77), now, None);
    assert_eq!(kills(&out), [(5, false)]);
    let out = j.add_kill(kill(6), Tracking::Untracked, now, None);
    assert_eq!(kills(&out), [(6, false)]);
    assert_eq!(j.waiting(), 0);
}

#[test]
fn a_kill_waits_for_its_log_line_as_for_its_exit() {
    let now = Instant::now();
    let line = Some(now + Duration::from_secs(1));
    let mut j = joiner(16, 16);
    let mut out = Vec::new();
    j.add_kill(kill(1), Tracking::Key(101), now, line);
    // The exit alone does not release it.
    assert!(j.add_exit(&exit(1)).is_empty());
    let settle = |k: &mut OomKill| k.oom.kernel_log = Some(KernelLog::Absent);
    assert!(!j.settle_line(999, settle, &mut out), "another task's line");
    assert!(j.settle_line(101, settle, &mut out));
    assert_eq!(kills(&out), [(1, true)]);
    match &out[0] {
        Outcome::Kill(Held::Oom(k)) => assert_eq!(k.oom.kernel_log, Some(KernelLog::Absent)),
        other => panic!("{other:?}"),
    }
    // The line first, then the exit.
    j.add_kill(kill(2), Tracking::Key(102), now, line);
    let mut out = Vec::new();
    assert!(j.settle_line(102, |_| {}, &mut out));
    assert!(out.is_empty(), "still waits for its exit");
    assert_eq!(kills(&j.add_exit(&exit(2))), [(2, true)]);
    // An untracked kill waits for its line only; a line that never
    // comes is reported missing once its wait is over.
    j.add_kill(kill(3), Tracking::Untracked, now, line);
    j.add_kill(kill(4), Tracking::Key(104), now, line);
    assert!(j.add_exit(&exit(4)).is_empty());
    assert!(j.tick(now + Duration::from_millis(999)).is_empty());
    let out = j.tick(now + Duration::from_secs(1));
    assert_eq!(kills(&out), [(3, false), (4, true)]);
    for o in &out {
        if let Outcome::Kill(Held::Oom(k)) = o {
            assert_eq!(k.oom.kernel_log, Some(KernelLog::Missing));
        }
    }
    assert_eq!((j.waiting(), j.watched()), (0, 0), "nothing to watch");
}
