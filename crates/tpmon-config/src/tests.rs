//! Tests of the whole pipeline: text in, model or located error out.
//!
//! Documents are built from a slice of lines so that the line numbers asserted below can
//! be read off the test: line `n` is element `n - 1`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const SOURCE: &str = "/etc/tpmon/domain.toml";

fn doc(lines: &[&str]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

fn env(name: &str) -> Option<String> {
    match name {
        "TPMON_DOMAIN_PASSWORD" => Some("s3cret".to_string()),
        "APP_HOME" => Some("/opt/app".to_string()),
        "LEVEL" => Some("debug".to_string()),
        "LEDGER_DB" => Some("host=127.0.0.1 dbname=ledger".to_string()),
        _ => None,
    }
}

fn parse_ok(lines: &[&str]) -> DomainConfig {
    match parse_with_env(&doc(lines), Path::new(SOURCE), &env) {
        Ok(config) => config,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn parse_err(lines: &[&str]) -> ConfigError {
    match parse_with_env(&doc(lines), Path::new(SOURCE), &env) {
        Ok(config) => panic!("expected an error, got {config:#?}"),
        Err(e) => e,
    }
}

/// Asserts kind, line, item and key of an error and returns its message.
fn check(e: &ConfigError, kind: ErrorKind, line: usize, item: Option<&str>, key: Option<&str>) {
    assert_eq!(e.kind(), kind, "kind of: {e}");
    assert_eq!(e.line(), Some(line), "line of: {e}");
    assert_eq!(e.item(), item, "item of: {e}");
    assert_eq!(e.key(), key, "key of: {e}");
    assert_eq!(e.file(), Path::new(SOURCE));
    assert!(
        e.to_string().starts_with(&format!("{SOURCE}:{line}:")),
        "{e}"
    );
}

const DOMAIN: [&str; 3] = ["[domain]", "name = \"qs\"", "listen = \"127.0.0.1:7480\""];

/// `DOMAIN` followed by `rest`; the first line of `rest` is line 4.
fn with_domain(rest: &[&str]) -> Vec<String> {
    DOMAIN
        .iter()
        .chain(rest.iter())
        .map(|s| s.to_string())
        .collect()
}

fn lines(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

// ---------------------------------------------------------------------------------------
// Valid files

const FULL: &[&str] = &[
    "[domain]",
    "name = \"quickstart\"",
    "listen = \"127.0.0.1:7480\"",
    "run_dir = \"var/run\"",
    "password = \"${TPMON_DOMAIN_PASSWORD}\"",
    "field_tables = [\"bank.fld\", \"/usr/share/tpmon/base.fld\"]",
    "log_file = \"tpmon.log\"",
    "",
    "[domain.limits]",
    "clients_max = 100",
    "frame_bytes_max = 65536",
    "unauthenticated_frame_bytes_max = 1024",
    "pending_calls_max = 16",
    "link_calls_max = 64",
    "handshake_timeout_ms = 2500",
    "blocking_timeout_s = 30",
    "",
    "[[node]]",
    "name = \"n1\"",
    "host = \"localhost\"",
    "listen = \"127.0.0.1:7480\"",
    "link = \"127.0.0.1:7490\"",
    "",
    "[[group]]",
    "name = \"APPGRP\"",
    "node = \"n1\"",
    "rm = \"none\"",
    "",
    "[[server]]",
    "name = \"qsrv\"",
    "group = \"APPGRP\"",
    "executable = \"tpmon-quickstart-server\"",
    "args = [\"--greeting\", \"hi\", \"--home=${APP_HOME}\"]",
    "env = { RUST_LOG = \"${LEVEL}\", PRICE = \"$${NOT_EXPANDED}\" }",
    "min_instances = 2",
    "max_instances = 4",
    "restart = \"always\"",
    "restart_max = 7",
    "restart_window_s = 120",
    "restart_backoff_ms = 50",
    "restart_backoff_max_ms = 800",
    "queue_max = 32",
    "shutdown_timeout_s = 5",
    "start_timeout_s = 20",
    "",
    "[[server]]",
    "name = \"helper\"",
    "group = \"APPGRP\"",
    "executable = \"./bin/helper\"",
    "",
    "[[service]]",
    "name = \"TOUPPER\"",
    "server = \"qsrv\"",
    "timeout_s = 30",
    "conversational = false",
    "buffer_types = [\"STRING\", \"x_octet\"]",
    "",
    "[[service]]",
    "name = \"CHAT\"",
    "server = \"qsrv\"",
    "conversational = true",
    "",
    "[[service]]",
    "name = \"HELP\"",
    "server = \"helper\"",
];

#[test]
fn full_file_round_trip() {
    let c = parse_ok(FULL);
    assert_eq!(c.source, PathBuf::from(SOURCE));
    assert_eq!(c.base_dir, PathBuf::from("/etc/tpmon"));

    let d = &c.domain;
    assert_eq!(d.name, "quickstart");
    assert_eq!(d.listen, "127.0.0.1:7480".parse::<SocketAddr>().unwrap());
    assert_eq!(d.run_dir, PathBuf::from("/etc/tpmon/var/run"));
    assert_eq!(d.password.as_ref().map(Password::expose), Some("s3cret"));
    assert_eq!(
        d.field_tables,
        vec![
            PathBuf::from("/etc/tpmon/bank.fld"),
            PathBuf::from("/usr/share/tpmon/base.fld")
        ]
    );
    assert_eq!(d.log_file, Some(PathBuf::from("tpmon.log")));
    assert_eq!(
        d.log_path(),
        Some(PathBuf::from("/etc/tpmon/var/run/tpmon.log"))
    );

    assert_eq!(
        c.limits,
        Limits {
            clients_max: 100,
            frame_bytes_max: 65536,
            unauthenticated_frame_bytes_max: 1024,
            pending_calls_max: 16,
            link_calls_max: 64,
            handshake_timeout: Duration::from_millis(2500),
            blocking_timeout: Duration::from_secs(30),
            spin: Duration::from_micros(20),
        }
    );

    assert_eq!(
        c.nodes,
        vec![Node {
            name: "n1".into(),
            host: "localhost".into(),
            listen: "127.0.0.1:7480".parse().unwrap(),
            link: Some("127.0.0.1:7490".parse().unwrap()),
        }]
    );
    assert_eq!(
        c.groups,
        vec![Group {
            name: "APPGRP".into(),
            node: 0,
            rm: ResourceManager::None,
            auto_transaction: false,
            implicit: false,
        }]
    );

    let q = &c.servers[0];
    assert_eq!(q.name, "qsrv");
    assert_eq!(q.group, 0);
    assert_eq!(q.executable, "tpmon-quickstart-server");
    assert_eq!(q.args, vec!["--greeting", "hi", "--home=/opt/app"]);
    assert_eq!(q.env.get("RUST_LOG").map(String::as_str), Some("debug"));
    assert_eq!(
        q.env.get("PRICE").map(String::as_str),
        Some("${NOT_EXPANDED}")
    );
    assert_eq!(q.env.len(), 2);
    assert_eq!((q.min_instances, q.max_instances), (2, 4));
    assert_eq!(q.restart, RestartPolicy::Always);
    assert_eq!(q.restart_max, 7);
    assert_eq!(q.restart_window, Duration::from_secs(120));
    assert_eq!(q.restart_backoff, Duration::from_millis(50));
    assert_eq!(q.restart_backoff_max, Duration::from_millis(800));
    assert_eq!(q.queue_max, 32);
    assert_eq!(q.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(q.start_timeout, Duration::from_secs(20));

    let toupper = c.service_by_name("TOUPPER").unwrap();
    assert_eq!(toupper.server, 0);
    assert_eq!(toupper.timeout, Some(Duration::from_secs(30)));
    assert!(!toupper.conversational);
    assert_eq!(toupper.buffer_types, vec!["STRING", "X_OCTET"]);
    assert!(toupper.accepts("string"));
    assert!(!toupper.accepts("FIELD"));
    let chat = c.service_by_name("CHAT").unwrap();
    assert!(chat.conversational);
    assert_eq!(chat.timeout, None);
    assert_eq!(chat.buffer_types, BUFFER_TYPES.to_vec());

    // Lookups.
    assert_eq!(c.server_index("helper"), Some(1));
    assert_eq!(c.server_by_name("helper").map(|s| s.group), Some(0));
    assert!(c.server_by_name("nope").is_none());
    assert_eq!(c.service_index("HELP"), Some(2));
    assert_eq!(c.group_index("APPGRP"), Some(0));
    assert_eq!(c.node_index("n1"), Some(0));
    assert!(c.group_by_name("APPGRP").is_some() && c.node_by_name("n1").is_some());
    let names: Vec<&str> = c.services_of(0).map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["TOUPPER", "CHAT"]);
    let names: Vec<&str> = c.services_of(1).map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["HELP"]);
    assert_eq!(c.services_of(99).count(), 0);
    assert_eq!(c.servers_of(0).count(), 2);

    // Executables: bare names are searched, names with a slash are relative to the file.
    assert_eq!(
        c.resolve_executable(&c.servers[1], None),
        PathBuf::from("/etc/tpmon/./bin/helper")
    );
}

#[test]
fn minimal_file_gets_defaults() {
    let c = parse_ok(&[
        "[domain]",
        "name = \"qs\"",
        "listen = \"127.0.0.1:7480\"",
        "[[server]]",
        "name = \"s\"",
        "executable = \"srv\"",
        "[[service]]",
        "name = \"SVC\"",
        "server = \"s\"",
    ]);
    assert_eq!(c.domain.run_dir, PathBuf::from("/etc/tpmon/run"));
    assert!(c.domain.password.is_none());
    assert!(c.domain.field_tables.is_empty());
    assert_eq!(c.domain.log_file, None);
    assert_eq!(c.domain.log_path(), None);
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.limits.clients_max, 1024);
    assert_eq!(c.limits.frame_bytes_max, 4_194_304);
    assert_eq!(c.limits.unauthenticated_frame_bytes_max, 4096);
    assert_eq!(c.limits.pending_calls_max, 128);
    assert_eq!(c.limits.link_calls_max, 4096);
    assert_eq!(c.limits.handshake_timeout, Duration::from_millis(5000));
    assert_eq!(c.limits.blocking_timeout, Duration::from_secs(60));

    assert_eq!(
        c.nodes,
        vec![Node {
            name: "qs".into(),
            host: "127.0.0.1".into(),
            listen: "127.0.0.1:7480".parse().unwrap(),
            link: None,
        }]
    );
    assert_eq!(
        c.groups,
        vec![Group {
            name: DEFAULT_GROUP.into(),
            node: 0,
            rm: ResourceManager::None,
            auto_transaction: false,
            implicit: true,
        }]
    );
    let s = &c.servers[0];
    assert_eq!(s.group, 0);
    assert!(s.args.is_empty() && s.env.is_empty());
    assert_eq!((s.min_instances, s.max_instances), (1, 1));
    assert_eq!(s.restart, RestartPolicy::OnFailure);
    assert_eq!(s.restart_max, 5);
    assert_eq!(s.restart_window, Duration::from_secs(60));
    assert_eq!(s.restart_backoff, Duration::from_millis(100));
    assert_eq!(s.restart_backoff_max, Duration::from_millis(5000));
    assert_eq!(s.queue_max, 256);
    assert_eq!(s.shutdown_timeout, Duration::from_secs(10));
    assert_eq!(s.start_timeout, Duration::from_secs(30));
    let v = &c.services[0];
    assert_eq!(v.timeout, None);
    assert!(!v.conversational);
    assert_eq!(v.buffer_types, BUFFER_TYPES.to_vec());
}

#[test]
fn dependent_defaults_follow_their_partner() {
    let v = with_domain(&[
        "[domain.limits]",
        "frame_bytes_max = 1000",
        "[[server]]",
        "name = \"s\"",
        "executable = \"srv\"",
        "min_instances = 3",
        "restart_backoff_ms = 9000",
    ]);
    let c = parse_ok(&lines(&v));
    // unauthenticated_frame_bytes_max defaults to at most frame_bytes_max.
    assert_eq!(c.limits.unauthenticated_frame_bytes_max, 1000);
    // max_instances defaults to min_instances, the backoff cap to at least the backoff.
    assert_eq!(c.servers[0].max_instances, 3);
    assert_eq!(
        c.servers[0].restart_backoff_max,
        Duration::from_millis(9000)
    );
}

#[test]
fn restart_policies_and_the_default_group_by_name() {
    for (written, policy) in [
        ("always", RestartPolicy::Always),
        ("on-failure", RestartPolicy::OnFailure),
        ("never", RestartPolicy::Never),
    ] {
        let restart = format!("restart = \"{written}\"");
        let v = with_domain(&[
            "[[server]]",
            "name = \"s\"",
            "group = \"DEFAULT\"",
            "executable = \"srv\"",
            &restart,
        ]);
        let c = parse_ok(&lines(&v));
        assert_eq!(c.servers[0].restart, policy);
        assert_eq!(policy.as_str(), written);
    }
}

#[test]
fn names_may_be_31_characters_long() {
    let name = "A".repeat(31);
    let service = format!("name = \"{name}\"");
    let v = with_domain(&[
        "[[server]]",
        "name = \"a-b.c_9\"",
        "executable = \"srv\"",
        "[[service]]",
        &service,
        "server = \"a-b.c_9\"",
    ]);
    let c = parse_ok(&lines(&v));
    assert_eq!(c.services[0].name, name);
}

#[test]
fn multi_node_domain() {
    let c = parse_ok(&[
        "[domain]",
        "name = \"qs\"",
        "listen = \"0.0.0.0:7480\"",
        "link_secret = \"0123456789abcdef\"",
        "[[node]]",
        "name = \"a\"",
        "link = \"10.0.0.1:7490\"",
        "[[node]]",
        "name = \"b\"",
        "host = \"b.example.com\"",
        "listen = \"10.0.0.2:7480\"",
        "link = \"10.0.0.2:7490\"",
        "[[group]]",
        "name = \"G1\"",
        "node = \"a\"",
        "[[group]]",
        "name = \"G2\"",
        "node = \"b\"",
    ]);
    assert_eq!(c.nodes[0].listen, c.domain.listen);
    assert_eq!(c.nodes[0].host, "0.0.0.0");
    assert_eq!(c.nodes[1].host, "b.example.com");
    assert_eq!((c.groups[0].node, c.groups[1].node), (0, 1));
}

#[test]
fn a_multi_node_domain_refuses_frames_larger_than_a_node_link_carries() {
    let file = |frame: u32| {
        vec![
            "[domain]".to_string(),
            "name = \"qs\"".into(),
            "listen = \"0.0.0.0:7480\"".into(),
            "link_secret = \"0123456789abcdef\"".into(),
            "[domain.limits]".into(),
            format!("frame_bytes_max = {frame}"),
            "[[node]]".into(),
            "name = \"a\"".into(),
            "link = \"10.0.0.1:7490\"".into(),
            "[[node]]".into(),
            "name = \"b\"".into(),
            "link = \"10.0.0.2:7490\"".into(),
        ]
    };
    let ok = file(crate::LINK_FRAME_BYTES_MAX);
    assert_eq!(
        parse_ok(&lines(&ok)).limits.frame_bytes_max,
        crate::LINK_FRAME_BYTES_MAX
    );
    let too_big = file(32 << 20);
    let e = parse_err(&lines(&too_big));
    check(
        &e,
        ErrorKind::InvalidValue,
        6,
        None,
        Some("domain.limits.frame_bytes_max"),
    );
    assert!(e.message().contains("node-link packets"), "{e}");
    // One node: no links, the local limit only.
    let v = with_domain(&["[domain.limits]", "frame_bytes_max = 33554432"]);
    assert_eq!(parse_ok(&lines(&v)).limits.frame_bytes_max, 32 << 20);
}

// ---------------------------------------------------------------------------------------
// Errors, each with its exact line

#[test]
fn unknown_key_at_top_level() {
    let mut v = vec!["# comment".to_string(), "servers = 1".to_string()];
    v.extend(with_domain(&[]));
    let e = parse_err(&lines(&v));
    check(&e, ErrorKind::UnknownKey, 2, None, Some("servers"));
    assert_eq!(e.column(), Some(1));
    assert!(
        e.message().starts_with("unknown key, expected one of"),
        "{e}"
    );

    let v = with_domain(&["[servers]", "name = \"x\""]);
    let e = parse_err(&lines(&v));
    check(&e, ErrorKind::UnknownKey, 4, None, Some("servers"));
}

#[test]
fn unknown_key_nested() {
    let v = with_domain(&["[domain.limits]", "clients_max = 3", "clientz_max = 4"]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::UnknownKey,
        6,
        None,
        Some("domain.limits.clientz_max"),
    );

    let v = with_domain(&[
        "[[server]]",
        "name = \"qsrv\"",
        "executable = \"x\"",
        "",
        "  instances = 3",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::UnknownKey,
        8,
        Some("server \"qsrv\""),
        Some("instances"),
    );
    assert_eq!(e.column(), Some(3));
    assert!(
        e.to_string().starts_with(
            "/etc/tpmon/domain.toml:8:3: server \"qsrv\": key `instances`: unknown key, expected"
        ),
        "{e}"
    );

    // An entry without a name is numbered.
    let v = with_domain(&["[[group]]", "[[group]]", "nme = \"G\""]);
    let e = parse_err(&lines(&v));
    check(&e, ErrorKind::UnknownKey, 6, Some("group #2"), Some("nme"));

    // In the [domain] table itself.
    let e = parse_err(&["[domain]", "name = \"qs\"", "lisen = \"127.0.0.1:1\""]);
    check(&e, ErrorKind::UnknownKey, 3, None, Some("domain.lisen"));
}

#[test]
fn duplicate_toml_key() {
    let v = with_domain(&[
        "[[server]]",
        "name = \"qsrv\"",
        "executable = \"x\"",
        "executable = \"y\"",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::DuplicateKey,
        7,
        Some("server \"qsrv\""),
        Some("executable"),
    );
    assert_eq!(e.message(), "duplicate key (first defined at line 6)");

    // A table defined twice.
    let v = with_domain(&["[domain]", "run_dir = \"r\""]);
    let e = parse_err(&lines(&v));
    check(&e, ErrorKind::DuplicateKey, 4, None, Some("domain"));
    assert_eq!(e.message(), "duplicate key (first defined at line 1)");

    // Inside an inline table.
    let v = with_domain(&[
        "[[server]]",
        "name = \"qsrv\"",
        "executable = \"x\"",
        "env = { A = \"1\", A = \"2\" }",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::DuplicateKey,
        7,
        Some("server \"qsrv\""),
        Some("env.A"),
    );
}

#[test]
fn duplicate_server_name() {
    let v = with_domain(&[
        "[[server]]",
        "name = \"qsrv\"",
        "executable = \"x\"",
        "",
        "[[server]]",
        "name = \"qsrv\"",
        "executable = \"y\"",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::DuplicateName,
        9,
        Some("server \"qsrv\""),
        Some("name"),
    );
    assert_eq!(
        e.to_string(),
        "/etc/tpmon/domain.toml:9:8: server \"qsrv\": key `name`: duplicate server name \
         (first defined at line 5)"
    );
}

#[test]
fn duplicate_names_in_other_sections() {
    let v = with_domain(&["[[group]]", "name = \"G\"", "[[group]]", "name = \"G\""]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::DuplicateName,
        7,
        Some("group \"G\""),
        Some("name"),
    );

    let v = with_domain(&[
        "[[node]]",
        "name = \"n\"",
        "link = \"127.0.0.1:1\"",
        "[[node]]",
        "name = \"n\"",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::DuplicateName,
        8,
        Some("node \"n\""),
        Some("name"),
    );

    let v = with_domain(&[
        "[[server]]",
        "name = \"s\"",
        "executable = \"x\"",
        "[[service]]",
        "name = \"A\"",
        "server = \"s\"",
        "[[service]]",
        "name = \"A\"",
        "server = \"s\"",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::DuplicateName,
        11,
        Some("service \"A\""),
        Some("name"),
    );
    assert!(e.message().contains("first defined at line 8"), "{e}");
}

#[test]
fn dangling_service_to_server() {
    let v = with_domain(&[
        "[[server]]",
        "name = \"qsrv\"",
        "executable = \"x\"",
        "[[service]]",
        "name = \"TOUPPER\"",
        "server = \"qsvr\"",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::UnknownReference,
        9,
        Some("service \"TOUPPER\""),
        Some("server"),
    );
    assert_eq!(e.message(), "unknown server \"qsvr\"");
}

#[test]
fn dangling_group_to_node() {
    let v = with_domain(&[
        "[[node]]",
        "name = \"n1\"",
        "[[group]]",
        "name = \"APPGRP\"",
        "node = \"n2\"",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::UnknownReference,
        8,
        Some("group \"APPGRP\""),
        Some("node"),
    );
    assert_eq!(e.message(), "unknown node \"n2\"");
}

#[test]
fn dangling_server_to_group() {
    let v = with_domain(&[
        "[[group]]",
        "name = \"APPGRP\"",
        "[[server]]",
        "name = \"qsrv\"",
        "group = \"APPGROUP\"",
        "executable = \"x\"",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::UnknownReference,
        8,
        Some("server \"qsrv\""),
        Some("group"),
    );

    // Without any [[group]] only the implicit DEFAULT group exists.
    let v = with_domain(&[
        "[[server]]",
        "name = \"qsrv\"",
        "group = \"APPGRP\"",
        "executable = \"x\"",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::UnknownReference,
        6,
        Some("server \"qsrv\""),
        Some("group"),
    );
    assert!(e.message().contains("the file has no [[group]]"), "{e}");
}

#[test]
fn min_greater_than_max() {
    let v = with_domain(&[
        "",
        "[[server]]",
        "name = \"qsrv\"",
        "executable = \"x\"",
        "max_instances = 4",
        "",
        "",
        "",
        "",
        "",
        "min_instances = 5",
    ]);
    let e = parse_err(&lines(&v));
    assert_eq!(
        e.to_string(),
        "/etc/tpmon/domain.toml:14:17: server \"qsrv\": key `min_instances`: \
         must be at most max_instances (4)"
    );
    check(
        &e,
        ErrorKind::InvalidValue,
        14,
        Some("server \"qsrv\""),
        Some("min_instances"),
    );

    // With min_instances left at its default, max_instances is blamed.
    let v = with_domain(&[
        "[[server]]",
        "name = \"qsrv\"",
        "executable = \"x\"",
        "max_instances = 0",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        7,
        Some("server \"qsrv\""),
        Some("max_instances"),
    );

    // The same rule for the restart backoff.
    let v = with_domain(&[
        "[[server]]",
        "name = \"qsrv\"",
        "executable = \"x\"",
        "restart_backoff_max_ms = 10",
        "restart_backoff_ms = 20",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        8,
        Some("server \"qsrv\""),
        Some("restart_backoff_ms"),
    );
    assert_eq!(e.message(), "must be at most restart_backoff_max_ms (10)");

    // And for the frame limits.
    let v = with_domain(&[
        "[domain.limits]",
        "frame_bytes_max = 100",
        "unauthenticated_frame_bytes_max = 200",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        6,
        None,
        Some("domain.limits.unauthenticated_frame_bytes_max"),
    );
}

#[test]
fn bad_listen_address() {
    let e = parse_err(&["[domain]", "name = \"qs\"", "listen = \"localhost:7480\""]);
    check(&e, ErrorKind::InvalidValue, 3, None, Some("domain.listen"));
    assert!(e.message().contains("not a socket address"), "{e}");

    let e = parse_err(&["[domain]", "name = \"qs\"", "listen = \"127.0.0.1:0\""]);
    check(&e, ErrorKind::InvalidValue, 3, None, Some("domain.listen"));
    assert_eq!(e.message(), "port must not be 0");

    let e = parse_err(&["[domain]", "name = \"qs\"", "listen = \"127.0.0.1:70000\""]);
    check(&e, ErrorKind::InvalidValue, 3, None, Some("domain.listen"));

    let v = with_domain(&["[[node]]", "name = \"n\"", "link = \"127.0.0.1\""]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        6,
        Some("node \"n\""),
        Some("link"),
    );

    let v = with_domain(&["[[node]]", "name = \"n\"", "link = \"127.0.0.1:7480\""]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        6,
        Some("node \"n\""),
        Some("link"),
    );
    assert!(e.message().contains("must differ from listen"), "{e}");
}

#[test]
fn bad_name_characters() {
    let v = with_domain(&["[[server]]", "name = \"q srv\"", "executable = \"x\""]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        5,
        Some("server #1"),
        Some("name"),
    );
    // The column points at the space: `name = "q` is 9 characters.
    assert_eq!(e.column(), Some(10));
    assert!(e.message().starts_with("contains ' '"), "{e}");

    let e = parse_err(&["[domain]", "name = \"dom/ain\"", "listen = \"127.0.0.1:1\""]);
    check(&e, ErrorKind::InvalidValue, 2, None, Some("domain.name"));

    let v = with_domain(&["[[group]]", "name = \"\""]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        5,
        Some("group #1"),
        Some("name"),
    );
    assert_eq!(e.message(), "must not be empty");

    let long = format!("name = \"{}\"", "S".repeat(32));
    let v = with_domain(&[
        "[[server]]",
        "name = \"s\"",
        "executable = \"x\"",
        "[[service]]",
        &long,
        "server = \"s\"",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        8,
        Some("service #1"),
        Some("name"),
    );
    assert_eq!(e.message(), "must be at most 31 characters long (is 32)");

    let v = with_domain(&["[[node]]", "name = \"ünï\""]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        5,
        Some("node #1"),
        Some("name"),
    );
}

#[test]
fn unset_environment_variable() {
    let v = with_domain(&[
        "[[server]]",
        "name = \"qsrv\"",
        "executable = \"x\"",
        "env = { RUST_LOG = \"${NOT_SET_ANYWHERE}\" }",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::UnsetVariable,
        7,
        Some("server \"qsrv\""),
        Some("env.RUST_LOG"),
    );
    assert_eq!(
        e.message(),
        "environment variable `NOT_SET_ANYWHERE` is not set"
    );
    // The column points at the `$`.
    assert_eq!(e.column(), Some(21));

    let v = with_domain(&[
        "[[server]]",
        "name = \"qsrv\"",
        "executable = \"x\"",
        "args = [",
        "  \"a\",",
        "  \"--home=${HOME_OF_NOBODY}\",",
        "]",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::UnsetVariable,
        9,
        Some("server \"qsrv\""),
        Some("args[1]"),
    );

    let e = parse_err(&[
        "[domain]",
        "name = \"qs\"",
        "listen = \"127.0.0.1:7480\"",
        "password = \"${MISSING_PASSWORD}\"",
    ]);
    check(
        &e,
        ErrorKind::UnsetVariable,
        4,
        None,
        Some("domain.password"),
    );
    assert_eq!(
        e.to_string(),
        "/etc/tpmon/domain.toml:4:13: key `domain.password`: environment variable \
         `MISSING_PASSWORD` is not set"
    );
}

#[test]
fn malformed_variable_references() {
    let v = with_domain(&["run_dir = \"${APP_HOME\""]);
    let e = parse_err(&lines(&v));
    check(&e, ErrorKind::InvalidValue, 4, None, Some("domain.run_dir"));
    assert!(e.message().contains("without a closing"), "{e}");

    let v = with_domain(&["log_file = \"${}\""]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        4,
        None,
        Some("domain.log_file"),
    );
}

#[test]
fn environment_expansion_with_escape() {
    let v = with_domain(&[
        "run_dir = \"${APP_HOME}/run\"",
        "field_tables = [\"${APP_HOME}/x.fld\", \"lit$${APP_HOME}.fld\"]",
        "log_file = \"$$${LEVEL}.log\"",
        "[[server]]",
        "name = \"s\"",
        "executable = \"${APP_HOME}/bin/srv\"",
        "args = [\"$${LEVEL}\", \"${LEVEL}\", \"price: 5$\", \"$$\"]",
        "env = { A = \"${LEVEL}-${LEVEL}\", B = \"\" }",
    ]);
    let c = parse_ok(&lines(&v));
    assert_eq!(c.domain.run_dir, PathBuf::from("/opt/app/run"));
    assert_eq!(
        c.domain.field_tables,
        vec![
            PathBuf::from("/opt/app/x.fld"),
            PathBuf::from("/etc/tpmon/lit${APP_HOME}.fld")
        ]
    );
    assert_eq!(c.domain.log_file, Some(PathBuf::from("$${LEVEL}.log")));
    let s = &c.servers[0];
    assert_eq!(s.executable, "/opt/app/bin/srv");
    assert_eq!(
        c.resolve_executable(s, None),
        PathBuf::from("/opt/app/bin/srv")
    );
    assert_eq!(s.args, vec!["${LEVEL}", "debug", "price: 5$", "$$"]);
    assert_eq!(s.env.get("A").map(String::as_str), Some("debug-debug"));
    assert_eq!(s.env.get("B").map(String::as_str), Some(""));

    // Names are never expanded: a `$` in a name is just a bad character.
    let v = with_domain(&["[[server]]", "name = \"${LEVEL}\"", "executable = \"x\""]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        5,
        Some("server #1"),
        Some("name"),
    );
}

#[test]
fn expansion_from_the_process_environment() {
    // PATH is set in every environment this test runs in; read it, never change it.
    let Ok(path) = std::env::var("PATH") else {
        return;
    };
    let v = with_domain(&[
        "[[server]]",
        "name = \"s\"",
        "executable = \"x\"",
        "env = { PATH = \"${PATH}\" }",
    ]);
    let c = parse(&doc(&lines(&v)), Path::new(SOURCE)).unwrap();
    assert_eq!(c.servers[0].env.get("PATH"), Some(&path));
}

#[test]
fn zero_and_negative_limits() {
    let v = with_domain(&["[domain.limits]", "clients_max = 0"]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        5,
        None,
        Some("domain.limits.clients_max"),
    );
    assert_eq!(e.message(), "must be at least 1");

    let v = with_domain(&["[domain.limits]", "", "handshake_timeout_ms = -5"]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        6,
        None,
        Some("domain.limits.handshake_timeout_ms"),
    );
    assert_eq!(e.message(), "must be at least 1");

    for key in [
        "min_instances",
        "restart_max",
        "restart_window_s",
        "restart_backoff_ms",
        "queue_max",
        "shutdown_timeout_s",
        "start_timeout_s",
    ] {
        let setting = format!("{key} = 0");
        let v = with_domain(&["[[server]]", "name = \"s\"", "executable = \"x\"", &setting]);
        let e = parse_err(&lines(&v));
        check(
            &e,
            ErrorKind::InvalidValue,
            7,
            Some("server \"s\""),
            Some(key),
        );
    }

    let v = with_domain(&[
        "[[server]]",
        "name = \"s\"",
        "executable = \"x\"",
        "queue_max = -1",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        7,
        Some("server \"s\""),
        Some("queue_max"),
    );

    // Too large is caught as well.
    let v = with_domain(&["[domain.limits]", "frame_bytes_max = 99999999999"]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        5,
        None,
        Some("domain.limits.frame_bytes_max"),
    );
    assert_eq!(e.message(), "must be at most 1073741824");

    // A service timeout of 0 means "no limit", a negative one is an error.
    let v = with_domain(&[
        "[[server]]",
        "name = \"s\"",
        "executable = \"x\"",
        "[[service]]",
        "name = \"A\"",
        "server = \"s\"",
        "timeout_s = -1",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        10,
        Some("service \"A\""),
        Some("timeout_s"),
    );
    assert_eq!(e.message(), "must be at least 0");
}

#[test]
fn resource_managers_and_transaction_settings() {
    let v = with_domain(&[
        "[domain.tx]",
        "timeout_s = 5",
        "one_phase_commit = false",
        "[[group]]",
        "name = \"G\"",
        "auto_transaction = true",
        "[group.rm]",
        "kind = \"postgres\"",
        "open = \"host=127.0.0.1 password=${PGPW}\"",
        "pool_max = 3",
    ]);
    let c = parse_with_env(&doc(&lines(&v)), Path::new(SOURCE), &|k: &str| {
        (k == "PGPW").then(|| "s3cret".to_string())
    })
    .expect("valid");
    assert_eq!(c.domain.tx.timeout, std::time::Duration::from_secs(5));
    assert!(!c.domain.tx.one_phase_commit);
    let g = &c.groups[0];
    assert!(g.auto_transaction);
    let rm = g.rm.xa().expect("xa");
    assert_eq!(rm.kind, crate::RmKind::Postgres);
    assert_eq!(rm.open.expose(), "host=127.0.0.1 password=s3cret");
    assert_eq!(rm.pool_max, 3);
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "the open string is never printed"
    );

    // A kind alone needs an open string (except noop).
    let v = with_domain(&["[[group]]", "name = \"G\"", "rm = \"postgres\""]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::MissingKey,
        6,
        Some("group \"G\""),
        Some("rm.open"),
    );
    let v = with_domain(&["[[group]]", "name = \"G\"", "rm = \"noop\""]);
    parse_ok(&lines(&v));
    // Implicit demarcation needs a resource manager.
    let v = with_domain(&["[[group]]", "name = \"G\"", "auto_transaction = true"]);
    let e = parse_err(&lines(&v));
    assert_eq!(e.kind(), ErrorKind::InvalidValue, "{e}");
    // The transaction timeout cannot exceed its limit.
    let v = with_domain(&["[domain.tx]", "timeout_s = 50", "timeout_max_s = 10"]);
    let e = parse_err(&lines(&v));
    assert!(e.message().contains("timeout_max_s"), "{e}");
}

#[test]
fn unsupported_rm_kind() {
    // The embedded kind needs no open string; its settings are checked.
    let v = with_domain(&["[[group]]", "name = \"G\"", "rm = \"embedded\""]);
    let c = parse_ok(&lines(&v));
    let rm = c.groups[0].rm.xa().expect("xa");
    assert_eq!(rm.kind, crate::RmKind::Embedded);
    assert_eq!(rm.open.expose(), "");
    assert_eq!(rm.checkpoint_interval_ms, 10_000);
    let v = with_domain(&[
        "[[group]]",
        "name = \"G\"",
        "[group.rm]",
        "kind = \"embedded\"",
        "checkpoint_interval_ms = 5",
    ]);
    let e = parse_err(&lines(&v));
    assert!(e.to_string().contains("rm.checkpoint_interval_ms"), "{e}");
    // Two sites cannot share a directory.
    let v = with_domain(&[
        "[[group]]",
        "name = \"A\"",
        "[group.rm]",
        "kind = \"embedded\"",
        "open = \"sites/x\"",
        "[[group]]",
        "name = \"B\"",
        "[group.rm]",
        "kind = \"embedded\"",
        "open = \"sites/x\"",
    ]);
    let e = parse_err(&lines(&v));
    assert!(e.to_string().contains("already group \"A\""), "{e}");

    // Mistakes inside [group.rm] are named with their key and line, like any other.
    let rm_table = |body: &[&str]| {
        let mut v = vec!["[[group]]", "name = \"G\"", "[group.rm]"];
        v.extend_from_slice(body);
        parse_err(&lines(&with_domain(&v)))
    };
    let e = rm_table(&["kind = \"postgres\"", "open = \"host=x\"", "pool_size = 3"]);
    check(
        &e,
        ErrorKind::UnknownKey,
        9,
        Some("group \"G\""),
        Some("rm.pool_size"),
    );
    assert!(e.message().contains("pool_max"), "{e}");
    let e = rm_table(&[
        "kind = \"postgres\"",
        "open = \"host=x\"",
        "pool_max = \"3\"",
    ]);
    check(
        &e,
        ErrorKind::WrongType,
        9,
        Some("group \"G\""),
        Some("rm.pool_max"),
    );
    let e = rm_table(&["open = \"host=x\""]);
    check(
        &e,
        ErrorKind::MissingKey,
        6,
        Some("group \"G\""),
        Some("rm.kind"),
    );
    let e = rm_table(&["kind = \"postgres\"", "open = \"host=x\"", "pool_max = 0"]);
    check(
        &e,
        ErrorKind::InvalidValue,
        9,
        Some("group \"G\""),
        Some("rm.pool_max"),
    );
    // An empty open string, written or from an empty variable, is refused.
    let e = rm_table(&["kind = \"postgres\"", "open = \"\""]);
    check(
        &e,
        ErrorKind::InvalidValue,
        8,
        Some("group \"G\""),
        Some("rm.open"),
    );
    let v = with_domain(&[
        "[[group]]",
        "name = \"G\"",
        "[group.rm]",
        "kind = \"mariadb\"",
        "open = \"${EMPTY}\"",
    ]);
    let e = parse_with_env(&doc(&lines(&v)), Path::new(SOURCE), &|k: &str| {
        (k == "EMPTY").then(String::new)
    })
    .expect_err("empty");
    assert!(e.message().contains("empty after expanding"), "{e}");

    let v = with_domain(&["[[group]]", "name = \"G\"", "rm = \"oracle\""]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        6,
        Some("group \"G\""),
        Some("rm"),
    );
}

#[test]
fn wrong_types() {
    let v = with_domain(&[
        "[[server]]",
        "name = \"s\"",
        "executable = \"x\"",
        "min_instances = \"2\"",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::WrongType,
        7,
        Some("server \"s\""),
        Some("min_instances"),
    );
    assert_eq!(e.message(), "wrong type: string \"2\", expected an integer");

    let v = with_domain(&["[server]", "name = \"s\""]);
    let e = parse_err(&lines(&v));
    check(&e, ErrorKind::WrongType, 4, None, Some("server"));
    assert_eq!(e.message(), "wrong type: table, expected an array");

    let v = with_domain(&[
        "[[server]]",
        "name = \"s\"",
        "executable = \"x\"",
        "args = [\"a\", 2]",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::WrongType,
        7,
        Some("server \"s\""),
        Some("args[1]"),
    );
}

#[test]
fn syntax_errors() {
    let v = with_domain(&["", "[[server]", "name = \"s\""]);
    let e = parse_err(&lines(&v));
    assert_eq!(e.kind(), ErrorKind::Syntax);
    assert_eq!(e.line(), Some(5));
    assert_eq!(e.key(), None);

    let v = with_domain(&["run_dir = "]);
    let e = parse_err(&lines(&v));
    assert_eq!((e.kind(), e.line()), (ErrorKind::Syntax, Some(4)));
}

#[test]
fn missing_keys() {
    let e = parse_err(&["# nothing here"]);
    check(&e, ErrorKind::MissingKey, 1, None, Some("domain"));

    let e = parse_err(&["", "[domain]", "name = \"qs\""]);
    check(&e, ErrorKind::MissingKey, 2, None, Some("domain.listen"));

    let v = with_domain(&["[[server]]", "name = \"s\""]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::MissingKey,
        4,
        Some("server \"s\""),
        Some("executable"),
    );

    let v = with_domain(&["[[service]]", "server = \"s\""]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::MissingKey,
        4,
        Some("service #1"),
        Some("name"),
    );

    // With [[group]] entries a server must name its group.
    let v = with_domain(&[
        "[[group]]",
        "name = \"G\"",
        "[[server]]",
        "name = \"s\"",
        "executable = \"x\"",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::MissingKey,
        6,
        Some("server \"s\""),
        Some("group"),
    );

    // With several nodes a group must name its node and every node needs a link.
    let v = with_domain(&[
        "link_secret = \"0123456789abcdef\"",
        "[[node]]",
        "name = \"a\"",
        "link = \"127.0.0.1:7491\"",
        "[[node]]",
        "name = \"b\"",
        "listen = \"127.0.0.2:7480\"",
        "link = \"127.0.0.1:7492\"",
        "[[group]]",
        "name = \"G\"",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::MissingKey,
        12,
        Some("group \"G\""),
        Some("node"),
    );

    let v = with_domain(&["[[node]]", "name = \"a\"", "[[node]]", "name = \"b\""]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::MissingKey,
        4,
        Some("node \"a\""),
        Some("link"),
    );
}

#[test]
fn bad_strings() {
    let v = with_domain(&["[[server]]", "name = \"s\"", "executable = \"\""]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        6,
        Some("server \"s\""),
        Some("executable"),
    );

    let v = with_domain(&[
        "[[server]]",
        "name = \"s\"",
        "executable = \"x\"",
        "args = [\"a\\u0000b\"]",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        7,
        Some("server \"s\""),
        Some("args[0]"),
    );

    let v = with_domain(&[
        "[[server]]",
        "name = \"s\"",
        "executable = \"x\"",
        "env = { \"A=B\" = \"1\" }",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        7,
        Some("server \"s\""),
        Some("env.A=B"),
    );

    let v = with_domain(&["password = \"\""]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        4,
        None,
        Some("domain.password"),
    );

    let v = with_domain(&["[[node]]", "name = \"n\"", "host = \"a b\""]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        6,
        Some("node \"n\""),
        Some("host"),
    );

    let v = with_domain(&[
        "[[server]]",
        "name = \"s\"",
        "executable = \"x\"",
        "restart = \"sometimes\"",
    ]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        7,
        Some("server \"s\""),
        Some("restart"),
    );
}

#[test]
fn buffer_types() {
    let base = [
        "[[server]]",
        "name = \"s\"",
        "executable = \"x\"",
        "[[service]]",
        "name = \"A\"",
        "server = \"s\"",
    ];
    let check_list = |list: &str| {
        let mut v = with_domain(&base);
        v.push(format!("buffer_types = {list}"));
        parse_with_env(&doc(&lines(&v)), Path::new(SOURCE), &env)
    };
    let c = check_list("[\"field\", \"Record\", \"CARRAY\"]").unwrap();
    assert_eq!(
        c.services[0].buffer_types,
        vec!["FIELD", "RECORD", "CARRAY"]
    );

    let e = check_list("[\"STRING\", \"XML\"]").unwrap_err();
    check(
        &e,
        ErrorKind::InvalidValue,
        10,
        Some("service \"A\""),
        Some("buffer_types[1]"),
    );
    let e = check_list("[]").unwrap_err();
    check(
        &e,
        ErrorKind::InvalidValue,
        10,
        Some("service \"A\""),
        Some("buffer_types"),
    );
    let e = check_list("[\"STRING\", \"string\"]").unwrap_err();
    check(
        &e,
        ErrorKind::InvalidValue,
        10,
        Some("service \"A\""),
        Some("buffer_types[1]"),
    );
}

// ---------------------------------------------------------------------------------------
// Paths, executables, overrides, files

#[test]
fn relative_source_gets_an_absolute_base_dir() {
    let v = with_domain(&["log_file = \"/var/log/tpmon.log\""]);
    let c = parse_with_env(&doc(&lines(&v)), Path::new("conf/domain.toml"), &env).unwrap();
    assert!(c.base_dir.is_absolute());
    assert!(c.base_dir.ends_with("conf"));
    assert!(c.domain.run_dir.is_absolute());
    assert_eq!(c.source, PathBuf::from("conf/domain.toml"));
    assert_eq!(
        c.domain.log_path(),
        Some(PathBuf::from("/var/log/tpmon.log"))
    );

    let c = parse_with_env(&doc(&lines(&v)), Path::new(""), &env).unwrap();
    assert!(c.domain.run_dir.is_absolute());
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("tpmon-config-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn resolve_executable_searches_the_given_directory() {
    let dir = TempDir::new("exe");
    let program = dir.0.join("tpmon-test-program-xyz");
    std::fs::write(&program, "#!/bin/sh\n").unwrap();
    let plain = dir.0.join("tpmon-test-not-executable-xyz");
    std::fs::write(&plain, "data").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let v = with_domain(&[
        "[[server]]",
        "name = \"a\"",
        "executable = \"tpmon-test-program-xyz\"",
        "[[server]]",
        "name = \"b\"",
        "executable = \"tpmon-test-not-executable-xyz\"",
    ]);
    let c = parse_ok(&lines(&v));
    assert_eq!(c.resolve_executable(&c.servers[0], Some(&dir.0)), program);
    // Not found anywhere: the bare name comes back.
    assert_eq!(
        c.resolve_executable(&c.servers[0], None),
        PathBuf::from("tpmon-test-program-xyz")
    );
    #[cfg(unix)]
    assert_eq!(
        c.resolve_executable(&c.servers[1], Some(&dir.0)),
        PathBuf::from("tpmon-test-not-executable-xyz")
    );
}

#[test]
fn overrides_move_listen_and_run_dir() {
    let c = parse_ok(&lines(&with_domain(&[])));
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let c = c
        .with_overrides(Some(listen), Some(PathBuf::from("/tmp/tpmon-run")))
        .unwrap();
    assert_eq!(c.domain.listen, listen);
    assert_eq!(c.nodes[0].listen, listen);
    assert_eq!(c.domain.run_dir, PathBuf::from("/tmp/tpmon-run"));

    let mut c = c;
    c.set_run_dir("relative/run").unwrap();
    assert!(c.domain.run_dir.is_absolute());
    assert!(c.domain.run_dir.ends_with("relative/run"));
    assert!(c.set_run_dir("").is_err());

    let unchanged = parse_ok(&lines(&with_domain(&[])))
        .with_overrides(None, None)
        .unwrap();
    assert_eq!(unchanged, parse_ok(&lines(&with_domain(&[]))));
}

#[test]
fn load_reads_the_file_and_names_it_in_errors() {
    let dir = TempDir::new("load");
    let file = dir.0.join("domain.toml");
    let v = with_domain(&["run_dir = \"state\""]);
    std::fs::write(&file, doc(&lines(&v))).unwrap();
    let c = load(&file).unwrap();
    assert_eq!(c.domain.run_dir, dir.0.join("state"));
    assert_eq!(c.base_dir, dir.0);

    let missing = dir.0.join("missing.toml");
    let e = load(&missing).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Read);
    assert_eq!(e.file(), missing);
    assert_eq!(e.line(), None);
    assert!(e
        .to_string()
        .starts_with(&format!("{}: cannot read", missing.display())));

    std::fs::write(&file, b"[domain]\nname = \"\xff\"\n").unwrap();
    let e = load(&file).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Syntax);

    let v = with_domain(&["bogus = 1"]);
    std::fs::write(&file, doc(&lines(&v))).unwrap();
    let e = load(&file).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}:4:1: ", file.display())),
        "{e}"
    );
}

#[test]
fn oversized_files_are_refused() {
    let mut text = doc(&lines(&with_domain(&[])));
    text.push_str(&"#".repeat(FILE_BYTES_MAX));
    let e = parse_with_env(&text, Path::new(SOURCE), &env).unwrap_err();
    assert_eq!((e.kind(), e.line()), (ErrorKind::Read, None));
    assert!(e.message().contains("larger than"), "{e}");

    let dir = TempDir::new("big");
    let file = dir.0.join("domain.toml");
    std::fs::write(&file, text).unwrap();
    let e = load(&file).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Read);
}

/// The examples in docs/configuration.md are valid. Skipped when the crate is built
/// outside the workspace (the docs are not part of the package).
#[test]
fn documented_examples_are_valid() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let Ok(text) = std::fs::read_to_string(&docs) else {
        return;
    };
    let Some((_, examples)) = text.split_once("## Full example") else {
        panic!("docs/configuration.md has no full example");
    };
    let blocks: Vec<&str> = examples
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split_once("```").map(|(block, _)| block))
        .collect();
    assert_eq!(blocks.len(), 2);
    for block in blocks {
        if let Err(e) = parse_with_env(block, Path::new(SOURCE), &env) {
            panic!("documented example fails: {e}");
        }
    }
    let full = parse_with_env(
        examples
            .split("```toml\n")
            .nth(1)
            .and_then(|b| b.split_once("```"))
            .map_or("", |(b, _)| b),
        Path::new(SOURCE),
        &env,
    )
    .unwrap();
    assert_eq!(
        full.domain.log_path(),
        Some(PathBuf::from("/etc/tpmon/run/tpmon.log"))
    );
    assert_eq!(
        full.servers[0].env.get("TEMPLATE").map(String::as_str),
        Some("${NOT_EXPANDED}")
    );
}

// ---------------------------------------------------------------------------------------
// The node-link secret and the selection of one node

/// Three nodes on loopback; `secret` is the `link_secret` line (or nothing).
fn three_nodes(secret: Option<&str>, extra_domain: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = DOMAIN.iter().map(|s| s.to_string()).collect();
    if let Some(line) = secret {
        v.push(line.to_string());
    }
    v.extend(extra_domain.iter().map(|s| s.to_string()));
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        v.push("[[node]]".into());
        v.push(format!("name = \"{name}\""));
        v.push(format!("listen = \"127.0.0.1:{}\"", 7481 + i));
        v.push(format!("link = \"127.0.0.1:{}\"", 7491 + i));
    }
    v.extend(
        ["[[group]]", "name = \"G\"", "node = \"n2\""]
            .iter()
            .map(|s| s.to_string()),
    );
    v
}

/// A server `name` in group `group`, offering `services`.
fn server_with(name: &str, group: &str, services: &[&str]) -> Vec<String> {
    let mut v = vec![
        "[[server]]".to_string(),
        format!("name = \"{name}\""),
        format!("group = \"{group}\""),
        "executable = \"x\"".to_string(),
    ];
    for svc in services {
        v.push("[[service]]".into());
        v.push(format!("name = \"{svc}\""));
        v.push(format!("server = \"{name}\""));
    }
    v
}

#[test]
fn a_service_may_be_offered_once_per_node() {
    let mut v = three_nodes(Some("link_secret = \"0123456789abcdef\""), &[]);
    v.extend(["[[group]]", "name = \"G3\"", "node = \"n3\""].map(String::from));
    v.extend(server_with("s2", "G", &["SHARED", "ONLY2"]));
    v.extend(server_with("s3", "G3", &["SHARED"]));
    let c = parse_ok(&lines(&v));
    let shared: Vec<usize> = c
        .services
        .iter()
        .filter(|s| s.name == "SHARED")
        .map(|s| s.server)
        .collect();
    assert_eq!(shared, vec![0, 1]);
    assert_eq!(c.service_index("SHARED"), Some(0));

    // Twice on one node (two servers of the same node) is still a duplicate.
    let mut v = three_nodes(Some("link_secret = \"0123456789abcdef\""), &[]);
    v.extend(server_with("s2", "G", &["SHARED"]));
    let first_line = v.len() - 1;
    v.extend(server_with("t2", "G", &["SHARED"]));
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::DuplicateName,
        v.len() - 1,
        Some("service \"SHARED\""),
        Some("name"),
    );
    assert!(
        e.message().contains(&format!(
            "duplicate service name on node \"n2\" (first defined at line {first_line}, \
             server \"s2\"); a service may be offered once per node"
        )),
        "{e}"
    );
}

#[test]
fn link_calls_max_is_bounded() {
    let v = with_domain(&["[domain.limits]", "link_calls_max = 0"]);
    let e = parse_err(&lines(&v));
    check(
        &e,
        ErrorKind::InvalidValue,
        5,
        None,
        Some("domain.limits.link_calls_max"),
    );
}

#[test]
fn link_secret_is_expanded_and_hidden() {
    let c = parse_ok(&lines(&three_nodes(
        Some("link_secret = \"${TPMON_DOMAIN_PASSWORD}-and-more-bytes\""),
        &[],
    )));
    let secret = c.domain.link_secret.as_ref().expect("a link secret");
    assert_eq!(secret.expose(), "s3cret-and-more-bytes");
    let printed = format!("{c:?}");
    assert!(!printed.contains("s3cret"), "{printed}");
    // A single-node domain may have one too (it is not used there).
    let c = parse_ok(&lines(&with_domain(&[
        "link_secret = \"0123456789abcdef\"",
    ])));
    assert!(c.domain.link_secret.is_some());
    assert!(parse_ok(&DOMAIN).domain.link_secret.is_none());
}

#[test]
fn link_secret_is_required_with_several_nodes() {
    let e = parse_err(&lines(&three_nodes(None, &[])));
    check(
        &e,
        ErrorKind::MissingKey,
        1,
        None,
        Some("domain.link_secret"),
    );
    assert!(e.message().contains("required key is missing"), "{e}");
}

#[test]
fn link_secret_length_is_checked() {
    // 15 bytes: too short.
    let e = parse_err(&lines(&three_nodes(
        Some("link_secret = \"0123456789abcde\""),
        &[],
    )));
    check(
        &e,
        ErrorKind::InvalidValue,
        4,
        None,
        Some("domain.link_secret"),
    );
    assert_eq!(e.message(), "must be at least 16 bytes long (is 15)");
    // 16 and 1024 bytes are accepted, 1025 are not.
    for (n, ok) in [(16, true), (1024, true), (1025, false)] {
        let line = format!("link_secret = \"{}\"", "x".repeat(n));
        let v = three_nodes(Some(&line), &[]);
        let r = parse_with_env(&doc(&lines(&v)), Path::new(SOURCE), &env);
        assert_eq!(r.is_ok(), ok, "{n} bytes: {r:?}");
        if let Err(e) = r {
            check(
                &e,
                ErrorKind::InvalidValue,
                4,
                None,
                Some("domain.link_secret"),
            );
            assert_eq!(e.message(), "must be at most 1024 bytes long (is 1025)");
        }
    }
    // An unset variable is named.
    let e = parse_err(&lines(&three_nodes(
        Some("link_secret = \"${NO_SUCH_SECRET}\""),
        &[],
    )));
    check(
        &e,
        ErrorKind::UnsetVariable,
        4,
        None,
        Some("domain.link_secret"),
    );
}

#[test]
fn selecting_a_node_gives_it_its_own_run_directory_log_and_address() {
    let secret = Some("link_secret = \"0123456789abcdef\"");
    let mut c = parse_ok(&lines(&three_nodes(secret, &[])));
    let run = PathBuf::from("/etc/tpmon/run");
    assert_eq!(c.select_node(Some("n2")).expect("n2"), 1);
    assert_eq!(c.domain.run_dir, run.join("n2"));
    assert_eq!(c.domain.tx.log_dir, run.join("n2").join("txlog"));
    assert_eq!(
        c.domain.listen,
        "127.0.0.1:7482".parse::<SocketAddr>().unwrap()
    );
    // Again: nothing changes; another node or an unknown one is refused.
    assert_eq!(c.select_node(Some("n2")).expect("n2 again"), 1);
    assert_eq!(c.select_node(None).expect("the selected one"), 1);
    assert_eq!(c.domain.run_dir, run.join("n2"));
    let e = c.select_node(Some("n1")).expect_err("another node");
    assert!(e.message().contains("\"n2\"'s already"), "{e}");
    // The command line's overrides keep the node's own directory and move its address.
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let c = c
        .with_overrides(Some(listen), Some(PathBuf::from("/srv/tp")))
        .expect("overrides");
    assert_eq!(c.domain.run_dir, Path::new("/srv/tp/n2"));
    assert_eq!(c.domain.tx.log_dir, Path::new("/srv/tp/n2/txlog"));
    assert_eq!((c.domain.listen, c.nodes[1].listen), (listen, listen));
    assert_eq!(c.nodes[0].listen.port(), 7481);

    // Without a name: the first node.
    let mut c = parse_ok(&lines(&three_nodes(secret, &[])));
    assert_eq!(c.select_node(None).expect("first"), 0);
    assert_eq!(c.domain.run_dir, run.join("n1"));

    // An explicit log directory gets the node's name too (the setting is the domain's,
    // the log is each node's).
    let mut c = parse_ok(&lines(&three_nodes(
        secret,
        &["[domain.tx]", "log_dir = \"/var/lib/tpmon/txlog\""],
    )));
    c.select_node(Some("n3")).expect("n3");
    assert_eq!(c.domain.tx.log_dir, Path::new("/var/lib/tpmon/txlog/n3"));
    assert_eq!(c.domain.run_dir, run.join("n3"));

    let mut c = parse_ok(&lines(&three_nodes(secret, &[])));
    let e = c.select_node(Some("n9")).expect_err("unknown");
    assert_eq!(e.kind(), ErrorKind::UnknownReference);
    assert_eq!(
        e.to_string(),
        "/etc/tpmon/domain.toml: node \"n9\" is not in the configuration (nodes: n1, n2, n3)"
    );
    assert_eq!(c.selected_node, None);
}

#[test]
fn selecting_the_node_of_a_single_node_domain_changes_nothing() {
    let c0 = parse_ok(&DOMAIN);
    let mut c = c0.clone();
    assert_eq!(c.select_node(Some("qs")).expect("the implicit node"), 0);
    assert_eq!(c.domain, c0.domain);
    let c = c
        .with_overrides(None, Some(PathBuf::from("/srv/tp")))
        .expect("override");
    assert_eq!(c.domain.run_dir, Path::new("/srv/tp"));
    assert_eq!(c.domain.tx.log_dir, Path::new("/srv/tp/txlog"));
}

#[test]
fn password_is_not_printed_by_debug() {
    let c = parse_ok(&lines(&with_domain(&[
        "password = \"${TPMON_DOMAIN_PASSWORD}\"",
    ])));
    let printed = format!("{c:?}");
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(printed.contains("Password(<redacted>)"));
}

// ---------------------------------------------------------------------------------------
// Robustness: nothing a file contains panics.

mod robustness {
    use super::*;
    use proptest::prelude::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse_with_env(&text, Path::new(SOURCE), &no_env);
        }

        #[test]
        fn toml_like_text_never_panics(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just("[domain]".to_string()),
                    Just("[domain.limits]".to_string()),
                    Just("[[node]]".to_string()),
                    Just("[[group]]".to_string()),
                    Just("[[server]]".to_string()),
                    Just("[[service]]".to_string()),
                    "[a-z_]{1,12} = (\"[a-zA-Z0-9${}:./ _-]{0,12}\"|-?[0-9]{1,12}|true|\\[\\])",
                ],
                0..30,
            )
        ) {
            let text = lines.join("\n");
            if let Err(e) = parse_with_env(&text, Path::new(SOURCE), &no_env) {
                // Every content error has a position inside the text.
                let line = e.line().unwrap_or(0);
                prop_assert!(line >= 1 && line <= lines.len().max(1) + 1, "{}", e);
            }
        }

        #[test]
        fn mutated_valid_file_never_panics(cut in 0usize..2000, insert in "\\PC{0,3}") {
            let text = doc(FULL);
            let mut at = cut.min(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let mutated = format!("{}{}{}", &text[..at], insert, &text[at..]);
            let _ = parse_with_env(&mutated, Path::new(SOURCE), &env);
        }
    }
}

#[test]
fn log_preallocation_is_in_kib_within_bounds() {
    let c = parse_ok(&lines(&with_domain(&[])));
    assert_eq!(c.domain.tx.log_preallocate_bytes, 1024 * 1024);
    let v = with_domain(&["[domain.tx]", "log_preallocate_kib = 0"]);
    assert_eq!(parse_ok(&lines(&v)).domain.tx.log_preallocate_bytes, 0);
    let v = with_domain(&["[domain.tx]", "log_preallocate_kib = 65537"]);
    let e = parse_err(&lines(&v));
    assert!(e.to_string().contains("log_preallocate_kib"), "{e}");
    assert!(e.message().contains("at most 65536"), "{e}");
}

/// A tool reads values only the daemon uses without their unset variables; the daemon
/// refuses the same file.
#[test]
fn a_tool_reads_the_file_without_the_daemons_secrets() {
    let text = doc(&[
        "[domain]",
        "name = \"qs\"",
        "listen = \"0.0.0.0:7480\"",
        "link_secret = \"${LINK_SECRET}\"",
        "[[node]]",
        "name = \"a\"",
        "link = \"10.0.0.1:7490\"",
        "[[node]]",
        "name = \"b\"",
        "listen = \"10.0.0.2:7480\"",
        "link = \"10.0.0.2:7490\"",
        "[[group]]",
        "name = \"db1\"",
        "node = \"a\"",
        "[group.rm]",
        "kind = \"postgres\"",
        "open = \"host=db password=${DB_PASSWORD}\"",
        "pool_max = 3",
        "[[group]]",
        "name = \"site\"",
        "node = \"b\"",
        "rm = { kind = \"embedded\", open = \"${SITE_DIR}\" }",
        "[[server]]",
        "name = \"s\"",
        "group = \"db1\"",
        "executable = \"/bin/s\"",
        "args = [\"--key\", \"${API_KEY}\"]",
        "env = { TOKEN = \"${TOKEN}\", HOME_DIR = \"${APP_HOME}\" }",
    ]);
    let tool = |t: &str| parse_with_env_for(t, Path::new(SOURCE), &env, Reader::Tool);
    let c = tool(&text).expect("a tool reads it");
    let keys: Vec<(Option<&str>, &str)> = c
        .unresolved
        .iter()
        .map(|u| (u.item.as_deref(), u.key.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            (None, "domain.link_secret"),
            (Some("group \"db1\""), "rm.open"),
            (Some("group \"site\""), "rm.open"),
            (Some("server \"s\""), "args[1]"),
            (Some("server \"s\""), "env.TOKEN"),
        ]
    );
    let u = c
        .unresolved_value("group \"db1\"", "rm.open")
        .expect("listed");
    assert!(
        u.message.starts_with(&format!("{SOURCE}:17:"))
            && u.message.contains("`DB_PASSWORD` is not set"),
        "{}",
        u.message
    );
    // The other keys of an unresolved group are still read and checked.
    let rm = c.groups[0].rm.xa().expect("xa");
    assert_eq!((rm.open.expose(), rm.pool_max), ("", 3));
    assert_eq!(c.servers[0].env["HOME_DIR"], "/opt/app");

    // The daemon refuses the file at the first unset variable.
    let e = parse_with_env(&text, Path::new(SOURCE), &env).expect_err("the daemon refuses");
    check(
        &e,
        ErrorKind::UnsetVariable,
        4,
        None,
        Some("domain.link_secret"),
    );

    // A tool still refuses what is wrong whatever the environment: a bad variable
    // name, a value the tool uses itself (the password clients log in with), a
    // resolved secret that is too short.
    let bad_name = text.replace("${DB_PASSWORD}", "${DB-PASSWORD}");
    let e = tool(&bad_name).expect_err("bad name");
    check(
        &e,
        ErrorKind::InvalidValue,
        17,
        Some("group \"db1\""),
        Some("rm.open"),
    );
    // Also behind an unset variable.
    let bad_later = text.replace("${DB_PASSWORD}", "${DB_PASSWORD} ${DB-USER}");
    let e = tool(&bad_later).expect_err("bad name after an unset one");
    assert_eq!(e.kind(), ErrorKind::InvalidValue, "{e}");
    assert!(e.message().contains("DB-USER"), "{e}");
    let password = text.replace(
        "listen = \"0.0.0.0:7480\"",
        "listen = \"0.0.0.0:7480\"\npassword = \"${CLIENT_PASSWORD}\"",
    );
    let e = tool(&password).expect_err("the password is the clients'");
    assert_eq!(e.kind(), ErrorKind::UnsetVariable, "{e}");
    let short = text.replace("${LINK_SECRET}", "short");
    let e = tool(&short).expect_err("short secret");
    assert!(e.message().contains("at least"), "{e}");
}
