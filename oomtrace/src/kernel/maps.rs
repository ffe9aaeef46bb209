//! The collector's handles on the programs' maps, other than the ring
//! buffer: the victim registry and the loss counters.

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use oomtrace_ebpf::{VictimEntry, counter};

/// The `VICTIMS` map, from userspace. The programs decide the keys
/// (oomtrace-ebpf/src/registry.rs) and every kill record carries its own:
/// this side only ever uses a key a record gave it.
pub struct VictimsMap {
    map: BpfHashMap<MapData, u32, VictimEntry>,
}

impl VictimsMap {
    pub fn new(map: BpfHashMap<MapData, u32, VictimEntry>) -> Self {
        Self { map }
    }

    /// Stops the kernel from watching for the exit of kill `seq`, whose
    /// victim is registered under `key`: removes the entry, if it is still
    /// that kill's (a later process given the same pid may have registered
    /// its own since).
    pub fn release(&mut self, key: u32, seq: u64) {
        if self
            .map
            .get(&key, 0)
            .is_ok_and(|entry| entry.kill_seq == seq)
        {
            let _ = self.map.remove(&key);
        }
    }
}

/// Totals of the kernel's loss counters since load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLoss {
    pub kills: u64,
    pub exits: u64,
    pub untracked_victims: u64,
    pub signal_kills: u64,
}

/// The `COUNTERS` array map.
pub struct KernelCounters {
    map: Array<MapData, u64>,
}

impl KernelCounters {
    pub fn new(map: Array<MapData, u64>) -> Self {
        Self { map }
    }

    /// The loss counters, or None when the map cannot be read (then nothing
    /// is reported until it can: a failed read is not a zero).
    pub fn loss(&self) -> Option<KernelLoss> {
        let read = |index| self.map.get(&index, 0).ok();
        Some(KernelLoss {
            kills: read(counter::LOST_KILLS)?,
            exits: read(counter::LOST_EXITS)?,
            untracked_victims: read(counter::UNTRACKED_VICTIMS)?,
            signal_kills: read(counter::LOST_SIGNAL_KILLS)?,
        })
    }
}
