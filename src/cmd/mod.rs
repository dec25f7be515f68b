//! Commands.

pub mod bench;
pub mod demo;
pub mod query;
pub mod run;
pub mod status;
pub mod views;
