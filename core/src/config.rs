//! The config file: its raw TOML schema (`schema.rs`), the rules (`validate.rs`) and the
//! validated [`Config`] (`model.rs`); [`parse`] is the only way to get one.
//!
//! Pure: text in, `Config` or errors out. Files the config names (certificates, keys,
//! CAs, the admin token) are the shell's to read. Every error names the file, the key
//! path and the reason, in the form ops grep for:
//! `config/cohort.toml: routes[0].canary_percent: 100.5 is above 100`.

use std::path::Path;

mod error;
mod model;
mod schema;
mod validate;

pub use error::{ConfigError, ConfigIssue, ConfigWarning};
pub use model::*;
pub use schema::Percent;

/// Parses and validates config text. `file` names it in errors and anchors relative paths.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let raw = schema::parse_raw(text, file)?;
    validate::validate(raw, file)
}

#[cfg(test)]
mod tests;
