//! The commands, one module each, as thin as the library allows: `main.rs`
//! parses the arguments and calls these; they print for people or scripts.

pub mod bench;
pub mod console;
pub mod demo;
pub mod query;
pub mod run;
pub mod status;
pub mod views;
