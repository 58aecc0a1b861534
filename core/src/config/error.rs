//! What is wrong with a config file ([`ConfigError`], one [`ConfigIssue`] per problem),
//! and what is valid but worth a warning ([`ConfigWarning`]): data, which the shell
//! prints or logs.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a config file: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path such as `routes[0].canary_percent`; empty for whole-file problems.
    pub key: String,
    pub reason: String,
}

/// Every problem found in one config file. Displayed one `FILE: key: reason` per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub issues: Vec<ConfigIssue>,
}

impl ConfigError {
    pub(crate) fn single(
        file: &Path,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            issues: vec![ConfigIssue {
                key: key.into(),
                reason: reason.into(),
            }],
        }
    }

    /// An error about the file as a whole (unreadable, not TOML).
    pub fn file(file: &Path, reason: impl Into<String>) -> ConfigError {
        ConfigError::single(file, "", reason)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if issue.key.is_empty() {
                write!(f, "{}: {}", self.file.display(), issue.reason)?;
            } else {
                write!(
                    f,
                    "{}: {}: {}",
                    self.file.display(),
                    issue.key,
                    issue.reason
                )?;
            }
        }
        Ok(())
    }
}

/// A valid setting the log should warn about whenever the config is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigWarning {
    /// `insecure_skip_verify = true` on a variant with `https://` endpoints.
    InsecureSkipVerify {
        /// Such as `routes[0].canary.tls.insecure_skip_verify`.
        key: String,
    },
}

impl ConfigWarning {
    /// The key path the warning is about.
    pub fn key(&self) -> &str {
        match self {
            ConfigWarning::InsecureSkipVerify { key } => key,
        }
    }
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigWarning::InsecureSkipVerify { .. } => f.write_str(
                "TLS certificates of this upstream are NOT verified (insecure_skip_verify = true): anyone on the path can impersonate it",
            ),
        }
    }
}
