//! A problem a check found (Ground layer: imports nothing of this crate).
//!
//! Every module exports its own checks, returning a [`Problem`]: what was
//! found and the command that fixes it. A verb stops at the first
//! [`Severity::Fail`] (`return Err(problem.into())`, or `?`) and prints a
//! [`Severity::Warn`] as a warning; `doctor` runs them all and lists them.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Worth fixing; a deploy still works.
    Warn,
    /// A deploy would fail: a verb stops here.
    Fail,
}

/// What one check found wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The check's name, as doctor lists it (`terraform/.env`, `docker`).
    pub check: &'static str,
    /// What was found (no secret: keys as hints).
    pub found: String,
    /// What fixes it: a command or an edit. Empty when there is nothing to add.
    pub fix: String,
    pub severity: Severity,
}

impl Problem {
    pub fn fail(check: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Problem {
        Problem { check, found: found.into(), fix: fix.into(), severity: Severity::Fail }
    }

    pub fn warn(check: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Problem {
        Problem { check, found: found.into(), fix: fix.into(), severity: Severity::Warn }
    }

    /// The same problem, only a warning (where doctor knows it does not stop a deploy).
    pub fn as_warning(self) -> Problem {
        Problem { severity: Severity::Warn, ..self }
    }

    /// The same problem under another check's name.
    pub fn named(self, check: &'static str) -> Problem {
        Problem { check, ..self }
    }
}

/// `<found>; <fix>`.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.fix.is_empty() {
            write!(f, "{}", self.found)
        } else {
            write!(f, "{}; {}", self.found, self.fix)
        }
    }
}

impl std::error::Error for Problem {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_what_was_found_then_the_fix() {
        let p = Problem::fail("docker", "not found", "install Docker");
        assert_eq!(p.to_string(), "not found; install Docker");
        assert_eq!(Problem::warn("x", "odd", "").to_string(), "odd");
        let err: anyhow::Error = p.clone().into();
        assert_eq!(err.downcast_ref::<Problem>(), Some(&p));
    }
}
