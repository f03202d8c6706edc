//! Workspace end-to-end tests: the local runtime on the embedded store, and the AWS path
//! (SQS, DynamoDB) on the emulator with the real Rust SDK.
#![allow(clippy::unwrap_used)]

mod aws_path;
mod celery;
mod conformance;
mod faults;
mod local_runtime;
