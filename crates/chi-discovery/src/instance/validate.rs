//! What makes an instance and its names acceptable to every registry: [`Instance::validate`]
//! (names, address, port) for anything read or written, [`Instance::validate_registration`]
//! (tags and metadata within bounds too) for what chi registers.

use super::Instance;
use crate::error::{Error, Result};

impl Instance {
    /// Checks the fields every backend relies on: a valid service name and id, a non-empty
    /// address, a non-zero port.
    pub fn validate(&self) -> Result<()> {
        validate_name("service name", &self.name)?;
        validate_name("instance id", &self.id)?;
        if self.address.trim().is_empty() {
            return Err(Error::invalid(
                "address",
                &self.address,
                "must not be empty",
            ));
        }
        if self.port == 0 {
            return Err(Error::invalid("port", "0", "must be between 1 and 65535"));
        }
        Ok(())
    }

    /// Checks an instance about to be registered: [`Instance::validate`], and its tags and
    /// metadata within the bounds of [`crate::limits`] (reads of instances others registered
    /// skip those).
    pub fn validate_registration(&self) -> Result<()> {
        self.validate()?;
        crate::limits::check_sizes(self)
    }
}

/// True when `name` is a service name (or instance id) chi accepts: the rule of
/// [`Instance::validate`] (docs/DESIGN.md §9), for code that must tell a name every registry
/// takes from one none does before asking one, as `chi xds` does with the names clients send.
pub fn is_valid_name(name: &str) -> bool {
    validate_name("name", name).is_ok()
}

/// Checks a service name or instance id: 1..=256 characters, no `/`, no `..`, no control
/// characters, not only whitespace. Every backend builds keys or URLs from these, so this is what
/// keeps a name from escaping its prefix.
pub(crate) fn validate_name(what: &'static str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(what, value, "must not be empty"));
    }
    if value.len() > 256 {
        return Err(Error::invalid(
            what,
            format!("{}...", value.chars().take(32).collect::<String>()),
            format!("must be at most 256 bytes, got {}", value.len()),
        ));
    }
    if value.contains('/') || value.contains('\\') {
        return Err(Error::invalid(what, value, "must not contain `/` or `\\`"));
    }
    if value == "." || value.contains("..") {
        return Err(Error::invalid(what, value, "must not contain `..`"));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(
            what,
            value.escape_debug().to_string(),
            "must not contain control characters",
        ));
    }
    Ok(())
}
