//! The quickstart server: a small set of services that show what a tpmon server looks
//! like. Built as the `tpmon-quickstart-server` binary and started by the daemon from
//! `examples/quickstart/domain.toml`.
//!
//! Services:
//! - `TOUPPER`: STRING in, the same text upper-cased out.
//! - `ECHO`: returns any buffer unchanged.
//! - `GREET`: prefixes the name with a greeting and forwards to `TOUPPER` (tpforward);
//!   the caller gets TOUPPER's reply.
//! - `SHOUT`: calls `TOUPPER` (a nested call) and appends "!".
//! - `REFUSE`: always fails (TPFAIL) with urcode 42 and an explanation.
//! - `SLOW`: sleeps for the number of milliseconds in its STRING, then replies.
//!
//! Money on two embedded sites (the servers `bank1` and `bank2` run in the groups
//! `site1` and `site2`, each with an embedded resource manager; `--site N` tells an
//! instance which one it serves):
//! - `TRANSFER` (FIELD `FROM`, `TO`, `AMOUNT`): moves AMOUNT from account FROM on site
//!   1 to account TO on site 2 by calling `DEBIT1` and `CREDIT2`, inside the caller's
//!   global transaction. Short funds fail DEBIT1 (TPFAIL), which dooms the
//!   transaction.
//! - `TOTAL`: FIELD `TOTAL`, the sum of every balance on both sites (`SUM1` + `SUM2`).
//! - `DEBIT1`, `CREDIT2`, `SUM1`, `SUM2`, `BALANCE1`, `BALANCE2`: one site's part.
//!
//! Each bank server seeds accounts 1..=100 with 1000 each at its first start.

use std::process::ExitCode;
use std::time::Duration;

use tpmon_buffer::{FieldBuffer, FieldKey, FieldTable, FieldValue};
use tpmon_server::{tpforward, tpreturn, Buffer, Context, Flags, Outcome, Server, ServiceResult};

/// The accounts each site holds at its first start.
pub const ACCOUNTS: i64 = 100;
/// Each account's opening balance.
pub const OPENING_BALANCE: i64 = 1000;
/// The table of balances on each site.
const TABLE: &str = "accounts";

/// The quickstart field table (the daemon passes the domain's tables to servers; the
/// quickstart's is small enough to carry here too).
const FIELDS: &str = include_str!("quickstart.fld");

struct Keys {
    from: FieldKey,
    to: FieldKey,
    amount: FieldKey,
    total: FieldKey,
}

fn keys() -> Result<Keys, String> {
    let t = FieldTable::parse(FIELDS, "quickstart.fld").map_err(|e| e.to_string())?;
    let k = |n: &str| {
        t.key_of(n)
            .ok_or_else(|| format!("quickstart.fld lacks {n}"))
    };
    Ok(Keys {
        from: k("FROM")?,
        to: k("TO")?,
        amount: k("AMOUNT")?,
        total: k("TOTAL")?,
    })
}

fn long(b: &Option<Buffer>, key: FieldKey) -> Option<i64> {
    match b {
        Some(Buffer::Field(f)) => f.get_long(key, 0).ok(),
        _ => None,
    }
}

fn fail(code: i64, why: impl Into<String>) -> ServiceResult {
    tpreturn(Outcome::Fail, code, Buffer::string(why.into()))
}

fn balance_key(account: i64) -> Vec<u8> {
    format!("{account:08}").into_bytes()
}

fn decode_balance(v: &[u8]) -> Option<i64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Adds `delta` to `account` on this server's site, inside the request's branch.
/// Refuses to go below zero.
fn change(ctx: &mut Context, account: i64, delta: i64) -> Result<i64, String> {
    let site = ctx.embedded().map_err(|e| e.to_string())?;
    let key = balance_key(account);
    let old = site
        .get_for_update(TABLE, &key)
        .map_err(|e| e.to_string())?
        .and_then(|v| decode_balance(&v))
        .ok_or_else(|| format!("no account {account}"))?;
    let new = old + delta;
    if new < 0 {
        return Err(format!(
            "account {account} holds {old}, cannot pay {}",
            -delta
        ));
    }
    site.put(TABLE, &key, new.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(new)
}

fn field_reply(key: FieldKey, v: i64) -> ServiceResult {
    let mut f = FieldBuffer::new();
    match f.add(key, FieldValue::Long(v)) {
        Ok(()) => tpreturn(Outcome::Success, 0, Buffer::Field(f)),
        Err(e) => fail(9, e.to_string()),
    }
}

/// Seeds the site's accounts once (instances may race: a duplicate is fine).
fn seed(ctx: &mut Context) -> Result<(), String> {
    let site = ctx.embedded().map_err(|e| e.to_string())?;
    if site
        .get("meta", b"seeded")
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(());
    }
    for a in 1..=ACCOUNTS {
        match site.insert(
            TABLE,
            &balance_key(a),
            OPENING_BALANCE.to_string().as_bytes(),
        ) {
            Ok(()) => {}
            Err(e) if e.kind() == tpmon_rm::ErrorKind::Duplicate => {}
            Err(e) => return Err(format!("cannot seed account {a}: {e}")),
        }
    }
    site.put("meta", b"seeded", b"1").map_err(|e| e.to_string())
}

/// FIELD `FROM` names an account of this server's site; answers its balance in `TOTAL`.
fn balance(ctx: &mut Context, req: &Option<Buffer>, k: &Keys) -> ServiceResult {
    let Some(account) = long(req, k.from) else {
        return fail(1, "BALANCE needs FROM");
    };
    let got = ctx.embedded().map_err(|e| e.to_string()).and_then(|s| {
        s.get(TABLE, &balance_key(account))
            .map_err(|e| e.to_string())
    });
    match got {
        Ok(Some(v)) => match decode_balance(&v) {
            Some(b) => field_reply(k.total, b),
            None => fail(4, "a malformed balance"),
        },
        Ok(None) => fail(4, format!("no account {account}")),
        Err(e) => fail(4, e),
    }
}

fn site_sum(ctx: &mut Context) -> Result<i64, String> {
    let site = ctx.embedded().map_err(|e| e.to_string())?;
    let rows = site
        .scan(TABLE, b"", None, u32::MAX)
        .map_err(|e| e.to_string())?;
    Ok(rows.iter().filter_map(|(_, v)| decode_balance(v)).sum())
}

fn call_long(ctx: &mut Context, service: &str, req: &Buffer, key: FieldKey) -> Result<i64, String> {
    let r = ctx
        .client()
        .call(service, req, Flags::NONE)
        .map_err(|e| format!("{service}: {e}"))?;
    long(&r.buffer, key).ok_or_else(|| format!("{service} answered no value"))
}

fn text(b: &Option<Buffer>) -> String {
    b.as_ref()
        .and_then(|b| b.as_str())
        .unwrap_or_default()
        .to_string()
}

fn main() -> ExitCode {
    let mut greeting = String::from("hello");
    let keys = match keys() {
        Ok(k) => std::sync::Arc::new(k),
        Err(e) => {
            eprintln!("tpmon-quickstart-server: {e}");
            return ExitCode::from(2);
        }
    };
    let (k7, k7b) = (keys.clone(), keys.clone());
    let (k1, k2, k3, k4, k5, k6) = (
        keys.clone(),
        keys.clone(),
        keys.clone(),
        keys.clone(),
        keys.clone(),
        keys.clone(),
    );
    Server::new()
        .on_init(move |ctx, args| {
            // `--greeting WORD` changes GREET's prefix; `--site N` makes this instance a
            // bank server of site N (it seeds the accounts); anything else is a start
            // error.
            let mut it = args.iter();
            let mut site = false;
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--greeting" => {
                        greeting = it.next().cloned().ok_or("--greeting needs a value")?
                    }
                    "--site" => {
                        it.next().ok_or("--site needs a value")?;
                        site = true;
                    }
                    other => return Err(format!("unknown argument {other}")),
                }
            }
            std::env::set_var("QS_GREETING", &greeting);
            if site {
                seed(ctx)?;
            }
            Ok(())
        })
        .service("TRANSFER", move |ctx, req| {
            let k = &k1;
            let (Some(from), Some(to), Some(amount)) = (
                long(&req.buffer, k.from),
                long(&req.buffer, k.to),
                long(&req.buffer, k.amount),
            ) else {
                return fail(1, "TRANSFER needs FROM, TO and AMOUNT");
            };
            if amount <= 0 {
                return fail(1, "AMOUNT must be positive");
            }
            let Some(body) = req.buffer.clone() else {
                return fail(1, "no request");
            };
            let _ = (from, to);
            // Both parts run in the caller's transaction; a failure of either dooms it.
            for service in ["DEBIT1", "CREDIT2"] {
                if let Err(e) = ctx.client().call(service, &body, Flags::NONE) {
                    return fail(2, format!("{service} failed: {e}"));
                }
            }
            tpreturn(Outcome::Success, 0, body)
        })
        .service("DEBIT1", move |ctx, req| {
            let (Some(from), Some(amount)) =
                (long(&req.buffer, k2.from), long(&req.buffer, k2.amount))
            else {
                return fail(1, "DEBIT1 needs FROM and AMOUNT");
            };
            match change(ctx, from, -amount) {
                Ok(b) => field_reply(k2.total, b),
                Err(e) => fail(3, e),
            }
        })
        .service("CREDIT2", move |ctx, req| {
            let (Some(to), Some(amount)) = (long(&req.buffer, k3.to), long(&req.buffer, k3.amount))
            else {
                return fail(1, "CREDIT2 needs TO and AMOUNT");
            };
            match change(ctx, to, amount) {
                Ok(b) => field_reply(k3.total, b),
                Err(e) => fail(3, e),
            }
        })
        .service("BALANCE1", move |ctx, req| balance(ctx, &req.buffer, &k7))
        .service("BALANCE2", move |ctx, req| balance(ctx, &req.buffer, &k7b))
        .service("SUM1", move |ctx, _req| match site_sum(ctx) {
            Ok(s) => field_reply(k4.total, s),
            Err(e) => fail(4, e),
        })
        .service("SUM2", move |ctx, _req| match site_sum(ctx) {
            Ok(s) => field_reply(k5.total, s),
            Err(e) => fail(4, e),
        })
        .service("TOTAL", move |ctx, req| {
            let body = req
                .buffer
                .clone()
                .unwrap_or_else(|| Buffer::Field(FieldBuffer::new()));
            let one = call_long(ctx, "SUM1", &body, k6.total);
            let two = call_long(ctx, "SUM2", &body, k6.total);
            match (one, two) {
                (Ok(a), Ok(b)) => field_reply(k6.total, a + b),
                (Err(e), _) | (_, Err(e)) => fail(4, e),
            }
        })
        .service("TOUPPER", |_ctx, req| {
            tpreturn(
                Outcome::Success,
                0,
                Buffer::string(text(&req.buffer).to_uppercase()),
            )
        })
        .service("NODEINFO", |ctx, _req| {
            // The name of the node that served the call (examples/multinode).
            tpreturn(Outcome::Success, 0, Buffer::string(ctx.node().to_string()))
        })
        .service("ECHO", |_ctx, req| {
            tpreturn(Outcome::Success, 0, req.buffer)
        })
        .service("GREET", |_ctx, req| {
            let greeting = std::env::var("QS_GREETING").unwrap_or_else(|_| "hello".into());
            tpforward(
                "TOUPPER",
                Buffer::string(format!("{greeting}, {}", text(&req.buffer))),
            )
        })
        .service("SHOUT", |ctx, req| {
            match ctx
                .client()
                .call("TOUPPER", &Buffer::string(text(&req.buffer)), Flags::NONE)
            {
                Ok(r) => tpreturn(
                    Outcome::Success,
                    0,
                    Buffer::string(format!("{}!", text(&r.buffer))),
                ),
                Err(e) => tpreturn(
                    Outcome::Fail,
                    1,
                    Buffer::string(format!("TOUPPER failed: {e}")),
                ),
            }
        })
        .service("REFUSE", |_ctx, _req| {
            tpreturn(Outcome::Fail, 42, Buffer::string("refused on purpose"))
        })
        .service("SLOW", |_ctx, req| {
            let ms: u64 = text(&req.buffer).trim().parse().unwrap_or(100);
            std::thread::sleep(Duration::from_millis(ms.min(60_000)));
            tpreturn(
                Outcome::Success,
                0,
                Buffer::string(format!("slept {ms} ms")),
            )
        })
        .run()
}
