//! Helpers shared by the lab's integration tests (`mod support;` in a test
//! crate). Each test crate uses a different part, hence `dead_code` is
//! allowed.

#![allow(dead_code)]

pub mod rig;
