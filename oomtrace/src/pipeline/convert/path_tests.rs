//! Cgroup paths in the output: the kernel's limits, names that are not
//! UTF-8, the trigger's memcg ancestry, and the longest line a kill can be.

use oomtrace_ebpf::{CGROUP_LEVELS, CGROUP_NAME_MAX, Known, OomContext, cgroup_walk_end};
use oomtrace_record::OomKill;

use super::chain::tests::with_path;
use super::*;

fn convert(kill: &KillEvent) -> OomKill {
    super::kill(kill, &Origin::default(), 4096, false).0
}

/// A victim in the cgroup `names` (leaf first) whose memcg levels are the
/// same cgroups, ids from 100 down to the root's 1, with
/// `oom_kill_process` naming level `fired`.
fn victim(names: &[&[u8]], fired: usize) -> KillEvent {
    let depth = names.len();
    let mut ids: Vec<u64> = (0..depth as u64).map(|i| 100 - i).collect();
    ids.push(1);
    let mut kill = with_path(names, &ids);
    let rec = &mut kill.rec;
    rec.memcg_complete = 1;
    rec.memcg_depth = ids.len() as u32;
    rec.memcg_ids[..ids.len()].copy_from_slice(&ids);
    rec.memcg_oom_group_known = 1;
    rec.oom = Known::new(OomContext {
        constraint: 3,
        memcg_id: ids[fired],
        ..OomContext::default()
    });
    kill
}

#[test]
fn non_utf8_paths_are_lossy_with_their_exact_bytes_in_hex() {
    let kill = convert(&victim(&[b"bad\xff\xfe", b"pod"], 1));
    let hex = |s: &[u8]| s.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let bad = b"/pod/bad\xff\xfe";
    assert_eq!(
        kill.victim.cgroup.path.as_deref(),
        Some("/pod/bad\u{fffd}\u{fffd}")
    );
    assert_eq!(kill.victim.cgroup.path_hex, Some(hex(bad)));
    let memcg = kill.memcg.expect("memcg");
    assert_eq!(memcg.path_hex, Some(hex(bad)));
    assert_eq!(memcg.levels[0].path_hex, Some(hex(bad)));
    // UTF-8 levels have no hex, as `comm_hex` is null for a UTF-8 comm.
    assert_eq!(memcg.levels[1].path.as_deref(), Some("/pod"));
    assert_eq!(memcg.levels[1].path_hex, None);
    assert_eq!(memcg.levels[2].path_hex, None);
    assert_eq!(kill.oom.memcg_path.as_deref(), Some("/pod"));
    assert_eq!(kill.oom.memcg_path_hex, None);
    let fired_bad = convert(&victim(&[b"bad\xff\xfe", b"pod"], 0));
    assert_eq!(fired_bad.oom.memcg_path_hex, Some(hex(bad)));
    // Written as null, as `comm_hex` is.
    let json = serde_json::to_value(convert(&victim(&[b"ok"], 0))).expect("json");
    assert!(json["victim"]["cgroup"]["path_hex"].is_null());
    assert!(json["victim"]["cgroup"].get("path_hex").is_some());
}

/// At the depth limit everything is there; past it (the walk says so),
/// every path is null, never cut, and the memcg walk did not reach the
/// root either: `memcg` is null.
#[test]
fn depth_limit_gives_every_path_or_none() {
    let name = b"l".as_slice();
    let deepest = vec![name; MAX_CGROUP_DEPTH];
    let kill = convert(&victim(&deepest, MAX_CGROUP_DEPTH));
    let path = kill.victim.cgroup.path.expect("path at the limit");
    assert_eq!(path.matches('/').count(), MAX_CGROUP_DEPTH);
    let memcg = kill.memcg.expect("memcg at the limit");
    assert_eq!(memcg.levels.len(), CGROUP_LEVELS);
    assert_eq!(memcg.path.as_deref(), Some(path.as_str()));
    assert_eq!(kill.oom.memcg_path.as_deref(), Some("/"));

    let mut past = victim(&deepest, 0);
    past.rec.cgroup_walk_end = cgroup_walk_end::TOO_DEEP;
    past.rec.memcg_complete = 0;
    let kill = convert(&past);
    assert_eq!(kill.victim.cgroup.path, None);
    assert_eq!(kill.victim.cgroup.id, Some(100), "the leaf's id is right");
    assert!(kill.memcg.is_none());
    assert_eq!(kill.oom.memcg_path, None);
}

/// A path too long to carry is null everywhere, but the memcg levels'
/// figures, read at the kill, stay.
#[test]
fn too_long_paths_are_null_and_the_figures_stay() {
    let mut long = victim(&[b"a", b"b"], 0);
    long.rec.cgroup_walk_end = cgroup_walk_end::TOO_LONG;
    long.rec.cgroup_names_len = 0;
    long.names.clear();
    long.rec.memcg_usage_pages[0] = 3;
    let kill = convert(&long);
    assert_eq!(kill.victim.cgroup.path, None);
    assert_eq!(kill.victim.cgroup.id, Some(100));
    assert_eq!(kill.oom.memcg_path, None);
    let memcg = kill.memcg.expect("memcg");
    assert_eq!(memcg.usage_bytes, 3 * 4096);
    assert!(memcg.levels.iter().all(|l| l.path.is_none()));
}

#[test]
fn shared_levels_count_the_common_ancestry_from_the_root() {
    // The victim in /P/B (ids 3, 2, 1); the trigger elsewhere.
    let mut rec = victim(&[b"B", b"P"], 1).rec;
    rec.memcg_ids[..3].copy_from_slice(&[3, 2, 1]);
    let trigger = |rec: &mut KillRecord, ids: &[u64]| {
        rec.trigger_memcg_ids = [0; CGROUP_LEVELS];
        rec.trigger_memcg_ids[..ids.len()].copy_from_slice(ids);
        rec.trigger_memcg_depth = ids.len() as u32;
        rec.trigger_memcg_complete = 1;
    };
    trigger(&mut rec, &[4, 2, 1]); // in /P/C: shares / and /P
    assert_eq!(shared_memcg_levels(&rec), Some(2));
    trigger(&mut rec, &[3, 2, 1]); // the victim's own memcg
    assert_eq!(shared_memcg_levels(&rec), Some(3));
    trigger(&mut rec, &[5, 3, 2, 1]); // below the victim's memcg
    assert_eq!(shared_memcg_levels(&rec), Some(3));
    trigger(&mut rec, &[2, 1]); // in /P itself
    assert_eq!(shared_memcg_levels(&rec), Some(2));
    trigger(&mut rec, &[1]); // in the root memcg
    assert_eq!(shared_memcg_levels(&rec), Some(1));
    trigger(&mut rec, &[9, 8]); // another hierarchy: nothing in common
    assert_eq!(shared_memcg_levels(&rec), Some(0));
    trigger(&mut rec, &[4, 2, 1]);
    rec.trigger_memcg_complete = 0;
    assert_eq!(shared_memcg_levels(&rec), None, "trigger walk incomplete");
    rec.trigger_memcg_complete = 1;
    rec.memcg_complete = 0;
    assert_eq!(shared_memcg_levels(&rec), None, "victim walk incomplete");
    rec.memcg_complete = 1;
    rec.memcg_depth = CGROUP_LEVELS as u32 + 1;
    assert_eq!(shared_memcg_levels(&rec), None, "a depth no walk gives");
}

/// The longest `oom_kill` line a record can make, as docs and README
/// state it: the longest path (`CGROUP_PATH_MAX` bytes) spread over the
/// most levels so that every memcg level's path is as long as it can be,
/// once with printable names and once with the worst bytes for JSON
/// (control bytes, escaped as `\u00XX`, in a name that is not UTF-8, so
/// that every path also has its hex).
#[test]
fn longest_lines() {
    /// Names, leaf first, for a path of exactly CGROUP_PATH_MAX bytes at
    /// MAX_CGROUP_DEPTH levels, the upper ones as long as a name can be.
    fn names(fill: u8, bad: u8) -> Vec<Vec<u8>> {
        let longest = CGROUP_NAME_MAX - 1;
        let mut left = CGROUP_PATH_MAX;
        let mut root_first = Vec::new();
        for level in 0..MAX_CGROUP_DEPTH {
            // Keep two bytes ("/x") for each level still to come.
            let below = MAX_CGROUP_DEPTH - level - 1;
            let len = longest.min(left - 1 - 2 * below);
            root_first.push(vec![fill; len]);
            left -= len + 1;
        }
        assert_eq!(left, 0);
        root_first[0][0] = bad;
        root_first.reverse();
        root_first
    }
    let line = |fill: u8, bad: u8| {
        let names = names(fill, bad);
        let refs: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
        let mut event = victim(&refs, 0);
        // Every counter known, at its widest (20 digits).
        let rec = &mut event.rec;
        rec.memcg_counters_known = u32::MAX;
        let widest = u64::MAX - 1;
        rec.memcg_failcnt = [widest; CGROUP_LEVELS];
        rec.memcg_watermark_pages = [widest / 4096; CGROUP_LEVELS];
        rec.memcg_events = [oomtrace_ebpf::MemcgEventCounts {
            high: widest,
            max: widest,
            oom: widest,
            oom_kill: widest,
            oom_group_kill: widest,
        }; CGROUP_LEVELS];
        let kill = convert(&event);
        assert_eq!(
            kill.victim.cgroup.path.as_ref().map(|p| p.len()),
            Some(CGROUP_PATH_MAX + (bad != fill) as usize * 2),
            "the longest path, its bad byte as U+FFFD"
        );
        serde_json::to_string(&kill).expect("json").len() + 1
    };
    let printable = line(b'x', b'x');
    let worst = line(0x01, 0xff);
    eprintln!("longest oom_kill lines: {printable} bytes printable, {worst} at worst");
    // README "Limits worth knowing" states these (before attribution,
    // which adds at most a few hundred bytes of names it found).
    assert!((118_000..128_000).contains(&printable), "{printable}");
    assert!((850_000..950_000).contains(&worst), "{worst}");
}
