//! Conversion between application buffers and their wire form.

use tpmon_buffer::{Buffer, BufferType};
use tpmon_proto::{BufferWire, ErrorKind};

use crate::CallError;

/// Encodes a buffer for the wire.
pub fn to_wire(b: &Buffer) -> BufferWire {
    let mut body = Vec::with_capacity(b.encoded_body_len());
    b.encode_body(&mut body);
    BufferWire {
        type_code: b.buffer_type().code(),
        subtype: b.subtype().to_string(),
        body,
    }
}

/// Decodes a buffer from the wire; a malformed one is a TPESYSTEM error naming why.
pub fn from_wire(w: &BufferWire) -> Result<Buffer, CallError> {
    let ty = BufferType::from_code(w.type_code).ok_or_else(|| {
        CallError::new(
            ErrorKind::System,
            format!("unknown buffer type code {}", w.type_code),
        )
    })?;
    Buffer::decode(ty, &w.subtype, &w.body).map_err(|e| {
        CallError::new(
            ErrorKind::System,
            format!("malformed {} buffer: {e}", ty.name()),
        )
    })
}
