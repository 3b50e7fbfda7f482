//! Which registry a command talks to: `--registry URL`, else the config file, else the embedded
//! one; and the `chi://` scheme for a running agent's registry.

use std::sync::Arc;

use chi_discovery::Registry;
use chi_discovery::config::{Config, Registries};

use crate::cli::SourceArgs;
use crate::failure::Failure;
use crate::remote::RemoteRegistry;

/// A config plus where its registry is.
pub(crate) struct Source {
    pub(crate) config: Config,
    /// `chi://host:port`: a running agent's registry, used instead of `config.registries`.
    pub(crate) remote: Option<String>,
}

impl Source {
    /// Reads `-c` (if any) and applies `--registry` over it.
    pub(crate) fn resolve(args: &SourceArgs) -> anyhow::Result<Source> {
        let mut config = match &args.config {
            Some(path) => Config::load(path).map_err(|e| {
                Failure::bad_input(e.to_string()).hint(format!(
                    "`chi config check {}` prints what chi understood",
                    path.display()
                ))
            })?,
            None => Config::default(),
        };
        let mut remote = None;
        if let Some(url) = &args.registry {
            if let Some(rest) = url.strip_prefix("chi://") {
                remote = Some(remote_base(rest)?);
            } else {
                config.registries = Registries::from_url(url, &|k| std::env::var(k).ok())
                    .map_err(|e| {
                        Failure::bad_input(e.to_string()).hint(
                            "e.g. --registry consul://127.0.0.1:8500 or --registry chi://127.0.0.1:9901",
                        )
                    })?;
            }
        }
        Ok(Source { config, remote })
    }

    /// True when only the embedded registry of this very process would be asked.
    pub(crate) fn is_embedded_only(&self) -> bool {
        self.remote.is_none()
            && self
                .config
                .registries
                .enabled()
                .iter()
                .all(|b| *b == "memory")
    }

    /// For commands that read a registry: refuses the in-process one, which is always empty.
    pub(crate) fn require_shared(&self, command: &str) -> anyhow::Result<()> {
        if self.is_embedded_only() {
            return Err(Failure::bad_input(format!(
                "the embedded `memory` registry lives inside one process, so `chi {command}` alone would always see nothing"
            ))
            .hint(
                "point at a running `chi agent` with --registry chi://127.0.0.1:9901, or at a real registry (etcd://, consul://, nacos://, zookeeper://, dns://)",
            )
            .into());
        }
        Ok(())
    }

    /// Connects to the registry.
    pub(crate) async fn connect(&self) -> anyhow::Result<Arc<dyn Registry>> {
        if let Some(base) = &self.remote {
            return Ok(Arc::new(RemoteRegistry::new(base.clone())?));
        }
        self.config.registries.connect().await.map_err(|e| {
            Failure::failed(format!("cannot connect to the registry: {e}"))
                .hint("check the address and that the registry runs; -v shows more")
                .into()
        })
    }
}

/// `host:port` of `chi://host:port` into the agent's base URL.
fn remote_base(rest: &str) -> anyhow::Result<String> {
    let rest = rest.trim_end_matches('/');
    let valid = rest
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
    if !valid || rest.contains('/') || rest.contains('@') {
        return Err(Failure::bad_input(format!(
            "--registry chi://{rest}: expected chi://host:port"
        ))
        .hint("the admin address a `chi agent` prints at start, e.g. chi://127.0.0.1:9901")
        .into());
    }
    Ok(format!("http://{rest}"))
}
