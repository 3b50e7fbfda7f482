//! The key layout and the stored values: `{prefix}/{service}/{id}` holding the JSON of an
//! [`Instance`], decoded only into valid instances of their own key.

use super::{BACKEND, Inner};
use crate::error::{Error, Result};
use crate::instance::Instance;

impl Inner {
    pub(super) fn key(&self, service: &str, id: &str) -> String {
        format!("{}/{service}/{id}", self.settings.prefix)
    }

    /// `{prefix}/{service}/`: the directory of one service, with the slash that keeps `svc` from
    /// matching `svc2`.
    pub(super) fn service_dir(&self, service: &str) -> String {
        format!("{}/{service}/", self.settings.prefix)
    }

    /// Parses one stored value; `None` (with a warning) when it is not an instance of `service`
    /// with id `id`: foreign or corrupt data under the prefix is skipped, never trusted.
    pub(super) fn parse(&self, service: &str, id: &str, value: &[u8]) -> Option<Instance> {
        match decode_value(service, id, value) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(service = %service.escape_debug(), id = %id.escape_debug(), error = %e, "etcd value is not a usable instance; skipped");
                None
            }
        }
    }

    /// The id of a key inside `dir`, if the key is directly in it.
    pub(super) fn id_in<'k>(dir: &str, key: &'k [u8]) -> Option<&'k str> {
        let key = std::str::from_utf8(key).ok()?;
        let id = key.strip_prefix(dir)?;
        (!id.is_empty() && !id.contains('/')).then_some(id)
    }
}

/// Decodes the value stored at `{prefix}/{service}/{id}`, exactly as discovery and watches do:
/// the JSON of an [`Instance`] whose name and id match its key and which passes
/// [`Instance::validate`]. Anything else is an [`Error::Registry`] saying why (discovery skips
/// such values with a warning). Public for fuzzing and for tools that read raw keys.
pub fn decode_value(service: &str, id: &str, value: &[u8]) -> Result<Instance> {
    let bad = |m: String| Error::registry(BACKEND, format!("value of `{service}/{id}`: {m}"));
    let i: Instance =
        serde_json::from_slice(value).map_err(|e| bad(format!("not an instance: {e}")))?;
    if i.name != service || i.id != id {
        return Err(bad(format!(
            "holds instance `{}/{}`, which does not match its key",
            i.name.escape_debug(),
            i.id.escape_debug()
        )));
    }
    i.validate().map_err(|e| bad(e.to_string()))?;
    Ok(i)
}
