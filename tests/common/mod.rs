//! Code shared by the integration tests (each test binary uses the parts it needs).
#![allow(dead_code)]

pub mod oracle;
pub mod si;
