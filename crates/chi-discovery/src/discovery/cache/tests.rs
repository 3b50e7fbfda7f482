use super::*;

fn inst(id: &str) -> Instance {
    Instance::new("s", "h", 1).with_id(id)
}

#[tokio::test]
async fn store_keeps_revision_when_unchanged() {
    let c = Cache::new(CacheConfig::default(), Duration::ZERO);
    let a = c.store("s", vec![inst("a"), inst("b")]);
    let b = c.store("s", vec![inst("b"), inst("a")]);
    assert_eq!(a.revision(), b.revision());
    let d = c.store("s", vec![inst("a")]);
    assert_ne!(a.revision(), d.revision());
    assert_eq!(c.get("s").expect("cached").len(), 1);
}

#[tokio::test]
async fn stale_marking_keeps_the_list() {
    let c = Cache::new(CacheConfig::default(), Duration::ZERO);
    c.store("s", vec![inst("a")]);
    c.mark_stale("s");
    let s = c.get("s").expect("cached");
    assert!(s.is_stale());
    assert_eq!(s.len(), 1);
    let s = c.store("s", vec![inst("a")]);
    assert!(!s.is_stale());
    assert_eq!(c.stats().stale_serves, 1);
}

#[tokio::test]
async fn evicts_least_recently_read() {
    let c = Cache::new(
        CacheConfig {
            max_size: 2,
            ..CacheConfig::default()
        },
        Duration::ZERO,
    );
    c.store("a", vec![]);
    c.sweep(Instant::now());
    c.store("b", vec![]);
    c.sweep(Instant::now());
    let _ = c.get("a");
    c.sweep(Instant::now());
    c.store("c", vec![]);
    let mut names = c.names();
    names.sort();
    assert_eq!(names, vec!["a", "c"]);
    assert_eq!(c.stats().evictions, 1);
}

#[tokio::test(start_paused = true)]
async fn ttl_marks_stale() {
    let c = Cache::new(
        CacheConfig {
            ttl: Duration::from_secs(5),
            ..CacheConfig::default()
        },
        Duration::ZERO,
    );
    c.store("s", vec![inst("a")]);
    tokio::time::advance(Duration::from_secs(4)).await;
    c.mark_stale_past_ttl(Instant::now());
    assert!(!c.get("s").expect("cached").is_stale());
    tokio::time::advance(Duration::from_secs(2)).await;
    c.mark_stale_past_ttl(Instant::now());
    assert!(c.get("s").expect("cached").is_stale());
}
