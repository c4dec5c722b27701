//! Property tests over the public API: every buffer round-trips through its encoding,
//! arbitrary bytes never make a decoder panic, what a decoder accepts re-encodes to
//! the same bytes, printed field buffers read back, and the field buffer operations
//! agree with a plain `BTreeMap` model.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tpmon_buffer::limits::FIELD_NUMBER_MAX;
use tpmon_buffer::{Buffer, BufferType, FieldBuffer, FieldKey, FieldTable, FieldType, FieldValue};

fn field_type() -> impl Strategy<Value = FieldType> {
    prop::sample::select(FieldType::ALL.to_vec())
}

/// Keys with small numbers most of the time, so that keys repeat (occurrences).
fn key() -> impl Strategy<Value = FieldKey> {
    let number = prop_oneof![4 => 1u32..12, 1 => 1u32..=FIELD_NUMBER_MAX];
    (field_type(), number).prop_map(|(ty, n)| FieldKey::new(ty, n).expect("valid number"))
}

fn value(ty: FieldType) -> BoxedStrategy<FieldValue> {
    match ty {
        FieldType::Short => any::<i16>().prop_map(FieldValue::Short).boxed(),
        FieldType::Long => any::<i64>().prop_map(FieldValue::Long).boxed(),
        FieldType::Char => any::<u8>().prop_map(FieldValue::Char).boxed(),
        FieldType::Float => any::<f32>().prop_map(FieldValue::Float).boxed(),
        FieldType::Double => any::<f64>().prop_map(FieldValue::Double).boxed(),
        FieldType::String => prop::collection::vec(1u8..=255, 0..24)
            .prop_map(FieldValue::String)
            .boxed(),
        FieldType::Carray => prop::collection::vec(any::<u8>(), 0..24)
            .prop_map(FieldValue::Carray)
            .boxed(),
    }
}

fn entry() -> impl Strategy<Value = (FieldKey, FieldValue)> {
    key().prop_flat_map(|k| (Just(k), value(k.field_type())))
}

fn field_buffer() -> impl Strategy<Value = FieldBuffer> {
    prop::collection::vec(entry(), 0..32).prop_map(|entries| {
        let mut b = FieldBuffer::new();
        for (k, v) in entries {
            b.add(k, v).expect("generated values fit their keys");
        }
        b
    })
}

fn buffer() -> impl Strategy<Value = Buffer> {
    prop_oneof![
        prop::collection::vec(1u8..=255, 0..64).prop_map(Buffer::String),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Buffer::Carray),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Buffer::XOctet),
        field_buffer().prop_map(Buffer::Field),
        (
            "[A-Za-z][A-Za-z0-9_.]{0,20}",
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(name, data)| Buffer::Record { name, data }),
    ]
}

fn encode(b: &Buffer) -> Vec<u8> {
    let mut out = Vec::new();
    b.encode_body(&mut out);
    out
}

/// Canonical NaN, as printing and parsing produce it.
fn canonical_nan(v: FieldValue) -> FieldValue {
    match v {
        FieldValue::Float(f) if f.is_nan() => FieldValue::Float(f32::NAN),
        FieldValue::Double(f) if f.is_nan() => FieldValue::Double(f64::NAN),
        other => other,
    }
}

/// A table naming numbers 1..=10, one type each, so that printed buffers mix names and
/// `((type) number)` keys.
fn table() -> FieldTable {
    let mut text = String::new();
    for n in 1..=10u32 {
        let ty = FieldType::ALL[n as usize % FieldType::ALL.len()];
        text.push_str(&format!("F{n} {n} {ty}\n"));
    }
    FieldTable::parse(&text, "props.fld").expect("valid table")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_buffer_decodes_to_itself(b in buffer()) {
        let body = encode(&b);
        prop_assert_eq!(body.len(), b.encoded_body_len());
        let back = Buffer::decode(b.buffer_type(), b.subtype(), &body).expect("own encoding decodes");
        prop_assert_eq!(encode(&back), body);
        prop_assert_eq!(back, b);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_accepted_bodies_reencode(
        code in 1u8..=5,
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let ty = BufferType::from_code(code).expect("codes 1..=5 exist");
        let subtype = if ty == BufferType::Record { "R" } else { "" };
        if let Ok(b) = Buffer::decode(ty, subtype, &body) {
            prop_assert_eq!(encode(&b), body);
        }
    }

    #[test]
    fn damaged_field_bodies_never_panic(
        b in field_buffer(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut body = b.to_bytes();
        for (at, byte) in flips {
            let i = at.index(body.len());
            body[i] = byte;
        }
        let len = cut.index(body.len() + 1);
        for candidate in [&body[..], &body[..len]] {
            if let Ok(decoded) = FieldBuffer::decode(candidate) {
                prop_assert_eq!(decoded.to_bytes(), candidate);
                prop_assert_eq!(decoded.encoded_len(), candidate.len());
            }
        }
    }

    #[test]
    fn printed_buffers_read_back(entries in prop::collection::vec(entry(), 0..32)) {
        let table = table();
        let mut b = FieldBuffer::new();
        for (k, v) in entries {
            b.add(k, canonical_nan(v)).expect("fits");
        }
        let text = b.print(&table);
        prop_assert_eq!(text.lines().count(), b.field_count());
        let back = FieldBuffer::parse_printed(&text, &table).expect("printed text parses");
        prop_assert_eq!(back, b);
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(text in "(\\PC{0,20}\t?\\PC{0,20}\n?){0,5}") {
        let _ = FieldBuffer::parse_printed(&text, &table());
        let _ = FieldTable::parse(&text, "any.fld");
    }

    #[test]
    fn numbers_survive_conversion_to_text(l in any::<i64>(), s in any::<i16>(), d in any::<f64>(), f in any::<f32>()) {
        let back = FieldValue::Long(l).convert(FieldType::String).and_then(|t| t.convert(FieldType::Long));
        prop_assert_eq!(back.expect("long via text"), FieldValue::Long(l));
        let back = FieldValue::Short(s).convert(FieldType::Carray).and_then(|t| t.convert(FieldType::Short));
        prop_assert_eq!(back.expect("short via text"), FieldValue::Short(s));
        let back = FieldValue::Double(d).convert(FieldType::String).and_then(|t| t.convert(FieldType::Double));
        prop_assert_eq!(back.expect("double via text"), canonical_nan(FieldValue::Double(d)));
        let back = FieldValue::Float(f).convert(FieldType::String).and_then(|t| t.convert(FieldType::Float));
        prop_assert_eq!(back.expect("float via text"), canonical_nan(FieldValue::Float(f)));
    }

    #[test]
    fn conversions_never_panic(v in field_type().prop_flat_map(value), to in field_type()) {
        if let Ok(converted) = v.convert(to) {
            prop_assert_eq!(converted.field_type(), to);
        }
    }

    #[test]
    fn operations_agree_with_a_model(ops in prop::collection::vec((0u8..6, entry(), 0usize..4), 0..64)) {
        let mut b = FieldBuffer::new();
        let mut model: BTreeMap<FieldKey, Vec<FieldValue>> = BTreeMap::new();
        for (op, (k, v), occ) in ops {
            let values = model.entry(k).or_default();
            match op {
                0 => {
                    b.add(k, v.clone()).expect("add");
                    values.push(v);
                }
                1 => {
                    let ok = b.insert(k, occ, v.clone()).is_ok();
                    prop_assert_eq!(ok, occ <= values.len());
                    if ok {
                        values.insert(occ, v);
                    }
                }
                2 => {
                    let ok = b.update(k, occ, v.clone()).is_ok();
                    prop_assert_eq!(ok, occ <= values.len());
                    if occ < values.len() {
                        values[occ] = v;
                    } else if occ == values.len() {
                        values.push(v);
                    }
                }
                3 => {
                    let removed = b.delete(k, occ);
                    let want = (occ < values.len()).then(|| values.remove(occ));
                    prop_assert_eq!(removed, want);
                }
                4 => {
                    prop_assert_eq!(b.delete_all(k), values.len());
                    values.clear();
                }
                _ => {
                    let wrong = if k.field_type() == FieldType::Long { FieldValue::Short(1) } else { FieldValue::Long(1) };
                    prop_assert!(b.add(k, wrong).is_err());
                }
            }
            model.retain(|_, v| !v.is_empty());
            let flat: Vec<(FieldKey, usize, FieldValue)> = model
                .iter()
                .flat_map(|(k, vs)| vs.iter().enumerate().map(move |(i, v)| (*k, i, v.clone())))
                .collect();
            let seen: Vec<(FieldKey, usize, FieldValue)> = b.iter().map(|(k, i, v)| (k, i, v.clone())).collect();
            prop_assert_eq!(seen, flat);
            prop_assert_eq!(b.encoded_len(), b.to_bytes().len());
            prop_assert_eq!(b.key_count(), model.len());
        }
    }

    #[test]
    fn merge_and_project_keep_sizes_right(a in field_buffer(), other in field_buffer(), keep in prop::collection::vec(key(), 0..8)) {
        let mut merged = a.clone();
        merged.update_from(&other).expect("small buffers merge");
        prop_assert_eq!(merged.encoded_len(), merged.to_bytes().len());
        for k in other.keys() {
            prop_assert_eq!(merged.occurrences(k), a.occurrences(k).max(other.occurrences(k)));
            prop_assert_eq!(&merged.get_all(k)[..other.occurrences(k)], other.get_all(k));
        }
        let mut joined = a.clone();
        joined.concat(&other).expect("small buffers concatenate");
        prop_assert_eq!(joined.field_count(), a.field_count() + other.field_count());
        prop_assert_eq!(joined.encoded_len(), joined.to_bytes().len());
        let mut projected = a.clone();
        projected.project(keep.iter().copied());
        prop_assert!(projected.keys().all(|k| keep.contains(&k)));
        prop_assert_eq!(projected.encoded_len(), projected.to_bytes().len());
        prop_assert_eq!(a.compare(&a.clone()), std::cmp::Ordering::Equal);
        prop_assert_eq!(a.compare(&other) == std::cmp::Ordering::Equal, a == other);
        prop_assert_eq!(a.compare(&other), other.compare(&a).reverse());
    }
}
