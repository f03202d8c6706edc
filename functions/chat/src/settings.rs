//! The chat module's settings, read when a task runs, and the API key that never shows.

use std::fmt;
use std::time::Duration;

use crate::api::ChatError;

/// The OpenAI-compatible server's base URL (required).
pub const ENV_CHAT_API_BASE: &str = "CHAT_API_BASE";
/// The API key, sent as `Authorization: Bearer` (required).
pub const ENV_CHAT_API_KEY: &str = "CHAT_API_KEY";
/// The model (required unless a task's options name one).
pub const ENV_CHAT_MODEL: &str = "CHAT_MODEL";
/// Seconds to wait for the response and between two chunks of the stream (default 60).
pub const ENV_CHAT_API_TIMEOUT: &str = "CHAT_API_TIMEOUT_SECS";

/// The default of [`ENV_CHAT_API_TIMEOUT`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

pub use taskbeat::settings::Settings;

/// An API key. Its `Debug` and `Display` say `[redacted]`; only [`ApiKey::expose`] gives the
/// value, for the `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Checks that the key can go in an HTTP header.
    pub fn parse(value: String) -> Result<Self, ChatError> {
        if value.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
            return Err(ChatError::InvalidSetting(format!(
                "{ENV_CHAT_API_KEY} contains a space, a control character or a non-ASCII character, which an HTTP header cannot carry: check how it was pasted"
            )));
        }
        Ok(ApiKey(value))
    }

    /// The key itself. Only for the request header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the key replaced (a server may quote the key it got).
    pub fn redact(&self, text: &str) -> String {
        text.replace(&self.0, "[redacted]")
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The settings a chat task needs.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    /// Base URL without a trailing `/` or `/v1`.
    pub base: String,
    /// The key.
    pub key: ApiKey,
    /// `CHAT_MODEL`, when set.
    pub model: Option<String>,
    /// Wait for the response and between chunks.
    pub timeout: Duration,
}

impl ChatSettings {
    /// Reads and checks the settings; a missing one is named, with what to set it to.
    pub fn load(settings: &Settings) -> Result<Self, ChatError> {
        let base = settings.get(ENV_CHAT_API_BASE);
        let key = settings.get(ENV_CHAT_API_KEY);
        let mut missing = Vec::new();
        if base.is_none() {
            missing.push(format!(
                "{ENV_CHAT_API_BASE} is not set: set it to the OpenAI-compatible server's base URL, e.g. https://api.openai.com"
            ));
        }
        if key.is_none() {
            missing.push(format!(
                "{ENV_CHAT_API_KEY} is not set: set it to the API key the server expects (sent as `Authorization: Bearer`)"
            ));
        }
        let (Some(base), Some(key)) = (base, key) else {
            return Err(ChatError::MissingSetting(missing.join("; ")));
        };
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ChatError::InvalidSetting(format!(
                "{ENV_CHAT_API_BASE} = {base:?} is not an http(s) URL, e.g. https://api.openai.com"
            )));
        }
        // Accept the root or the `/v1` form many SDKs use; requests add `/v1/...` themselves.
        let base = base.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base).to_owned();
        let timeout = match settings.get(ENV_CHAT_API_TIMEOUT) {
            None => DEFAULT_TIMEOUT,
            Some(v) => match v.parse::<f64>() {
                Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 3600.0 => Duration::from_secs_f64(secs),
                _ => {
                    return Err(ChatError::InvalidSetting(format!(
                        "{ENV_CHAT_API_TIMEOUT} = {v:?} is not a number of seconds between 0 and 3600"
                    )));
                }
            },
        };
        Ok(ChatSettings { base, key: ApiKey::parse(key)?, model: settings.get(ENV_CHAT_MODEL), timeout })
    }

    /// The model to use: the task's choice, else `CHAT_MODEL`.
    pub fn model(&self, chosen: Option<&str>) -> Result<String, ChatError> {
        chosen.map(str::to_owned).or_else(|| self.model.clone()).ok_or_else(|| {
            ChatError::MissingSetting(format!(
                "{ENV_CHAT_MODEL} is not set and the task's options name no model: set {ENV_CHAT_MODEL}, e.g. gpt-4o-mini"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_key_never_prints() {
        let key = ApiKey::parse("sk-secret-123".to_owned()).unwrap();
        assert_eq!(format!("{key}"), "[redacted]");
        assert_eq!(format!("{key:?}"), "ApiKey([redacted])");
        let settings = Settings::fixed([(ENV_CHAT_API_BASE, "http://x"), (ENV_CHAT_API_KEY, "sk-secret-123")]);
        assert!(!format!("{settings:?}").contains("sk-secret"));
        let loaded = ChatSettings::load(&settings).unwrap();
        assert!(!format!("{loaded:?}").contains("sk-secret"));
        assert_eq!(key.redact("bad key sk-secret-123."), "bad key [redacted].");
    }

    #[test]
    fn missing_settings_are_named_together() {
        let err = ChatSettings::load(&Settings::fixed([(ENV_CHAT_API_KEY, "  ")])).unwrap_err().to_string();
        assert!(err.contains("CHAT_API_BASE is not set") && err.contains("CHAT_API_KEY is not set"), "{err}");
        let settings = Settings::fixed([(ENV_CHAT_API_BASE, "http://x"), (ENV_CHAT_API_KEY, "k")]);
        let err = ChatSettings::load(&settings).unwrap().model(None).unwrap_err().to_string();
        assert!(err.contains("CHAT_MODEL is not set"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        let with = |name: &str, value: &str| {
            let mut pairs = vec![(ENV_CHAT_API_BASE, "http://x"), (ENV_CHAT_API_KEY, "k")];
            pairs.retain(|(n, _)| *n != name);
            pairs.push((name, value));
            ChatSettings::load(&Settings::fixed(pairs.into_iter().map(|(n, v)| (n.to_owned(), v.to_owned()))))
        };
        assert!(with(ENV_CHAT_API_BASE, "api.openai.com").unwrap_err().to_string().contains("not an http(s) URL"));
        let err = with(ENV_CHAT_API_KEY, "sk-abc\ndef").unwrap_err().to_string();
        assert!(err.contains("CHAT_API_KEY") && !err.contains("sk-abc"), "{err}");
        assert!(with(ENV_CHAT_API_TIMEOUT, "soon").unwrap_err().to_string().contains("CHAT_API_TIMEOUT_SECS"));
        assert_eq!(with(ENV_CHAT_API_BASE, "https://api.example.com/v1/").unwrap().base, "https://api.example.com");
        assert_eq!(with(ENV_CHAT_API_TIMEOUT, "2.5").unwrap().timeout, Duration::from_millis(2500));
    }
}
