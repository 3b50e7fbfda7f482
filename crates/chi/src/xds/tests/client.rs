//! The test's side of an ADS stream: one client for both variants of the protocol, so a scenario
//! reads alike whichever one the server speaks: subscribe, ACK, NACK, the next response, nothing.
//!
//! [`Variant`] is what differs: the rpc, how a request says what the client wants, how it answers
//! a response. A state-of-the-world client restates every name of a type in each request, with the
//! version it accepted and the nonce it saw last, so [`Sotw`] remembers them; an incremental one
//! sends only the change, so [`Delta`] remembers nothing.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use super::{PATIENCE, QUIET};
use crate::xds::resources::Kind;

type AdsClient = AggregatedDiscoveryServiceClient<Channel>;

/// The node id every request carries unless the test sets a node.
const NODE: &str = "test-node";

/// A response of either variant, as the tests read it.
pub(crate) trait Reply: Debug + Send + 'static {
    /// Its resource type (a test fails on one the server should not send).
    fn kind(&self) -> Kind;
    /// The resources it carries, packed.
    fn packed(&self) -> Vec<&Any>;
    /// The names it tells the client to drop (incremental xDS only).
    fn removed(&self) -> &[String];
}

/// One variant of ADS, as the test client speaks it.
pub(crate) trait Variant: Send + 'static {
    type Request: Debug + Send + 'static;
    type Response: Reply;
    /// What the client keeps between requests.
    type Memory: Default + Send;

    /// Opens a stream that carries `requests`.
    fn call(
        client: AdsClient,
        requests: ReceiverStream<Self::Request>,
    ) -> impl Future<Output = Result<Streaming<Self::Response>, Status>> + Send;
    /// The node of `request`.
    fn node(request: &mut Self::Request) -> &mut Option<Node>;
    /// Asks for `names` of `kind` too.
    fn subscribe(memory: &mut Self::Memory, kind: Kind, names: &[&str]) -> Self::Request;
    /// No longer asks for `names` of `kind`.
    fn unsubscribe(memory: &mut Self::Memory, kind: Kind, names: &[&str]) -> Self::Request;
    /// Answers `r`: an ACK, or a NACK saying `error`.
    fn answer(
        memory: &mut Self::Memory,
        r: &Self::Response,
        error: Option<RpcStatus>,
    ) -> Self::Request;
    /// Notes that `r` came.
    fn heard(memory: &mut Self::Memory, r: &Self::Response);
}

/// One ADS stream, driven by hand.
pub(crate) struct Client<V: Variant> {
    tx: mpsc::Sender<V::Request>,
    rx: Streaming<V::Response>,
    memory: V::Memory,
    /// The node of the requests that name none.
    node: Node,
}

impl<V: Variant> Client<V> {
    /// Opens a stream on `channel`, or the status the server refused it with.
    pub(crate) async fn open_on(channel: Channel) -> Result<Client<V>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let rx = V::call(AdsClient::new(channel), ReceiverStream::new(rx)).await?;
        Ok(Client {
            tx,
            rx,
            memory: V::Memory::default(),
            node: Node {
                id: NODE.to_owned(),
                ..Default::default()
            },
        })
    }

    /// The node the requests carry from now on (a client's locality, say).
    pub(crate) fn set_node(&mut self, node: Node) {
        self.node = node;
    }

    /// Sends `request` as it is, with the client's node when it names none.
    pub(crate) async fn send(&self, mut request: V::Request) {
        V::node(&mut request).get_or_insert_with(|| self.node.clone());
        self.tx
            .send(request)
            .await
            .expect("the stream takes requests");
    }

    /// Asks for `names` of `kind` too.
    pub(crate) async fn subscribe(&mut self, kind: Kind, names: &[&str]) {
        let request = V::subscribe(&mut self.memory, kind, names);
        self.send(request).await;
    }

    /// No longer asks for `names` of `kind`.
    pub(crate) async fn unsubscribe(&mut self, kind: Kind, names: &[&str]) {
        let request = V::unsubscribe(&mut self.memory, kind, names);
        self.send(request).await;
    }

    /// ACKs `r`.
    pub(crate) async fn ack(&mut self, r: &V::Response) {
        let request = V::answer(&mut self.memory, r, None);
        self.send(request).await;
    }

    /// NACKs `r`, saying `why`.
    pub(crate) async fn nack(&mut self, r: &V::Response, why: &str) {
        let error = RpcStatus {
            code: tonic::Code::InvalidArgument as i32,
            message: why.to_owned(),
            details: Vec::new(),
        };
        let request = V::answer(&mut self.memory, r, Some(error));
        self.send(request).await;
    }

    /// The next response, or the status that ended the stream; fails the test when neither
    /// comes within [`PATIENCE`], or the stream ends without a status.
    pub(crate) async fn next(&mut self) -> Result<V::Response, Status> {
        match tokio::time::timeout(PATIENCE, self.rx.next()).await {
            Ok(Some(Ok(r))) => {
                V::heard(&mut self.memory, &r);
                Ok(r)
            }
            Ok(Some(Err(status))) => Err(status),
            Ok(None) => panic!("the stream ended without a status"),
            Err(_) => panic!("nothing came within {PATIENCE:?}"),
        }
    }

    /// The next response.
    pub(crate) async fn recv(&mut self) -> V::Response {
        match self.next().await {
            Ok(r) => r,
            Err(status) => panic!("expected a response, got {status:?}"),
        }
    }

    /// The next response, ACKed.
    pub(crate) async fn take(&mut self) -> V::Response {
        let r = self.recv().await;
        self.ack(&r).await;
        r
    }

    /// The status that ends the stream next.
    pub(crate) async fn recv_status(&mut self) -> Status {
        match self.next().await {
            Err(status) => status,
            Ok(r) => panic!("expected an error status, got {r:?}"),
        }
    }

    /// Asserts that the server sends nothing: looks once it is idle and has kept silent for
    /// [`QUIET`] of its time (see the [module docs](super)).
    pub(crate) async fn quiet(&mut self) {
        tokio::time::sleep(QUIET).await;
        if let Some(item) = self.rx.next().now_or_never() {
            panic!("expected nothing from the server, got {item:?}");
        }
    }
}

/// State-of-the-world ADS (`StreamAggregatedResources`).
pub(crate) enum Sotw {}

/// What a state-of-the-world client restates about one type in every request.
#[derive(Debug, Default)]
pub(crate) struct Asked {
    names: Vec<String>,
    /// The version it accepted last.
    accepted: String,
    /// The nonce of the last response of the type.
    nonce: String,
}

impl Asked {
    fn request(&self, kind: Kind) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: self.accepted.clone(),
            resource_names: self.names.clone(),
            type_url: kind.type_url().to_owned(),
            response_nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

impl Variant for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    type Memory = BTreeMap<Kind, Asked>;

    async fn call(
        mut client: AdsClient,
        requests: ReceiverStream<DiscoveryRequest>,
    ) -> Result<Streaming<DiscoveryResponse>, Status> {
        let response = client.stream_aggregated_resources(requests).await?;
        Ok(response.into_inner())
    }

    fn node(request: &mut DiscoveryRequest) -> &mut Option<Node> {
        &mut request.node
    }

    fn subscribe(memory: &mut Self::Memory, kind: Kind, names: &[&str]) -> DiscoveryRequest {
        let asked = memory.entry(kind).or_default();
        for name in names {
            if !asked.names.iter().any(|n| n == name) {
                asked.names.push((*name).to_owned());
            }
        }
        asked.request(kind)
    }

    fn unsubscribe(memory: &mut Self::Memory, kind: Kind, names: &[&str]) -> DiscoveryRequest {
        let asked = memory.entry(kind).or_default();
        asked.names.retain(|n| !names.contains(&n.as_str()));
        asked.request(kind)
    }

    fn answer(
        memory: &mut Self::Memory,
        r: &DiscoveryResponse,
        error: Option<RpcStatus>,
    ) -> DiscoveryRequest {
        let asked = memory.entry(r.kind()).or_default();
        if error.is_none() {
            asked.accepted = r.version_info.clone();
        }
        asked.nonce = r.nonce.clone();
        DiscoveryRequest {
            error_detail: error,
            ..asked.request(r.kind())
        }
    }

    fn heard(memory: &mut Self::Memory, r: &DiscoveryResponse) {
        memory.entry(r.kind()).or_default().nonce = r.nonce.clone();
    }
}

impl Client<Sotw> {
    /// Sends a request of `kind` for exactly `names`, with the `version` and `nonce` given
    /// rather than those the client holds (a stale nonce, one from an earlier stream).
    pub(crate) async fn request(&mut self, kind: Kind, names: &[&str], version: &str, nonce: &str) {
        let asked = self.memory.entry(kind).or_default();
        asked.names = names.iter().map(|n| (*n).to_owned()).collect();
        let request = DiscoveryRequest {
            version_info: version.to_owned(),
            response_nonce: nonce.to_owned(),
            ..asked.request(kind)
        };
        self.send(request).await;
    }
}

impl Reply for DiscoveryResponse {
    fn kind(&self) -> Kind {
        Kind::from_type_url(&self.type_url).expect("a type chi xds serves")
    }

    fn packed(&self) -> Vec<&Any> {
        self.resources.iter().collect()
    }

    fn removed(&self) -> &[String] {
        &[]
    }
}

/// Incremental ADS (`DeltaAggregatedResources`).
pub(crate) enum Delta {}

impl Variant for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    type Memory = ();

    async fn call(
        mut client: AdsClient,
        requests: ReceiverStream<DeltaDiscoveryRequest>,
    ) -> Result<Streaming<DeltaDiscoveryResponse>, Status> {
        let response = client.delta_aggregated_resources(requests).await?;
        Ok(response.into_inner())
    }

    fn node(request: &mut DeltaDiscoveryRequest) -> &mut Option<Node> {
        &mut request.node
    }

    fn subscribe(_: &mut (), kind: Kind, names: &[&str]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: kind.type_url().to_owned(),
            resource_names_subscribe: names.iter().map(|n| (*n).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn unsubscribe(_: &mut (), kind: Kind, names: &[&str]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: kind.type_url().to_owned(),
            resource_names_unsubscribe: names.iter().map(|n| (*n).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn answer(
        _: &mut (),
        r: &DeltaDiscoveryResponse,
        error: Option<RpcStatus>,
    ) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            error_detail: error,
            ..Default::default()
        }
    }

    fn heard(_: &mut (), _: &DeltaDiscoveryResponse) {}
}

impl Reply for DeltaDiscoveryResponse {
    fn kind(&self) -> Kind {
        Kind::from_type_url(&self.type_url).expect("a type chi xds serves")
    }

    fn packed(&self) -> Vec<&Any> {
        self.resources
            .iter()
            .filter_map(|r| r.resource.as_ref())
            .collect()
    }

    fn removed(&self) -> &[String] {
        &self.removed_resources
    }
}
