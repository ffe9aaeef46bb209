//! The victim registry, kernel half: the `VICTIMS` map and the only code
//! that applies its key rule (`oomtrace_ebpf::VictimKey`), both when a
//! victim is registered at `mark_victim` and when a task exits.
//!
//! Ordering: the ring buffer hands records to the collector in the order
//! they are written, and a kill record must come before the exit that
//! closes it (pipeline/join.rs drops an exit whose kill it has not seen).
//! A kill record is written (`bpf_ringbuf_output`, at its full length) only
//! after its victim is registered, and the victim, already sent SIGKILL by
//! __oom_kill_process(), may exit in between. So the entry says, in its
//! `state` ([`oomtrace_ebpf::victim_state`]), how far each side is: the
//! kill's program sets WRITTEN (or DROPPED when the ring buffer was full)
//! after its attempt, and the exit hook leaves the exit in the entry and
//! sets EXITED. Each sets its bit and reads the other's in one atomic
//! fetch-or, so exactly one of them sees both bits and finishes: it removes
//! the entry and, if the kill was written, writes the exit, after the kill.
//! Neither ever removes an entry the other may still be using.
//!
//! Since Linux 6.13 the exit can even come before the registration:
//! do_exit() fires `sched_process_exit` before exit_mm(), so a victim that
//! __oom_kill_process() has sent SIGKILL (before it calls
//! mark_oom_victim(), which fires `mark_victim`) can pass the exit hook on
//! another CPU first. So a process that ends by SIGKILL is noted in
//! `EXITS_BEFORE_MARK` before the exit hook looks in `VICTIMS`, and the
//! kill's program, once it has registered the victim, looks there and
//! hands such an exit to the entry as if the exit hook had (EXITED). Each
//! side writes its map, fences, then reads the other's, so at least one of
//! them sees the other; if both do, the state bits above still let only
//! one write the exit.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, generated::bpf_ktime_get_boot_ns},
    macros::map,
    maps::{HashMap, LruHashMap},
};
use oomtrace_ebpf::{
    ExitBeforeMark, KillRecord, Known, VICTIMS_CAPACITY, VictimEntry, VictimKey, counter,
    victim_state,
};

use crate::{
    kernel::{off, read_field, read_ptr_field, set, victim_key_rule},
    maps::{bump, fetch_or, full_fence},
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

/// Processes that just ended by SIGKILL, by the registry's key: see the
/// module docs. Only SIGKILL deaths are noted (an OOM kill's, a `kill -9`,
/// a runtime's), the LRU keeps the newest, and an entry older than
/// [`EXIT_BEFORE_MARK_MAX_NS`] is never used.
#[map]
static EXITS_BEFORE_MARK: LruHashMap<u32, ExitBeforeMark> = LruHashMap::with_max_entries(1024, 0);

/// How long before its `mark_victim` a victim's exit can have come: the
/// window is __oom_kill_process() between its SIGKILL and
/// mark_oom_victim(), microseconds; a second is far beyond it and still far
/// below pid reuse.
const EXIT_BEFORE_MARK_MAX_NS: u64 = 1_000_000_000;

/// SIGKILL, as the low 7 bits of a wait status carry it.
const SIGKILL: i32 = 9;

/// `-EEXIST`, as map updates return it.
const EEXIST: i32 = -17;

/// An exit to write: the kill it closes, when, and the wait status.
pub struct Exit {
    pub kill_seq: u64,
    pub boot_ns: u64,
    pub exit_code: Known<i32>,
}

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
    // SAFETY: `rec` is this CPU's scratch record.
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
        ..VictimEntry::default()
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
                    // SAFETY: `rec` is this CPU's scratch record.
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
        // SAFETY: `rec` is this CPU's scratch record.
        set(
            unsafe { core::ptr::addr_of_mut!((*rec).victim_key) },
            Some(key),
        );
    } else {
        bump(counter::UNTRACKED_VICTIMS);
    }
}

/// The `seq` of the kill registered under `key`, if any: what a container
/// PID 1's exit closes.
#[inline(always)]
pub fn registered_seq(key: u32) -> Option<u64> {
    // SAFETY: a map value pointer from a successful lookup.
    VICTIMS
        .get_ptr(key)
        .map(|entry| unsafe { (*entry).kill_seq })
}

/// Right after [`register`]: if the victim this kill registered has already
/// passed the exit hook (noted in `EXITS_BEFORE_MARK`), hands its exit to
/// the entry as the exit hook would have, so that [`settle`] writes it
/// after the kill.
#[inline(always)]
pub fn claim_exit_before_mark(rec: *const KillRecord, start_time: u64) {
    // SAFETY: `rec` is this CPU's scratch record.
    let (Some(key), seq) = (unsafe { ((*rec).victim_key.get(), (*rec).seq) }) else {
        return;
    };
    // The registration is visible before the lookup below (module docs).
    full_fence();
    let Some(early) = EXITS_BEFORE_MARK.get_ptr(key) else {
        return;
    };
    // SAFETY: a map value pointer from a successful lookup.
    let early = unsafe { *early };
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let same_process = early.start_time == 0 || start_time == 0 || early.start_time == start_time;
    if now.saturating_sub(early.boot_ns) > EXIT_BEFORE_MARK_MAX_NS || !same_process {
        return;
    }
    let Some(entry) = VICTIMS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a map value pointer; the entry is this kill's until WRITTEN or
    // DROPPED is set, which only this program does, later.
    unsafe {
        if (*entry).kill_seq != seq {
            return;
        }
        (*entry).exit_boot_ns = early.boot_ns;
        (*entry).exit_code = early.exit_code;
        fetch_or(
            core::ptr::addr_of_mut!((*entry).state),
            victim_state::EXITED,
        );
    }
    let _ = EXITS_BEFORE_MARK.remove(key);
}

/// After the kill's program tried to write its record (`written`): sets
/// WRITTEN or DROPPED on the entry this kill registered. If the victim
/// exited meanwhile (EXITED was set first), the exit hook left the entry to
/// this side: it is removed here, and, when the kill was written, its exit
/// is returned, to be written now, after the kill.
#[inline(always)]
pub fn settle(rec: *const KillRecord, written: bool) -> Option<Exit> {
    // SAFETY: `rec` is this CPU's scratch record.
    let (key, seq) = unsafe { ((*rec).victim_key.get()?, (*rec).seq) };
    let entry = VICTIMS.get_ptr_mut(key)?;
    // SAFETY: a map value pointer from a successful lookup; the entry is not
    // removed by the exit hook before this side sets its bit.
    unsafe {
        if (*entry).kill_seq != seq {
            return None;
        }
        let bit = if written {
            victim_state::WRITTEN
        } else {
            victim_state::DROPPED
        };
        let before = fetch_or(core::ptr::addr_of_mut!((*entry).state), bit);
        if before & victim_state::EXITED == 0 {
            return None; // the exit hook finishes, when the victim exits
        }
        let exit = Exit {
            kill_seq: seq,
            boot_ns: (*entry).exit_boot_ns,
            exit_code: (*entry).exit_code,
        };
        VICTIMS.remove(key).ok()?;
        written.then_some(exit)
    }
}

/// At `sched_process_exit`: the exit to write now, if the exiting task's
/// process is a registered victim, this is the exit that ends it (its last
/// thread by tgid, the marked thread by tid), and its kill record is
/// written. When the kill record is not written yet, the exit is left in
/// the entry for the kill's program to write (see the module docs); when it
/// was lost, the entry is only removed.
///
/// Runs on every exit on the node, so the common case is one hash lookup
/// that misses.
#[inline(always)]
pub fn take_exiting() -> Option<Exit> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let by_tgid = victim_key_rule() == VictimKey::Tgid;
    let key = if by_tgid {
        (pid_tgid >> 32) as u32
    } else {
        pid_tgid as u32
    };
    // SAFETY: a plain helper call.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // One read on every exit; the rest only for a SIGKILL death.
    let exit_code = read_field!(task, task_exit_code);
    let killed = exit_code.is_some_and(|code| code & 0x7f == SIGKILL);
    if killed && ends_process(task, by_tgid) {
        note_exit_before_mark(key, task, exit_code);
    }
    let entry = VICTIMS.get_ptr_mut(key)?;
    // SAFETY: a map value pointer from a successful lookup.
    let (kill_seq, start_time) = unsafe { ((*entry).kill_seq, (*entry).start_time) };
    if !ends_process(task, by_tgid) {
        return None; // not the last thread; the process is not gone yet
    }
    if start_time != 0 && process_start_time(task).is_some_and(|started| started != start_time) {
        return None; // a later process reusing the victim's pid
    }
    let exit = Exit {
        kill_seq,
        // SAFETY: a plain helper call.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        exit_code: Known::from_option(exit_code),
    };
    if killed {
        // Taken here: no kill's program needs it.
        let _ = EXITS_BEFORE_MARK.remove(key);
    }
    // SAFETY: as above; the kill's side does not remove the entry before
    // this side sets EXITED, and then only if it saw EXITED.
    let before = unsafe {
        (*entry).exit_boot_ns = exit.boot_ns;
        (*entry).exit_code = exit.exit_code;
        fetch_or(
            core::ptr::addr_of_mut!((*entry).state),
            victim_state::EXITED,
        )
    };
    if before & (victim_state::WRITTEN | victim_state::DROPPED) == 0 {
        return None; // the kill's program writes this exit, after the kill
    }
    // When several threads get here at once, only the one that removes the
    // entry writes the exit.
    VICTIMS.remove(key).ok()?;
    (before & victim_state::WRITTEN != 0).then_some(exit)
}

/// Whether this exit ends the process the key names: by tgid, the group's
/// last thread (do_exit() has already decremented `signal->live`, so it
/// reads 0); by tid, any exit of that thread.
#[inline(always)]
fn ends_process(task: *const u8, by_tgid: bool) -> bool {
    !by_tgid
        || read_field!(read_ptr_field!(task, task_signal), signal_live).is_none_or(|live| live == 0)
}

/// Notes a SIGKILL death in `EXITS_BEFORE_MARK`, then fences, so that the
/// `VICTIMS` lookup that follows cannot miss a registration that missed
/// this note (module docs).
#[inline(always)]
fn note_exit_before_mark(key: u32, task: *const u8, exit_code: Option<i32>) {
    let note = ExitBeforeMark {
        start_time: process_start_time(task).unwrap_or(0),
        // SAFETY: a plain helper call.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        exit_code: Known::from_option(exit_code),
        _pad: 0,
    };
    let _ = EXITS_BEFORE_MARK.insert(key, note, 0);
    full_fence();
}
