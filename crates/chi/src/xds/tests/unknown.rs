//! The bound on names a stream follows that the registry does not know (`--max-unknown-names`):
//! one request naming a thousand made-up services once opened a thousand registry watches.

use super::client::Reply;
use super::server::serve_bounded;
use super::*;
use crate::xds::resources::Kind;

both_variants!(
    unknown_names_past_the_bound_are_refused_before_any_watch,
    names_the_registry_lists_are_not_unknown,
);

/// 1,000 names nobody registered, on a server allowing 10: the stream ends with
/// `RESOURCE_EXHAUSTED` naming the flag, and no registry watch opened for them; a stream asking
/// for 10 unknown names and one that exists is served, the 10 followed until they appear.
async fn unknown_names_past_the_bound_are_refused_before_any_watch<V: Variant>() {
    let memory = memory_with([inst("a", 7001, "z1")]).await;
    let f = serve_bounded(memory.clone(), round_robin(), 10).await;
    let mut ads = f.open::<V>().await;
    let names: Vec<String> = (0..1000).map(|i| format!("made-up-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    ads.subscribe(Kind::Endpoints, &refs).await;
    let status = ads.recv_status().await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("1000 of the 1000 services")
            && status
                .message()
                .contains("at most 10 (--max-unknown-names)"),
        "{status:?}"
    );
    settle().await;
    assert_eq!(f.watches(), 0, "no watch for a refused request");

    let mut ads = f.open::<V>().await;
    let mut within: Vec<&str> = refs[..10].to_vec();
    within.push(SERVICE);
    ads.subscribe(Kind::Endpoints, &within).await;
    let first = ads.recv().await;
    ads.ack(&first).await;
    settle().await;
    assert_eq!(f.watches(), 11, "the ten unknown names are followed");
    register(
        &memory,
        Instance::new("made-up-3", "127.0.0.1", 7333).with_id("late"),
    )
    .await;
    // The incremental variant first tells the client the ten do not exist; then the one that
    // appeared comes.
    loop {
        let r = ads.recv().await;
        ads.ack(&r).await;
        if !r.packed().is_empty() {
            break;
        }
    }
    // One more unknown name now that one of the ten exists: still within the bound.
    ads.subscribe(Kind::Endpoints, &[refs[10]]).await;
    // Answered (incremental xDS: it does not exist), not refused.
    while let Ok(answer) = tokio::time::timeout(QUIET, ads.next()).await {
        let r = answer.expect("still within the bound");
        ads.ack(&r).await;
    }
    // Two more: past it.
    ads.subscribe(Kind::Endpoints, &refs[11..13]).await;
    let status = loop {
        match ads.next().await {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
}

/// Names in the registry's list of services are known even before any stream follows them: 50
/// services without a bound problem on a server allowing none unknown.
async fn names_the_registry_lists_are_not_unknown<V: Variant>() {
    let memory = memory_with(
        (0..50).map(|i| Instance::new(format!("svc-{i}"), "127.0.0.1", 7000 + i).with_id("one")),
    )
    .await;
    let f = serve_bounded(memory, round_robin(), 0).await;
    let mut ads = f.open::<V>().await;
    let names: Vec<String> = (0..50).map(|i| format!("svc-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    ads.subscribe(Kind::Endpoints, &refs).await;
    let first = ads.recv().await;
    ads.ack(&first).await;
    settle().await;
    assert_eq!(f.watches(), 50);
}
