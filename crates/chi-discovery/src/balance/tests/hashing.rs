//! The hashing strategies: consistent hashing with bounded loads, ring hash and Maglev; how
//! evenly they spread keys and how few keys move when the set changes.

use super::*;

#[test]
fn consistent_hash_radix_sort_sorts() {
    let mut v: Vec<(u64, u32)> = (0..5000u32)
        .map(|i| (default_hash(&(i % 4000).to_le_bytes()), i))
        .collect();
    let mut want = v.clone();
    want.sort_by_key(|e| e.0);
    consistent::radix_sort_for_test(&mut v);
    assert_eq!(v, want);
}

#[test]
fn fast_mod_is_exact() {
    for d in [
        1usize,
        2,
        3,
        7,
        10,
        271,
        1000,
        65_537,
        1 << 20,
        u32::MAX as usize,
    ] {
        let f = FastMod::new(d);
        for x in (0..5000usize).chain([u32::MAX as usize - 1, u32::MAX as usize, 1 << 31]) {
            assert_eq!(f.reduce(x), x % d, "{x} mod {d}");
        }
    }
}

#[test]
fn ring_hash_index_agrees_with_binary_search() {
    let list = weighted(&[1, 5, 2, 9, 3]);
    let ring = RingHash::new(&list);
    for k in 0..5000u32 {
        let key = k.to_le_bytes();
        let got = ring.select(&list, &Request::with_key(&key)).expect("5");
        assert_eq!(got, ring.owner_by_search(default_hash(&key)), "key {k}");
    }
}

fn key_map(sel: &dyn Select, list: &[Instance], keys: usize) -> Vec<String> {
    (0..keys as u32)
        .map(|k| {
            let key = format!("user-{k}");
            let i = sel
                .select(list, &Request::with_key(key.as_bytes()))
                .expect("picked");
            list[i].id.clone()
        })
        .collect()
}

fn moved_fraction(a: &[String], b: &[String]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
}

#[test]
fn consistent_hash_bounded_loads_and_stability() {
    let config = ConsistentHashConfig::default();
    for n in [1, 2, 3, 7, 10, 50, 100, 271, 500] {
        let list = set(n);
        let ch = ConsistentHash::build(&list, &config, default_hash, Arc::new(ThreadRandom));
        assert_eq!(ch.owners().len(), 271);
        let c = counts(n, ch.owners().iter().map(|&o| o as usize));
        let max = *c.iter().max().expect("n > 0");
        assert!(
            max <= config.max_load(n),
            "n={n} max={max} bound={}",
            config.max_load(n)
        );
        // Deterministic: the same list gives the same table.
        let again = ConsistentHash::build(&list, &config, default_hash, Arc::new(ThreadRandom));
        assert_eq!(ch.owners(), again.owners());
    }
}

#[test]
fn consistent_hash_disruption_is_about_one_over_n() {
    let config = ConsistentHashConfig::default();
    for n in [5usize, 10, 20, 50] {
        let list = set(n);
        let ch = ConsistentHash::build(&list, &config, default_hash, Arc::new(ThreadRandom));
        let before = key_map(&ch, &list, 20_000);
        let mut worst: f64 = 0.0;
        for gone in [0, n / 2, n - 1] {
            let mut less = list.clone();
            less.remove(gone);
            let ch2 = ConsistentHash::build(&less, &config, default_hash, Arc::new(ThreadRandom));
            let after = key_map(&ch2, &less, 20_000);
            worst = worst.max(moved_fraction(&before, &after));
        }
        let ideal = 1.0 / n as f64;
        println!(
            "consistent_hash n={n}: moved {:.3} of keys, ideal {ideal:.3}",
            worst
        );
        assert!(worst <= 2.5 * ideal + 0.05, "n={n}: moved {worst}");
    }
}

#[test]
fn consistent_hash_spreads_the_keys_of_an_unhealthy_owner() {
    let mut list = set(10);
    let ch = ConsistentHash::new(&list);
    let before = key_map(&ch, &list, 10_000);
    list[3].health = HealthStatus::Unhealthy;
    let after = key_map(&ch, &list, 10_000);
    let mut receivers = HashMap::new();
    for (b, a) in before.iter().zip(&after) {
        if b == "i3" {
            assert_ne!(a, "i3");
            *receivers.entry(a.clone()).or_insert(0) += 1;
        } else {
            assert_eq!(a, b, "keys of healthy owners stay");
        }
    }
    assert!(receivers.len() >= 3, "{receivers:?}");
}

#[test]
fn ring_hash_and_maglev_follow_weights_and_move_few_keys() {
    let list = weighted(&[1, 2, 3, 4]);
    for (name, sel) in [
        (
            "ring_hash",
            Box::new(RingHash::new(&list)) as Box<dyn Select>,
        ),
        ("maglev", Box::new(Maglev::new(&list))),
    ] {
        let keys = key_map(&*sel, &list, 40_000);
        let mut c = vec![0usize; 4];
        for k in &keys {
            c[list.iter().position(|i| &i.id == k).expect("known")] += 1;
        }
        for (i, &x) in c.iter().enumerate() {
            let want = 40_000.0 * (i + 1) as f64 / 10.0;
            assert!((x as f64 - want).abs() < want * 0.15, "{name}: {c:?}");
        }
    }
    for n in [10usize, 50] {
        let list = set(n);
        let mut less = list.clone();
        less.remove(n / 2);
        for (name, a, b) in [
            (
                "ring_hash",
                Box::new(RingHash::new(&list)) as Box<dyn Select>,
                Box::new(RingHash::new(&less)) as Box<dyn Select>,
            ),
            (
                "maglev",
                Box::new(Maglev::new(&list)),
                Box::new(Maglev::new(&less)),
            ),
        ] {
            let moved = moved_fraction(&key_map(&*a, &list, 20_000), &key_map(&*b, &less, 20_000));
            let ideal = 1.0 / n as f64;
            println!("{name} n={n}: moved {moved:.3} of keys, ideal {ideal:.3}");
            assert!(moved <= 1.6 * ideal + 0.01, "{name} n={n}: {moved}");
        }
    }
}

#[test]
fn maglev_table_is_balanced() {
    for n in [3usize, 100, 1000] {
        let list = set(n);
        let m = Maglev::new(&list);
        let c = counts(n, m.table().iter().map(|&o| o as usize));
        let mean = m.table().len() as f64 / n as f64;
        let max = *c.iter().max().expect("n") as f64;
        let min = *c.iter().min().expect("n") as f64;
        assert!(
            max <= mean * 1.05 + 1.0 && min >= mean * 0.95 - 1.0,
            "n={n} {min} {max} {mean}"
        );
    }
}
