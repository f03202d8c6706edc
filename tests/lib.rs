//! Test support shared by the workspace's test binaries: a stand-in for the Flask app's API,
//! and the AWS emulator's configuration with fresh resource names per test.
#![allow(clippy::unwrap_used, missing_docs)]

pub mod emulator;
pub mod fake_app;
pub mod fake_nft;
pub mod fake_openai;
pub mod fake_webhook;
