//! The data path, one module per stage in the order a trigger runs them:
//! [`source`] → [`decode`] → [`expect`] → [`dedup`] → [`watermark`] → [`replay`] →
//! [`transform`] → [`sink`]. [`pipeline`] sequences them, [`adaptive`]
//! sizes the batches and [`stats`] counts what they did; [`probe`] measures
//! send → visible in `raw` from outside the path. Between the ends the stages are pure functions over
//! Arrow batches; a stage that keeps state (dedup, the watermark) restores it
//! itself from the tables ([`crate::table::Tables`]).

pub mod source;

pub mod decode;

pub mod expect;

pub mod monitor;

pub mod quality;

pub mod dedup;

pub mod watermark;

pub mod replay;

pub mod lookup;

pub mod transform;

pub mod sink;

pub mod adaptive;
pub mod pipeline;
pub mod probe;
pub mod stats;
