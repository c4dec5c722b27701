//! Typed buffers: the values that applications hand to tpmon and get back from it.
//!
//! This crate owns the application-visible buffer types of spec 01 §1.4 and their
//! *body* encodings: STRING, CARRAY, X_OCTET, FIELD (self-describing key/value buffers
//! whose keys come from field table files) and RECORD (a named serde record, the modern
//! form of STRUCT / X_C_TYPE). It is sans-I/O: it turns buffers into bytes and bytes into
//! buffers, and reads field table files, nothing else.
//!
//! It must not know about message headers, frames, sockets or services: the buffer type
//! code and subtype travel in the message header that `tpmon-proto` owns, and this crate
//! only sees the body.
//!
//! Fault model: every byte handed to a decoder may come from a hostile or broken peer,
//! and every field table file or printed buffer may be malformed. None of that can make
//! this crate panic or allocate more than a small multiple of the input it was given;
//! each failure is a [`BufferError`] that names the problem and where it is (byte offset,
//! `file:line`, or line of text). The wire format is big-endian and independent of the
//! host. `docs/typed-buffers.md` in the repository describes every byte.
//!
//! ```
//! use tpmon_buffer::{Buffer, BufferType, FieldBuffer, FieldKey, FieldType, FieldValue};
//!
//! let amount = FieldKey::new(FieldType::Long, 10)?;
//! let mut fields = FieldBuffer::new();
//! fields.add(amount, FieldValue::Long(1500))?;
//! let buffer = Buffer::Field(fields);
//!
//! let mut body = Vec::new();
//! buffer.encode_body(&mut body);
//! let back = Buffer::decode(BufferType::Field, "", &body)?;
//! assert_eq!(back, buffer);
//! # Ok::<(), tpmon_buffer::BufferError>(())
//! ```

mod buffer;
mod buffer_type;
mod error;
pub mod field;
pub mod limits;
pub mod record;
mod wire;

pub use buffer::Buffer;
pub use buffer_type::BufferType;
pub use error::{BufferError, DecodeProblem, Origin, PrintProblem, TableProblem};
pub use field::{
    FieldBuffer, FieldDef, FieldKey, FieldLimits, FieldTable, FieldType, FieldValue, FromFieldValue,
};
pub use record::{from_record, from_record_named, to_record};
