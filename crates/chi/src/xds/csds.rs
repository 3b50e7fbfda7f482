//! The Client Status Discovery Service (gRFC A40, `envoy.service.status.v3`) on `chi xds`'s gRPC
//! port: per connected client (its node id), what it was last sent per resource type and whether
//! it ACKed or NACKed it, read from the same book as the console ([`Clients`]).
//!
//! The answer is the management server's view (CSDS's `config_status`): `SYNCED` when the client
//! ACKed the last response of a type, `ERROR` when it NACKed it (with the error detail as
//! `error_state`), `STALE` while the response is unanswered; `client_status` says the same from
//! the client's side (`CLIENT_ACKED`, `CLIENT_NACKED`, `CLIENT_REQUESTED`). One entry per
//! resource the last response of a type named (the first 64; incremental responses and
//! state-of-the-world endpoint and route responses name only what changed), without the
//! resources' contents. A request naming a node (`node.id`) gets only that client's streams.

use std::sync::Arc;

use envoy_types::pb::envoy::admin::v3::UpdateFailureState;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::status::v3::client_config::GenericXdsConfig;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_server::{
    ClientStatusDiscoveryService, ClientStatusDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::status::v3::{
    ClientConfig, ClientConfigStatus, ClientStatusRequest, ClientStatusResponse, ConfigStatus,
};
use envoy_types::pb::google::protobuf::Timestamp;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::clients::{ClientStatus, Clients, Exchange};
use super::resources::Kind;

/// CSDS over a server's [`Clients`].
#[derive(Debug, Clone)]
pub(crate) struct Csds {
    clients: Arc<Clients>,
}

impl Csds {
    pub(crate) fn new(clients: Arc<Clients>) -> Self {
        Csds { clients }
    }

    pub(crate) fn into_service(self) -> ClientStatusDiscoveryServiceServer<Csds> {
        ClientStatusDiscoveryServiceServer::new(self)
    }

    /// The answer to `request`: every open stream, or those of the node it names.
    pub(crate) fn status(&self, request: &ClientStatusRequest) -> ClientStatusResponse {
        let wanted = request.node.as_ref().map(|n| n.id.as_str());
        ClientStatusResponse {
            config: self
                .clients
                .snapshot()
                .iter()
                .filter(|c| wanted.is_none_or(|id| id == c.node))
                .map(client_config)
                .collect(),
        }
    }
}

fn client_config(client: &ClientStatus) -> ClientConfig {
    ClientConfig {
        node: Some(Node {
            id: client.node.clone(),
            ..Default::default()
        }),
        generic_xds_configs: client
            .types
            .iter()
            .filter_map(|t| Some((kind_of(t.kind)?, &t.exchange)))
            .flat_map(|(kind, exchange)| configs(kind, exchange))
            .collect(),
        ..Default::default()
    }
}

/// The kind whose short name (`CDS`, ...) the book keeps.
fn kind_of(short: &str) -> Option<Kind> {
    Kind::PUSH_ORDER.into_iter().find(|k| k.short() == short)
}

/// One entry per resource the last response of `kind` named.
fn configs(kind: Kind, exchange: &Exchange) -> Vec<GenericXdsConfig> {
    let Some(sent) = &exchange.sent else {
        return Vec::new();
    };
    let answer = exchange.answer.as_ref().filter(|a| a.nonce == sent.nonce);
    let (config_status, client_status) = match answer {
        Some(a) if a.accepted => (ConfigStatus::Synced, ClientConfigStatus::ClientAcked),
        Some(_) => (ConfigStatus::Error, ClientConfigStatus::ClientNacked),
        None => (ConfigStatus::Stale, ClientConfigStatus::ClientRequested),
    };
    let error_state = answer.and_then(|a| {
        a.error.as_ref().map(|details| UpdateFailureState {
            details: details.clone(),
            version_info: sent.version.to_string(),
            last_update_attempt: Some(timestamp(a.at)),
            ..Default::default()
        })
    });
    sent.resources
        .iter()
        .map(|name| GenericXdsConfig {
            type_url: kind.type_url().to_owned(),
            name: name.clone(),
            version_info: sent.version.to_string(),
            last_updated: Some(timestamp(sent.at)),
            config_status: config_status as i32,
            client_status: client_status as i32,
            error_state: error_state.clone(),
            ..Default::default()
        })
        .collect()
}

fn timestamp(unix_ms: u64) -> Timestamp {
    Timestamp {
        seconds: i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from(unix_ms % 1000 * 1_000_000).unwrap_or(0),
    }
}

#[tonic::async_trait]
impl ClientStatusDiscoveryService for Csds {
    type StreamClientStatusStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<ClientStatusResponse, Status>> + Send>,
    >;

    async fn stream_client_status(
        &self,
        request: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<Response<Self::StreamClientStatusStream>, Status> {
        let csds = self.clone();
        let answers = request
            .into_inner()
            .map(move |r| r.map(|r| csds.status(&r)));
        Ok(Response::new(Box::pin(answers)))
    }

    async fn fetch_client_status(
        &self,
        request: Request<ClientStatusRequest>,
    ) -> Result<Response<ClientStatusResponse>, Status> {
        Ok(Response::new(self.status(request.get_ref())))
    }
}
