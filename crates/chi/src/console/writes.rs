//! The console's write actions and the one gate every one of them passes.
//!
//! Today there is one action, deregistering an instance
//! (`DELETE /ui/api/services/{name}/instances/{id}`), and [`WriteGate::check`] refuses it unless
//! the process was started with an explicit flag (`chi agent --console-writes`); `chi proxy` and
//! `chi xds` consoles never write. Tokens plug in here: a `Token` variant holding the process's
//! write token (a `Secret`), checked in constant time against `Authorization: Bearer`, with the
//! same refusal for a missing or wrong one; the page then sends the token the user typed.
//!
//! Whatever the gate says, a write must come from the console's own page: a request marked as
//! cross-site by the browser (`Sec-Fetch-Site`), or whose `Origin` is not the host it was sent
//! to, is refused; and the action is a `DELETE` with the `x-chi-console` header, which a page
//! of another origin cannot send without a CORS preflight that this server never grants.

use axum::http::{HeaderMap, StatusCode, header};

use super::model::Writes;

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
    /// Whoever reaches the admin port (started with the explicit flag).
    Open,
}

/// Why a write was refused: the status and a body that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl WriteGate {
    /// `chi agent`'s gate: open with `--console-writes`, else read-only.
    pub(crate) fn from_flag(console_writes: bool) -> WriteGate {
        if console_writes {
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
        }
    }

    /// Lets a write with `headers` through, or says why not.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        same_origin(headers)?;
        match self {
            WriteGate::ReadOnly { how } => Err(Refusal {
                status: StatusCode::FORBIDDEN,
                message: format!("this console is read-only: {how}"),
            }),
            WriteGate::Open => Ok(()),
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
            .check(&headers(&[(WRITE_HEADER, "1"), ("host", "h:1")]))
            .expect_err("refused");
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(r.message.contains("--console-writes"), "{}", r.message);
        assert!(!gate.describe().allowed);
    }

    #[test]
    fn open_takes_only_the_pages_own_writes() {
        let gate = WriteGate::Open;
        let own = [(WRITE_HEADER, "1"), ("host", "127.0.0.1:9901")];
        assert!(gate.check(&headers(&own)).is_ok());
        let same = [
            (WRITE_HEADER, "1"),
            ("host", "127.0.0.1:9901"),
            ("origin", "http://127.0.0.1:9901"),
            ("sec-fetch-site", "same-origin"),
        ];
        assert!(gate.check(&headers(&same)).is_ok());
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
                gate.check(&headers(bad)).map_err(|r| r.status),
                Err(StatusCode::FORBIDDEN),
                "{bad:?}"
            );
        }
    }
}
