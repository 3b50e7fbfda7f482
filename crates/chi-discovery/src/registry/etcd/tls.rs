//! TLS for `https://` endpoints: rustls with the configured CA (etcd clusters sign their
//! members with a private CA, so there is no fallback to system roots), and a client certificate
//! for `--client-cert-auth` clusters.

use std::path::Path;

use super::config::{EtcdTls, FIELD};
use crate::error::{Error, Result};
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

fn read(path: &Path, field: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::config(
            format!("{FIELD}.tls.{field}"),
            format!("cannot read `{}`: {e}", path.display()),
        )
    })
}

pub(super) fn apply(options: ConnectOptions, tls: &EtcdTls) -> Result<ConnectOptions> {
    let Some(ca) = &tls.ca else {
        return Err(Error::config(
            format!("{FIELD}.tls.ca"),
            "the CA certificate that signed the etcd members is required",
        ));
    };
    let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca, "ca")?));
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(read(cert, "cert")?, read(key, "key")?));
        }
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::config(
                format!("{FIELD}.tls"),
                "`cert` and `key` go together: give both or neither",
            ));
        }
    }
    if let Some(domain) = &tls.domain {
        config = config.domain_name(domain.clone());
    }
    Ok(options.with_tls(config))
}
