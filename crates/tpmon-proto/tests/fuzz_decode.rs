//! Property tests: the decoders survive arbitrary input, and mutated valid messages
//! either decode to something that re-encodes identically or fail cleanly.

use proptest::prelude::*;
use tpmon_proto::{
    Branch, BufferWire, ClientId, Flags, FrameDecoder, Message, RemoteCall, Request, TxContext,
    Vote,
};

fn branches() -> impl Strategy<Value = Vec<Branch>> {
    proptest::collection::vec(
        (
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..64),
            prop_oneof![
                Just(Vote::Prepared),
                Just(Vote::ReadOnly),
                Just(Vote::Failed)
            ],
        )
            .prop_map(|(group, bqual, vote)| Branch {
                group,
                bqual,
                vote,
                cpn: u64::from(group) * 3,
            }),
        0..4,
    )
}

fn request() -> impl Strategy<Value = Message> {
    (
        any::<u64>(),
        any::<u32>(),
        "[A-Z]{1,31}",
        proptest::collection::vec(any::<u8>(), 0..40),
        any::<u64>(),
        proptest::option::of((
            any::<i32>(),
            proptest::collection::vec(any::<u8>(), 0..64),
            any::<u64>(),
            branches(),
        )),
        proptest::option::of((
            1u8..=5,
            "[a-z]{0,8}",
            proptest::collection::vec(any::<u8>(), 0..300),
        )),
    )
        .prop_map(|(call_id, flags, service, reply_to, client, tx, buf)| {
            Message::Request(Request {
                call_id,
                flags: Flags(flags),
                service,
                reply_to,
                client: ClientId(client),
                tx: tx.map(|(format_id, gtrid, deadline_ms, branches)| TxContext {
                    format_id,
                    gtrid,
                    deadline_ms,
                    branches,
                }),
                buffer: buf.map(|(type_code, subtype, body)| BufferWire {
                    type_code,
                    subtype,
                    body,
                }),
            })
        })
}

/// A request, or the same request as a v5 remote call with a timeout.
fn request_or_call() -> impl Strategy<Value = Message> {
    (request(), proptest::option::of(any::<u32>())).prop_map(|(m, timeout)| match (m, timeout) {
        (Message::Request(request), Some(timeout_ms)) => Message::Call(RemoteCall {
            timeout_ms,
            request,
        }),
        (m, _) => m,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(m) = Message::decode(&bytes) {
            prop_assert_eq!(Message::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn requests_round_trip(m in request_or_call()) {
        prop_assert_eq!(Message::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn mutated_requests_fail_cleanly(m in request_or_call(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = m.encode();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let Ok(d) = Message::decode(&bytes) {
            prop_assert_eq!(d.encode(), bytes);
        }
    }

    #[test]
    fn frame_decoder_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..20)) {
        let mut d = FrameDecoder::new(128);
        for c in chunks {
            d.extend(&c);
            while let Ok(Some(f)) = d.next_frame() {
                prop_assert!(!f.is_empty() && f.len() <= 128);
            }
        }
    }
}
