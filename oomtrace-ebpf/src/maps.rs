//! The maps every program shares: the record stream and the counters.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, RingBuf},
};
use oomtrace_ebpf::{OomContext, counter};

/// The one ordered stream of records to the collector. 1 MiB holds about
/// 490 kill records (2,120 bytes each, plus the ring's 8-byte header); the
/// collector can resize it (`map_max_entries`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

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
