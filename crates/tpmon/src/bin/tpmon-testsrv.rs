//! A fault-injection server for tpmon's integration tests: services that crash, hang,
//! panic, ask for a restart or misbehave on purpose. Not an example to imitate.

use std::process::ExitCode;
use std::time::Duration;

use tpmon_client::{CommitReturn, TxControl};
use tpmon_config::RmKind;
use tpmon_server::{tpforward, tpreturn, Buffer, Context, Flags, Outcome, Server};
use tpmon_xa::drivers::mysql::prelude::Queryable;

fn text(b: &Option<Buffer>) -> String {
    b.as_ref()
        .and_then(|b| b.as_str())
        .unwrap_or_default()
        .to_string()
}

/// Runs `sql` on the group's database (PostgreSQL or MariaDB) through the context. On
/// an embedded site only `INSERT INTO t VALUES (N)` is understood: it inserts key N
/// (8 bytes, big-endian) into table `t`.
fn run_sql(ctx: &mut Context, sql: &str) -> Result<(), String> {
    let kind = ctx.resource_manager().map(|rm| rm.kind());
    match kind {
        Some(RmKind::Embedded) => {
            let id: i64 = sql
                .strip_prefix("INSERT INTO t VALUES (")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("not understood on an embedded site: {sql}"))?;
            ctx.embedded()
                .map_err(|e| e.to_string())?
                .insert("t", &id.to_be_bytes(), b"")
                .map_err(|e| e.to_string())
        }
        Some(RmKind::Postgres) => ctx
            .postgres()
            .map_err(|e| e.to_string())?
            .batch_execute(sql)
            .map_err(|e| e.to_string()),
        Some(RmKind::Mariadb) => ctx
            .mariadb()
            .map_err(|e| e.to_string())?
            .query_drop(sql)
            .map_err(|e| e.to_string()),
        other => Err(format!(
            "SQL needs a PostgreSQL or MariaDB group, not {other:?}"
        )),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--exit-at-start") {
        return ExitCode::from(3);
    }
    let marker = args
        .iter()
        .position(|a| a == "--done-marker")
        .and_then(|i| args.get(i + 1).cloned());
    Server::new()
        .on_init(|ctx, args| {
            if args.iter().any(|a| a == "--fail-init") {
                return Err("asked to fail by --fail-init".into());
            }
            // `--init-tx-sql SQL`: begins a transaction, runs SQL in it and returns with
            // it open (a tpsvrinit that forgot to end what it began).
            if let Some(sql) = args
                .iter()
                .position(|a| a == "--init-tx-sql")
                .and_then(|i| args.get(i + 1))
            {
                ctx.client().tx_begin().map_err(|e| e.to_string())?;
                run_sql(ctx, sql)?;
            }
            Ok(())
        })
        .on_done(move |_ctx| {
            if let Some(m) = &marker {
                let _ = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(m)
                    .and_then(|mut f| {
                        std::io::Write::write_all(
                            &mut f,
                            format!("{}\n", std::process::id()).as_bytes(),
                        )
                    });
            }
        })
        .service("ECHO", |_ctx, req| {
            tpreturn(Outcome::Success, 0, req.buffer)
        })
        .service("STRONLY", |_ctx, req| {
            tpreturn(Outcome::Success, 0, req.buffer)
        })
        .service("PID", |_ctx, _req| {
            tpreturn(
                Outcome::Success,
                0,
                Buffer::string(std::process::id().to_string()),
            )
        })
        .service("NODE", |ctx, _req| {
            // Which node served the call: the daemon's TPMON_NODE, checked against
            // the routing table the instance got.
            let env = std::env::var("TPMON_NODE").unwrap_or_default();
            if env != ctx.node() {
                return tpreturn(
                    Outcome::Fail,
                    9,
                    Buffer::string(format!(
                        "TPMON_NODE {env:?} but the node is {:?}",
                        ctx.node()
                    )),
                );
            }
            tpreturn(Outcome::Success, 0, Buffer::string(env))
        })
        .service("CRASH", |_ctx, _req| std::process::abort())
        .service("HANG", |_ctx, _req| loop {
            std::thread::sleep(Duration::from_secs(3600));
        })
        .service("SLEEP", |_ctx, req| {
            let ms: u64 = text(&req.buffer).trim().parse().unwrap_or(100);
            std::thread::sleep(Duration::from_millis(ms));
            tpreturn(Outcome::Success, 0, Buffer::string(format!("slept {ms}")))
        })
        .service("EXIT", |_ctx, _req| {
            tpreturn(
                Outcome::Exit,
                7,
                Buffer::string(std::process::id().to_string()),
            )
        })
        .service("FAIL", |_ctx, req| tpreturn(Outcome::Fail, 42, req.buffer))
        .service("PANIC", |_ctx, _req| panic!("asked to panic"))
        .service("NESTED", |ctx, req| {
            match ctx.client().call(
                "ECHO",
                req.buffer.as_ref().unwrap_or(&Buffer::string("")),
                Flags::NONE,
            ) {
                Ok(r) => tpreturn(Outcome::Success, 1, r.buffer),
                Err(e) => tpreturn(Outcome::Fail, 2, Buffer::string(e.to_string())),
            }
        })
        .service("FWD", |_ctx, req| tpforward("ECHO", req.buffer))
        // Runs the request's text as SQL on the group's database: TPSUCCESS, or TPFAIL
        // with the error.
        .service("SQL", |ctx, req| match run_sql(ctx, &text(&req.buffer)) {
            Ok(()) => tpreturn(Outcome::Success, 0, Buffer::string("ok")),
            Err(e) => tpreturn(Outcome::Fail, 1, Buffer::string(e)),
        })
        // Sets chained transaction control, a one-second transaction timeout and
        // commit-return "completed" on the instance's context, and succeeds.
        .service("CHAINED", |ctx, req| {
            ctx.client().tx_set_control(TxControl::Chained);
            ctx.client().tx_set_commit_return(CommitReturn::Completed);
            if let Err(e) = ctx.client().tx_set_timeout(Duration::from_secs(1)) {
                return tpreturn(Outcome::Fail, 1, Buffer::string(e.to_string()));
            }
            tpreturn(Outcome::Success, 0, req.buffer)
        })
        // Replies with the ids in table `t` of the group's embedded site, in order,
        // separated by commas.
        .service("ROWS", |ctx, _req| {
            let rows = ctx.embedded().map_err(|e| e.to_string()).and_then(|site| {
                site.scan("t", b"", None, u32::MAX)
                    .map_err(|e| e.to_string())
            });
            match rows {
                Ok(rows) => {
                    let ids: Vec<String> = rows
                        .iter()
                        .filter_map(|(k, _)| <[u8; 8]>::try_from(k.as_slice()).ok())
                        .map(|k| i64::from_be_bytes(k).to_string())
                        .collect();
                    tpreturn(Outcome::Success, 0, Buffer::string(ids.join(",")))
                }
                Err(e) => tpreturn(Outcome::Fail, 1, Buffer::string(e)),
            }
        })
        // Replies "tran=BOOL left_ms=N": whether the request's flags say TPTRAN, and
        // how long its transaction has left (0 outside one).
        .service("TXINFO", |_ctx, req| {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let left = req
                .tx
                .as_ref()
                .map_or(0, |t| t.deadline_ms.saturating_sub(now_ms));
            let tran = req.flags.contains(Flags::TRAN);
            tpreturn(
                Outcome::Success,
                0,
                Buffer::string(format!("tran={tran} left_ms={left}")),
            )
        })
        // Begins a transaction of its own; the request is "VERB[ SQL]":
        // "commit SQL" / "rollback SQL": runs SQL on the group's database and calls
        // ECHO in it, then ends it so; "leave SQL": the same, but returns with the
        // transaction open; "leave-open": only calls ECHO and returns with it open;
        // "bypass SQL": runs SQL, tries Client::tx_commit past the server's context,
        // then rolls back; "chained SQL1|SQL2": with chained control, runs SQL1 and
        // commits, runs SQL2 in the chained transaction and rolls that back. Replies
        // with what each step said.
        .service("SELFTX", |ctx, req| {
            let arg = text(&req.buffer);
            let (verb, sql) = arg.split_once(' ').unwrap_or((arg.as_str(), ""));
            let said = |r: Result<(), String>| match r {
                Ok(()) => "ok".to_string(),
                Err(e) => e,
            };
            if verb == "chained" {
                ctx.client().tx_set_control(TxControl::Chained);
            }
            if let Err(e) = ctx.client().tx_begin() {
                return tpreturn(Outcome::Fail, 1, Buffer::string(e.to_string()));
            }
            let reply = match verb {
                "commit" | "rollback" | "leave" => {
                    let sql_said = said(run_sql(ctx, sql));
                    let echo = ctx
                        .client()
                        .call("ECHO", &Buffer::string("in"), Flags::NONE)
                        .map(|_| ());
                    let end = match verb {
                        "commit" => format!("{:?}", ctx.client().tx_commit()),
                        "rollback" => format!("{:?}", ctx.client().tx_rollback()),
                        _ => "left open".to_string(),
                    };
                    format!("sql: {sql_said}; echo: {echo:?}; end: {end}")
                }
                "bypass" => {
                    let sql_said = said(run_sql(ctx, sql));
                    let by = tpmon_client::Client::tx_commit(&mut ctx.client());
                    let end = ctx.client().tx_rollback();
                    format!("sql: {sql_said}; bypass: {by:?}; end: {end:?}")
                }
                "chained" => {
                    let (first, second) = sql.split_once('|').unwrap_or((sql, ""));
                    let one = said(run_sql(ctx, first));
                    let c1 = ctx.client().tx_commit();
                    let two = said(run_sql(ctx, second));
                    ctx.client().tx_set_control(TxControl::Unchained);
                    let end = ctx.client().tx_rollback();
                    format!("sql: {one}; commit: {c1:?}; sql: {two}; end: {end:?}")
                }
                _ => match ctx
                    .client()
                    .call("ECHO", &Buffer::string("in"), Flags::NONE)
                {
                    Ok(_) => "left open".to_string(),
                    Err(e) => return tpreturn(Outcome::Fail, 2, Buffer::string(e.to_string())),
                },
            };
            tpreturn(Outcome::Success, 0, Buffer::string(reply))
        })
        .service("FWDNONE", |_ctx, req| tpforward("NOSUCH", req.buffer))
        .run()
}
