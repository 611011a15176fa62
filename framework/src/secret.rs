//! Values that are never shown: tokens, passwords, key material.
//!
//! A [`Secret`] prints as `REDACTED` in `Debug` and `Display`, so a secret
//! held in a settings struct or a backend cannot reach a log line, an error
//! message or a status page by accident; the code that needs the value asks
//! for it with [`Secret::expose`], which is easy to find in review.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a secret is shown as.
pub(crate) const REDACTED: &str = "REDACTED";

/// A value shown only as `REDACTED`: a string in configuration (a token, a
/// password) that never shows in logs, errors or `Debug`.
///
/// ```
/// let token = trellis::Secret::new("hunter2".to_owned());
/// assert_eq!(format!("{token} {token:?}"), "REDACTED REDACTED");
/// assert_eq!(token.expose(), "hunter2");
/// ```
///
/// It deserializes from the bare value, and serializes to it (the layered
/// configuration passes values through serialization), so a `Secret`
/// written out with serde is written in clear: write out settings for
/// people with `Debug`, never with a serializer.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The value itself, for the code that sends or uses it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Secret(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Secret)
    }
}

impl<T: Serialize> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shown_but_kept() {
        #[derive(Debug, serde::Deserialize)]
        struct Settings {
            #[allow(dead_code, reason = "only printed")]
            password: Secret<String>,
        }
        let settings: Settings = serde_json::from_str(r#"{"password":"hunter2"}"#).unwrap();
        assert_eq!(format!("{settings:?}"), "Settings { password: REDACTED }");
        assert_eq!(settings.password.expose(), "hunter2");
        assert_eq!(serde_json::to_string(&settings.password).unwrap(), "\"hunter2\"");
    }
}
