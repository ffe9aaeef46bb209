//! What the state files said, by container id, so that a storm of kills in
//! one container reads its files once.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use super::StateNames;

/// Containers remembered. Names are kept after a container is removed (its
/// last records often come after), so something must bound the map on a
/// host that runs containers for months; the entries made longest ago go
/// first. An entry is a few hundred bytes.
pub const MAX_ENTRIES: usize = 4_096;

/// How long "no state file has this id" is believed. The runtime writes its
/// state around when it makes the cgroup, and a kill can come in between
/// (a process that runs out of memory at once); a miss is asked again after
/// this, yet a storm of kills in one unknown container still scans the
/// runtimes' directories at most once per interval.
pub const MISS_TTL: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Entry {
    names: Option<StateNames>,
    at: Instant,
}

/// A bounded map from container id to what its state said.
#[derive(Debug)]
pub struct StateCache {
    entries: HashMap<String, Entry>,
    /// Ids in the order their entries were made, oldest first.
    order: VecDeque<String>,
    capacity: usize,
    miss_ttl: Duration,
}

impl StateCache {
    pub fn new(capacity: usize, miss_ttl: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            miss_ttl,
        }
    }

    /// `Some(answer)` when the cache knows: names found (kept until
    /// evicted), or a miss younger than the miss TTL. None: ask the files.
    pub fn get(&self, id: &str, now: Instant) -> Option<Option<&StateNames>> {
        let entry = self.entries.get(id)?;
        match &entry.names {
            Some(names) => Some(Some(names)),
            None if now.saturating_duration_since(entry.at) < self.miss_ttl => Some(None),
            None => None,
        }
    }

    pub fn insert(&mut self, id: &str, names: Option<StateNames>, now: Instant) {
        if let Some(entry) = self.entries.get_mut(id) {
            *entry = Entry { names, at: now };
            return;
        }
        while self.entries.len() >= self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.entries
            .insert(id.to_string(), Entry { names, at: now });
        self.order.push_back(id.to_string());
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oomtrace_record::Runtime;

    fn named(name: &str) -> Option<StateNames> {
        Some(StateNames {
            runtime: Runtime::Docker,
            name: Some(name.into()),
            ..StateNames::default()
        })
    }

    #[test]
    fn hits_stay_and_misses_expire() {
        let now = Instant::now();
        let mut cache = StateCache::new(8, MISS_TTL);
        cache.insert("a", named("web"), now);
        cache.insert("b", None, now);
        let later = now + MISS_TTL;
        assert_eq!(
            cache
                .get("a", later)
                .flatten()
                .and_then(|n| n.name.as_deref()),
            Some("web")
        );
        assert_eq!(cache.get("b", now), Some(None), "a fresh miss is believed");
        assert_eq!(cache.get("b", later), None, "an old miss is asked again");
        // The file appeared: the miss becomes a hit in place.
        cache.insert("b", named("late"), later);
        assert!(cache.get("b", later + MISS_TTL).flatten().is_some());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn the_oldest_entries_go_first() {
        let now = Instant::now();
        let mut cache = StateCache::new(3, MISS_TTL);
        for id in ["a", "b", "c", "d"] {
            cache.insert(id, named(id), now);
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("a", now), None);
        assert!(
            ["b", "c", "d"]
                .iter()
                .all(|id| cache.get(id, now).is_some())
        );
    }
}
