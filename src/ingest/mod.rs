//! The data path.

pub mod adaptive;
pub mod decode;
pub mod dedup;
pub mod pipeline;
pub mod replay;
pub mod sink;
pub mod source;
pub mod transform;
pub mod watermark;
