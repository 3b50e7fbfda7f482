//! HTTPS on `chi agent`'s admin port (`service_discovery.agent.tls`) and gRPC over TLS on `chi
//! xds`'s port (`--tls-cert`, `--tls-key`, `--tls-client-ca`; the `tls` channel credentials of
//! gRPC's xDS bootstrap, gRFC A27/A65): rustls, with the certificate and key reloaded when their
//! files change and, with a client CA, clients verified by certificate (mTLS: a client without
//! one that CA signed fails the handshake and gets nothing).
//!
//! The certificate is served through a [`ResolvesServerCert`] that holds the current key in an
//! `ArcSwap`, so a handshake only reads; a task looks at the files' modification times every
//! [`RELOAD_EVERY`] and swaps in the new pair once it parses and the key matches the
//! certificate (a half-written pair is retried on the next look, and the old one served
//! meanwhile), as certificate rotation by cert-manager or certbot expects.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use axum::Router;
use chi_discovery::config::ServerTls;
use futures_util::{Stream, StreamExt as _};
use hyper_util::service::TowerToHyperService;
use rustls::crypto::ring::default_provider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;

use crate::limits::{ConnInfo, Door, Watched};

/// How often the certificate and key files are looked at.
pub(crate) const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Which port a certificate serves: how its errors name the settings, and what ALPN offers.
#[derive(Debug)]
pub(crate) struct Port {
    /// The settings, as errors name them: the certificate, the key, the client CA.
    fields: [&'static str; 3],
    /// The port, as logs name it.
    name: &'static str,
    alpn: &'static [&'static [u8]],
}

/// `chi agent`'s admin port (`service_discovery.agent.tls`): HTTP/2 or HTTP/1.1.
pub(crate) const AGENT: Port = Port {
    fields: [
        "service_discovery.agent.tls.cert",
        "service_discovery.agent.tls.key",
        "service_discovery.agent.tls.client_ca",
    ],
    name: "the admin port",
    alpn: &[b"h2", b"http/1.1"],
};

/// `chi xds`'s gRPC port (`--tls-cert`, `--tls-key`, `--tls-client-ca`): gRPC is HTTP/2 only.
pub(crate) const XDS: Port = Port {
    fields: ["--tls-cert", "--tls-key", "--tls-client-ca"],
    name: "the xDS port",
    alpn: &[b"h2"],
};

/// The acceptor of `tls` on `port`: its files read now (an error names the file), reloaded from
/// then on.
pub(crate) fn acceptor(tls: &ServerTls, port: &'static Port) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(default_provider());
    let current = Arc::new(ArcSwap::from_pointee(load(
        &tls.cert, &tls.key, &provider, port,
    )?));
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(ca).context(port.fields[2])? {
                roots
                    .add(cert)
                    .with_context(|| format!("{}: {}", port.fields[2], ca.display()))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .context(port.fields[2])?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Reloading(current.clone())));
    config.alpn_protocols = port.alpn.iter().map(|p| p.to_vec()).collect();
    tokio::spawn(reload(
        tls.cert.clone(),
        tls.key.clone(),
        current,
        provider,
        port,
    ));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The certificate of the moment.
#[derive(Debug)]
struct Reloading(Arc<ArcSwap<CertifiedKey>>);

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{}: no PEM certificate in it",
        path.display()
    );
    Ok(certs)
}

/// Reads the pair; the key must match the certificate.
fn load(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
    port: &Port,
) -> anyhow::Result<CertifiedKey> {
    let [cert_field, key_field, _] = port.fields;
    let chain = certs(cert).context(cert_field)?;
    let der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("{key_field}: reading {}", key.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .with_context(|| format!("{key_field}: {}", key.display()))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().with_context(|| {
        format!(
            "{key_field}: the key {} does not match the certificate {}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(pair)
}

/// The files' modification times and lengths: what changes when they are rewritten.
fn stamp(paths: [&Path; 2]) -> Option<[(SystemTime, u64); 2]> {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    Some([one(paths[0])?, one(paths[1])?])
}

/// Swaps in the pair whenever the files change and it loads.
async fn reload(
    cert: PathBuf,
    key: PathBuf,
    current: Arc<ArcSwap<CertifiedKey>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    port: &'static Port,
) {
    let mut seen = stamp([&cert, &key]);
    loop {
        tokio::time::sleep(RELOAD_EVERY).await;
        let now = stamp([&cert, &key]);
        if now == seen {
            continue;
        }
        match load(&cert, &key, &provider, port) {
            Ok(pair) => {
                current.store(Arc::new(pair));
                seen = now;
                tracing::info!(cert = %cert.display(), "reloaded the certificate of {}", port.name);
            }
            // Perhaps half-written: try again next time, serving the old pair meanwhile.
            Err(e) => tracing::warn!("not reloading the certificate of {} yet: {e:#}", port.name),
        }
    }
}

/// Serves `app` over TLS on `listener` through `door` until the process ends: each connection
/// admitted by the door, its handshake (bounded by [`HANDSHAKE`]), then HTTP/1.1 or HTTP/2 as
/// ALPN says under the door's timeouts.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    acceptor: TlsAcceptor,
    door: Door,
) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!("admin port: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Some((tcp, ticket)) = door.admit(tcp) else {
            continue;
        };
        let (acceptor, app, door) = (acceptor.clone(), app.clone(), door.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!("admin port: TLS handshake failed: {e}"),
                Err(_) => return tracing::debug!("admin port: TLS handshake timed out"),
            };
            door.serve(stream, ticket, TowerToHyperService::new(app))
                .await;
        });
    }
}

/// `chi xds`'s connections over TLS: each one the door admitted (`tcp`) handshaken in a task of
/// its own (bounded by [`HANDSHAKE`], so a client that stalls its handshake holds up no other),
/// and handed to the xDS port once done. A failed handshake (a client without a certificate the
/// client CA signed, or one that does not trust ours) ends the connection before any gRPC is
/// spoken.
pub(crate) fn incoming(
    tcp: impl Stream<Item = io::Result<Watched>> + Send + 'static,
    acceptor: TlsAcceptor,
) -> impl Stream<Item = io::Result<Secured>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut tcp = std::pin::pin!(tcp);
        loop {
            let conn = tokio::select! {
                // The port stopped serving.
                () = tx.closed() => return,
                next = tcp.next() => match next {
                    Some(Ok(conn)) => conn,
                    Some(Err(_)) => continue,
                    None => return,
                },
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE, acceptor.accept(conn)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(Secured(stream))).await;
                    }
                    Ok(Err(e)) => tracing::debug!("xDS port: TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!("xDS port: TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// An admitted connection after its TLS handshake; the port learns of it what it learns of a plain
/// one ([`ConnInfo`]), so the door's accounting of streams holds over TLS too.
#[derive(Debug)]
pub(crate) struct Secured(tokio_rustls::server::TlsStream<Watched>);

impl Connected for Secured {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        Connected::connect_info(self.0.get_ref().0)
    }
}

impl AsyncRead for Secured {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Secured {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
