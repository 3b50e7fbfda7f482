//! Errors the user can act on: one line, a hint, an exit code.

use std::fmt;

/// Exit code for bad input (usage, config, URL).
pub(crate) const BAD_INPUT: u8 = 2;

/// An error with its exit code and a hint, printed by `main` as two short lines.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
}

impl Failure {
    /// Bad input (exit 2).
    pub(crate) fn bad_input(message: impl Into<String>) -> Self {
        Failure {
            code: BAD_INPUT,
            message: message.into(),
            hint: None,
        }
    }

    /// A runtime failure (exit 1).
    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Failure {
            code: 1,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint line.
    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}
