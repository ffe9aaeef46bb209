//! The maps every program shares: the record stream and the counters.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use oomtrace_ebpf::{KillScratch, OomContext, counter};

/// The one ordered stream of records to the collector. A kill record is
/// `KILL_RECORD_MIN` (1,712) bytes plus its cgroup path's length, at most
/// `KILL_RECORD_MAX` (5,807), and the ring adds an 8-byte header: 1 MiB
/// holds about 590 kills with 60-byte paths, 540 with kubelet-length ones
/// (250 bytes), 180 at the longest. The collector can resize it
/// (`map_max_entries`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Where each CPU builds a kill record before it is copied into `EVENTS` at
/// its used length (`bpf_ringbuf_output`): a reservation has a size fixed
/// at load time, the longest record's, and a path's length is only known
/// once walked. Programs of one kind do not nest on a CPU (a tracepoint
/// program does not run inside another), so one value per CPU is enough.
#[map]
pub static KILL_SCRATCH: PerCpuArray<KillScratch> = PerCpuArray::with_max_entries(1, 0);

/// `oom_kill_process` context, keyed by the killing thread's pid_tgid (see
/// `OomContext`).
#[map]
pub static OOM_CONTEXTS: HashMap<u64, OomContext> = HashMap::with_max_entries(1024, 0);

/// Loss counters and the kill sequence (see `oomtrace_ebpf::counter`).
#[map]
static COUNTERS: Array<u64> = Array::with_max_entries(counter::LEN, 0);

/// Adds one to a counter and returns its previous value.
#[inline(always)]
pub fn bump(index: u32) -> u64 {
    let Some(value) = COUNTERS.get_ptr_mut(index) else {
        return 0;
    };
    let mut previous: u64 = 1;
    // core's AtomicU64::fetch_add is not available on the bpf target (it has
    // no compare-and-swap), so this is the instruction itself: BPF_ATOMIC
    // BPF_ADD|BPF_FETCH (Linux 5.12+), atomic across CPUs.
    // SAFETY: `value` is an 8-byte aligned u64 in the array's value area.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_add((u64 *)({p} + 0), {v})",
            p = in(reg) value,
            v = inout(reg) previous,
        );
    }
    previous
}

/// A full memory barrier: an atomic read-modify-write (BPF_ATOMIC
/// BPF_ADD|BPF_FETCH of 0; `lock xadd` on x86, `ldaddal` on arm64). What
/// was stored before it is visible to every CPU before anything loaded
/// after it, which plain map updates (a store under a bucket lock) do not
/// promise.
#[inline(always)]
pub fn full_fence() {
    let Some(value) = COUNTERS.get_ptr_mut(counter::KILL_SEQ) else {
        return;
    };
    let mut zero: u64 = 0;
    // SAFETY: as in `bump`; adding 0 changes nothing.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_add((u64 *)({p} + 0), {v})",
            p = in(reg) value,
            v = inout(reg) zero,
        );
    }
    let _ = zero;
}
