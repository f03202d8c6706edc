//! The NFT Fair module's settings, read when a task runs. All have defaults; a value that
//! cannot work fails the task naming the variable.

use std::fmt;
use std::time::Duration;

/// The IPFS gateway `ipfs://` URIs are fetched through.
pub const ENV_IPFS_GATEWAY: &str = "IPFS_GATEWAY";
/// Tokens fetched at once.
pub const ENV_NFT_FETCH_CONCURRENCY: &str = "NFT_FETCH_CONCURRENCY";
/// Seconds one fetch may take.
pub const ENV_NFT_FETCH_TIMEOUT: &str = "NFT_FETCH_TIMEOUT_SECS";

/// The default of [`ENV_IPFS_GATEWAY`].
pub const DEFAULT_IPFS_GATEWAY: &str = "https://ipfs.io/ipfs/";
/// The default of [`ENV_NFT_FETCH_CONCURRENCY`].
pub const DEFAULT_CONCURRENCY: usize = 8;
/// The most of [`ENV_NFT_FETCH_CONCURRENCY`] (a gateway throttles beyond a few dozen).
pub const MAX_CONCURRENCY: usize = 64;
/// The default of [`ENV_NFT_FETCH_TIMEOUT`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A setting with a value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SettingError(pub String);

pub use taskbeat::settings::Settings;

/// The settings the tasks use.
#[derive(Clone, PartialEq)]
pub struct NftSettings {
    /// Gateway base, ending in `/`.
    pub gateway: String,
    /// Tokens fetched at once.
    pub concurrency: usize,
    /// The longest one fetch may take.
    pub timeout: Duration,
}

impl fmt::Debug for NftSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A gateway URL may carry an access token (`?token=` or user:pass@): not printed.
        f.debug_struct("NftSettings")
            .field("concurrency", &self.concurrency)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl NftSettings {
    /// Reads and checks the settings.
    pub fn load(settings: &Settings) -> Result<Self, SettingError> {
        let gateway = settings.get(ENV_IPFS_GATEWAY).unwrap_or_else(|| DEFAULT_IPFS_GATEWAY.to_owned());
        if !(gateway.starts_with("http://") || gateway.starts_with("https://")) || gateway.contains('?') {
            return Err(SettingError(format!(
                "{ENV_IPFS_GATEWAY} is not an http(s) URL without a query: set it to a gateway's path prefix, e.g. {DEFAULT_IPFS_GATEWAY}"
            )));
        }
        let gateway = format!("{}/", gateway.trim_end_matches('/'));
        let concurrency = match settings.get(ENV_NFT_FETCH_CONCURRENCY) {
            None => DEFAULT_CONCURRENCY,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => n,
                _ => {
                    return Err(SettingError(format!(
                        "{ENV_NFT_FETCH_CONCURRENCY} = {v:?} is not a whole number from 1 to {MAX_CONCURRENCY}"
                    )));
                }
            },
        };
        let timeout = match settings.get(ENV_NFT_FETCH_TIMEOUT) {
            None => DEFAULT_TIMEOUT,
            Some(v) => match v.parse::<f64>() {
                Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 300.0 => Duration::from_secs_f64(secs),
                _ => {
                    return Err(SettingError(format!(
                        "{ENV_NFT_FETCH_TIMEOUT} = {v:?} is not a number of seconds between 0 and 300"
                    )));
                }
            },
        };
        Ok(NftSettings { gateway, concurrency, timeout })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_and_bad_values() {
        let defaults = NftSettings::load(&Settings::fixed::<String, String>([])).unwrap();
        assert_eq!(defaults.gateway, DEFAULT_IPFS_GATEWAY);
        assert_eq!((defaults.concurrency, defaults.timeout), (8, Duration::from_secs(10)));
        let with = |name: &str, value: &str| NftSettings::load(&Settings::fixed([(name, value)]));
        assert_eq!(with(ENV_IPFS_GATEWAY, "https://gw.example/ipfs").unwrap().gateway, "https://gw.example/ipfs/");
        for (name, value) in [
            (ENV_IPFS_GATEWAY, "gw.example/ipfs"),
            (ENV_IPFS_GATEWAY, "https://gw.example/ipfs/?token=secret"),
            (ENV_NFT_FETCH_CONCURRENCY, "0"),
            (ENV_NFT_FETCH_CONCURRENCY, "lots"),
            (ENV_NFT_FETCH_TIMEOUT, "-1"),
        ] {
            let err = with(name, value).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }
}
