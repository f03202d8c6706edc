//! The user module's tests: its tasks against a stand-in for the app's API, and its Lambda
//! binary under a Runtime API served by the test.
#![allow(clippy::unwrap_used)]

mod lambda_binary;
mod tasks;
