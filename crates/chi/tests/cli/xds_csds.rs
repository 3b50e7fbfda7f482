//! `chi xds`'s Client Status Discovery Service (gRFC A40) on its gRPC port: with a real grpcio
//! client connected and calling, a CSDS client (tonic, envoy-types) asks what each client was sent
//! and sees that client's node id with the three resources of `order-service` (its routes are
//! inline in the Listener), each ACKed
//! (`SYNCED` / `CLIENT_ACKED`) at the version it was sent.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use envoy_types::pb::envoy::service::status::v3::{
    ClientConfigStatus, ClientStatusRequest, ClientStatusResponse, ConfigStatus,
};

use crate::real::block_on;
use crate::support::{Agent, eventually, registration};
use crate::xds::{
    Client, Lang, SERVICE, backend_agent, python, serve_backends, start_xds, write_bootstrap,
};

const NODE: &str = "chi-test-client-eu-west-1a";

/// `chi xds`'s CSDS answer to a request for `node` (all clients when `None`).
fn status(xds: &str, node: Option<&str>) -> ClientStatusResponse {
    block_on(async {
        let mut csds = ClientStatusDiscoveryServiceClient::connect(format!("http://{xds}"))
            .await
            .expect("connect to CSDS");
        csds.fetch_client_status(ClientStatusRequest {
            node: node.map(|id| Node {
                id: id.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("fetch_client_status")
        .into_inner()
    })
}

/// (type URL suffix, name, config status, client status) of each resource of `node`'s config.
fn synced(
    answer: &ClientStatusResponse,
) -> Vec<(String, String, ConfigStatus, ClientConfigStatus)> {
    let mut got: Vec<_> = answer
        .config
        .iter()
        .flat_map(|c| &c.generic_xds_configs)
        .map(|c| {
            (
                c.type_url.rsplit('.').next().unwrap_or_default().to_owned(),
                c.name.clone(),
                ConfigStatus::try_from(c.config_status).unwrap_or(ConfigStatus::Unknown),
                ClientConfigStatus::try_from(c.client_status)
                    .unwrap_or(ClientConfigStatus::ClientUnknown),
            )
        })
        .collect();
    got.sort();
    got
}

#[test]
fn csds_says_what_a_grpcio_client_was_sent_and_acked() {
    let host = Agent::start(&registration("registry-host", 1, "v1", ""), &[]);
    let url = host.url();
    let (_servers, ports) = serve_backends(&["b1"]);
    let _agent = backend_agent(&url, "b1", ports["b1"], "eu-west-1a");
    let (_xds, xds_addr) = start_xds(&url, "127.0.0.1:0", None);
    assert!(
        status(&xds_addr, None).config.is_empty(),
        "no client connected yet"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let bootstrap = write_bootstrap(dir.path(), &xds_addr, "eu-west-1a");
    let mut client = Client::start(&Lang::Grpcio(python()), &bootstrap);
    client.until("grpcio: b1 to answer", 5, |c| c.get("b1") == Some(&5));
    // Routes go inline in the Listener (no --rds): three resources.
    let want: Vec<_> = ["Cluster", "ClusterLoadAssignment", "Listener"]
        .into_iter()
        .map(|t| {
            (
                t.to_owned(),
                SERVICE.to_owned(),
                ConfigStatus::Synced,
                ClientConfigStatus::ClientAcked,
            )
        })
        .collect();
    let mut last = Vec::new();
    eventually("grpcio's three resources ACKed in CSDS", || {
        last = synced(&status(&xds_addr, Some(NODE)));
        last == want
    });
    eprintln!("CSDS for {NODE}: {last:?}");
    let answer = status(&xds_addr, Some(NODE));
    assert_eq!(answer.config.len(), 1, "one stream of {NODE}: {answer:?}");
    let config = &answer.config[0];
    assert_eq!(config.node.as_ref().map(|n| n.id.as_str()), Some(NODE));
    for c in &config.generic_xds_configs {
        assert!(!c.version_info.is_empty(), "a version: {c:?}");
        assert!(c.error_state.is_none(), "no NACK: {c:?}");
    }
    assert!(
        status(&xds_addr, Some("another-node")).config.is_empty(),
        "a node not connected has no config"
    );
}
