//! The bench's clients: ADS streams over plain HTTP/2, one task per connection.
//!
//! They stand in for gRPC clients on other machines but share the server's cores, so they are
//! as cheap as a correct client can be: a connection's task reads what arrived (256 KiB at a
//! time), lets the streams that got something ACK it (`FuturesUnordered` polls only those), and
//! sends the ACKs in one write per poll.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::google::protobuf::Any;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const SOTW: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
/// What one read of a client connection takes from its socket at most.
const READ_CHUNK: usize = 256 << 10;

/// What a bench stream reads of a `DiscoveryResponse`: its version and nonce, and the resources
/// as slices of the received bytes (decoded only until the initial state is complete).
#[derive(Clone, PartialEq, prost::Message)]
struct Response {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    resources: Vec<Bytes>,
    #[prost(string, tag = "5")]
    nonce: String,
}

/// A `DiscoveryRequest` for every service's endpoints as one gRPC message (its 5-byte prefix,
/// then the request): the subscription (names and type, the same on every request of every
/// stream) encoded once, then the version and nonce it answers, and the node on a stream's
/// first request only (as gRPC's clients send it).
fn request(subscription: &[u8], node: Option<&Node>, version: &str, nonce: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(subscription.len() + version.len() + nonce.len() + 64);
    b.put_slice(&[0; 5]);
    prost::encoding::string::encode(1, &version.to_owned(), &mut b);
    if let Some(node) = node {
        prost::encoding::message::encode(2, node, &mut b);
    }
    b.put_slice(subscription);
    prost::encoding::string::encode(5, &nonce.to_owned(), &mut b);
    let len = u32::try_from(b.len() - 5).unwrap();
    b[1..5].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

/// A client connection's socket as its HTTP/2 codec sees it: reads come from one large read of
/// the socket, writes gather in `out` and leave in one write per poll of the connection's task
/// ([`Shared::send_out`]). The streams stand in for clients on other machines; sharing this
/// one with the server, they should cost it as little CPU as they can.
struct BenchIo {
    shared: Arc<Shared>,
    read: BytesMut,
}

struct Shared {
    tcp: TcpStream,
    out: Mutex<Vec<u8>>,
}

impl Shared {
    /// Writes what the codec gathered, as far as the socket takes it now.
    fn send_out(&self, cx: &mut Context<'_>) -> io::Result<()> {
        let mut out = self.out.lock().unwrap();
        while !out.is_empty() {
            match self.tcp.try_write(&out) {
                Ok(n) => {
                    out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.tcp.poll_write_ready(cx) {
                        Poll::Ready(r) => r?,
                        Poll::Pending => return Ok(()),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl AsyncRead for BenchIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.read.is_empty() {
            ready!(this.shared.tcp.poll_read_ready(cx))?;
            this.read.reserve(READ_CHUNK);
            match this.shared.tcp.try_read_buf(&mut this.read) {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for BenchIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.shared.out.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut out = self.shared.out.lock().unwrap();
        for b in bufs {
            out.extend_from_slice(b);
        }
        Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Where the streams report: the arrivals of each change (per poll of a connection, in one
/// batch), and each stream's initial state complete.
#[derive(Clone)]
pub(crate) struct Report {
    pub(crate) arrivals: mpsc::UnboundedSender<Vec<(usize, Instant)>>,
    pub(crate) ready: mpsc::UnboundedSender<()>,
}

/// What the streams of a connection share: the subscription they send, the number of services
/// that makes their initial state complete, and the arrivals of this poll (reported in one
/// batch per poll of the connection).
struct Streams {
    services: usize,
    subscription: Bytes,
    ready: mpsc::UnboundedSender<()>,
    arrived: Mutex<Vec<(usize, Instant)>>,
}

/// One ADS stream: it subscribes to every service's endpoints and ACKs every response; every
/// response after the initial state is a change.
async fn stream(
    s: usize,
    response: h2::client::ResponseFuture,
    mut send: h2::SendStream<Bytes>,
    shared: Arc<Streams>,
) {
    let Ok(response) = response.await else {
        return;
    };
    let mut recv = response.into_body();
    let mut known = HashSet::new();
    let mut ready = false;
    // A gRPC message split across DATA frames.
    let mut partial = BytesMut::new();
    while let Some(Ok(chunk)) = recv.data().await {
        let _ = recv.flow_control().release_capacity(chunk.len());
        let mut data = if partial.is_empty() {
            chunk
        } else {
            partial.extend_from_slice(&chunk);
            partial.split().freeze()
        };
        while data.len() >= 5 {
            let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
            if data.len() < 5 + len {
                break;
            }
            let message = data.slice(5..5 + len);
            data.advance(5 + len);
            let r = Response::decode(message).expect("a DiscoveryResponse");
            if ready {
                shared.arrived.lock().unwrap().push((s, Instant::now()));
            } else {
                for resource in &r.resources {
                    let Ok(any) = Any::decode(resource.clone()) else {
                        continue;
                    };
                    if let Ok(cla) = ClusterLoadAssignment::decode(any.value.as_slice()) {
                        known.insert(cla.cluster_name);
                    }
                }
                if known.len() == shared.services {
                    ready = true;
                    let _ = shared.ready.send(());
                }
            }
            let ack = request(&shared.subscription, None, &r.version_info, &r.nonce);
            if send.send_data(ack, false).is_err() {
                return;
            }
        }
        partial.extend_from_slice(&data);
    }
}

/// One client connection and its streams, driven by a single task: one poll reads what
/// arrived, lets the streams that got something answer it, and sends the answers in one write.
pub(crate) async fn connection(
    addr: String,
    mut opens: mpsc::UnboundedReceiver<usize>,
    services: usize,
    subscription: Bytes,
    report: Report,
) {
    let tcp = TcpStream::connect(&addr).await.expect("connect to chi xds");
    tcp.set_nodelay(true).expect("nodelay");
    let shared = Arc::new(Shared {
        tcp,
        out: Mutex::new(Vec::new()),
    });
    let io = BenchIo {
        shared: shared.clone(),
        read: BytesMut::new(),
    };
    let handshake = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake::<_, Bytes>(io);
    let (mut send_request, mut conn) = {
        let mut handshake = std::pin::pin!(handshake);
        std::future::poll_fn(|cx| {
            let r = handshake.as_mut().poll(cx);
            shared.send_out(cx).expect("write");
            r
        })
        .await
        .expect("HTTP/2 handshake")
    };
    let uri = format!("http://{addr}{SOTW}");
    let streams_of = Arc::new(Streams {
        services,
        subscription,
        ready: report.ready.clone(),
        arrived: Mutex::new(Vec::new()),
    });
    let mut waiting = VecDeque::new();
    let mut streams = FuturesUnordered::new();
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = Pin::new(&mut conn).poll(cx) {
            return Poll::Ready(r);
        }
        while let Poll::Ready(Some(s)) = opens.poll_recv(cx) {
            waiting.push_back(s);
        }
        while let Some(&s) = waiting.front() {
            if send_request.poll_ready(cx).is_pending() {
                break;
            }
            waiting.pop_front();
            let head = http::Request::post(&uri)
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .expect("request head");
            let (response, mut send) = send_request.send_request(head, false).expect("stream");
            let node = Node {
                id: format!("bench-{s}"),
                ..Default::default()
            };
            send.send_data(
                request(&streams_of.subscription, Some(&node), "", ""),
                false,
            )
            .expect("first request");
            streams.push(stream(s, response, send, streams_of.clone()));
        }
        // Polls only the streams woken since the last poll.
        while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
        let arrived = std::mem::take(&mut *streams_of.arrived.lock().unwrap());
        if !arrived.is_empty() {
            let _ = report.arrivals.send(arrived);
        }
        // The answers queued above, written into `out`, then sent in one write.
        if let Poll::Ready(r) = Pin::new(&mut conn).poll(cx) {
            return Poll::Ready(r);
        }
        shared.send_out(cx).expect("write to chi xds");
        Poll::Pending
    })
    .await
    .expect("the connection to chi xds");
}
