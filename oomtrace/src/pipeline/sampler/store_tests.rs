//! The store's caps and eviction.
use super::*;

const SEC: u64 = 1_000_000_000;

fn limits(max_cgroups: usize) -> Limits {
    Limits {
        max_cgroups,
        points: 4,
        idle_ns: 60 * SEC,
    }
}

fn point(boot_ns: u64, usage: u64) -> Point {
    Point::new(
        boot_ns,
        &Reading {
            usage,
            ..Reading::default()
        },
    )
}

#[test]
fn history_is_bounded_oldest_dropped() {
    let mut store = Store::new(limits(10));
    store.admit("/a", 0).expect("room");
    for i in 0..10 {
        store.push("/a", point(i * SEC, i));
    }
    let usages: Vec<u64> = store
        .get("/a")
        .expect("a")
        .points
        .iter()
        .map(|p| p.usage)
        .collect();
    assert_eq!(usages, [6, 7, 8, 9]);
    // Points of a memcg never admitted go nowhere.
    store.push("/b", point(0, 1));
    assert!(store.get("/b").is_none());
}

/// A history never holds room for more samples than its cap, whatever the
/// cap: `bytes_per_cgroup`, and with it the 32 MiB cap, counts `points`.
#[test]
fn history_room_stays_within_the_cap() {
    for points in [1, 4, 5, 60, 600, 3600] {
        let mut store = Store::new(Limits {
            points,
            ..limits(1)
        });
        store.admit("/a", 0).expect("room");
        for i in 0..points as u64 * 2 + 3 {
            store.push("/a", point(i, i));
            let series = store.get("/a").expect("a");
            assert!(
                series.points.capacity() <= points,
                "{points} samples kept in room for {}",
                series.points.capacity()
            );
        }
        assert_eq!(store.get("/a").expect("a").points.len(), points);
    }
}

#[test]
fn absent_fields_stay_absent() {
    let reading = Reading {
        usage: 5,
        stat: StatFigures {
            anon: Some(3),
            kernel: None,
            ..StatFigures::default()
        },
        pressure: None,
        limit: None,
    };
    let p = Point::new(1, &reading);
    assert_eq!(p.stat(), reading.stat);
    assert_eq!(p.pressure(), None);
}

#[test]
fn at_the_cap_vanished_go_first_then_the_longest_idle() {
    let mut store = Store::new(limits(2));
    store.admit("/a", 0).expect("room");
    store.admit("/b", 0).expect("room");
    store.push("/b", point(SEC, 1));
    store.push("/b", point(2 * SEC, 2)); // b grew at 2 s
    store.vanished("/b", 3 * SEC);
    // b vanished: it goes first although a is idle longer.
    assert_eq!(store.admit("/c", 100 * SEC), Ok(vec!["/b".to_string()]));
    // Then a, idle since 0, makes room for d; c (admitted at 100 s) stays.
    assert_eq!(store.admit("/d", 100 * SEC), Ok(vec!["/a".to_string()]));
    assert_eq!(store.evictions, 2);
    assert!(store.is_live("/c") && store.is_live("/d"));
}

#[test]
fn at_the_cap_growing_memcgs_are_not_evicted() {
    let mut store = Store::new(limits(1));
    store.admit("/a", 0).expect("room");
    store.push("/a", point(SEC, 1));
    store.push("/a", point(50 * SEC, 2));
    assert_eq!(store.admit("/b", 60 * SEC), Err(Refused::AllGrowing));
    assert_eq!(store.refusals, 1);
    assert_eq!(store.len(), 1);
    // A whole window after its last growth, a may go.
    assert_eq!(store.admit("/b", 111 * SEC), Ok(vec!["/a".to_string()]));
}

#[test]
fn vanished_kept_for_a_while_then_expired() {
    let mut store = Store::new(limits(4));
    store.admit("/a", 0).expect("room");
    store.push("/a", point(SEC, 1));
    store.vanished("/a", 2 * SEC);
    assert!(!store.is_live("/a"));
    assert_eq!(store.expire(2 * SEC + VANISHED_KEEP_NS - 1), 0);
    assert_eq!(store.get("/a").expect("kept").points.len(), 1);
    assert_eq!(store.expire(2 * SEC + VANISHED_KEEP_NS), 1);
    assert!(store.get("/a").is_none());
}

#[test]
fn samples_after_the_kill_are_left_out() {
    let mut store = Store::new(limits(4));
    store.admit("/a", 0).expect("room");
    for i in 1..=4 {
        store.push("/a", point(i * SEC, i));
    }
    let before: Vec<u64> = store
        .get("/a")
        .expect("a")
        .before(2 * SEC)
        .map(|p| p.usage)
        .collect();
    assert_eq!(before, [1, 2]);
    store.push_system_pressure(
        SEC,
        Psi {
            some_avg10: 1.0,
            full_avg10: 0.5,
        },
    );
    store.push_system_pressure(
        3 * SEC,
        Psi {
            some_avg10: 9.0,
            full_avg10: 9.0,
        },
    );
    assert_eq!(
        store.system_pressure_before(2 * SEC).map(|p| p.some_avg10),
        Some(1.0)
    );
    assert_eq!(store.system_pressure_before(0), None);
}
