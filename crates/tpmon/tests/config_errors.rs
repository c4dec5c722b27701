//! `tpmon boot` refuses what it cannot run, with an error that says where the problem
//! is: bad configuration files (file, line and what is wrong), a client port that is
//! taken, and a run directory that another daemon already holds.

mod support;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use support::{boot_detached, s, text, tpmon, Config, Domain, Run, TempDir, TESTSRV};
use tpmon_client::Flags;

/// Writes `toml` as `bad.toml` in a fresh directory and boots it detached.
fn boot_file(tmp: &TempDir, toml: &str) -> (PathBuf, Run) {
    let file = tmp.path.join("bad.toml");
    std::fs::write(&file, toml).unwrap();
    let run = boot_detached(&file, &tmp.path.join("run"));
    (file, run)
}

/// The boot failed, named `file:line:` and said `what`, and left nothing running.
fn assert_refused_at(tmp: &TempDir, file: &Path, run: &Run, line: usize, what: &str) {
    assert!(!run.ok(), "boot must fail: {run:?}");
    assert_eq!(run.code, Some(1), "{run:?}");
    let at = format!("{}:{line}:", file.display());
    assert!(
        run.stderr.contains(&at),
        "stderr names {at}: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains(what),
        "stderr says '{what}': {}",
        run.stderr
    );
    assert!(
        !tmp.path.join("run").join("admin.sock").exists(),
        "no daemon was started"
    );
}

fn server_block() -> String {
    format!(
        "[[server]]\nname = \"s\"\nexecutable = {}\n",
        support::toml_string(TESTSRV)
    )
}

const HEAD: &str = "[domain]\nname = \"x\"\nlisten = \"127.0.0.1:7480\"\n\n";

#[test]
fn an_unknown_key_is_reported_with_file_and_line() {
    let tmp = TempDir::new("unknownkey");
    // Line 8 is `instances = 2`.
    let toml = format!("{HEAD}{}instances = 2\n", server_block());
    let (file, run) = boot_file(&tmp, &toml);
    assert_refused_at(&tmp, &file, &run, 8, "key `instances`: unknown key");
    assert!(run.stderr.contains("server \"s\""), "{}", run.stderr);
}

#[test]
fn a_duplicate_server_is_reported_with_file_and_line() {
    let tmp = TempDir::new("dupserver");
    // The second server's name is on line 10.
    let toml = format!("{HEAD}{}\n{}", server_block(), server_block());
    let (file, run) = boot_file(&tmp, &toml);
    assert_refused_at(
        &tmp,
        &file,
        &run,
        10,
        "duplicate server name (first defined at line 6)",
    );
}

#[test]
fn a_service_of_an_unknown_server_is_reported_with_file_and_line() {
    let tmp = TempDir::new("unknownref");
    // `server = "nosuch"` is on line 11.
    let toml = format!(
        "{HEAD}{}\n[[service]]\nname = \"SVC\"\nserver = \"nosuch\"\n",
        server_block()
    );
    let (file, run) = boot_file(&tmp, &toml);
    assert_refused_at(&tmp, &file, &run, 11, "unknown server \"nosuch\"");
    assert!(run.stderr.contains("service \"SVC\""), "{}", run.stderr);
}

#[test]
fn other_bad_values_are_reported_with_file_and_line() {
    let cases: [(&str, String, usize, &str); 5] = [
        (
            "wrong type",
            format!("{HEAD}{}min_instances = \"2\"\n", server_block()),
            8,
            "wrong type",
        ),
        (
            "min above max",
            format!("{HEAD}{}min_instances = 3\nmax_instances = 2\n", server_block()),
            8,
            "must be at most max_instances (2)",
        ),
        (
            "duplicate key",
            format!("{HEAD}{}name = \"t\"\n", server_block()),
            8,
            "duplicate key",
        ),
        (
            "unset variable",
            "[domain]\nname = \"x\"\nlisten = \"127.0.0.1:7480\"\npassword = \"${TPMON_IT_SURELY_UNSET_VAR}\"\n"
                .to_string(),
            4,
            "environment variable `TPMON_IT_SURELY_UNSET_VAR` is not set",
        ),
        (
            "syntax error",
            "[domain]\nname = \"x\"\nlisten = \"127.0.0.1:7480\"\n[[server]\n".to_string(),
            4,
            "",
        ),
    ];
    for (what, toml, line, message) in cases {
        let tmp = TempDir::new("badvalue");
        let (file, run) = boot_file(&tmp, &toml);
        assert!(!run.ok(), "{what}: {run:?}");
        assert_refused_at(&tmp, &file, &run, line, message);
    }
}

#[test]

fn a_missing_configuration_file_is_reported_once() {
    let tmp = TempDir::new("nofile");
    let file = tmp.path.join("absent.toml");
    let run = boot_detached(&file, &tmp.path.join("run"));
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.stderr.trim(),
        format!(
            "tpmon: {}: cannot read configuration file: No such file or directory (os error 2)",
            file.display()
        )
    );
}

#[test]
fn a_client_port_in_use_is_reported_with_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let tmp = TempDir::new("portinuse");
    let file = tmp.path.join("domain.toml");
    let cfg = Config::new()
        .listen(&addr)
        .server("s", &[])
        .services("s", &["ECHO"]);
    std::fs::write(&file, cfg.render()).unwrap();
    // No --listen override: the file's address is the one in use.
    let run_dir = tmp.path.join("run");
    let run = tpmon([
        OsStr::new("boot"),
        OsStr::new("--detach"),
        OsStr::new("--run-dir"),
        run_dir.as_os_str(),
        OsStr::new("-c"),
        file.as_os_str(),
    ]);
    assert!(!run.ok(), "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("cannot listen for clients on {addr}")),
        "stderr names the address: {}",
        run.stderr
    );
    assert!(
        !run_dir.join("admin.sock").exists(),
        "no daemon is left running"
    );
    drop(taken);
}

#[test]
fn a_second_boot_of_the_same_run_directory_is_refused() {
    let cfg = Config::new().server("s", &[]).services("s", &["ECHO"]);
    let dom = Domain::boot("twice", &cfg);
    let run = boot_detached(&dom.config, &dom.run_dir);
    assert!(!run.ok(), "{run:?}");
    assert!(run.stderr.contains("already running"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("pid {}", dom.daemon_pid)),
        "names the running daemon: {}",
        run.stderr
    );
    // The first daemon is untouched.
    let st = dom.status();
    assert_eq!(st["daemon"]["pid"], dom.daemon_pid);
    assert_eq!(st["daemon"]["client_address"], dom.addr.as_str());
    for (path, mut c) in dom.both_clients() {
        let r = c.call("ECHO", &s("still here"), Flags::NONE).unwrap();
        assert_eq!(text(&r), "still here", "{path}");
    }
}

/// Two nodes; `secret` is the `[domain]` line of the link secret (or nothing).
fn two_nodes(secret: &str) -> String {
    format!(
        "[domain]\nname = \"mn\"\nlisten = \"127.0.0.1:7611\"\nrun_dir = \"run\"\n{secret}\n\
         [[node]]\nname = \"n1\"\nlisten = \"127.0.0.1:7612\"\nlink = \"127.0.0.1:7701\"\n\n\
         [[node]]\nname = \"n2\"\nlisten = \"127.0.0.1:7613\"\nlink = \"127.0.0.1:7702\"\n\n\
         [[group]]\nname = \"g\"\nnode = \"n1\"\n\n{}",
        server_block().replace("[[server]]\n", "[[server]]\ngroup = \"g\"\n")
    )
}

#[test]
fn a_multi_node_domain_without_a_link_secret_is_refused_with_file_and_line() {
    let tmp = TempDir::new("nosecret");
    let (file, run) = boot_file(&tmp, &two_nodes(""));
    assert_refused_at(
        &tmp,
        &file,
        &run,
        1,
        "key `domain.link_secret`: required key is missing",
    );
}

#[test]
fn an_unknown_node_is_refused() {
    let tmp = TempDir::new("unknownnode");
    let file = tmp.path.join("two.toml");
    std::fs::write(&file, two_nodes("link_secret = \"0123456789abcdef\"")).unwrap();
    let run = tpmon([
        OsStr::new("boot"),
        OsStr::new("--detach"),
        OsStr::new("-c"),
        file.as_os_str(),
        OsStr::new("--node"),
        OsStr::new("n9"),
        OsStr::new("--run-dir"),
        tmp.path.join("run").as_os_str(),
    ]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains("node \"n9\" is not in the configuration (nodes: n1, n2)"),
        "{run:?}"
    );
    assert!(
        !tmp.path.join("run").join("n9").exists(),
        "nothing was created"
    );
    // The other commands refuse it the same way.
    let run = tpmon([
        OsStr::new("status"),
        OsStr::new("-c"),
        file.as_os_str(),
        OsStr::new("--node"),
        OsStr::new("n9"),
    ]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("node \"n9\""), "{run:?}");
}

/// The tools read a file whose daemon-only values name unset variables (no database
/// password in an operator's shell), but never use such a value: `tpmon rm inspect` of
/// an embedded site whose directory is unresolved fails with the daemon's message
/// instead of reading the default directory, and `tpmon boot` refuses the file.
#[test]
fn a_tool_never_uses_a_value_whose_variable_is_unset() {
    let tmp = TempDir::new("unset-site");
    // Line 9 is the site's `open`.
    let toml = format!(
        "{HEAD}[[group]]\nname = \"site\"\n[group.rm]\nkind = \"embedded\"\n\
         open = \"${{TPMON_TEST_UNSET_SITE_DIR}}\"\n"
    );
    let file = tmp.path.join("domain.toml");
    std::fs::write(&file, &toml).unwrap();
    // The default directory exists, so that reading it would succeed.
    std::fs::create_dir_all(tmp.path.join("run").join("rm").join("site")).unwrap();
    let run = tpmon([
        OsStr::new("rm"),
        OsStr::new("inspect"),
        OsStr::new("-c"),
        file.as_os_str(),
    ]);
    let at = format!("{}:9:", file.display());
    assert!(
        !run.ok()
            && run.stderr.contains("site \"site\"")
            && run.stderr.contains(&at)
            && run
                .stderr
                .contains("`TPMON_TEST_UNSET_SITE_DIR` is not set"),
        "{run:?}"
    );
    let status = tpmon([OsStr::new("status"), OsStr::new("-c"), file.as_os_str()]);
    assert!(
        status.stderr.contains("no daemon is running"),
        "status reads the file: {status:?}"
    );
    let (file, run) = boot_file(&tmp, &toml);
    assert_refused_at(
        &tmp,
        &file,
        &run,
        9,
        "`TPMON_TEST_UNSET_SITE_DIR` is not set",
    );
}
