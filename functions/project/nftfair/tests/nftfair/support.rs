//! Settings for the stand-in; `call` runs a task directly with every progress report kept.

use taskbeat_e2e::fake_nft::FakeNft;
use taskbeat_nftfair::Settings;

/// Settings pointing `ipfs://` at the stand-in's gateway, plus `extra`.
pub fn settings(host: &FakeNft, extra: &[(&str, &str)]) -> Settings {
    let mut pairs = vec![("IPFS_GATEWAY".to_owned(), host.gateway())];
    pairs.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Settings::fixed(pairs)
}

pub use taskbeat::testing::call_task as call;
