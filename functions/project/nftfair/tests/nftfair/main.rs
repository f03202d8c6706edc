//! The NFT Fair module's tests: its tasks end to end against a local stand-in for metadata
//! hosts and an IPFS gateway (`taskbeat_e2e::fake_nft`).
#![allow(clippy::unwrap_used)]

mod refresh_collection;
mod refresh_metadata;
mod support;
