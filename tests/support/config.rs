//! Configs for the cohort under test, built rather than written as TOML strings.

use super::upstream::FakeUpstream;

/// A `[[routes]]` block with a stable and a canary upstream.
pub fn route(name: &str, stable: &FakeUpstream, canary: &FakeUpstream, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nsalt = \"{name}-salt\"\nstable = {{ endpoints = [\"{}\"] }}\ncanary = {{ endpoints = [\"{}\"] }}\n{extra}\n",
        stable.url(),
        canary.url()
    )
}
