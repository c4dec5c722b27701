//! FIELD buffers: self-describing (key, value) buffers whose keys come from field
//! tables, in the style of FML / UBF.
//!
//! This module tree owns everything about FIELD buffers: the key layout (`key.rs`), the
//! value types (`field_type.rs`, `value.rs`), the conversions between them
//! (`convert.rs`), field table files and their lookup through the environment
//! (`table.rs`, `env.rs`), the buffer and its operations (`buffer.rs`), the wire
//! encoding (`codec.rs`) and the printed text form (`print.rs`). It must not know about
//! the other buffer types or about messages.
//!
//! ```
//! use tpmon_buffer::{FieldBuffer, FieldTable, FieldValue};
//!
//! let table = FieldTable::parse("*base 100\nACCOUNT 1 long\nOWNER 2 string\n", "bank.fld")?;
//! let account = table.key_of("ACCOUNT").unwrap();
//! let mut fields = FieldBuffer::new();
//! fields.add(account, FieldValue::Long(42))?;
//! fields.add_converted(table.key_of("OWNER").unwrap(), &FieldValue::from("Kim"))?;
//! assert_eq!(fields.get_text(account, 0)?, "42");
//! assert_eq!(fields.print(&table), "ACCOUNT\t42\nOWNER\tKim\n");
//! # Ok::<(), tpmon_buffer::BufferError>(())
//! ```

mod buffer;
mod codec;
pub mod convert;
mod env;
mod field_type;
mod key;
mod print;
mod table;
mod value;

pub use buffer::{FieldBuffer, Iter};
pub use codec::FieldLimits;
pub use convert::FromFieldValue;
pub use env::{FIELDTBLS_VAR, FLDTBLDIR_VAR};
pub use field_type::FieldType;
pub use key::FieldKey;
pub use table::{FieldDef, FieldTable};
pub use value::FieldValue;
