//! The function crates this binary links, by crate name: the same libraries the Lambda
//! binaries wrap, so what runs locally is what runs in Lambda.

use taskbeat::Registry;

/// Crate names and their registries.
pub fn linked() -> Vec<(&'static str, Registry)> {
    vec![
        ("taskbeat-user", taskbeat_user::registry()),
        ("taskbeat-alert", taskbeat_alert::registry()),
        ("taskbeat-chat", taskbeat_chat::registry()),
        ("taskbeat-nftfair", taskbeat_nftfair::registry()),
    ]
}

/// The registry of a crate, if linked.
pub fn registry_for(crate_name: &str) -> Option<Registry> {
    linked().into_iter().find(|(name, _)| *name == crate_name).map(|(_, r)| r)
}
