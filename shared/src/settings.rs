//! Where a module's settings come from: the process environment (in Lambda and `taskbeat
//! local`), or a fixed table (tests and tools, which must not change the process environment).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A source of settings by name.
#[derive(Clone)]
pub enum Settings {
    /// `std::env`.
    Env,
    /// A fixed table of name -> value.
    Fixed(Arc<BTreeMap<String, String>>),
}

impl Settings {
    /// A fixed table from pairs.
    pub fn fixed<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Settings::Fixed(Arc::new(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect()))
    }

    /// The value of a setting; blank counts as unset.
    pub fn get(&self, name: &str) -> Option<String> {
        let value = match self {
            Settings::Env => std::env::var(name).ok(),
            Settings::Fixed(table) => table.get(name).cloned(),
        };
        value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }
}

impl fmt::Debug for Settings {
    // Names only: a table may hold secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Settings::Env => f.write_str("Settings::Env"),
            Settings::Fixed(table) => {
                f.debug_tuple("Settings::Fixed").field(&table.keys().collect::<Vec<_>>()).finish()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_is_unset_and_debug_hides_values() {
        let settings = Settings::fixed([("A", " x "), ("B", "  "), ("KEY", "sk-secret")]);
        assert_eq!(settings.get("A").as_deref(), Some("x"));
        assert_eq!(settings.get("B"), None);
        assert_eq!(settings.get("C"), None);
        assert!(!format!("{settings:?}").contains("sk-secret"));
    }
}
