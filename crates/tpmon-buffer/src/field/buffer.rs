//! [`FieldBuffer`]: an ordered multimap from field keys to occurrences of values.
//!
//! This module owns the in-memory field buffer and its everyday operations (add,
//! insert, get, update, delete, count, iterate, merge, project, compare). It keeps three
//! invariants that the codec and the printer rely on, and must never break them:
//!
//! 1. every value has the type its key encodes, and no `string` value holds a NUL;
//! 2. no key maps to an empty list of occurrences;
//! 3. the cached encoded size equals the size [`FieldBuffer::encode`] produces, and stays
//!    within [`FIELD_BODY_BYTES_MAX`], with at most [`FIELD_OCCURRENCES_MAX`]
//!    occurrences per key.
//!
//! Every mutation checks before it changes anything, so a failed call leaves the buffer
//! as it was. Iteration is in ascending key order (raw key value: type code, then
//! number), then occurrence; that is also the wire order.

use std::cmp::Ordering;
use std::collections::{btree_map, BTreeMap, BTreeSet};

use super::{FieldKey, FieldType, FieldValue, FromFieldValue};
use crate::error::BufferError;
use crate::limits::{FIELD_BODY_BYTES_MAX, FIELD_OCCURRENCES_MAX};

/// Bytes of the entry count that starts every encoded FIELD body.
pub(crate) const COUNT_BYTES: usize = 4;

/// Bytes of the key in front of each encoded value.
pub(crate) const KEY_BYTES: usize = 4;

/// A FIELD buffer: (key, value) occurrences in key order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FieldBuffer {
    fields: BTreeMap<FieldKey, Vec<FieldValue>>,
    encoded_bytes: usize,
}

impl Default for FieldBuffer {
    fn default() -> Self {
        FieldBuffer {
            fields: BTreeMap::new(),
            encoded_bytes: COUNT_BYTES,
        }
    }
}

/// Bytes one occurrence adds to the encoding.
fn entry_bytes(value: &FieldValue) -> usize {
    KEY_BYTES + value.encoded_len()
}

impl FieldBuffer {
    /// An empty buffer.
    pub fn new() -> FieldBuffer {
        FieldBuffer::default()
    }

    /// Checks that `value` may be stored under `key`.
    fn check_value(key: FieldKey, value: &FieldValue) -> Result<(), BufferError> {
        let found = value.field_type();
        if found != key.field_type() {
            return Err(BufferError::TypeMismatch {
                key,
                expected: key.field_type(),
                found,
            });
        }
        if let Some(offset) = value.nul_offset() {
            return Err(BufferError::NulInFieldString { key, offset });
        }
        Ok(())
    }

    /// Checks a new encoded size against the limit.
    fn check_size(bytes: usize) -> Result<usize, BufferError> {
        if bytes > FIELD_BODY_BYTES_MAX {
            return Err(BufferError::FieldBufferTooLarge {
                bytes,
                max: FIELD_BODY_BYTES_MAX,
            });
        }
        Ok(bytes)
    }

    /// Checks a new occurrence count against the limit.
    fn check_occurrences(key: FieldKey, count: usize) -> Result<(), BufferError> {
        if count > FIELD_OCCURRENCES_MAX {
            return Err(BufferError::TooManyOccurrences {
                key,
                max: FIELD_OCCURRENCES_MAX,
            });
        }
        Ok(())
    }

    /// Appends `value` as a new last occurrence of `key`. The value must have the key's
    /// type (see [`FieldBuffer::add_converted`] otherwise).
    pub fn add(&mut self, key: FieldKey, value: FieldValue) -> Result<(), BufferError> {
        let count = self.occurrences(key);
        self.insert(key, count, value)
    }

    /// Same as [`FieldBuffer::add`] (the `fbput` name).
    pub fn put(&mut self, key: FieldKey, value: FieldValue) -> Result<(), BufferError> {
        self.add(key, value)
    }

    /// Converts `value` to the key's type (see [`crate::field::convert`]) and appends it.
    pub fn add_converted(&mut self, key: FieldKey, value: &FieldValue) -> Result<(), BufferError> {
        self.add(key, value.convert(key.field_type())?)
    }

    /// Inserts `value` as occurrence `occurrence` of `key`, moving later occurrences up
    /// by one; `occurrence == occurrences(key)` appends.
    pub fn insert(
        &mut self,
        key: FieldKey,
        occurrence: usize,
        value: FieldValue,
    ) -> Result<(), BufferError> {
        Self::check_value(key, &value)?;
        let count = self.occurrences(key);
        if occurrence > count {
            return Err(BufferError::OccurrenceOutOfRange {
                key,
                occurrence,
                count,
            });
        }
        Self::check_occurrences(key, count + 1)?;
        let bytes = Self::check_size(self.encoded_bytes + entry_bytes(&value))?;
        self.fields
            .entry(key)
            .or_default()
            .insert(occurrence, value);
        self.encoded_bytes = bytes;
        Ok(())
    }

    /// Replaces occurrence `occurrence` of `key` with `value`; `occurrence ==
    /// occurrences(key)` appends instead.
    pub fn update(
        &mut self,
        key: FieldKey,
        occurrence: usize,
        value: FieldValue,
    ) -> Result<(), BufferError> {
        let count = self.occurrences(key);
        if occurrence == count {
            return self.insert(key, occurrence, value);
        }
        Self::check_value(key, &value)?;
        let slot = self
            .fields
            .get_mut(&key)
            .and_then(|values| values.get_mut(occurrence))
            .ok_or(BufferError::OccurrenceOutOfRange {
                key,
                occurrence,
                count,
            })?;
        let bytes =
            Self::check_size(self.encoded_bytes + value.encoded_len() - slot.encoded_len())?;
        *slot = value;
        self.encoded_bytes = bytes;
        Ok(())
    }

    /// Occurrence `occurrence` of `key`, if present.
    pub fn get(&self, key: FieldKey, occurrence: usize) -> Option<&FieldValue> {
        self.fields.get(&key)?.get(occurrence)
    }

    /// The last occurrence of `key` and its index, if any.
    pub fn get_last(&self, key: FieldKey) -> Option<(usize, &FieldValue)> {
        let values = self.fields.get(&key)?;
        values.last().map(|v| (values.len() - 1, v))
    }

    /// All occurrences of `key`, in order (empty if absent).
    pub fn get_all(&self, key: FieldKey) -> &[FieldValue] {
        self.fields.get(&key).map(Vec::as_slice).unwrap_or_default()
    }

    /// Occurrence `occurrence` of `key`, or [`BufferError::NotPresent`].
    fn require(&self, key: FieldKey, occurrence: usize) -> Result<&FieldValue, BufferError> {
        self.get(key, occurrence)
            .ok_or(BufferError::NotPresent { key, occurrence })
    }

    /// Occurrence `occurrence` of `key` converted to type `to`.
    pub fn get_converted(
        &self,
        key: FieldKey,
        occurrence: usize,
        to: FieldType,
    ) -> Result<FieldValue, BufferError> {
        self.require(key, occurrence)?.convert(to)
    }

    /// Occurrence `occurrence` of `key` converted to the Rust type `T`.
    pub fn get_as<T: FromFieldValue>(
        &self,
        key: FieldKey,
        occurrence: usize,
    ) -> Result<T, BufferError> {
        T::from_field_value(self.require(key, occurrence)?)
    }

    /// Occurrence `occurrence` of `key` as a `short`, converting.
    pub fn get_short(&self, key: FieldKey, occurrence: usize) -> Result<i16, BufferError> {
        self.get_as(key, occurrence)
    }

    /// Occurrence `occurrence` of `key` as a `long`, converting.
    pub fn get_long(&self, key: FieldKey, occurrence: usize) -> Result<i64, BufferError> {
        self.get_as(key, occurrence)
    }

    /// Occurrence `occurrence` of `key` as a `char`, converting.
    pub fn get_char(&self, key: FieldKey, occurrence: usize) -> Result<u8, BufferError> {
        self.get_as(key, occurrence)
    }

    /// Occurrence `occurrence` of `key` as a `float`, converting.
    pub fn get_float(&self, key: FieldKey, occurrence: usize) -> Result<f32, BufferError> {
        self.get_as(key, occurrence)
    }

    /// Occurrence `occurrence` of `key` as a `double`, converting.
    pub fn get_double(&self, key: FieldKey, occurrence: usize) -> Result<f64, BufferError> {
        self.get_as(key, occurrence)
    }

    /// Occurrence `occurrence` of `key` as `string` bytes (no NUL, any encoding),
    /// converting.
    pub fn get_string(&self, key: FieldKey, occurrence: usize) -> Result<Vec<u8>, BufferError> {
        match self.get_converted(key, occurrence, FieldType::String)? {
            FieldValue::String(b) => Ok(b),
            other => Ok(other.to_bytes()),
        }
    }

    /// Occurrence `occurrence` of `key` as UTF-8 text, converting; an error if the
    /// bytes are not UTF-8.
    pub fn get_text(&self, key: FieldKey, occurrence: usize) -> Result<String, BufferError> {
        self.get_as(key, occurrence)
    }

    /// Occurrence `occurrence` of `key` as `carray` bytes, converting.
    pub fn get_carray(&self, key: FieldKey, occurrence: usize) -> Result<Vec<u8>, BufferError> {
        self.get_as(key, occurrence)
    }

    /// Removes occurrence `occurrence` of `key`, moving later ones down by one; returns
    /// the removed value, or `None` if it was not present.
    pub fn delete(&mut self, key: FieldKey, occurrence: usize) -> Option<FieldValue> {
        let values = self.fields.get_mut(&key)?;
        if occurrence >= values.len() {
            return None;
        }
        let removed = values.remove(occurrence);
        if values.is_empty() {
            self.fields.remove(&key);
        }
        self.encoded_bytes -= entry_bytes(&removed);
        Some(removed)
    }

    /// Removes every occurrence of `key`; returns how many there were.
    pub fn delete_all(&mut self, key: FieldKey) -> usize {
        match self.fields.remove(&key) {
            Some(values) => {
                self.encoded_bytes -= values.iter().map(entry_bytes).sum::<usize>();
                values.len()
            }
            None => 0,
        }
    }

    /// Removes every occurrence of each of `keys`; returns how many occurrences went.
    pub fn delete_keys(&mut self, keys: impl IntoIterator<Item = FieldKey>) -> usize {
        keys.into_iter().map(|k| self.delete_all(k)).sum()
    }

    /// Keeps only the fields whose keys are in `keys` (the "project" operation).
    pub fn project(&mut self, keys: impl IntoIterator<Item = FieldKey>) {
        let keep: BTreeSet<FieldKey> = keys.into_iter().collect();
        let gone: Vec<FieldKey> = self
            .fields
            .keys()
            .filter(|k| !keep.contains(k))
            .copied()
            .collect();
        self.delete_keys(gone);
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        *self = FieldBuffer::new();
    }

    /// Total number of occurrences of all fields.
    pub fn field_count(&self) -> usize {
        self.fields.values().map(Vec::len).sum()
    }

    /// Number of distinct keys present.
    pub fn key_count(&self) -> usize {
        self.fields.len()
    }

    /// Whether the buffer holds no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Number of occurrences of `key`.
    pub fn occurrences(&self, key: FieldKey) -> usize {
        self.fields.get(&key).map_or(0, Vec::len)
    }

    /// Whether occurrence `occurrence` of `key` is present.
    pub fn is_present(&self, key: FieldKey, occurrence: usize) -> bool {
        occurrence < self.occurrences(key)
    }

    /// The keys present, ascending.
    pub fn keys(&self) -> impl Iterator<Item = FieldKey> + '_ {
        self.fields.keys().copied()
    }

    /// Every occurrence as `(key, occurrence, value)`, in key then occurrence order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            keys: self.fields.iter(),
            current: None,
        }
    }

    /// Size in bytes of the encoded body ([`FieldBuffer::encode`]); constant time.
    pub fn encoded_len(&self) -> usize {
        self.encoded_bytes
    }

    /// For every occurrence `i` of every key in `other`, sets occurrence `i` of that key
    /// here: replacing it if present, appending otherwise (`Fupdate`). Keys only here
    /// are kept. Checks the limits first, so on error nothing has changed.
    pub fn update_from(&mut self, other: &FieldBuffer) -> Result<(), BufferError> {
        let mut bytes = self.encoded_bytes;
        for (key, src) in &other.fields {
            let dst = self.get_all(*key);
            Self::check_occurrences(*key, dst.len().max(src.len()))?;
            for (i, value) in src.iter().enumerate() {
                bytes = match dst.get(i) {
                    Some(old) => bytes + value.encoded_len() - old.encoded_len(),
                    None => bytes + entry_bytes(value),
                };
            }
        }
        let bytes = Self::check_size(bytes)?;
        for (key, src) in &other.fields {
            let dst = self.fields.entry(*key).or_default();
            for (i, value) in src.iter().enumerate() {
                match dst.get_mut(i) {
                    Some(slot) => *slot = value.clone(),
                    None => dst.push(value.clone()),
                }
            }
        }
        self.encoded_bytes = bytes;
        Ok(())
    }

    /// Appends every occurrence of `other` after the occurrences already here
    /// (`Fconcat`). Checks the limits first, so on error nothing has changed.
    pub fn concat(&mut self, other: &FieldBuffer) -> Result<(), BufferError> {
        for (key, src) in &other.fields {
            Self::check_occurrences(*key, self.occurrences(*key) + src.len())?;
        }
        let bytes = Self::check_size(self.encoded_bytes + other.encoded_bytes - COUNT_BYTES)?;
        for (key, src) in &other.fields {
            self.fields
                .entry(*key)
                .or_default()
                .extend(src.iter().cloned());
        }
        self.encoded_bytes = bytes;
        Ok(())
    }

    /// Compares two buffers entry by entry in iteration order: by key, then by value
    /// ([`FieldValue::total_cmp`]); a buffer that is a prefix of the other is less.
    /// `Equal` exactly when the buffers are `==`.
    pub fn compare(&self, other: &FieldBuffer) -> Ordering {
        let mut a = self.iter();
        let mut b = other.iter();
        loop {
            match (a.next(), b.next()) {
                (None, None) => return Ordering::Equal,
                (None, Some(_)) => return Ordering::Less,
                (Some(_), None) => return Ordering::Greater,
                (Some((ka, _, va)), Some((kb, _, vb))) => {
                    let order = ka.cmp(&kb).then_with(|| va.total_cmp(vb));
                    if order != Ordering::Equal {
                        return order;
                    }
                }
            }
        }
    }

    /// Builds a buffer from entries already known to be valid and in order; used by the
    /// decoder, which has checked types, NULs, order and limits.
    pub(crate) fn from_checked_parts(
        fields: BTreeMap<FieldKey, Vec<FieldValue>>,
        encoded_bytes: usize,
    ) -> FieldBuffer {
        FieldBuffer {
            fields,
            encoded_bytes,
        }
    }

    /// The occurrences grouped by key, for the encoder.
    pub(crate) fn groups(&self) -> btree_map::Iter<'_, FieldKey, Vec<FieldValue>> {
        self.fields.iter()
    }
}

/// Iterator over `(key, occurrence, value)` of a [`FieldBuffer`], in key then
/// occurrence order.
#[derive(Clone, Debug)]
pub struct Iter<'a> {
    keys: btree_map::Iter<'a, FieldKey, Vec<FieldValue>>,
    current: Option<(
        FieldKey,
        std::iter::Enumerate<std::slice::Iter<'a, FieldValue>>,
    )>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (FieldKey, usize, &'a FieldValue);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((key, values)) = &mut self.current {
                if let Some((occurrence, value)) = values.next() {
                    return Some((*key, occurrence, value));
                }
            }
            let (key, values) = self.keys.next()?;
            self.current = Some((*key, values.iter().enumerate()));
        }
    }
}

impl<'a> IntoIterator for &'a FieldBuffer {
    type Item = (FieldKey, usize, &'a FieldValue);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ty: FieldType, n: u32) -> FieldKey {
        FieldKey::new(ty, n).unwrap()
    }

    fn long(n: u32) -> FieldKey {
        key(FieldType::Long, n)
    }

    fn string(n: u32) -> FieldKey {
        key(FieldType::String, n)
    }

    /// The cached size must match a recount.
    fn check_size(b: &FieldBuffer) {
        let recount = COUNT_BYTES + b.iter().map(|(_, _, v)| entry_bytes(v)).sum::<usize>();
        assert_eq!(b.encoded_len(), recount);
        assert!(b.fields.values().all(|v| !v.is_empty()));
    }

    #[test]
    fn add_get_and_counts() {
        let mut b = FieldBuffer::new();
        assert!(b.is_empty());
        assert_eq!(b.encoded_len(), 4);
        b.add(long(1), FieldValue::Long(10)).unwrap();
        b.add(long(1), FieldValue::Long(11)).unwrap();
        b.put(string(2), FieldValue::from("x")).unwrap();
        assert_eq!(b.field_count(), 3);
        assert_eq!(b.key_count(), 2);
        assert_eq!(b.occurrences(long(1)), 2);
        assert!(b.is_present(long(1), 1));
        assert!(!b.is_present(long(1), 2));
        assert_eq!(b.get(long(1), 1), Some(&FieldValue::Long(11)));
        assert_eq!(b.get_last(long(1)), Some((1, &FieldValue::Long(11))));
        assert_eq!(b.get_last(long(3)), None);
        assert_eq!(b.get_all(long(3)), &[]);
        check_size(&b);
    }

    #[test]
    fn type_mismatch_and_nul_are_refused() {
        let mut b = FieldBuffer::new();
        let e = b.add(long(1), FieldValue::Short(1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "field ((long) 1) holds long values, got a short value"
        );
        let e = b
            .add(string(1), FieldValue::String(b"a\0".to_vec()))
            .unwrap_err();
        assert!(matches!(e, BufferError::NulInFieldString { offset: 1, .. }));
        assert!(b.is_empty());
        b.add_converted(long(1), &FieldValue::from("42")).unwrap();
        assert_eq!(b.get(long(1), 0), Some(&FieldValue::Long(42)));
        assert!(b.add_converted(long(1), &FieldValue::from("x")).is_err());
    }

    #[test]
    fn insert_update_delete() {
        let mut b = FieldBuffer::new();
        let k = long(5);
        b.insert(k, 0, FieldValue::Long(2)).unwrap();
        b.insert(k, 0, FieldValue::Long(0)).unwrap();
        b.insert(k, 1, FieldValue::Long(1)).unwrap();
        assert!(matches!(
            b.insert(k, 9, FieldValue::Long(9)),
            Err(BufferError::OccurrenceOutOfRange {
                occurrence: 9,
                count: 3,
                ..
            })
        ));
        let all: Vec<_> = b.get_all(k).to_vec();
        assert_eq!(
            all,
            [
                FieldValue::Long(0),
                FieldValue::Long(1),
                FieldValue::Long(2)
            ]
        );
        b.update(k, 1, FieldValue::Long(100)).unwrap();
        b.update(k, 3, FieldValue::Long(3)).unwrap();
        assert!(b.update(k, 5, FieldValue::Long(5)).is_err());
        assert!(b.update(k, 0, FieldValue::Short(5)).is_err());
        assert_eq!(b.occurrences(k), 4);
        assert_eq!(b.delete(k, 1), Some(FieldValue::Long(100)));
        assert_eq!(b.delete(k, 7), None);
        assert_eq!(b.delete(long(6), 0), None);
        assert_eq!(b.get(k, 1), Some(&FieldValue::Long(2)));
        check_size(&b);
        assert_eq!(b.delete_all(k), 3);
        assert!(b.is_empty());
        check_size(&b);
    }

    #[test]
    fn update_changes_size_for_strings() {
        let mut b = FieldBuffer::new();
        let k = string(1);
        b.add(k, FieldValue::from("abc")).unwrap();
        b.update(k, 0, FieldValue::from("a much longer value"))
            .unwrap();
        check_size(&b);
        b.update(k, 0, FieldValue::from("")).unwrap();
        check_size(&b);
    }

    #[test]
    fn typed_getters_convert() {
        let mut b = FieldBuffer::new();
        let k = string(1);
        b.add(k, FieldValue::from("123")).unwrap();
        b.add(k, FieldValue::from("abc")).unwrap();
        assert_eq!(b.get_long(k, 0).unwrap(), 123);
        assert_eq!(b.get_short(k, 0).unwrap(), 123);
        assert_eq!(b.get_double(k, 0).unwrap(), 123.0);
        assert_eq!(b.get_float(k, 0).unwrap(), 123.0);
        assert_eq!(b.get_char(k, 1).unwrap(), b'a');
        assert!(matches!(
            b.get_long(k, 1),
            Err(BufferError::Conversion { .. })
        ));
        assert!(matches!(
            b.get_long(k, 2),
            Err(BufferError::NotPresent { occurrence: 2, .. })
        ));
        assert_eq!(b.get_text(k, 1).unwrap(), "abc");
        assert_eq!(b.get_string(k, 1).unwrap(), b"abc");
        assert_eq!(b.get_carray(k, 1).unwrap(), b"abc");
        assert_eq!(b.get_as::<i32>(k, 0).unwrap(), 123);
        assert_eq!(
            b.get_converted(k, 0, FieldType::Long).unwrap(),
            FieldValue::Long(123)
        );
    }

    #[test]
    fn iteration_is_in_key_then_occurrence_order() {
        let mut b = FieldBuffer::new();
        b.add(string(1), FieldValue::from("s")).unwrap();
        b.add(long(9), FieldValue::Long(1)).unwrap();
        b.add(long(2), FieldValue::Long(2)).unwrap();
        b.add(long(9), FieldValue::Long(3)).unwrap();
        let seen: Vec<_> = b.iter().map(|(k, o, _)| (k.number(), o)).collect();
        assert_eq!(seen, [(2, 0), (9, 0), (9, 1), (1, 0)]);
        assert_eq!((&b).into_iter().count(), 4);
        assert_eq!(b.keys().count(), 3);
    }

    #[test]
    fn update_from_replaces_and_appends() {
        let mut a = FieldBuffer::new();
        a.add(long(1), FieldValue::Long(1)).unwrap();
        a.add(long(2), FieldValue::Long(20)).unwrap();
        let mut b = FieldBuffer::new();
        b.add(long(1), FieldValue::Long(100)).unwrap();
        b.add(long(1), FieldValue::Long(101)).unwrap();
        b.add(string(3), FieldValue::from("new")).unwrap();
        a.update_from(&b).unwrap();
        assert_eq!(
            a.get_all(long(1)),
            &[FieldValue::Long(100), FieldValue::Long(101)]
        );
        assert_eq!(a.get_all(long(2)), &[FieldValue::Long(20)]);
        assert_eq!(a.occurrences(string(3)), 1);
        check_size(&a);
    }

    #[test]
    fn concat_appends_everything() {
        let mut a = FieldBuffer::new();
        a.add(long(1), FieldValue::Long(1)).unwrap();
        let b = a.clone();
        a.concat(&b).unwrap();
        assert_eq!(a.occurrences(long(1)), 2);
        check_size(&a);
    }

    #[test]
    fn project_and_delete_keys() {
        let mut a = FieldBuffer::new();
        for n in 1..=5 {
            a.add(long(n), FieldValue::Long(i64::from(n))).unwrap();
        }
        let mut p = a.clone();
        p.project([long(2), long(4), long(99)]);
        assert_eq!(p.keys().map(|k| k.number()).collect::<Vec<_>>(), [2, 4]);
        check_size(&p);
        assert_eq!(a.delete_keys([long(1), long(3), long(99)]), 2);
        assert_eq!(a.key_count(), 3);
        check_size(&a);
        a.clear();
        assert!(a.is_empty());
        assert_eq!(a, FieldBuffer::new());
    }

    #[test]
    fn compare_orders_by_key_then_value() {
        let mut a = FieldBuffer::new();
        a.add(long(1), FieldValue::Long(1)).unwrap();
        let mut b = a.clone();
        assert_eq!(a.compare(&b), Ordering::Equal);
        b.add(long(1), FieldValue::Long(0)).unwrap();
        assert_eq!(a.compare(&b), Ordering::Less);
        let mut c = FieldBuffer::new();
        c.add(long(1), FieldValue::Long(2)).unwrap();
        assert_eq!(c.compare(&b), Ordering::Greater);
        let mut d = FieldBuffer::new();
        d.add(long(2), FieldValue::Long(0)).unwrap();
        assert_eq!(d.compare(&c), Ordering::Greater);
    }

    #[test]
    fn occurrence_limit_is_enforced_and_leaves_buffer_unchanged() {
        let k = key(FieldType::Char, 1);
        let mut a = FieldBuffer::new();
        for _ in 0..FIELD_OCCURRENCES_MAX {
            a.add(k, FieldValue::Char(b'x')).unwrap();
        }
        let before = a.encoded_len();
        assert!(matches!(
            a.add(k, FieldValue::Char(b'y')),
            Err(BufferError::TooManyOccurrences { .. })
        ));
        let copy = a.clone();
        assert!(a.concat(&copy).is_err());
        assert_eq!(a.encoded_len(), before);
        assert_eq!(a.occurrences(k), FIELD_OCCURRENCES_MAX);
    }

    #[test]
    fn size_limit_is_enforced() {
        let k = key(FieldType::Carray, 1);
        let mut a = FieldBuffer::new();
        let big = vec![0u8; FIELD_BODY_BYTES_MAX / 2];
        a.add(k, FieldValue::Carray(big.clone())).unwrap();
        assert!(matches!(
            a.add(k, FieldValue::Carray(big.clone())),
            Err(BufferError::FieldBufferTooLarge { .. })
        ));
        assert!(a
            .update(k, 0, FieldValue::Carray(vec![0; FIELD_BODY_BYTES_MAX]))
            .is_err());
        let copy = a.clone();
        assert!(a.update_from(&copy).is_ok());
        assert!(a.concat(&copy).is_err());
        assert_eq!(a.occurrences(k), 1);
        check_size(&a);
    }
}
