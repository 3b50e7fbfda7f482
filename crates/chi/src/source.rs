//! Which registry a command talks to: `--registry URL`, else the config file, else the embedded
//! one. `chi://host:port` (a running agent's registry) is one of the library's registries.

use std::sync::Arc;

use chi_discovery::Registry;
use chi_discovery::config::{Config, Registries};

use crate::cli::SourceArgs;
use crate::failure::Failure;

/// A config, whose registries are where commands read and write.
pub(crate) struct Source {
    pub(crate) config: Config,
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
        if let Some(url) = &args.registry {
            config.registries =
                Registries::from_url(url, &|k| std::env::var(k).ok()).map_err(|e| {
                    Failure::bad_input(e.to_string()).hint(
                        "e.g. --registry consul://127.0.0.1:8500 or --registry chi://127.0.0.1:9901",
                    )
                })?;
        }
        Ok(Source { config })
    }

    /// True when only the embedded registry of this very process would be asked.
    pub(crate) fn is_embedded_only(&self) -> bool {
        self.config
            .registries
            .enabled()
            .iter()
            .all(|b| *b == "memory")
    }

    /// The enabled registries, for people: their names, a `chi agent`'s as its `chi://` URL.
    pub(crate) fn backends(&self) -> String {
        let registries = &self.config.registries;
        registries
            .enabled()
            .into_iter()
            .map(|b| match &registries.chi {
                Some(agent) if b == "chi" => format!("chi://{}", agent.address),
                _ => b.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(", ")
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
        self.config.registries.connect().await.map_err(|e| {
            Failure::failed(format!("cannot connect to the registry: {e}"))
                .hint("check the address and that the registry runs; -v shows more")
                .into()
        })
    }
}
