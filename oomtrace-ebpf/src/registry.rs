//! The victim registry, kernel half: the `VICTIMS` map and the only code
//! that applies its key rule (`oomtrace_ebpf::VictimKey`), both when a
//! victim is registered at `mark_victim` and when a task exits.
//!
//! Ordering: a victim is registered after its kill record is reserved in
//! the ring buffer, and an exit record is reserved only after the exiting
//! task found its entry. The ring buffer hands records to the collector in
//! reservation order, so a kill record always comes before the exit that
//! closes it.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::map,
    maps::HashMap,
};
use oomtrace_ebpf::{KillRecord, VICTIMS_CAPACITY, VictimEntry, VictimKey, counter};

use crate::{
    kernel::{off, read_field, read_ptr_field, set, victim_key_rule},
    maps::bump,
};

/// Victims waiting for their exit: the only map the exit hook touches.
///
/// Every exit on the node looks itself up here and misses, and the miss
/// costs one read of a random bucket head (htab_map_lookup_elem). The bucket
/// array grows with max_entries, so it is kept small enough to stay in cache:
/// measured with `cargo xtask bench` (bpf_stats run time per exit, against
/// bpftrace's 4096-entry map in the same run, five runs each), 16384
/// entries ran 1.10-1.41x bpftrace's time (median 1.27), 4096 ran
/// 0.92-1.18x (median 1.05). The collector keeps it from filling up (see its
/// victim registry); past full, a kill is written with its key unknown and
/// counted (UNTRACKED_VICTIMS), never dropped.
#[map]
static VICTIMS: HashMap<u32, VictimEntry> = HashMap::with_max_entries(VICTIMS_CAPACITY, 0);

/// `-EEXIST`, as map updates return it.
const EEXIST: i32 = -17;

/// The `start_time` of a task's thread-group leader: with the pid, it tells
/// one process from a later one given the same pid.
#[inline(always)]
pub fn process_start_time(task: *const u8) -> Option<u64> {
    read_field!(read_ptr_field!(task, task_group_leader), task_start_time)
}

/// Registers the victim the record names (its `victim_tid`/`victim_tgid`
/// must be filled, and `seq`), and writes the key it used into the record.
/// `start_time` is the victim's [`process_start_time`], or 0 when unknown.
#[inline(always)]
pub fn register(rec: *mut KillRecord, start_time: u64) {
    // SAFETY: `rec` is a live reservation.
    let (key, seq) = unsafe {
        let key = match victim_key_rule() {
            VictimKey::Tgid => (*rec).victim_tgid,
            VictimKey::Tid => (*rec).victim_tid,
        };
        (key.get(), (*rec).seq)
    };
    let Some(key) = key else {
        return;
    };
    let entry = VictimEntry {
        kill_seq: seq,
        start_time,
    };
    let registered = match VICTIMS.insert(key, entry, u64::from(BPF_NOEXIST)) {
        Ok(()) => true,
        Err(EEXIST) => match VICTIMS.get_ptr(key) {
            // SAFETY: a map value pointer from a successful lookup.
            Some(existing) => {
                let existing = unsafe { *existing };
                let same_process = existing.start_time == 0
                    || start_time == 0
                    || existing.start_time == start_time;
                if same_process {
                    // SAFETY: `rec` is a live reservation.
                    set(
                        unsafe { core::ptr::addr_of_mut!((*rec).same_victim_as) },
                        Some(existing.kill_seq),
                    );
                    return;
                }
                // A stale entry of an earlier process with this pid, whose
                // exit was never seen: this victim takes its place.
                VICTIMS.insert(key, entry, 0).is_ok()
            }
            // Removed in between by that victim's exit: try once more.
            None => VICTIMS.insert(key, entry, u64::from(BPF_NOEXIST)).is_ok(),
        },
        Err(_) => false,
    };
    if registered {
        // SAFETY: `rec` is a live reservation.
        set(
            unsafe { core::ptr::addr_of_mut!((*rec).victim_key) },
            Some(key),
        );
    } else {
        bump(counter::UNTRACKED_VICTIMS);
    }
}

/// At `sched_process_exit`: the entry of the exiting task's process, if it
/// is a registered victim and this is the exit that ends it (its last thread
/// by tgid, the marked thread by tid). The entry is removed; when several
/// threads get here at once, only the one that removes it gets it.
///
/// Runs on every exit on the node, so the common case is one hash lookup
/// that misses.
#[inline(always)]
pub fn take_exiting() -> Option<VictimEntry> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let by_tgid = victim_key_rule() == VictimKey::Tgid;
    let key = if by_tgid {
        (pid_tgid >> 32) as u32
    } else {
        pid_tgid as u32
    };
    // SAFETY: a map value pointer from a successful lookup.
    let entry = unsafe { *VICTIMS.get_ptr(key)? };
    // current is the exiting task. do_exit() has already decremented
    // signal->live, so the last thread of the group reads 0.
    // SAFETY: a plain helper call.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    if by_tgid {
        let live = read_field!(read_ptr_field!(task, task_signal), signal_live);
        if live.is_some_and(|live| live != 0) {
            return None; // not the last thread; the process is not gone yet
        }
    }
    if entry.start_time != 0
        && process_start_time(task).is_some_and(|started| started != entry.start_time)
    {
        return None; // a later process reusing the victim's pid
    }
    VICTIMS.remove(key).ok()?;
    Some(entry)
}
