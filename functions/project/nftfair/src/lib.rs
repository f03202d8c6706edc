//! NFT Fair project tasks (app.schedules.project.nftfair_task); queue `nft`
#![warn(missing_docs)]

use taskbeat::Registry;

/// The module's tasks.
pub fn registry() -> Registry {
    Registry::new("nftfair")
}
