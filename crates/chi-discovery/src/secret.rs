//! A string that never prints: tokens and passwords.
//!
//! `Debug` and `Display` show `***` (or `""` when empty, so a missing secret is visible), serde
//! reads it as a plain string, and the value is only reachable through [`Secret::expose`], which
//! makes every use greppable.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A secret string (token, password), redacted in `Debug` and `Display`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Fills `username` and `password`, where the config leaves them empty, from the environment
/// variables `vars` (user, password): a password need not sit in a file.
pub(crate) fn credentials_from_env(
    username: &mut Option<String>,
    password: &mut Option<Secret>,
    (user_var, pass_var): (&str, &str),
) {
    if username.as_deref().is_none_or(str::is_empty)
        && let Ok(user) = std::env::var(user_var)
    {
        *username = Some(user);
    }
    if password.as_ref().is_none_or(Secret::is_empty)
        && let Ok(pass) = std::env::var(pass_var)
    {
        *password = Some(Secret::new(pass));
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"***\"")
        }
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            f.write_str("***")
        }
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "\"***\"");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");
    }
}
