//! Calls as applications make them, on the local fast path and through the daemon's
//! relay: every buffer type round trips, nested calls and forwards work, errors come
//! back with the right kind, async calls, cancels and timeouts keep replies matched to
//! their calls, and large messages travel out of line.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{s, text, Config, Domain};
use tpmon_buffer::{FieldBuffer, FieldKey, FieldType, FieldValue};
use tpmon_client::{Buffer, Cd, ErrorKind, Flags};
use tpmon_proto::{encode_frame, ClientId, FrameDecoder, Hello, Message, ReplyStatus, Request};

/// The test server with the ordinary services; `instances` of it.
fn domain(tag: &str, instances: u32) -> Domain {
    let cfg = Config::new()
        .limit("frame_bytes_max = 8388608")
        .server(
            "s",
            &[
                &format!("min_instances = {instances}"),
                "shutdown_timeout_s = 2",
            ],
        )
        .services(
            "s",
            &["ECHO", "FAIL", "NESTED", "FWD", "FWDNONE", "SLEEP", "PID"],
        )
        .service("STRONLY", "s", &["buffer_types = [\"STRING\"]"]);
    Domain::boot(tag, &cfg)
}

fn field_buffer() -> Buffer {
    let amount = FieldKey::new(FieldType::Long, 10).unwrap();
    let name = FieldKey::new(FieldType::String, 11).unwrap();
    let rate = FieldKey::new(FieldType::Double, 12).unwrap();
    let mut f = FieldBuffer::new();
    f.add(amount, FieldValue::Long(1500)).unwrap();
    f.add(amount, FieldValue::Long(-7)).unwrap();
    f.add(name, FieldValue::string("Kim")).unwrap();
    f.add(rate, FieldValue::Double(0.125)).unwrap();
    Buffer::Field(f)
}

#[test]
fn echo_round_trips_every_buffer_type_on_both_paths() {
    let dom = domain("echo", 1);
    let buffers = [
        Buffer::string("hello, tpmon"),
        Buffer::x_octet(vec![0, 1, 2, 0xff, 0, 7]),
        Buffer::carray(vec![0xde, 0xad, 0, 0xbe, 0xef]),
        Buffer::x_octet(Vec::new()),
        field_buffer(),
    ];
    for (path, mut c) in dom.both_clients() {
        for b in &buffers {
            let r = c
                .call("ECHO", b, Flags::NONE)
                .unwrap_or_else(|e| panic!("{path}: ECHO of {:?}: {e}", b.buffer_type()));
            assert_eq!(
                r.buffer.as_ref(),
                Some(b),
                "{path}: ECHO returns its request"
            );
            assert_eq!(r.urcode, 0, "{path}");
        }
        let f = c.call("ECHO", &field_buffer(), Flags::NONE).unwrap();
        let f = f.buffer.unwrap();
        let fields = f.as_field().expect("a FIELD reply");
        let amount = FieldKey::new(FieldType::Long, 10).unwrap();
        assert_eq!(fields.get_long(amount, 0).unwrap(), 1500, "{path}");
        assert_eq!(fields.get_long(amount, 1).unwrap(), -7, "{path}");
        assert_eq!(fields.occurrences(amount), 2, "{path}");
    }
}

#[test]
fn nested_calls_and_forwards_work_on_both_paths() {
    let dom = domain("nested", 2);
    for (path, mut c) in dom.both_clients() {
        let r = c.call("NESTED", &s("inner"), Flags::NONE).unwrap();
        assert_eq!(text(&r), "inner", "{path}: NESTED returns ECHO's reply");
        assert_eq!(r.urcode, 1, "{path}: NESTED's own urcode");
        let r = c.call("FWD", &s("passed on"), Flags::NONE).unwrap();
        assert_eq!(text(&r), "passed on", "{path}: FWD's reply comes from ECHO");
        assert_eq!(r.urcode, 0, "{path}");
        let e = c.call("FWDNONE", &s("x"), Flags::NONE).unwrap_err();
        assert_eq!(
            e.kind,
            ErrorKind::NoEnt,
            "{path}: forward to a missing service: {e}"
        );
        assert!(
            e.detail.contains("NOSUCH"),
            "{path}: detail names the service: {e}"
        );
    }
}

#[test]
fn unknown_service_is_tpenoent_on_both_paths() {
    let dom = domain("noent", 1);
    for (path, mut c) in dom.both_clients() {
        let e = c.call("NOSUCHSVC", &s("x"), Flags::NONE).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoEnt, "{path}: {e}");
        let e = c.acall("NOSUCHSVC", &s("x"), Flags::NONE).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoEnt, "{path}: acall: {e}");
        // The context stays usable.
        assert_eq!(
            text(&c.call("ECHO", &s("still"), Flags::NONE).unwrap()),
            "still"
        );
    }
}

/// A relay client that does not look services up itself still gets TPENOENT from the
/// daemon, as a reply to its request.
#[test]
fn daemon_relay_answers_a_request_for_an_unknown_service_with_tpenoent() {
    let dom = domain("relaynoent", 1);
    let mut sock = TcpStream::connect(&dom.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut dec = FrameDecoder::new(1 << 20);
    let send = |m: Message, sock: &mut TcpStream| {
        let mut f = Vec::new();
        encode_frame(&m.encode(), &mut f);
        sock.write_all(&f).unwrap();
    };
    send(Message::Hello(Hello::default()), &mut sock);
    let welcome = match read_message(&mut sock, &mut dec) {
        Message::Welcome(w) => w,
        other => panic!("expected a welcome, got {other:?}"),
    };
    for (call_id, service) in [(77, "NOSUCHSVC"), (78, "ECHO")] {
        let req = Request {
            call_id,
            flags: Flags::NONE,
            service: service.into(),
            reply_to: Vec::new(),
            client: ClientId(welcome.client_id.0),
            tx: None,
            buffer: Some(tpmon_client::to_wire(&s("raw"))),
        };
        send(Message::Request(req), &mut sock);
        match read_message(&mut sock, &mut dec) {
            Message::Reply(r) => {
                assert_eq!(r.call_id, call_id, "the reply carries the client's call id");
                if service == "ECHO" {
                    assert_eq!(r.status, ReplyStatus::Success);
                } else {
                    assert_eq!(
                        r.status,
                        ReplyStatus::Error(ErrorKind::NoEnt),
                        "{}",
                        r.detail
                    );
                }
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }
}

fn read_message(sock: &mut TcpStream, dec: &mut FrameDecoder) -> Message {
    let mut buf = [0u8; 65536];
    loop {
        if let Some(body) = dec.next_frame().unwrap() {
            return Message::decode(&body).unwrap();
        }
        let n = sock.read(&mut buf).expect("reading from the daemon");
        assert!(n > 0, "the daemon closed the connection");
        dec.extend(&buf[..n]);
    }
}

#[test]
fn service_refuses_buffer_types_it_does_not_accept() {
    let dom = domain("itype", 1);
    for (path, mut c) in dom.both_clients() {
        let e = c
            .call("STRONLY", &Buffer::x_octet(vec![1, 2]), Flags::NONE)
            .unwrap_err();
        assert_eq!(
            e.kind,
            ErrorKind::IType,
            "{path}: X_OCTET to a STRING-only service: {e}"
        );
        let e = c.call("STRONLY", &field_buffer(), Flags::NONE).unwrap_err();
        assert_eq!(
            e.kind,
            ErrorKind::IType,
            "{path}: FIELD to a STRING-only service: {e}"
        );
        let r = c.call("STRONLY", &s("text is fine"), Flags::NONE).unwrap();
        assert_eq!(text(&r), "text is fine", "{path}");
    }
}

#[test]
fn tpfail_gives_svcfail_with_urcode_and_reply_data() {
    let dom = domain("fail", 1);
    for (path, mut c) in dom.both_clients() {
        let e = c.call("FAIL", &s("the data"), Flags::NONE).unwrap_err();
        assert_eq!(e.kind, ErrorKind::SvcFail, "{path}: {e}");
        assert_eq!(e.urcode, 42, "{path}");
        assert_eq!(
            e.reply,
            Some(s("the data")),
            "{path}: TPFAIL delivers the reply data"
        );
    }
}

#[test]
fn async_calls_are_all_collected_with_getany() {
    let dom = domain("getany", 2);
    for (path, mut c) in dom.both_clients() {
        let mut sent = HashMap::new();
        for i in 0..20 {
            let payload = format!("{path} call {i}");
            let cd = c.acall("ECHO", &s(&payload), Flags::NONE).unwrap();
            assert!(cd.0 != 0, "{path}: a real descriptor");
            assert!(
                sent.insert(cd, payload).is_none(),
                "{path}: descriptors are unique"
            );
        }
        assert_eq!(c.outstanding(), 20, "{path}");
        let mut got = HashMap::new();
        for _ in 0..20 {
            let (cd, r) = c.getrply(None, Flags::GETANY).unwrap();
            assert!(
                got.insert(cd, text(&r)).is_none(),
                "{path}: {cd:?} answered twice"
            );
        }
        assert_eq!(got, sent, "{path}: every reply belongs to its descriptor");
        assert_eq!(c.outstanding(), 0, "{path}");
        let e = c.getrply(None, Flags::GETANY).unwrap_err();
        assert_eq!(
            e.kind,
            ErrorKind::BadDesc,
            "{path}: nothing is outstanding: {e}"
        );
    }
}

#[test]
fn getrply_of_an_unknown_descriptor_is_tpebaddesc() {
    let dom = domain("baddesc", 1);
    for (path, mut c) in dom.both_clients() {
        let e = c.getrply(Some(Cd(12345)), Flags::NONE).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadDesc, "{path}: {e}");
        // A descriptor whose reply was already taken is unknown too.
        let cd = c.acall("ECHO", &s("once"), Flags::NONE).unwrap();
        assert_eq!(text(&c.getrply(Some(cd), Flags::NONE).unwrap().1), "once");
        let e = c.getrply(Some(cd), Flags::NONE).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadDesc, "{path}: reused descriptor: {e}");
        let e = c.cancel(Cd(999)).unwrap_err();
        assert_eq!(
            e.kind,
            ErrorKind::BadDesc,
            "{path}: cancel of an unknown cd: {e}"
        );
    }
}

/// One instance serves requests in order, so the cancelled call's reply reaches the
/// client before the next call's: it must be thrown away, not handed out.
#[test]
fn a_cancelled_call_never_surfaces() {
    let dom = domain("cancel", 1);
    for (path, mut c) in dom.both_clients() {
        let cd = c.acall("SLEEP", &s("200"), Flags::NONE).unwrap();
        c.cancel(cd).unwrap();
        assert_eq!(c.outstanding(), 0, "{path}");
        let e = c.getrply(Some(cd), Flags::NONE).unwrap_err();
        assert_eq!(
            e.kind,
            ErrorKind::BadDesc,
            "{path}: a cancelled descriptor is invalid"
        );
        let next = c.acall("ECHO", &s("after cancel"), Flags::NONE).unwrap();
        let (got, r) = c.getrply(None, Flags::GETANY).unwrap();
        assert_eq!(
            got, next,
            "{path}: GETANY returns the live call, not the cancelled one"
        );
        assert_eq!(text(&r), "after cancel", "{path}");
        let e = c.getrply(None, Flags::GETANY).unwrap_err();
        assert_eq!(
            e.kind,
            ErrorKind::BadDesc,
            "{path}: nothing else is outstanding"
        );
    }
}

#[test]
fn noreply_call_returns_cd_zero_and_runs_the_service() {
    let dom = domain("noreply", 1);
    for (n, (path, mut c)) in dom.both_clients().into_iter().enumerate() {
        let cd = c.acall("ECHO", &s("one way"), Flags::NOREPLY).unwrap();
        assert_eq!(cd, Cd(0), "{path}");
        assert_eq!(c.outstanding(), 0, "{path}: nothing to wait for");
        let want = n as u64 + 1;
        dom.wait_status(
            &format!("{path}: the one-way ECHO ran"),
            Duration::from_secs(10),
            |st| support::service(st, "ECHO")["calls"] == want,
        );
        let e = c.call("ECHO", &s("x"), Flags::NOREPLY).unwrap_err();
        assert_eq!(
            e.kind,
            ErrorKind::Inval,
            "{path}: TPNOREPLY is not for tpcall"
        );
    }
}

/// The SLEEP call times out; its reply arrives later, ahead of the next call's reply
/// (one instance serves both in order), and must not be taken for it.
#[test]
fn a_late_reply_after_tpetime_is_not_handed_to_the_next_call() {
    let dom = domain("late", 1);
    for (path, mut c) in dom.both_clients() {
        c.set_blocking_timeout(Duration::from_millis(200));
        let t = Instant::now();
        let e = c.call("SLEEP", &s("1000"), Flags::NONE).unwrap_err();
        let waited = t.elapsed();
        assert_eq!(e.kind, ErrorKind::Time, "{path}: {e}");
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_millis(900),
            "{path}: TPETIME after the 200 ms blocking timeout, not {waited:?}"
        );
        c.set_blocking_timeout(Duration::from_secs(10));
        let r = c.call("ECHO", &s("my own reply"), Flags::NONE).unwrap();
        assert_eq!(
            text(&r),
            "my own reply",
            "{path}: the late SLEEP reply was dropped"
        );
        assert_eq!(c.outstanding(), 0, "{path}");
    }
}

#[test]
fn a_2_mib_x_octet_round_trips_on_both_paths() {
    let dom = domain("large", 1);
    let data: Vec<u8> = (0..2 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let big = Buffer::x_octet(data);
    for (path, mut c) in dom.both_clients() {
        let r = c.call("ECHO", &big, Flags::NONE).unwrap();
        assert!(
            r.buffer.as_ref() == Some(&big),
            "{path}: 2 MiB came back unchanged"
        );
        // Small calls still work after a large one.
        assert_eq!(
            text(&c.call("ECHO", &s("small"), Flags::NONE).unwrap()),
            "small"
        );
    }
}

/// A request above `frame_bytes_max` cannot be delivered; the caller must learn that at
/// once and keep a usable context, on either path.
#[test]

fn a_request_above_frame_bytes_max_fails_at_once_with_tpelimit() {
    let cfg = Config::new()
        .limit("frame_bytes_max = 1048576")
        .server("s", &["shutdown_timeout_s = 2"])
        .services("s", &["ECHO"]);
    let dom = Domain::boot("toolarge", &cfg);
    let big = Buffer::x_octet(vec![7u8; 2 << 20]);
    for (path, mut c) in dom.both_clients() {
        c.set_blocking_timeout(Duration::from_secs(10));
        let t = Instant::now();
        let e = c.call("ECHO", &big, Flags::NONE).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Limit, "{path}: {e}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{path}: refused at once"
        );
        let r = c.call("ECHO", &s("after"), Flags::NONE).unwrap();
        assert_eq!(text(&r), "after", "{path}: the context is still usable");
    }
}

/// XATMI: TPNOBLOCK on tpcall applies to sending the request only; the call still
/// waits for its reply.
#[test]

fn tpcall_with_noblock_still_waits_for_the_reply() {
    let dom = domain("noblockcall", 1);
    for (path, mut c) in dom.both_clients() {
        let r = c
            .call("SLEEP", &s("50"), Flags::NOBLOCK)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(text(&r), "slept 50", "{path}");
        assert_eq!(c.outstanding(), 0, "{path}");
    }
}

/// A blocking timeout longer than the slices in which a local caller waits (500 ms,
/// checking its daemon between them) still ends the wait: TPETIME after 1.2 s, not
/// later.
#[test]
fn a_blocking_timeout_longer_than_a_wait_slice_still_ends_the_wait() {
    let dom = domain("long-timeout", 1);
    for (path, mut c) in dom.both_clients() {
        c.set_blocking_timeout(Duration::from_millis(1200));
        let t = Instant::now();
        let e = c.call("SLEEP", &s("4000"), Flags::NONE).unwrap_err();
        let waited = t.elapsed();
        assert_eq!(e.kind, ErrorKind::Time, "{path}: {e}");
        assert!(
            waited >= Duration::from_millis(1100) && waited < Duration::from_millis(3500),
            "{path}: TPETIME after the 1.2 s blocking timeout, not {waited:?}"
        );
    }
}
