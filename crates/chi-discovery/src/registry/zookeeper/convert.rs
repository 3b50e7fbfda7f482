//! Where instances live in ZooKeeper and what their nodes hold, for both layouts: the path of a
//! service's directory, and one node (its name and data) to and from an [`Instance`].
//!
//! - [`curator`]: `ROOT/NAME/ID` holding Curator's `ServiceInstance` JSON, with chi's fields in
//!   the Spring Cloud Zookeeper payload's metadata;
//! - [`dubbo`]: `ROOT/INTERFACE/providers/URL-ENCODED-URL`, everything in the provider URL.
//!
//! Names become node names verbatim (Curator and Dubbo readers expect them so), which is why
//! they pass [`validate_node_name`] besides chi's own `validate_name`: ZooKeeper refuses some
//! characters in paths that chi allows elsewhere. Decoding only ever yields valid instances of
//! the service asked for: foreign or corrupt nodes are skipped with a warning, never served.

pub mod curator;
pub mod dubbo;

use super::config::Layout;
use crate::error::{Error, Result};
use crate::instance::{Instance, validate_name};

/// The node directly holding the instances of `service`: `ROOT/NAME` (Curator) or
/// `ROOT/INTERFACE/providers` (Dubbo).
pub(crate) fn service_dir(layout: Layout, root: &str, service: &str) -> String {
    match layout {
        Layout::Curator => format!("{root}/{service}"),
        Layout::Dubbo => format!("{root}/{service}/providers"),
    }
}

/// The node name and data of `instance` in `layout`. Refuses what the layout cannot carry
/// unchanged (a name ZooKeeper refuses, a metadata key reserved for chi's own fields).
pub(crate) fn encode(
    layout: Layout,
    instance: &Instance,
    now_ms: i64,
) -> Result<(String, Vec<u8>)> {
    instance.validate()?;
    validate_node_name("service name", &instance.name)?;
    match layout {
        Layout::Curator => {
            validate_node_name("instance id", &instance.id)?;
            Ok((instance.id.clone(), curator::encode(instance, now_ms)?))
        }
        Layout::Dubbo => Ok((dubbo::encode(instance, now_ms)?, Vec::new())),
    }
}

/// The instance of the node `child` (with `data`) in the directory of `service`.
pub fn decode(layout: Layout, service: &str, child: &str, data: &[u8]) -> Result<Instance> {
    let instance = match layout {
        Layout::Curator => curator::decode(service, child, data)?,
        Layout::Dubbo => dubbo::decode(service, child)?,
    };
    instance
        .validate()
        .map_err(|e| bad(service, child, e.to_string()))?;
    Ok(instance)
}

/// [`decode`], or `None` with a warning.
pub(crate) fn parse(layout: Layout, service: &str, child: &str, data: &[u8]) -> Option<Instance> {
    match decode(layout, service, child, data) {
        Ok(i) => Some(i),
        Err(e) => {
            tracing::warn!(service = %service.escape_debug(), node = %child.escape_debug(), error = %e, "zookeeper node is not a usable instance; skipped");
            None
        }
    }
}

/// An error about the node `child` of `service`.
pub(crate) fn bad(service: &str, child: &str, message: impl std::fmt::Display) -> Error {
    Error::registry(
        super::BACKEND,
        format!(
            "node `{}/{}`: {message}",
            service.escape_debug(),
            truncate(child)
        ),
    )
}

fn truncate(s: &str) -> String {
    if s.len() <= 200 {
        s.escape_debug().to_string()
    } else {
        format!(
            "{}...",
            s.chars().take(64).collect::<String>().escape_debug()
        )
    }
}

/// chi's name rule ([`is_valid_name`](crate::instance::is_valid_name)) plus ZooKeeper's own for
/// node names: no character in U+E000..U+F8FF or U+FFF0..U+FFFF, and none beyond U+FFFF
/// (ZooKeeper checks Java's UTF-16, where those are surrogates, private-use or special characters
/// it refuses).
pub fn validate_node_name(what: &'static str, value: &str) -> Result<()> {
    validate_name(what, value)?;
    if let Some(c) = value.chars().find(|c| {
        let c = u32::from(*c);
        (0xE000..=0xF8FF).contains(&c) || (0xFFF0..=0xFFFF).contains(&c) || c > 0xFFFF
    }) {
        return Err(Error::invalid(
            what,
            value.escape_debug().to_string(),
            format!(
                "ZooKeeper refuses {c:?} (U+{:04X}) in a node name: no characters in \
                 U+E000..U+F8FF, U+FFF0..U+FFFF or beyond U+FFFF, such as emoji",
                u32::from(c)
            ),
        ));
    }
    Ok(())
}

/// Tags as chi writes them (a JSON array, since a tag may hold a comma), or a comma-separated
/// list as another client may.
pub(crate) fn parse_tags(value: &str) -> Vec<String> {
    match serde_json::from_str::<Vec<String>>(value) {
        Ok(tags) => tags,
        Err(_) => value
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
    }
}

/// Tags as chi writes them: a JSON array.
pub(crate) fn tags_json(instance: &Instance) -> Result<String> {
    serde_json::to_string(&instance.tags).map_err(|e| {
        Error::invalid(
            "tags",
            instance.tags.join(","),
            format!("not encodable: {e}"),
        )
    })
}
