//! `chi agent` serving its admin port over TLS (`service_discovery.agent.tls`), with curl and the
//! `chi://` client (`chi discover` with `registries.chi.tls`): certificates made here with rcgen,
//! the certificate reloaded when its files change, and client certificates required with
//! `client_ca` (a client without one gets nothing).

use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

use crate::support::{Proc, chi, eventually, registration, yaml};

/// A CA that signs certificates into a directory (also `chi xds`'s TLS tests).
pub(crate) struct Ca {
    cert: Certificate,
    key: KeyPair,
    pub(crate) pem: String,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            cert,
            key,
        }
    }

    /// A leaf for `127.0.0.1` and `localhost` (`server`) or a client: its PEM and key's PEM.
    pub(crate) fn leaf(&self, server: bool) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("params");
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `text` to `dir/name`; that path.
pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// A `chi agent` on TLS: its `host:port`.
struct TlsAgent {
    _proc: Proc,
    addr: String,
    _config: (tempfile::TempDir, PathBuf),
}

fn start(name: &str, tls_block: &str) -> TlsAgent {
    let config = format!(
        "{}  agent:\n    tls:\n{tls_block}",
        registration(name, 1, "v1", "")
    );
    let file = yaml(&config);
    let mut cmd = chi();
    cmd.args(["agent", "--admin", "127.0.0.1:0", "-c"])
        .arg(&file.1);
    let mut proc = Proc::spawn(cmd);
    let line = proc.wait_line("the admin address", |l| l.contains("admin on https://"));
    let addr = line
        .rsplit("https://")
        .next()
        .expect("addr")
        .trim()
        .to_owned();
    TlsAgent {
        _proc: proc,
        addr,
        _config: file,
    }
}

/// `curl` of `/health` with `args`: the HTTP status, or curl's exit code when it got none.
fn curl(addr: &str, args: &[&str]) -> Result<u16, i32> {
    let out = Command::new("curl")
        .args(["-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .arg(format!("https://{addr}/health"))
        .output()
        .expect("curl runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("status"))
    } else {
        Err(out.status.code().unwrap_or(-1))
    }
}

/// `chi discover NAME -o json -c FILE` with a `registries.chi` block for `addr` over TLS.
fn discover(addr: &str, name: &str, tls_block: &str) -> Result<String, String> {
    let file = yaml(&format!(
        "service_discovery:\n  registries:\n    chi:\n      enabled: true\n      address: \"https://{addr}\"\n      tls:\n{tls_block}"
    ));
    let out = chi()
        .args(["discover", name, "-o", "json", "-c"])
        .arg(&file.1)
        .output()
        .expect("discover");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn agent_serves_https_and_reloads_its_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Ca::new("chi test CA 1");
    let ca1 = write(dir.path(), "ca1.pem", &first.pem);
    let (cert, key) = first.leaf(true);
    let cert_file = write(dir.path(), "agent.pem", &cert);
    let key_file = write(dir.path(), "agent-key.pem", &key);
    let agent = start(
        "tls-host",
        &format!(
            "      cert: \"{}\"\n      key: \"{}\"\n",
            cert_file.display(),
            key_file.display()
        ),
    );
    let ca1_arg = ca1.to_str().expect("path");
    assert_eq!(curl(&agent.addr, &["--cacert", ca1_arg]), Ok(200));
    // Not trusted without the CA (curl: 60, peer certificate cannot be authenticated).
    assert_eq!(curl(&agent.addr, &[]), Err(60));
    // The chi:// client over TLS.
    let block = format!("        ca: \"{}\"\n", ca1.display());
    let listed = discover(&agent.addr, "tls-host", &block).expect("discover over https");
    assert!(listed.contains("tls-host-127.0.0.1-1"), "{listed}");
    let e = discover(
        &agent.addr,
        "tls-host",
        "        ca: \"/nonexistent.pem\"\n",
    )
    .expect_err("unreadable CA");
    assert!(e.contains("service_discovery.registries.chi.tls.ca"), "{e}");

    // A new certificate from another CA, written over the files: served within seconds.
    let second = Ca::new("chi test CA 2");
    let ca2 = write(dir.path(), "ca2.pem", &second.pem);
    let (cert, key) = second.leaf(true);
    std::fs::write(&key_file, key).expect("key");
    std::fs::write(&cert_file, cert).expect("cert");
    let ca2_arg = ca2.to_str().expect("path");
    eventually("the new certificate to be served", || {
        curl(&agent.addr, &["--cacert", ca2_arg]) == Ok(200)
    });
    assert_eq!(curl(&agent.addr, &["--cacert", ca1_arg]), Err(60));
}

#[test]
fn agent_with_client_ca_serves_only_clients_with_a_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("chi test CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let (cert, key) = ca.leaf(true);
    let cert_file = write(dir.path(), "agent.pem", &cert);
    let key_file = write(dir.path(), "agent-key.pem", &key);
    let (client_cert, client_key) = ca.leaf(false);
    let client_cert = write(dir.path(), "client.pem", &client_cert);
    let client_key = write(dir.path(), "client-key.pem", &client_key);
    let stranger = Ca::new("another CA");
    let (stray_cert, stray_key) = stranger.leaf(false);
    let stray_cert = write(dir.path(), "stray.pem", &stray_cert);
    let stray_key = write(dir.path(), "stray-key.pem", &stray_key);
    let agent = start(
        "mtls-host",
        &format!(
            "      cert: \"{}\"\n      key: \"{}\"\n      client_ca: \"{}\"\n",
            cert_file.display(),
            key_file.display(),
            ca_file.display()
        ),
    );
    let p = |p: &PathBuf| p.to_str().expect("path").to_owned();
    let ca_arg = p(&ca_file);
    // No certificate, or one another CA signed: no HTTP answer at all.
    let bare = curl(&agent.addr, &["--cacert", &ca_arg]);
    assert!(bare.is_err(), "{bare:?}");
    let stray = curl(
        &agent.addr,
        &[
            "--cacert",
            &ca_arg,
            "--cert",
            &p(&stray_cert),
            "--key",
            &p(&stray_key),
        ],
    );
    assert!(stray.is_err(), "{stray:?}");
    assert_eq!(
        curl(
            &agent.addr,
            &[
                "--cacert",
                &ca_arg,
                "--cert",
                &p(&client_cert),
                "--key",
                &p(&client_key)
            ],
        ),
        Ok(200)
    );
    // The chi:// client: with its certificate it reads, without it it fails.
    let with = format!(
        "        ca: \"{ca_arg}\"\n        cert: \"{}\"\n        key: \"{}\"\n",
        p(&client_cert),
        p(&client_key)
    );
    let listed = discover(&agent.addr, "mtls-host", &with).expect("discover with mTLS");
    assert!(listed.contains("mtls-host-127.0.0.1-1"), "{listed}");
    let e = discover(
        &agent.addr,
        "mtls-host",
        &format!("        ca: \"{ca_arg}\"\n"),
    )
    .expect_err("no client certificate");
    assert!(e.contains("chi"), "{e}");
}
