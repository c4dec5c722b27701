//! The bank example's server program (`tpmon-bank-server`): one program for every bank
//! server of examples/bank/domain.toml; which services an instance offers, and on which
//! database, comes from the configuration (its group's resource manager).
//!
//! * `TRANSFER` (FIELD `FROM`, `TO`, `AMOUNT`, optional `TXID` and `TODB`): debits FROM
//!   in this server's database (database 1) and calls `CREDIT` (or `CREDIT3` for
//!   `TODB=3`), all inside the caller's global transaction. TPFAIL when funds are
//!   short or an account is missing, which dooms the transaction. Without `TXID` the
//!   transfer's id is derived from the global transaction's id; the reply carries the
//!   `TXID` used either way.
//! * `DEBIT` / `CREDIT` / `CREDIT3`: one side of a transfer; each also records TXID in
//!   the database's `journal`, so a checker can prove that both sides of every
//!   transfer committed together.
//! * `SUM1` / `SUM2` / `SUM3`: FIELD `TOTAL` (sum of balances) and `COUNT` (journal
//!   rows) of the server's database.
//! * `TOTAL`: FIELD `TOTAL`, the sum over every database of the domain.
//!
//! tpsvrinit creates `accounts(id bigint primary key, balance bigint not null)` and
//! `journal(txid bigint primary key)` when missing and fills accounts 1..N with 1000
//! each (N from TPMON_BANK_ACCOUNTS, default 100).

use std::process::ExitCode;
use std::time::Duration;

use tpmon_buffer::{Buffer, FieldBuffer, FieldTable, FieldValue};
use tpmon_server::{tpreturn, Context, Flags, Outcome, Server, ServiceRequest, ServiceResult};
use tpmon_xa::drivers::mysql::prelude::Queryable;
use tpmon_xa::drivers::{mysql, postgres};

/// The example's field table, compiled in.
const BANK_FLD: &str = include_str!("bank.fld");

/// Balance every account starts with.
const OPENING_BALANCE: i64 = 1000;

struct Fields {
    from: tpmon_buffer::FieldKey,
    to: tpmon_buffer::FieldKey,
    amount: tpmon_buffer::FieldKey,
    total: tpmon_buffer::FieldKey,
    txid: tpmon_buffer::FieldKey,
    todb: tpmon_buffer::FieldKey,
    count: tpmon_buffer::FieldKey,
}

fn fields() -> Fields {
    let t = FieldTable::parse(BANK_FLD, "bank.fld").expect("bank.fld is valid");
    let k = |n: &str| t.key_of(n).expect("bank.fld defines the field");
    Fields {
        from: k("FROM"),
        to: k("TO"),
        amount: k("AMOUNT"),
        total: k("TOTAL"),
        txid: k("TXID"),
        todb: k("TODB"),
        count: k("COUNT"),
    }
}

/// The group's database, whichever kind it is.
enum Db<'a> {
    Pg(&'a mut postgres::Client),
    My(&'a mut mysql::Conn),
}

fn db(ctx: &mut Context) -> Result<Db<'_>, String> {
    let kind = ctx
        .resource_manager()
        .map(|rm| rm.kind())
        .ok_or("this server's group has no database")?;
    match kind {
        tpmon_config::RmKind::Postgres => ctx.postgres().map(Db::Pg).map_err(|e| e.to_string()),
        tpmon_config::RmKind::Mariadb => ctx.mariadb().map(Db::My).map_err(|e| e.to_string()),
        other => Err(format!(
            "the bank needs PostgreSQL or MariaDB, not {other:?}"
        )),
    }
}

impl Db<'_> {
    /// Adds `delta` to account `id` (never below zero); true when the row changed.
    fn add(&mut self, id: i64, delta: i64) -> Result<bool, String> {
        match self {
            Db::Pg(c) => c
                .execute(
                    "UPDATE accounts SET balance = balance + $2 WHERE id = $1 AND balance + $2 >= 0",
                    &[&id, &delta],
                )
                .map(|n| n == 1)
                .map_err(|e| e.to_string()),
            Db::My(c) => c
                .exec_drop(
                    "UPDATE accounts SET balance = balance + ? WHERE id = ? AND balance + ? >= 0",
                    (delta, id, delta),
                )
                .map(|()| c.affected_rows() == 1)
                .map_err(|e| e.to_string()),
        }
    }

    fn journal(&mut self, txid: i64) -> Result<(), String> {
        match self {
            Db::Pg(c) => c
                .execute("INSERT INTO journal (txid) VALUES ($1)", &[&txid])
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Db::My(c) => c
                .exec_drop("INSERT INTO journal (txid) VALUES (?)", (txid,))
                .map_err(|e| e.to_string()),
        }
    }

    fn sums(&mut self) -> Result<(i64, i64), String> {
        match self {
            Db::Pg(c) => {
                let row = c
                    .query_one(
                        "SELECT COALESCE(SUM(balance), 0)::bigint, \
                         (SELECT COUNT(*) FROM journal)::bigint FROM accounts",
                        &[],
                    )
                    .map_err(|e| e.to_string())?;
                Ok((row.get(0), row.get(1)))
            }
            Db::My(c) => {
                let row: Option<(i64, i64)> = c
                    .query_first(
                        "SELECT CAST(COALESCE(SUM(balance), 0) AS SIGNED), \
                         (SELECT COUNT(*) FROM journal) FROM accounts",
                    )
                    .map_err(|e| e.to_string())?;
                Ok(row.unwrap_or((0, 0)))
            }
        }
    }

    /// Creates and fills the tables when missing (idempotent; instances may race).
    /// Only the missing accounts are inserted, found by a plain read first: an insert
    /// that met an existing row would wait for the lock of a prepared transaction
    /// holding it, and hold the server's start until that transaction is resolved.
    fn init(&mut self, accounts: i64) -> Result<(), String> {
        match self {
            Db::Pg(c) => {
                c.batch_execute(
                    "CREATE TABLE IF NOT EXISTS accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
                     CREATE TABLE IF NOT EXISTS journal (txid bigint PRIMARY KEY)",
                )
                .map_err(|e| e.to_string())?;
                c.execute(
                    "INSERT INTO accounts (id, balance) SELECT g, $2::bigint FROM generate_series(1::bigint, $1::bigint) g \
                     WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = g) \
                     ON CONFLICT (id) DO NOTHING",
                    &[&accounts, &OPENING_BALANCE],
                )
                .map(|_| ())
                .map_err(|e| e.to_string())
            }
            Db::My(c) => {
                c.query_drop(
                    "CREATE TABLE IF NOT EXISTS accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB",
                )
                .map_err(|e| e.to_string())?;
                c.query_drop(
                    "CREATE TABLE IF NOT EXISTS journal (txid BIGINT PRIMARY KEY) ENGINE=InnoDB",
                )
                .map_err(|e| e.to_string())?;
                let present: std::collections::HashSet<i64> = c
                    .query::<i64, _>("SELECT id FROM accounts")
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .collect();
                let rows: Vec<(i64, i64)> = (1..=accounts)
                    .filter(|i| !present.contains(i))
                    .map(|i| (i, OPENING_BALANCE))
                    .collect();
                if rows.is_empty() {
                    return Ok(());
                }
                c.exec_batch(
                    "INSERT IGNORE INTO accounts (id, balance) VALUES (?, ?)",
                    rows,
                )
                .map_err(|e| e.to_string())
            }
        }
    }
}

fn long(b: &FieldBuffer, key: tpmon_buffer::FieldKey) -> Option<i64> {
    b.get_long(key, 0).ok()
}

fn fail(why: impl Into<String>) -> ServiceResult {
    tpreturn(Outcome::Fail, 1, Buffer::string(why.into()))
}

/// DEBIT / CREDIT: one side of a transfer in this server's database.
fn one_side(ctx: &mut Context, req: &ServiceRequest, f: &Fields, debit: bool) -> ServiceResult {
    let Some(b) = req.buffer.as_ref().and_then(Buffer::as_field) else {
        return fail("a FIELD buffer with FROM/TO, AMOUNT and TXID is expected");
    };
    let (Some(amount), Some(txid)) = (long(b, f.amount), long(b, f.txid)) else {
        return fail("AMOUNT and TXID are required");
    };
    let account = if debit {
        long(b, f.from)
    } else {
        long(b, f.to)
    };
    let Some(account) = account else {
        return fail(if debit {
            "FROM is required"
        } else {
            "TO is required"
        });
    };
    if amount <= 0 {
        return fail("AMOUNT must be positive");
    }
    if req.tx.is_none() {
        return fail("a transfer must run inside a global transaction");
    }
    let mut db = match db(ctx) {
        Ok(d) => d,
        Err(e) => return tpreturn(Outcome::Fail, 2, Buffer::string(e)),
    };
    let delta = if debit { -amount } else { amount };
    match db.add(account, delta) {
        Ok(true) => {}
        Ok(false) => {
            return fail(if debit {
                format!("insufficient funds in account {account}, or no such account")
            } else {
                format!("no account {account}")
            })
        }
        Err(e) => return tpreturn(Outcome::Fail, 2, Buffer::string(e)),
    }
    if let Err(e) = db.journal(txid) {
        return tpreturn(Outcome::Fail, 2, Buffer::string(e));
    }
    tpreturn(Outcome::Success, 0, None)
}

/// A transfer id for a TRANSFER request without one: 63 bits of an FNV-1a hash of
/// the global transaction's id (unique per transaction; the journal's key refuses the
/// improbable clash, which fails that transfer).
fn txid_of(gtrid: &[u8]) -> i64 {
    let h = gtrid.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (h >> 1) as i64
}

fn transfer(ctx: &mut Context, mut req: ServiceRequest, f: &Fields) -> ServiceResult {
    // TXID is optional here: both sides record the same one.
    let txid = match req.buffer.as_mut().and_then(|b| match b {
        Buffer::Field(fb) => Some(fb),
        _ => None,
    }) {
        Some(fb) => match long(fb, f.txid) {
            Some(t) => Some(t),
            None => match &req.tx {
                Some(tx) => {
                    let t = txid_of(&tx.gtrid);
                    if fb.add(f.txid, FieldValue::Long(t)).is_err() {
                        return fail("cannot add TXID to the request");
                    }
                    Some(t)
                }
                None => None,
            },
        },
        None => None,
    };
    let debit = one_side(ctx, &req, f, true);
    if !matches!(
        debit,
        ServiceResult::Return {
            outcome: Outcome::Success,
            ..
        }
    ) {
        return debit;
    }
    let to_db = req
        .buffer
        .as_ref()
        .and_then(Buffer::as_field)
        .and_then(|b| long(b, f.todb))
        .unwrap_or(2);
    let service = if to_db == 3 { "CREDIT3" } else { "CREDIT" };
    let data = req.buffer.clone().unwrap_or_else(|| Buffer::string(""));
    match ctx.client().call(service, &data, Flags::NONE) {
        Ok(_) => {
            let mut reply = FieldBuffer::new();
            if let Some(t) = txid {
                if reply.add(f.txid, FieldValue::Long(t)).is_err() {
                    return fail("cannot build the reply");
                }
            }
            tpreturn(Outcome::Success, 0, Buffer::Field(reply))
        }
        Err(e) => fail(format!("{service}: {}", e.detail_or_kind())),
    }
}

trait Detail {
    fn detail_or_kind(&self) -> String;
}

impl Detail for tpmon_server::CallError {
    fn detail_or_kind(&self) -> String {
        match self.reply.as_ref().and_then(Buffer::as_str) {
            Some(s) if !s.is_empty() => s.to_string(),
            _ if !self.detail.is_empty() => self.detail.clone(),
            _ => self.kind.name().to_string(),
        }
    }
}

fn sums(ctx: &mut Context, f: &Fields) -> ServiceResult {
    let r = db(ctx).and_then(|mut d| d.sums());
    match r {
        Ok((total, count)) => {
            let mut b = FieldBuffer::new();
            let ok = b.add(f.total, FieldValue::Long(total)).is_ok()
                && b.add(f.count, FieldValue::Long(count)).is_ok();
            if !ok {
                return fail("cannot build the reply");
            }
            tpreturn(Outcome::Success, 0, Buffer::Field(b))
        }
        Err(e) => fail(e),
    }
}

fn total(ctx: &mut Context, f: &Fields) -> ServiceResult {
    let mut sum = 0i64;
    let mut count = 0i64;
    for svc in ["SUM1", "SUM2", "SUM3"] {
        if ctx.client().route(svc).is_err() {
            continue;
        }
        match ctx.client().call(svc, &Buffer::string(""), Flags::NOTRAN) {
            Ok(r) => {
                let b = r.buffer.as_ref().and_then(Buffer::as_field);
                sum += b.and_then(|b| long(b, f.total)).unwrap_or(0);
                count += b.and_then(|b| long(b, f.count)).unwrap_or(0);
            }
            Err(e) => return fail(format!("{svc}: {}", e.detail_or_kind())),
        }
    }
    let mut b = FieldBuffer::new();
    if b.add(f.total, FieldValue::Long(sum)).is_err()
        || b.add(f.count, FieldValue::Long(count)).is_err()
    {
        return fail("cannot build the reply");
    }
    tpreturn(Outcome::Success, 0, Buffer::Field(b))
}

fn main() -> ExitCode {
    let accounts: i64 = std::env::var("TPMON_BANK_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(100);
    let f = std::rc::Rc::new(fields());
    let (f1, f2, f3, f4, f5, f6, f7, f8) = (
        f.clone(),
        f.clone(),
        f.clone(),
        f.clone(),
        f.clone(),
        f.clone(),
        f.clone(),
        f.clone(),
    );
    Server::new()
        .on_init(move |ctx, _args| {
            if ctx.resource_manager().is_none() {
                return Ok(()); // the teller has no database
            }
            // Instances start together; the DDL may race once, so try again.
            let mut last = String::new();
            for _ in 0..5 {
                match db(ctx).and_then(|mut d| d.init(accounts)) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(format!("cannot create the bank tables: {last}"))
        })
        .service("TRANSFER", move |ctx, req| transfer(ctx, req, &f1))
        .service("DEBIT", move |ctx, req| one_side(ctx, &req, &f2, true))
        .service("CREDIT", move |ctx, req| one_side(ctx, &req, &f3, false))
        .service("CREDIT3", move |ctx, req| one_side(ctx, &req, &f4, false))
        .service("SUM1", move |ctx, _req| sums(ctx, &f5))
        .service("SUM2", move |ctx, _req| sums(ctx, &f6))
        .service("SUM3", move |ctx, _req| sums(ctx, &f7))
        .service("TOTAL", move |ctx, _req| total(ctx, &f8))
        .run()
}
