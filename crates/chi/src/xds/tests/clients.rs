//! The book of clients (`xds::clients`) that the console reads: a stream's node and locality,
//! what each type was sent, and the client's ACK or NACK with its detail, in both variants; a
//! stream that ends leaves the book.

use envoy_types::pb::envoy::config::core::v3::{Locality, Node};

use super::*;
use crate::xds::resources::Kind;

both_variants!(the_book_says_what_each_client_was_sent_and_answered);

async fn the_book_says_what_each_client_was_sent_and_answered<V: Variant>() {
    let f = serve(memory_with([inst("a", 7001, "z1")]).await, round_robin(), 8).await;
    assert!(f.clients.snapshot().is_empty());
    let mut ads = f.open::<V>().await;
    ads.set_node(Node {
        id: "edge-7".to_owned(),
        locality: Some(Locality {
            region: "eu-west-1".to_owned(),
            zone: "eu-west-1b".to_owned(),
            sub_zone: String::new(),
        }),
        ..Default::default()
    });
    ads.subscribe(Kind::Cluster, &[SERVICE]).await;
    let cds = ads.recv().await;
    ads.ack(&cds).await;
    ads.subscribe(Kind::Endpoints, &[SERVICE]).await;
    let eds = ads.recv().await;
    ads.nack(&eds, "endpoint 127.0.0.1:7001 is not allowed here")
        .await;
    settle().await;

    let book = f.clients.snapshot();
    assert_eq!(book.len(), 1, "{book:?}");
    let c = &book[0];
    assert_eq!(c.node, "edge-7");
    assert_eq!(
        (c.region.as_deref(), c.zone.as_deref()),
        (Some("eu-west-1"), Some("eu-west-1b"))
    );
    let variant = if std::any::type_name::<V>().ends_with("Sotw") {
        "sotw"
    } else {
        "delta"
    };
    assert_eq!(c.variant, variant);
    let kinds: Vec<&str> = c.types.iter().map(|t| t.kind).collect();
    assert_eq!(kinds, ["CDS", "EDS"]);
    let cds = &c.types[0].exchange;
    let sent = cds.sent.as_ref().expect("CDS was sent");
    assert_eq!(sent.resources, [SERVICE]);
    let answer = cds.answer.as_ref().expect("CDS was answered");
    assert!(answer.accepted, "{answer:?}");
    assert_eq!(answer.nonce, sent.nonce);
    let eds = &c.types[1].exchange;
    let answer = eds.answer.as_ref().expect("EDS was answered");
    assert!(!answer.accepted);
    assert_eq!(
        answer.error.as_deref(),
        Some("endpoint 127.0.0.1:7001 is not allowed here")
    );
    assert_eq!(answer.nonce, eds.sent.as_ref().expect("EDS was sent").nonce);

    drop(ads);
    settle().await;
    assert!(
        f.clients.snapshot().is_empty(),
        "a closed stream leaves the book"
    );
}
