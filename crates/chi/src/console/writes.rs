//! The console's write actions and the one gate every one of them passes.
//!
//! Today there is one action, deregistering an instance
//! (`DELETE /ui/api/services/{name}/instances/{id}`), and [`WriteGate::check`] refuses it unless
//! the process was started with an explicit flag (`chi agent --console-writes`); `chi proxy` and
//! `chi xds` consoles never write. When the agent has write tokens the gate is
//! [`WriteGate::Token`]: the same check as the `/v1` API ([`crate::auth::Access`], constant
//! time, scopes included), so the console writes no more than the token would through `/v1`; the
//! page asks for the token on a 401 and sends it as `Authorization: Bearer`.
//!
//! Whatever the gate says, a write must come from the console's own page: a request marked as
//! cross-site by the browser (`Sec-Fetch-Site`), or whose `Origin` is not the host it was sent
//! to, is refused; and the action is a `DELETE` with the `x-chi-console` header, which a page
//! of another origin cannot send without a CORS preflight that this server never grants.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};

use super::model::Writes;
use crate::auth::{Access, Need};

/// The header the console's page sends with every write.
pub(crate) const WRITE_HEADER: &str = "x-chi-console";

/// Who may use the console's write actions.
#[derive(Debug, Clone)]
pub(crate) enum WriteGate {
    /// Nobody: the console is read-only.
    ReadOnly {
        /// What would allow writes (said in the refusal).
        how: &'static str,
    },
    /// Whoever reaches the admin port (started with the explicit flag, no write token set).
    Open,
    /// Whoever holds a token that may write the service (the flag, and write tokens set).
    Token(Arc<Access>),
}

/// Why a write was refused: the status and a body that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl WriteGate {
    /// `chi agent`'s gate: with `--console-writes`, the write tokens when there are some, else
    /// open; without it, read-only.
    pub(crate) fn new(console_writes: bool, access: Arc<Access>) -> WriteGate {
        if console_writes && access.guards_writes() {
            WriteGate::Token(access)
        } else if console_writes {
            WriteGate::Open
        } else {
            WriteGate::ReadOnly {
                how: "start chi agent with --console-writes to deregister instances from here",
            }
        }
    }

    /// What the page shows of the gate.
    pub(crate) fn describe(&self) -> Writes {
        match self {
            WriteGate::ReadOnly { how } => Writes {
                allowed: false,
                why: format!("read-only: {how}"),
            },
            WriteGate::Open => Writes {
                allowed: true,
                why: "writes allowed for whoever reaches this port (--console-writes)".to_owned(),
            },
            WriteGate::Token(_) => Writes {
                allowed: true,
                why: "writes allowed with a write token (--console-writes)".to_owned(),
            },
        }
    }

    /// Lets a write of `service` with `headers` through, or says why not.
    pub(crate) fn check(&self, headers: &HeaderMap, service: &str) -> Result<(), Refusal> {
        same_origin(headers)?;
        match self {
            WriteGate::ReadOnly { how } => Err(Refusal {
                status: StatusCode::FORBIDDEN,
                message: format!("this console is read-only: {how}"),
            }),
            WriteGate::Open => Ok(()),
            WriteGate::Token(access) => {
                access
                    .check(headers, Need::Write(service))
                    .map_err(|r| Refusal {
                        status: r.status,
                        message: r.message,
                    })
            }
        }
    }
}

/// Refuses a request the browser marks as coming from another site, or without the console's
/// header.
fn same_origin(headers: &HeaderMap) -> Result<(), Refusal> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let forbidden = |message: &str| {
        Err(Refusal {
            status: StatusCode::FORBIDDEN,
            message: message.to_owned(),
        })
    };
    if text(WRITE_HEADER).is_none() {
        return forbidden("a console write carries the x-chi-console header (the page sends it)");
    }
    if let Some(site) = text("sec-fetch-site")
        && site != "same-origin"
    {
        return forbidden("a console write must come from the console's own page");
    }
    if let Some(origin) = text(header::ORIGIN.as_str()) {
        let host = text(header::HOST.as_str()).unwrap_or_default();
        let bare = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or(origin);
        if bare != host {
            return forbidden("a console write must come from the console's own page");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chi_discovery::Secret;
    use chi_discovery::config::{AgentSettings, WriteScope};

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("a header value"));
        }
        h
    }

    #[test]
    fn read_only_refuses_every_write() {
        let gate = WriteGate::ReadOnly {
            how: "start chi agent with --console-writes",
        };
        let r = gate
            .check(&headers(&[(WRITE_HEADER, "1"), ("host", "h:1")]), "web")
            .expect_err("refused");
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(r.message.contains("--console-writes"), "{}", r.message);
        assert!(!gate.describe().allowed);
    }

    #[test]
    fn open_takes_only_the_pages_own_writes() {
        let gate = WriteGate::Open;
        let own = [(WRITE_HEADER, "1"), ("host", "127.0.0.1:9901")];
        assert!(gate.check(&headers(&own), "web").is_ok());
        let same = [
            (WRITE_HEADER, "1"),
            ("host", "127.0.0.1:9901"),
            ("origin", "http://127.0.0.1:9901"),
            ("sec-fetch-site", "same-origin"),
        ];
        assert!(gate.check(&headers(&same), "web").is_ok());
        for bad in [
            &[("host", "127.0.0.1:9901")][..],
            &[
                (WRITE_HEADER, "1"),
                ("host", "127.0.0.1:9901"),
                ("origin", "http://evil.example"),
            ],
            &[
                (WRITE_HEADER, "1"),
                ("host", "127.0.0.1:9901"),
                ("sec-fetch-site", "cross-site"),
            ],
        ] {
            assert_eq!(
                gate.check(&headers(bad), "web").map_err(|r| r.status),
                Err(StatusCode::FORBIDDEN),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn with_tokens_the_console_writes_what_the_token_may() {
        let access = Arc::new(Access::new(&AgentSettings {
            write_scopes: vec![WriteScope {
                token: Secret::new("orders-token"),
                services: vec!["orders-*".into()],
            }],
            ..AgentSettings::default()
        }));
        let gate = WriteGate::new(true, access.clone());
        assert!(matches!(gate, WriteGate::Token(_)));
        let page = |token: Option<&'static str>| {
            let mut h = headers(&[(WRITE_HEADER, "1"), ("host", "127.0.0.1:9901")]);
            if let Some(t) = token {
                h.insert(header::AUTHORIZATION, t.parse().expect("header"));
            }
            h
        };
        let status = |h: &HeaderMap, service| gate.check(h, service).map_err(|r| r.status);
        assert_eq!(
            status(&page(None), "orders-api"),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            status(&page(Some("Bearer wrong")), "orders-api"),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            status(&page(Some("Bearer orders-token")), "billing"),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            status(&page(Some("Bearer orders-token")), "orders-api"),
            Ok(())
        );
        // Without the flag the tokens open nothing.
        let closed = WriteGate::new(false, access);
        assert_eq!(
            closed
                .check(&page(Some("Bearer orders-token")), "orders-api")
                .map_err(|r| r.status),
            Err(StatusCode::FORBIDDEN)
        );
    }
}
