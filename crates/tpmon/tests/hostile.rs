//! The client port under attack: oversized, garbage, truncated and out-of-order frames,
//! silent connections, wrong passwords and a crowd of bad connections. Each offender's
//! connection is closed (and logged with its peer address and the reason) while a
//! well-behaved client keeps being served.

mod support;

use std::io::{ErrorKind as IoKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::{alive, s, text, tpmon, wait_until, Config, Domain};
use tpmon_client::{Client, ClientOptions, ErrorKind, Flags};
use tpmon_proto::{encode_frame, ClientId, FrameDecoder, Hello, Message, Request};

const CLOSE_WITHIN: Duration = Duration::from_secs(5);

fn domain(tag: &str) -> Domain {
    let cfg = Config::new()
        .limit("handshake_timeout_ms = 300")
        .server("s", &[])
        .services("s", &["ECHO"]);
    Domain::boot(tag, &cfg)
}

/// A raw connection to the client port.
struct Raw {
    sock: TcpStream,
    /// Our address, which the daemon sees as the peer.
    local: SocketAddr,
}

impl Raw {
    fn open(dom: &Domain) -> Raw {
        let sock = TcpStream::connect(&dom.addr).expect("connecting to the client port");
        let local = sock.local_addr().unwrap();
        Raw { sock, local }
    }

    fn send(&mut self, bytes: &[u8]) {
        // The daemon may already have closed; that is not the test's concern here.
        let _ = self.sock.write_all(bytes);
    }

    fn send_message(&mut self, m: &Message) {
        let mut f = Vec::new();
        encode_frame(&m.encode(), &mut f);
        self.send(&f);
    }

    /// Reads until the daemon closes the connection; fails the test if it is still
    /// open after `within`. Returns what the daemon sent before closing.
    fn expect_closed(&mut self, within: Duration) -> Vec<u8> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "connection from {} still open after {within:?}",
                self.local
            );
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        IoKind::ConnectionReset | IoKind::ConnectionAborted
                    ) =>
                {
                    return got
                }
                Err(e) if matches!(e.kind(), IoKind::WouldBlock | IoKind::TimedOut) => {
                    panic!("connection from {} still open after {within:?}", self.local)
                }
                Err(e) if e.kind() == IoKind::Interrupted => {}
                Err(e) => panic!("reading: {e}"),
            }
        }
    }

    /// Like [`Raw::expect_closed`], and the daemon's last words were a refusal of `kind`.
    fn expect_refused(&mut self, kind: ErrorKind) -> String {
        let bytes = self.expect_closed(CLOSE_WITHIN);
        let mut dec = FrameDecoder::new(1 << 20);
        dec.extend(&bytes);
        match dec.next_frame().ok().flatten().map(|b| Message::decode(&b)) {
            Some(Ok(Message::Refused { kind: k, reason })) => {
                assert_eq!(k, kind, "refusal kind; reason: {reason}");
                reason
            }
            other => panic!(
                "expected a refusal before the close, got {other:?} ({} bytes)",
                bytes.len()
            ),
        }
    }
}

/// A well-behaved client is served while an offender's connection is open.
fn good_client_is_served(dom: &Domain, what: &str) {
    for (path, mut c) in dom.both_clients() {
        let r = c
            .call("ECHO", &s(what), Flags::NONE)
            .unwrap_or_else(|e| panic!("{path}: a good client during '{what}': {e}"));
        assert_eq!(text(&r), what);
    }
}

/// ECHO ran exactly `n` times: the good client's calls, none of the offenders'.
fn assert_echo_calls(dom: &Domain, n: u64) {
    let st = dom.wait_status("the good calls are counted", CLOSE_WITHIN, |st| {
        support::service(st, "ECHO")["calls"].as_u64() >= Some(n)
    });
    assert_eq!(
        support::service(&st, "ECHO")["calls"],
        n,
        "no offender's request ran"
    );
}

/// Waits for a log line naming `peer` and containing `reason`.
fn expect_logged(dom: &Domain, peer: SocketAddr, reason: &str) {
    let peer = format!("peer={peer}");
    wait_until(
        &format!("the log names {peer} and '{reason}'"),
        CLOSE_WITHIN,
        || {
            dom.log()
                .lines()
                .any(|l| l.contains(&peer) && l.contains(reason))
        },
    );
}

#[test]
fn an_oversized_length_prefix_is_refused_and_logged() {
    let dom = domain("oversized");
    let mut raw = Raw::open(&dom);
    raw.send(&0xFFFF_FFF0u32.to_be_bytes());
    good_client_is_served(&dom, "during an oversized frame");
    let reason = raw.expect_refused(ErrorKind::Proto);
    assert!(reason.contains("exceeds the limit"), "{reason}");
    expect_logged(&dom, raw.local, "exceeds the limit of 4096 bytes");
    good_client_is_served(&dom, "after an oversized frame");
}

#[test]
fn garbage_bytes_close_the_connection() {
    let dom = domain("garbage");
    // An HTTP request: its first four bytes read as a huge length.
    let mut http = Raw::open(&dom);
    http.send(b"GET / HTTP/1.1\r\nHost: tpmon\r\n\r\n");
    // A small frame whose body is no message at all.
    let mut junk = Raw::open(&dom);
    junk.send(&[0, 0, 0, 6, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x42]);
    // An empty frame.
    let mut empty = Raw::open(&dom);
    empty.send(&[0, 0, 0, 0]);
    good_client_is_served(&dom, "during garbage");
    http.expect_closed(CLOSE_WITHIN);
    junk.expect_closed(CLOSE_WITHIN);
    empty.expect_closed(CLOSE_WITHIN);
    expect_logged(&dom, junk.local, "malformed hello");
    good_client_is_served(&dom, "after garbage");
}

#[test]
fn a_truncated_frame_then_close_is_handled() {
    let dom = domain("truncated");
    let mut raw = Raw::open(&dom);
    let mut f = Vec::new();
    encode_frame(&Message::Hello(Hello::default()).encode(), &mut f);
    raw.send(&f[..f.len() - 3]);
    good_client_is_served(&dom, "during a truncated frame");
    raw.sock.shutdown(Shutdown::Write).unwrap();
    raw.expect_closed(CLOSE_WITHIN);
    expect_logged(
        &dom,
        raw.local,
        "closed the connection before authenticating",
    );
    good_client_is_served(&dom, "after a truncated frame");
}

fn request(call_id: u64) -> Message {
    Message::Request(Request {
        call_id,
        flags: Flags::NONE,
        service: "ECHO".into(),
        reply_to: Vec::new(),
        client: ClientId(1),
        tx: None,
        buffer: Some(tpmon_client::to_wire(&s("sneaky"))),
    })
}

#[test]
fn a_request_before_hello_is_refused_and_logged() {
    let dom = domain("preauth");
    let mut raw = Raw::open(&dom);
    raw.send_message(&request(1));
    good_client_is_served(&dom, "during a request before hello");
    let reason = raw.expect_refused(ErrorKind::Proto);
    assert!(reason.contains("before authenticating"), "{reason}");
    expect_logged(&dom, raw.local, "sent a request before authenticating");
    assert_echo_calls(&dom, 2);
}

#[test]
fn a_malformed_hello_is_refused() {
    let dom = domain("badhello");
    let mut raw = Raw::open(&dom);
    let body = Message::Hello(Hello {
        client_name: "someone".into(),
        ..Hello::default()
    })
    .encode();
    let mut f = Vec::new();
    encode_frame(&body[..body.len() - 2], &mut f);
    raw.send(&f);
    good_client_is_served(&dom, "during a malformed hello");
    let reason = raw.expect_refused(ErrorKind::Proto);
    assert!(reason.contains("malformed hello"), "{reason}");
    expect_logged(&dom, raw.local, "malformed hello");
}

#[test]
fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let dom = domain("silent");
    let t = Instant::now();
    let mut raw = Raw::open(&dom);
    good_client_is_served(&dom, "during a silent connection");
    raw.expect_refused(ErrorKind::Time);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after the 300 ms handshake timeout, not {took:?}"
    );
    expect_logged(&dom, raw.local, "no hello within 300ms");
}

/// Something an authenticated connection does wrong.
type Misbehave = fn(&mut Raw);

/// After authentication the full frame limit applies and anything but requests is a
/// protocol violation: the connection is closed and the others carry on.
#[test]
fn an_authenticated_connection_that_misbehaves_is_closed() {
    let dom = domain("postauth");
    let cases: [(&str, Misbehave); 3] = [
        ("bad frame", |r| r.send(&0x7FFF_FFFFu32.to_be_bytes())),
        ("protocol violation: sent a hello", |r| {
            r.send_message(&Message::Hello(Hello::default()))
        }),
        ("malformed frame", |r| {
            r.send(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        }),
    ];
    for (reason, misbehave) in cases {
        let mut raw = Raw::open(&dom);
        raw.send_message(&Message::Hello(Hello::default()));
        let mut dec = FrameDecoder::new(1 << 20);
        let mut buf = [0u8; 65536];
        raw.sock.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
        let welcome = loop {
            if let Some(b) = dec.next_frame().unwrap() {
                break Message::decode(&b).unwrap();
            }
            let n = raw.sock.read(&mut buf).unwrap();
            assert!(n > 0, "closed before the welcome");
            dec.extend(&buf[..n]);
        };
        assert!(matches!(welcome, Message::Welcome(_)), "{welcome:?}");
        misbehave(&mut raw);
        good_client_is_served(&dom, reason);
        raw.expect_closed(CLOSE_WITHIN);
        expect_logged(&dom, raw.local, reason);
    }
}

#[test]
fn a_hundred_garbage_connections_do_not_hurt_the_domain() {
    let dom = domain("crowd");
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut conns: Vec<Raw> = (0..100)
        .map(|i| {
            let mut raw = Raw::open(&dom);
            match i % 4 {
                0 => raw.send(&0xFFFF_FFFFu32.to_be_bytes()),
                1 => raw.send_message(&request(i)),
                2 => {
                    let body: Vec<u8> = (0..64).map(|_| next() as u8).collect();
                    let mut f = Vec::new();
                    encode_frame(&body, &mut f);
                    raw.send(&f);
                }
                _ => {
                    let junk: Vec<u8> = (0..200).map(|_| next() as u8).collect();
                    raw.send(&junk);
                }
            }
            raw
        })
        .collect();
    good_client_is_served(&dom, "amid 100 bad connections");
    for raw in &mut conns {
        raw.expect_closed(CLOSE_WITHIN);
    }
    assert!(alive(dom.daemon_pid), "the daemon survived");
    good_client_is_served(&dom, "after 100 bad connections");
    dom.wait_status("every connection is accounted for", CLOSE_WITHIN, |st| {
        st["daemon"]["clients"] == 0
    });
    assert_echo_calls(&dom, 4);
}

#[test]
fn the_domain_password_is_required_and_never_logged() {
    let cfg = Config::new()
        .domain("password = \"s3cret\"")
        .server("s", &[])
        .services("s", &["ECHO"]);
    let dom = Domain::boot("password", &cfg);
    let with = |pw: &str, relay: bool| {
        dom.connect(ClientOptions {
            domain_password: pw.into(),
            force_relay: relay,
            ..ClientOptions::default()
        })
    };
    for relay in [false, true] {
        let e = with("", relay).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Perm, "no password: {e}");
        let e = with("guess-me-42", relay).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Perm, "a wrong password: {e}");
        let e = with("s3cret-but-longer", relay).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Perm, "a longer password: {e}");
        let mut c: Client = with("s3cret", relay).expect("the right password");
        assert_eq!(c.is_local(), !relay);
        assert_eq!(text(&c.call("ECHO", &s("in"), Flags::NONE).unwrap()), "in");
    }
    // `tpmon call` takes the password from the configuration.
    let run = tpmon([
        "call",
        "-c",
        &dom.client_config.display().to_string(),
        "ECHO",
        "--string",
        "cli",
    ]);
    assert!(run.ok(), "{run:?}");
    assert_eq!(run.stdout.trim(), "cli");
    wait_until("both refusals are logged", CLOSE_WITHIN, || {
        let log = dom.log();
        log.matches("refused a client: no domain password").count() == 2
            && log
                .matches("refused a client: a wrong domain password")
                .count()
                == 4
    });
    let log = dom.raw_log();
    assert!(!log.contains("s3cret"), "the password is not in the log");
    assert!(
        !log.contains("guess-me-42"),
        "a wrong password is not in the log either"
    );
}

#[test]
fn connections_beyond_clients_max_are_refused_with_tpelimit() {
    let cfg = Config::new()
        .limit("clients_max = 2")
        .server("s", &[])
        .services("s", &["ECHO"]);
    let dom = Domain::boot("clientsmax", &cfg);
    let mut first = dom.client();
    let second = dom.relay_client();
    let e = dom.connect(ClientOptions::default()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Limit, "a third client: {e}");
    // The connected clients are unaffected.
    assert_eq!(
        text(&first.call("ECHO", &s("one"), Flags::NONE).unwrap()),
        "one"
    );
    drop(second);
    let mut third = support::wait_for("a place is free again", CLOSE_WITHIN, || {
        dom.connect(ClientOptions::default()).ok()
    });
    assert_eq!(
        text(&third.call("ECHO", &s("three"), Flags::NONE).unwrap()),
        "three"
    );
}

#[test]

fn the_log_file_has_no_terminal_escape_sequences() {
    let dom = domain("plainlog");
    let mut raw = Raw::open(&dom);
    raw.send_message(&request(1));
    raw.expect_closed(CLOSE_WITHIN);
    expect_logged(&dom, raw.local, "before authenticating");
    let log = dom.raw_log();
    assert!(
        !log.contains('\u{1b}'),
        "escape sequences in the log:\n{log:?}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("before authenticating"))
        .unwrap();
    assert!(
        line.contains(&format!("peer={}", raw.local)),
        "grep-able fields: {line}"
    );
}
