//! The Client Status Discovery Service over a book of clients, decoded field by field.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::status::v3::{
    ClientConfigStatus, ClientStatusRequest, ConfigStatus,
};

use crate::xds::clients::Clients;
use crate::xds::csds::Csds;
use crate::xds::resources::Kind;

/// (type URL, name, version, config status, client status, NACK detail) of one resource.
type Row<'a> = (
    &'a str,
    &'a str,
    &'a str,
    ConfigStatus,
    ClientConfigStatus,
    Option<&'a str>,
);

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// Two streams: node-a ACKed its CDS, NACKed its EDS and has not answered its LDS yet; node-b
/// has only said who it is.
fn book() -> Arc<Clients> {
    let clients = Arc::new(Clients::default());
    let a = clients.open("sotw", None);
    let t = |s: &str| -> Arc<str> { Arc::from(s) };
    a.heard("node-a", None);
    a.sent(
        Kind::Cluster,
        &t("7"),
        &t("n1"),
        &names(&["order-service"]),
        &[],
    );
    a.answered(Kind::Cluster, &t("n1"), Some(&t("7")), None);
    a.sent(
        Kind::Endpoints,
        &t("8"),
        &t("n2"),
        &names(&["order-service"]),
        &[],
    );
    a.answered(Kind::Endpoints, &t("n2"), None, Some("bad weight"));
    a.sent(
        Kind::Listener,
        &t("9"),
        &t("n3"),
        &names(&["order-service", "pay"]),
        &[],
    );
    let b = clients.open("delta", None);
    b.heard("node-b", None);
    clients
}

#[test]
fn each_client_says_what_it_was_sent_and_what_it_answered() {
    let csds = Csds::new(book());
    let answer = csds.status(&ClientStatusRequest::default());
    assert_eq!(answer.config.len(), 2, "{answer:?}");
    let a = &answer.config[0];
    assert_eq!(a.node.as_ref().map(|n| n.id.as_str()), Some("node-a"));
    assert!(a.client_scope.is_empty());
    let got: Vec<Row<'_>> = a
        .generic_xds_configs
        .iter()
        .map(|c| {
            (
                c.type_url.as_str(),
                c.name.as_str(),
                c.version_info.as_str(),
                ConfigStatus::try_from(c.config_status).expect("a config status"),
                ClientConfigStatus::try_from(c.client_status).expect("a client status"),
                c.error_state.as_ref().map(|e| e.details.as_str()),
            )
        })
        .collect();
    use ClientConfigStatus::{ClientAcked, ClientNacked, ClientRequested};
    assert_eq!(
        got,
        [
            (
                Kind::Cluster.type_url(),
                "order-service",
                "7",
                ConfigStatus::Synced,
                ClientAcked,
                None
            ),
            (
                Kind::Endpoints.type_url(),
                "order-service",
                "8",
                ConfigStatus::Error,
                ClientNacked,
                Some("bad weight")
            ),
            (
                Kind::Listener.type_url(),
                "order-service",
                "9",
                ConfigStatus::Stale,
                ClientRequested,
                None
            ),
            (
                Kind::Listener.type_url(),
                "pay",
                "9",
                ConfigStatus::Stale,
                ClientRequested,
                None
            ),
        ]
    );
    for c in &a.generic_xds_configs {
        assert!(c.last_updated.is_some(), "{c:?}");
        assert!(c.xds_config.is_none() && !c.is_static_resource, "{c:?}");
    }
    let nack = a.generic_xds_configs[1]
        .error_state
        .as_ref()
        .expect("error_state");
    assert_eq!(nack.version_info, "8");
    assert!(nack.last_update_attempt.is_some());
    let b = &answer.config[1];
    assert_eq!(b.node.as_ref().map(|n| n.id.as_str()), Some("node-b"));
    assert!(b.generic_xds_configs.is_empty(), "nothing sent yet: {b:?}");
}

#[test]
fn a_request_naming_a_node_gets_only_that_client() {
    let csds = Csds::new(book());
    let only = |id: &str| {
        csds.status(&ClientStatusRequest {
            node: Some(Node {
                id: id.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    let b = only("node-b");
    assert_eq!(b.config.len(), 1);
    assert_eq!(
        b.config[0].node.as_ref().map(|n| n.id.as_str()),
        Some("node-b")
    );
    assert!(only("node-z").config.is_empty());
}
