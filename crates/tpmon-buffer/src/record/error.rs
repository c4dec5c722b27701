//! The error type serde sees while a record is encoded or decoded.
//!
//! serde needs an error type it can build from a message (`custom`); this module owns
//! that type and nothing else. Errors from the byte reader keep their offset; messages
//! from serde get the reader's offset when they reach the top (see
//! `RecordDeserializer::into_buffer_error`).

use std::fmt;

use crate::error::BufferError;

/// An error inside the record serializer or deserializer.
#[derive(Debug)]
pub(crate) enum RecordError {
    /// An error that already knows where it happened.
    Buffer(BufferError),
    /// A message from serde or from the target type.
    Custom(String),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Buffer(e) => e.fmt(f),
            RecordError::Custom(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for RecordError {}

impl From<BufferError> for RecordError {
    fn from(e: BufferError) -> Self {
        RecordError::Buffer(e)
    }
}

impl serde::ser::Error for RecordError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        RecordError::Custom(msg.to_string())
    }
}

impl serde::de::Error for RecordError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        RecordError::Custom(msg.to_string())
    }
}
