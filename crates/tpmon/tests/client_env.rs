//! The client finds its domain through the environment and fails over to the backup
//! address when the primary cannot be reached. (Its own test binary: it sets process
//! environment variables.)

mod support;

use std::net::TcpListener;

use support::{s, text, Config, Domain};
use tpmon_client::{Client, ClientOptions, ErrorKind, Flags};

/// A loopback port nobody listens on.
fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

#[test]
fn environment_address_and_backup_failover() {
    let cfg = Config::new()
        .server("s", &["shutdown_timeout_s = 2"])
        .services("s", &["ECHO"]);
    let dom = Domain::boot("client-env", &cfg);
    let (host, port) = dom.addr.rsplit_once(':').expect("host:port");

    // Primary from the environment.
    std::env::set_var("TPMON_HOST_ADDR", host);
    std::env::set_var("TPMON_HOST_PORT", port);
    std::env::set_var("TPMON_CONNECT_TIMEOUT", "2");
    let mut c = Client::connect(&ClientOptions::default()).expect("connect from the environment");
    assert_eq!(
        text(&c.call("ECHO", &s("env"), Flags::NONE).expect("call")),
        "env"
    );

    // The primary is dead: the backup from the environment is used.
    std::env::set_var("TPMON_HOST_PORT", dead_port().to_string());
    std::env::set_var("TPMON_BACKUP_ADDR", host);
    std::env::set_var("TPMON_BACKUP_PORT", port);
    let mut c = Client::connect(&ClientOptions::default()).expect("fail over to the backup");
    assert_eq!(
        text(&c.call("ECHO", &s("backup"), Flags::NONE).expect("call")),
        "backup"
    );

    // Neither answers: a clear OS-kind error naming both.
    std::env::set_var("TPMON_BACKUP_PORT", dead_port().to_string());
    let e = Client::connect(&ClientOptions::default()).expect_err("nobody listens");
    assert_eq!(e.kind, ErrorKind::Os, "{e}");
    assert!(e.detail.contains("backup"), "{e}");

    // Nothing configured at all.
    for k in [
        "TPMON_HOST_ADDR",
        "TPMON_HOST_PORT",
        "TPMON_BACKUP_ADDR",
        "TPMON_BACKUP_PORT",
    ] {
        std::env::remove_var(k);
    }
    let e = Client::connect(&ClientOptions::default()).expect_err("no address");
    assert_eq!(e.kind, ErrorKind::Inval, "{e}");
}
