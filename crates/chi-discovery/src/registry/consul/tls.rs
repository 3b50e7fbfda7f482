//! TLS to the agent's HTTPS port: the CA, the client certificate, on rustls.
//!
//! Kept apart from the client so that reading PEM files (and the errors naming the field that
//! pointed at a bad one) is in one place, as in the etcd adapter.

use std::path::PathBuf;

use super::config::{FIELD, TlsConfig};
use crate::error::{Error, Result};

pub(super) fn builder(tls: Option<&TlsConfig>) -> Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder();
    let Some(tls) = tls else { return Ok(builder) };
    let read = |field: &str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| {
            Error::config(
                format!("{FIELD}.tls.{field}"),
                format!("cannot read {}: {e}", path.display()),
            )
        })
    };
    if let Some(ca) = &tls.ca_file {
        let pem = read("ca_file", ca)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            Error::config(
                format!("{FIELD}.tls.ca_file"),
                format!("not a PEM certificate: {e}"),
            )
        })?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let mut pem = read("cert_file", cert)?;
            pem.push(b'\n');
            pem.extend(read("key_file", key)?);
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                Error::config(
                    format!("{FIELD}.tls.cert_file"),
                    format!("not a PEM certificate and key: {e}"),
                )
            })?;
            builder = builder.identity(id);
        }
        (None, None) => {}
        _ => {
            return Err(Error::config(
                format!("{FIELD}.tls"),
                "cert_file and key_file go together",
            ));
        }
    }
    if tls.insecure_skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    Ok(builder.use_rustls_tls())
}
