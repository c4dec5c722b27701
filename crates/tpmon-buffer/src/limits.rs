//! The limits this crate enforces, as named constants with their unit last.
//!
//! This module owns the numbers only; the code that checks them lives next to the data it
//! guards. It must not hold anything that changes at run time: a receiver that wants
//! stricter limits for FIELD buffers passes a [`crate::FieldLimits`] to the decoder.

/// Largest encoded FIELD body, in bytes, that the API builds or the decoder accepts.
pub const FIELD_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Most occurrences one field key may have in a FIELD buffer.
pub const FIELD_OCCURRENCES_MAX: usize = 1 << 20;

/// Longest field name, in bytes, that a field table may define (the legacy monitors'
/// limit, so that their tables load unchanged and ours load there).
pub const FIELD_NAME_BYTES_MAX: usize = 30;

/// Largest field number; numbers run from 1 to this value (25 bits).
pub const FIELD_NUMBER_MAX: u32 = (1 << 25) - 1;

/// Longest record name (the RECORD subtype), in bytes.
pub const RECORD_NAME_BYTES_MAX: usize = 64;

/// Deepest nesting of sequences, maps, structs, enums and options in a record.
pub const RECORD_DEPTH_MAX: usize = 128;

/// Most sequence and map elements one record may declare in total, summed over all its
/// sequences and maps. Zero-sized elements (such as `()`) cost no input bytes, so this
/// bounds the work a hostile record can cause.
pub const RECORD_ELEMENTS_MAX: usize = 1 << 24;
