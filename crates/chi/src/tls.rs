//! HTTPS on `chi agent`'s admin port (`service_discovery.agent.tls`): rustls, with the
//! certificate and key reloaded when their files change and, with `client_ca`, clients verified
//! by certificate (mTLS: a client without one that CA signed fails the handshake and gets
//! nothing).
//!
//! The certificate is served through a [`ResolvesServerCert`] that holds the current key in an
//! `ArcSwap`, so a handshake only reads; a task looks at the files' modification times every
//! [`RELOAD_EVERY`] and swaps in the new pair once it parses and the key matches the
//! certificate (a half-written pair is retried on the next look, and the old one served
//! meanwhile), as certificate rotation by cert-manager or certbot expects.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use axum::Router;
use chi_discovery::config::ServerTls;
use hyper_util::service::TowerToHyperService;
use rustls::crypto::ring::default_provider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::limits::Door;

/// How often the certificate and key files are looked at.
pub(crate) const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The acceptor of `tls`: its files read now (an error names the file), reloaded from then on.
pub(crate) fn acceptor(tls: &ServerTls) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(default_provider());
    let current = Arc::new(ArcSwap::from_pointee(load(&tls.cert, &tls.key, &provider)?));
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(ca)? {
                roots.add(cert).with_context(|| {
                    format!("service_discovery.agent.tls.client_ca: {}", ca.display())
                })?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .context("service_discovery.agent.tls.client_ca")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Reloading(current.clone())));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio::spawn(reload(tls.cert.clone(), tls.key.clone(), current, provider));
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
) -> anyhow::Result<CertifiedKey> {
    let chain = certs(cert).context("service_discovery.agent.tls.cert")?;
    let der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("service_discovery.agent.tls.key: reading {}", key.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .with_context(|| format!("service_discovery.agent.tls.key: {}", key.display()))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().with_context(|| {
        format!(
            "service_discovery.agent.tls: the key {} does not match the certificate {}",
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
) {
    let mut seen = stamp([&cert, &key]);
    loop {
        tokio::time::sleep(RELOAD_EVERY).await;
        let now = stamp([&cert, &key]);
        if now == seen {
            continue;
        }
        match load(&cert, &key, &provider) {
            Ok(pair) => {
                current.store(Arc::new(pair));
                seen = now;
                tracing::info!(cert = %cert.display(), "reloaded the admin port's certificate");
            }
            // Perhaps half-written: try again next time, serving the old pair meanwhile.
            Err(e) => tracing::warn!("not reloading the admin port's certificate yet: {e:#}"),
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
