//! TCP probe: healthy when a connection opens within the timeout (HAProxy's default `check`).

use std::time::Duration;

use async_trait::async_trait;

use super::{CheckError, Probe, is_own_host};
use crate::error::{Error, Result};
use crate::instance::Instance;

/// Connects to the instance (or a configured `host:port`) and closes the connection at once.
#[derive(Debug, Clone)]
pub struct TcpProbe {
    target: Option<(String, u16)>,
    timeout: Duration,
    allow_other_hosts: bool,
}

impl TcpProbe {
    /// A TCP check of `target`: empty for the instance's own `address:port`, else `host:port`
    /// (`[v6]:port` for IPv6). The timeout defaults to 3 s.
    pub fn new(target: impl Into<String>) -> Result<Self> {
        let target = target.into();
        let target = target.trim();
        let parsed = if target.is_empty() {
            None
        } else {
            let (host, port) = target
                .rsplit_once(':')
                .ok_or_else(|| Error::invalid("tcp check target", target, "expected host:port"))?;
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| Error::invalid("tcp check target", target, "bad port"))?;
            if host.is_empty() {
                return Err(Error::invalid("tcp check target", target, "empty host"));
            }
            Some((host.to_owned(), port))
        };
        Ok(TcpProbe {
            target: parsed,
            timeout: Duration::from_secs(3),
            allow_other_hosts: false,
        })
    }

    /// A check of the instance's own `address:port`.
    pub fn own() -> Self {
        TcpProbe {
            target: None,
            timeout: Duration::from_secs(3),
            allow_other_hosts: false,
        }
    }

    /// Sets the connect timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Allows a configured `host:port` on another host than the instance's (off by default).
    pub fn allow_other_hosts(mut self, allow: bool) -> Self {
        self.allow_other_hosts = allow;
        self
    }

    fn authority(&self, instance: &Instance) -> Result<String, CheckError> {
        match &self.target {
            None => Ok(instance.authority()),
            Some((host, port)) => {
                if !self.allow_other_hosts && !is_own_host(instance, host) {
                    return Err(CheckError::Target {
                        message: format!(
                            "{host}:{port} is not the instance's address {}; \
                             enable allow_other_hosts to probe it",
                            instance.address
                        ),
                    });
                }
                let probe = Instance {
                    address: host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                    port: *port,
                    ..Instance::new("", "", 0)
                };
                Ok(probe.authority())
            }
        }
    }
}

#[async_trait]
impl Probe for TcpProbe {
    async fn check(&self, instance: &Instance) -> Result<(), CheckError> {
        let authority = self.authority(instance)?;
        match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(&authority)).await {
            Ok(Ok(_stream)) => Ok(()),
            Ok(Err(e)) => Err(CheckError::Connect {
                message: format!("{authority}: {e}"),
            }),
            Err(_) => Err(CheckError::Timeout {
                after: self.timeout,
            }),
        }
    }

    fn kind(&self) -> &'static str {
        "tcp"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert!(TcpProbe::new("").expect("own").target.is_none());
        assert_eq!(
            TcpProbe::new("10.0.0.1:80").expect("v4").target,
            Some(("10.0.0.1".into(), 80))
        );
        assert_eq!(
            TcpProbe::new("[::1]:80").expect("v6").target,
            Some(("[::1]".into(), 80))
        );
        for bad in ["host", "host:", "host:0", ":80", "h:99999"] {
            assert!(TcpProbe::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn other_hosts_need_opt_in() {
        let inst = Instance::new("s", "10.0.0.1", 80);
        let own = TcpProbe::new("10.0.0.1:81").expect("parse");
        assert_eq!(own.authority(&inst).expect("own host"), "10.0.0.1:81");
        let other = TcpProbe::new("10.0.0.2:80").expect("parse");
        assert!(matches!(
            other.authority(&inst),
            Err(CheckError::Target { .. })
        ));
        let other = other.allow_other_hosts(true);
        assert_eq!(other.authority(&inst).expect("allowed"), "10.0.0.2:80");
        let v6 = TcpProbe::new("[::1]:9").expect("parse");
        assert_eq!(
            v6.authority(&Instance::new("s", "::1", 80))
                .expect("own v6"),
            "[::1]:9"
        );
    }
}
