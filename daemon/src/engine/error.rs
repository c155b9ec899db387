//! What can go wrong in a job, typed; each message says what happened and what to do.

use super::image_io::ImageError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid parameter: {0}")]
    Invalid(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("the computation failed: {0}. If this is an out-of-memory error, use a smaller --size")]
    Torch(String),
    #[error("not enough memory: {0}")]
    Memory(String),
}
