//! Test support shared by the integration tests. Each test crate uses only part of it.
#![allow(dead_code)]

pub mod make_batch;
pub mod make_bundle;
