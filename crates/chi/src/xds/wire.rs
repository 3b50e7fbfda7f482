//! State-of-the-world responses written once and shared by the streams that send them.
//!
//! A push to ten thousand streams sends the same response ten thousand times. Through tonic's
//! generated server every stream would encode its own copy of each response into its own encode
//! buffer, and that buffer keeps the capacity of the largest response the stream ever sent (a
//! `BytesMut` reuses its allocation): hundreds of KiB per stream after a first response that
//! holds every endpoint. Here a response is [`Packed`]: the gRPC message prefix and the head
//! (version, type, nonce, control plane) followed by the resources' encoded bytes, shared with
//! every other stream through [`Built::framed`](super::state::Built).
//!
//! The whole response is shared too ([`Responses`]): the streams that send the very same
//! resources (every stream a change wakes, for the changed service) send one packed response,
//! with one version and nonce drawn from the server's counter for all of them. A stream takes
//! a shared response only when its stamp is above every stamp the stream sent (and above the
//! version its client said it held), so on each stream versions and nonces still only go up and
//! never repeat; otherwise the stream's response is packed anew with a fresh stamp. Packed per
//! stream, a push of one service to ten thousand streams cost ten thousand copies of its
//! resource into fresh buffers, and the kernel's zeroing of the pages they took (12 % of a
//! profile of `chi xds` in the fan-out bench; its CPU per change went from 188 to 181 ms).
//!
//! Resources totalling under 16 KiB are copied after the head, as one piece (one DATA frame per
//! response costs less than the copy, see [`INLINE`]); larger ones follow as one shared piece
//! (several are joined once): each piece becomes a frame queued in HTTP/2, and the queue of a
//! connection keeps its largest size. Either way nothing of the size of a stream's largest
//! message outlives the sending of it.
//!
//! Requests are read in place ([`super::request`]).
//!
//! The pieces concatenate to exactly the `DiscoveryResponse` prost would encode, with the
//! repeated `resources` field after the others: protobuf readers accept fields in any order
//! (protobuf encoding guide, "Field Order"). The wire framing is gRPC's (grpc/grpc
//! `doc/PROTOCOL-HTTP2.md`): each message is a one-byte compression flag, a four-byte big-endian
//! length and the message; the status goes out in the trailers.
//!
//! [`AdsService`] serves `StreamAggregatedResources` this way (on `chi xds`'s port, hyper polls
//! its [`SotwBody`] directly, see [`super::serve`]) and hands the incremental variant
//! (`DeltaAggregatedResources`) to tonic's generated server.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryServiceServer, SERVICE_NAME,
};
use http_body::Frame;
use tokio_stream::Stream;
use tonic::Status;
use tonic::body::Body;
use tonic::codec::Streaming;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;

use super::drive::Driving;
use super::request::RequestDecoder;
use super::resources::Kind;
use super::sotw::AdsStream;
use super::{Caller, XdsServer, control_plane};
use crate::limits::ConnInfo;
use crate::sync;

/// The state-of-the-world method's path.
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
/// Largest request accepted (tonic's default for its generated servers).
const MAX_REQUEST: usize = 4 * 1024 * 1024;
/// Responses whose resources total less than this are one piece: the resources are copied
/// after the head. Each piece becomes an HTTP/2 DATA frame, and a frame costs more than copying
/// a few KiB: hyper's poll of the body, h2's queueing and write, the client's read of it (one
/// frame per response instead of two took a tenth off `chi xds`'s CPU per push and a third off
/// the bench clients'). 16 KiB is HTTP/2's default largest frame: larger resources are cut into
/// frames anyway, and stay shared.
const INLINE: usize = 16 << 10;
/// The gRPC message prefix: compression flag and length.
const PREFIX: usize = 5;

/// One encoded `DiscoveryResponse`: the pieces that, concatenated, are its gRPC message
/// (cloned for each stream that sends it: a reference count).
#[derive(Debug, Clone)]
pub(crate) struct Packed {
    pieces: Arc<[Bytes]>,
}

/// What a response holds besides its resources.
struct Head<'a> {
    version: &'a str,
    type_url: &'static str,
    nonce: &'a str,
}

impl Head<'_> {
    /// Its fields as prost would encode them (version 1, type 4, nonce 5, control plane 6),
    /// written straight into `buf`: no `DiscoveryResponse` (four allocations) per response.
    fn encode(&self, buf: &mut BytesMut) {
        put_str(1, self.version, buf);
        put_str(4, self.type_url, buf);
        put_str(5, self.nonce, buf);
        buf.put_slice(control_plane_field());
    }

    fn encoded_len(&self) -> usize {
        str_len(1, self.version)
            + str_len(4, self.type_url)
            + str_len(5, self.nonce)
            + control_plane_field().len()
    }
}

/// A string field, omitted when empty (proto3's default, as prost encodes it).
fn put_str(tag: u32, value: &str, buf: &mut BytesMut) {
    if !value.is_empty() {
        prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, buf);
        prost::encoding::encode_varint(value.len() as u64, buf);
        buf.put_slice(value.as_bytes());
    }
}

fn str_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        prost::encoding::key_len(tag)
            + prost::encoding::encoded_len_varint(value.len() as u64)
            + value.len()
    }
}

/// The `control_plane` field (6) of every response, encoded once.
fn control_plane_field() -> &'static [u8] {
    static FIELD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    FIELD.get_or_init(|| {
        let mut field = Vec::new();
        prost::encoding::message::encode(6, &control_plane(), &mut field);
        field
    })
}

impl Packed {
    /// `head` followed by `resources`, each the encoded `resources` field of one resource: one
    /// piece of its own when they total less than [`INLINE`]; else the head, then the resources
    /// as one piece (shared when there is one, joined when there are several).
    fn new(head: &Head<'_>, resources: &[Bytes]) -> Result<Packed, Status> {
        let carried = resources.iter().map(Bytes::len).sum::<usize>();
        let total = head.encoded_len() + carried;
        let length = u32::try_from(total).map_err(|_| {
            Status::resource_exhausted(format!(
                "a response of {total} bytes is over gRPC's limit of 4 GiB"
            ))
        })?;
        let inline = carried < INLINE;
        let own_len = PREFIX + head.encoded_len() + if inline { carried } else { 0 };
        let mut own = BytesMut::with_capacity(own_len);
        own.put_u8(0);
        own.put_u32(length);
        head.encode(&mut own);
        let pieces: Arc<[Bytes]> = match resources {
            _ if inline => {
                resources.iter().for_each(|r| own.extend_from_slice(r));
                Arc::new([own.freeze()])
            }
            [one] => Arc::new([own.freeze(), one.clone()]),
            several => {
                let mut joined = BytesMut::with_capacity(carried);
                several.iter().for_each(|r| joined.extend_from_slice(r));
                Arc::new([own.freeze(), joined.freeze()])
            }
        };
        Ok(Packed { pieces })
    }

    /// Bytes of its own (not shared with the resources it carries).
    fn own_len(&self) -> usize {
        match &*self.pieces {
            [own] => own.len(),
            [own, rest, ..] => own.len() + rest.len(),
            [] => 0,
        }
    }
}

/// Responses packed once for every stream that sends the same resources: see the module docs.
#[derive(Default)]
pub(crate) struct Responses {
    map: Mutex<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Kind and the (address, length) of each resource's bytes -> the response, and the
    /// resources (held, so no address is reused while its entry lives).
    map: HashMap<ResponseKey, (Stamped, Vec<Bytes>)>,
    /// Bytes the responses hold of their own.
    bytes: usize,
}

/// A response's kind and the (address, length) of each of its resources' bytes.
type ResponseKey = (Kind, Vec<(usize, usize)>);

/// A packed response and the stamp (version and nonce) it carries.
#[derive(Debug, Clone)]
pub(crate) struct Stamped {
    pub(crate) stamp: u64,
    /// The stamp as text: the response's version and nonce.
    pub(crate) text: Arc<str>,
    pub(crate) packed: Packed,
}

/// Most responses kept before the cache starts over (old ones are never sent again).
const RESPONSES_MAX: usize = 4096;
/// Most bytes of their own the kept responses hold before the cache starts over.
const RESPONSES_MAX_BYTES: usize = 64 << 20;

impl Responses {
    /// The response of `kind` carrying `resources` (each the `framed` bytes of a
    /// [`Built`](super::state::Built)), stamped above `after`: the one another stream sent when
    /// its stamp is, else one packed now with the stamp `next` draws from the server's counter.
    pub(crate) fn get(
        &self,
        kind: Kind,
        resources: &[Bytes],
        after: u64,
        next: impl FnOnce() -> u64,
    ) -> Result<Stamped, Status> {
        let key = (
            kind,
            resources
                .iter()
                .map(|r| (r.as_ptr() as usize, r.len()))
                .collect(),
        );
        let mut shared = sync::lock(&self.map);
        if let Some((stamped, _)) = shared.map.get(&key)
            && stamped.stamp > after
        {
            return Ok(stamped.clone());
        }
        let stamp = next();
        let text: Arc<str> = stamp.to_string().into();
        let head = Head {
            version: &text,
            type_url: kind.type_url(),
            nonce: &text,
        };
        let packed = Packed::new(&head, resources)?;
        let own = packed.own_len();
        if shared.map.len() >= RESPONSES_MAX || shared.bytes + own > RESPONSES_MAX_BYTES {
            shared.map.clear();
            shared.bytes = 0;
        }
        let stamped = Stamped {
            stamp,
            text,
            packed,
        };
        shared.bytes += own;
        if let Some((old, _)) = shared
            .map
            .insert(key, (stamped.clone(), resources.to_vec()))
        {
            shared.bytes = shared.bytes.saturating_sub(old.packed.own_len());
        }
        Ok(stamped)
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    use super::*;

    fn any(value: &[u8]) -> Any {
        Any {
            type_url: "type.googleapis.com/x".into(),
            value: value.to_vec(),
        }
    }

    /// `any` as the `resources` field of a response.
    fn framed(any: &Any) -> Bytes {
        let mut b = BytesMut::new();
        prost::encoding::message::encode(2, any, &mut b);
        b.freeze()
    }

    /// The pieces are the very bytes prost encodes for the same response (fields in another
    /// order, which protobuf readers accept), one resource or several, copied or shared.
    #[test]
    fn a_packed_response_decodes_as_the_response_it_stands_for() {
        // (resources, bytes each): under INLINE in all, then one and several over it.
        for (n, size) in [(0, 0), (1, 1), (3, 700), (1, 20_000), (3, 8_000)] {
            let resources: Vec<Any> = (0..n)
                .map(|i| Any {
                    type_url: "type.googleapis.com/x".into(),
                    value: vec![i as u8; size + i],
                })
                .collect();
            let framed: Vec<Bytes> = resources.iter().map(framed).collect();
            let head = Head {
                version: "17",
                type_url: "type.googleapis.com/y",
                nonce: if n == 0 { "" } else { "4" },
            };
            let packed = Packed::new(&head, &framed).expect("packed");
            let bytes: Vec<u8> = packed
                .pieces
                .iter()
                .flat_map(|p| p.iter().copied())
                .collect();
            let length = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
            assert_eq!((bytes[0], length), (0, bytes.len() - PREFIX));
            let decoded = DiscoveryResponse::decode(&bytes[PREFIX..]).expect("decodes");
            let want = DiscoveryResponse {
                version_info: "17".into(),
                resources,
                type_url: "type.googleapis.com/y".into(),
                nonce: head.nonce.into(),
                control_plane: Some(control_plane()),
                ..Default::default()
            };
            assert_eq!(decoded, want, "{n} resources");
            let inline = framed.iter().map(Bytes::len).sum::<usize>() < INLINE;
            assert_eq!(
                packed.pieces.len(),
                if inline { 1 } else { 2 },
                "{n} x {size}"
            );
        }
    }

    /// Streams sending the same resources share one response while its stamp is above
    /// theirs; a stream that already sent a higher stamp gets the same resources packed anew,
    /// with a fresh stamp that the others then share.
    #[test]
    fn a_response_is_shared_only_above_the_streams_last_stamp() {
        let responses = Responses::default();
        let counter = std::sync::atomic::AtomicU64::new(100);
        let next = || counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let (a, b) = (framed(&any(b"a")), framed(&any(b"b")));
        let get = |kind, resource: &Bytes, after| {
            responses
                .get(kind, std::slice::from_ref(resource), after, next)
                .expect("packed")
        };
        let (first, again) = (get(Kind::Endpoints, &a, 0), get(Kind::Endpoints, &a, 50));
        assert_eq!((first.stamp, &*first.text), (101, "101"));
        assert_eq!(again.stamp, 101, "shared");
        assert!(Arc::ptr_eq(&first.packed.pieces, &again.packed.pieces));
        // Other resources, or the same under another type: another response.
        let (other, cluster) = (get(Kind::Endpoints, &b, 0), get(Kind::Cluster, &a, 0));
        assert_eq!((other.stamp, cluster.stamp), (102, 103));
        // A stream that sent 101 already (or whose client holds 101) gets a fresh one.
        let fresh = get(Kind::Endpoints, &a, 101);
        assert_eq!(fresh.stamp, 104);
        let later = get(Kind::Endpoints, &a, 0);
        assert_eq!(later.stamp, 104, "the fresh one is shared from then on");
        let bytes: Vec<u8> = fresh
            .packed
            .pieces
            .iter()
            .flat_map(|p| p.to_vec())
            .collect();
        let decoded = DiscoveryResponse::decode(&bytes[PREFIX..]).expect("decodes");
        assert_eq!(
            (decoded.version_info.as_str(), decoded.nonce.as_str()),
            ("104", "104")
        );
    }
}

/// The response body of one state-of-the-world stream: the pieces of each [`Packed`] response
/// as the stream's loop makes them, then the status in the trailers.
pub(crate) struct SotwBody {
    responses: Driving<Packed>,
    /// The response being sent, and how many of its pieces went.
    sending: Option<(Packed, usize)>,
    done: bool,
}

impl SotwBody {
    pub(crate) fn new(responses: Driving<Packed>) -> SotwBody {
        SotwBody {
            responses,
            sending: None,
            done: false,
        }
    }
}

impl http_body::Body for SotwBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        loop {
            if let Some((packed, sent)) = &mut this.sending {
                if let Some(piece) = packed.pieces.get(*sent) {
                    *sent += 1;
                    return Poll::Ready(Some(Ok(Frame::data(piece.clone()))));
                }
                this.sending = None;
            }
            if this.done {
                return Poll::Ready(None);
            }
            let status = match ready!(Pin::new(&mut this.responses).poll_next(cx)) {
                Some(Ok(packed)) => {
                    this.sending = Some((packed, 0));
                    continue;
                }
                Some(Err(status)) => *status,
                None => Status::ok(""),
            };
            this.done = true;
            let mut trailers = http::HeaderMap::new();
            if let Err(e) = status.add_header(&mut trailers) {
                tracing::debug!("cannot write the status of an ADS stream: {e}");
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
    }
}

/// The ADS service: state-of-the-world streams through [`SotwBody`], the incremental variant
/// through tonic's generated server.
#[derive(Debug, Clone)]
pub(crate) struct AdsService {
    server: XdsServer,
    generated: AggregatedDiscoveryServiceServer<XdsServer>,
}

impl AdsService {
    pub(crate) fn new(server: XdsServer) -> AdsService {
        AdsService {
            generated: AggregatedDiscoveryServiceServer::new(server.clone()),
            server,
        }
    }

    /// Opens a state-of-the-world stream over the request body `request` (any HTTP body: hyper's
    /// own on chi's port, tonic's in its router), or the status that refuses it.
    pub(crate) fn sotw<B>(
        &self,
        request: http::Request<B>,
    ) -> Result<http::Response<SotwBody>, Status>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(encoding) = request
            .headers()
            .get("grpc-encoding")
            .filter(|e| e.as_bytes() != b"identity")
        {
            return Err(Status::unimplemented(format!(
                "chi xds does not read compressed requests (grpc-encoding {encoding:?})"
            )));
        }
        let extensions = request.extensions();
        let caller = Caller::new(
            extensions.get::<ConnInfo>(),
            extensions
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr),
        );
        let requests =
            Streaming::new_request(RequestDecoder, request.into_body(), None, Some(MAX_REQUEST));
        let responses = self.server.open(caller, requests, |tx, log| {
            AdsStream::new(self.server.parts(log), tx)
        })?;
        let mut response = http::Response::new(SotwBody::new(responses));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        Ok(response)
    }
}

/// Whether `path` is the state-of-the-world ADS method.
pub(crate) fn is_sotw(path: &str) -> bool {
    path == SOTW_PATH
}

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE_NAME;
}

impl Service<http::Request<Body>> for AdsService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if is_sotw(request.uri().path()) {
            let response = match self.sotw(request) {
                Ok(response) => response.map(Body::new),
                Err(status) => status.into_http(),
            };
            Box::pin(std::future::ready(Ok(response)))
        } else {
            self.generated.call(request)
        }
    }
}
