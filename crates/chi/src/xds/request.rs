//! A state-of-the-world `DiscoveryRequest`, read in place.
//!
//! A client repeats its whole subscription in every request, its ACKs included (gRPC's xDS
//! clients and Envoy both do), so a push to ten thousand streams brings ten thousand copies of
//! the same names back. [`AdsRequest`] keeps the received message as one `Bytes` and where each
//! field lies in it: the strings are slices of it, the names an iterator over them, and only the
//! node (on a stream's first request) and the error detail (a NACK) are decoded, by prost.
//! Decoded by prost's derive with each name a `Bytes` of its own (a reference count up and down
//! per name), reading the requests took a tenth of `chi xds`'s CPU in the fan-out bench.
//!
//! The fields are those of envoyproxy/envoy `api/envoy/service/discovery/v3/discovery.proto`:
//! `version_info` 1, `node` 2, `resource_names` 3, `type_url` 4, `response_nonce` 5,
//! `error_detail` 6; the others (`resource_locators`) are skipped. Protobuf's rules hold
//! (protobuf encoding guide): fields in any order, the last value of a string field wins,
//! message fields that appear twice merge.

use bytes::{Buf, Bytes};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder};

/// A received `DiscoveryRequest`: its bytes and where its fields are.
#[derive(Debug, Default)]
pub(crate) struct AdsRequest {
    raw: Bytes,
    version_info: Span,
    type_url: Span,
    response_nonce: Span,
    names: Vec<Span>,
    /// Boxed, as the error detail: rare, and large (a `Node` is over 400 bytes), while the
    /// request is moved several times on its way from the decoder at every ACK.
    pub(crate) node: Option<Box<Node>>,
    pub(crate) error_detail: Option<Box<RpcStatus>>,
}

/// Where a string field's bytes are in the request.
#[derive(Debug, Default, Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

impl AdsRequest {
    /// Reads `raw`, a whole `DiscoveryRequest`; the error says what is malformed.
    pub(crate) fn decode(raw: Bytes) -> Result<AdsRequest, String> {
        let mut request = AdsRequest::default();
        let mut buf: &[u8] = &raw;
        while buf.has_remaining() {
            let (tag, wire_type) = decode_key(&mut buf).map_err(|e| e.to_string())?;
            if !(1..=6).contains(&tag) {
                skip_field(wire_type, tag, &mut buf, DecodeContext::default())
                    .map_err(|e| e.to_string())?;
                continue;
            }
            if wire_type != WireType::LengthDelimited {
                return Err(format!(
                    "field {tag} has wire type {wire_type:?}, not LengthDelimited"
                ));
            }
            let len = decode_varint(&mut buf).map_err(|e| e.to_string())?;
            let len = usize::try_from(len)
                .ok()
                .filter(|len| *len <= buf.len())
                .ok_or_else(|| format!("field {tag} is longer than the request"))?;
            let start = raw.len() - buf.len();
            let span = Span::new(start, start + len)?;
            let value = &buf[..len];
            match tag {
                1 => request.version_info = span,
                2 => Self::merge(&mut request.node, value)?,
                3 => request.names.push(span),
                4 => request.type_url = span,
                5 => request.response_nonce = span,
                _ => Self::merge(&mut request.error_detail, value)?,
            }
            buf.advance(len);
        }
        request.raw = raw;
        Ok(request)
    }

    fn merge<M: Message + Default>(field: &mut Option<Box<M>>, value: &[u8]) -> Result<(), String> {
        field
            .get_or_insert_with(Box::default)
            .merge(value)
            .map_err(|e| e.to_string())
    }

    /// A string field as text; bytes that are not UTF-8 read as no text (no name, no nonce of
    /// this server's).
    fn text(&self, span: Span) -> &str {
        let bytes = self
            .raw
            .get(span.start as usize..span.end as usize)
            .unwrap_or_default();
        std::str::from_utf8(bytes).unwrap_or_default()
    }

    pub(crate) fn version_info(&self) -> &str {
        self.text(self.version_info)
    }

    pub(crate) fn type_url(&self) -> &str {
        self.text(self.type_url)
    }

    pub(crate) fn response_nonce(&self) -> &str {
        self.text(self.response_nonce)
    }

    /// The resource names as sent, in order: bytes, not checked to be UTF-8 (a name compared
    /// with a `str` equals it only when it is).
    pub(crate) fn name_bytes(&self) -> impl ExactSizeIterator<Item = &[u8]> {
        self.names.iter().map(|span| {
            self.raw
                .get(span.start as usize..span.end as usize)
                .unwrap_or_default()
        })
    }

    /// The resource names, in the order the client sent them.
    pub(crate) fn names(&self) -> impl ExactSizeIterator<Item = &str> {
        self.names.iter().map(|span| self.text(*span))
    }
}

impl Span {
    fn new(start: usize, end: usize) -> Result<Span, String> {
        let at = |i: usize| u32::try_from(i).map_err(|_| "a request over 4 GiB".to_owned());
        Ok(Span {
            start: at(start)?,
            end: at(end)?,
        })
    }
}

/// Decodes [`AdsRequest`]s with a small read buffer: requests are a few KiB at most, and every
/// open stream keeps its buffer.
pub(crate) struct RequestDecoder;

impl Decoder for RequestDecoder {
    type Item = AdsRequest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<AdsRequest>, Status> {
        // The message's bytes, taken from tonic's read buffer without a copy.
        let raw = buf.copy_to_bytes(buf.remaining());
        AdsRequest::decode(raw)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("a malformed DiscoveryRequest: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(1024, 32 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

    use super::*;

    fn request() -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: "7".into(),
            node: Some(Node {
                id: "n1".into(),
                ..Default::default()
            }),
            resource_names: vec!["svc-a".into(), "svc-b@v2".into(), String::new()],
            type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".into(),
            response_nonce: "12".into(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "bad".into(),
                details: vec![],
            }),
            ..Default::default()
        }
    }

    /// Every field reads as prost encoded it.
    #[test]
    fn a_request_reads_as_prost_encoded_it() {
        let sent = request();
        let read = AdsRequest::decode(sent.encode_to_vec().into()).expect("decodes");
        assert_eq!(read.version_info(), "7");
        assert_eq!(read.type_url(), sent.type_url);
        assert_eq!(read.response_nonce(), "12");
        assert_eq!(read.names().collect::<Vec<_>>(), sent.resource_names);
        assert_eq!(read.node.as_deref(), sent.node.as_ref());
        assert_eq!(read.error_detail.as_deref(), sent.error_detail.as_ref());
        let empty = AdsRequest::decode(Bytes::new()).expect("an empty request");
        assert_eq!((empty.names().len(), empty.version_info()), (0, ""));
    }

    /// Unknown fields are skipped, a repeated string's last value wins, a repeated node
    /// merges, names that are not UTF-8 read as empty.
    #[test]
    fn protobuf_rules_hold() {
        let mut raw = Vec::new();
        prost::encoding::string::encode(1, &"old".to_owned(), &mut raw);
        prost::encoding::uint64::encode(99, &5, &mut raw);
        prost::encoding::message::encode(
            2,
            &Node {
                id: "n1".into(),
                ..Default::default()
            },
            &mut raw,
        );
        prost::encoding::bytes::encode(3, &vec![0xff, 0xfe], &mut raw);
        prost::encoding::string::encode(1, &"new".to_owned(), &mut raw);
        prost::encoding::message::encode(
            2,
            &Node {
                cluster: "c".into(),
                ..Default::default()
            },
            &mut raw,
        );
        let read = AdsRequest::decode(raw.into()).expect("decodes");
        assert_eq!(read.version_info(), "new");
        let node = read.node.as_ref().expect("a node");
        assert_eq!((node.id.as_str(), node.cluster.as_str()), ("n1", "c"));
        assert_eq!(read.names().collect::<Vec<_>>(), vec![""]);
    }

    /// A truncated request or a known field of the wrong wire type is an error, not a panic.
    #[test]
    fn malformed_requests_are_errors() {
        let whole = request().encode_to_vec();
        for cut in 1..whole.len() {
            // Some prefixes end on a field boundary and decode; none may panic.
            let _ = AdsRequest::decode(Bytes::copy_from_slice(&whole[..cut]));
        }
        let mut raw = Vec::new();
        prost::encoding::uint64::encode(3, &1, &mut raw);
        let err = AdsRequest::decode(raw.into()).expect_err("a varint name");
        assert!(err.contains("field 3"), "{err}");
        let mut raw = Vec::new();
        prost::encoding::encode_key(1, WireType::LengthDelimited, &mut raw);
        prost::encoding::encode_varint(40, &mut raw);
        raw.extend_from_slice(b"short");
        let err = AdsRequest::decode(raw.into()).expect_err("a field past the end");
        assert!(err.contains("longer"), "{err}");
    }
}
