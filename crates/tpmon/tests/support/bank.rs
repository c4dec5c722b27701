//! The bank example on real databases, for the transaction tests: a private
//! PostgreSQL server with databases `bank1` and `bank2` (and optionally a MariaDB
//! server with `bank3`), the example's configuration pointed at them, transfers made
//! in-process, and the invariant checks every crash test ends with.

use std::collections::BTreeSet;
use std::time::Duration;

use tpmon_buffer::{Buffer, FieldBuffer, FieldTable, FieldValue};
use tpmon_client::{Client, CommitReturn, Committed, Flags, TxError};
use tpmon_testdb::{MariaServer, PgServer};
use tpmon_xa::drivers::mysql::prelude::Queryable;
use tpmon_xa::drivers::{mysql, postgres};

use super::{wait_until, Config, Domain};

/// Accounts per database (the servers' default).
pub const ACCOUNTS: i64 = 100;
const OPENING: i64 = 1000;

fn example(file: &str) -> String {
    let path = format!("{}/../../examples/bank/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Private database servers holding the bank's databases.
pub struct BankDbs {
    /// PostgreSQL with `bank1` and `bank2`.
    pub pg: PgServer,
    /// MariaDB with `bank3`, when asked for.
    pub maria: Option<MariaServer>,
}

impl BankDbs {
    /// Starts the servers and creates the databases.
    pub fn start(with_maria: bool) -> BankDbs {
        let pg = PgServer::start().expect("starting PostgreSQL");
        pg.create_database("bank1").expect("bank1");
        pg.create_database("bank2").expect("bank2");
        let maria = with_maria.then(|| {
            let m = MariaServer::start().expect("starting MariaDB");
            m.create_database("bank3").expect("bank3");
            m
        });
        BankDbs { pg, maria }
    }

    /// The example's configuration on these databases. `failpoints` gives a
    /// `TPMON_FAILPOINTS` value per bank server name (`bank1`, `bank2`, `bank3`).
    pub fn config(&self, failpoints: &[(&str, &str)], tx_lines: &[&str]) -> Config {
        let text = self
            .config_from_env(failpoints, tx_lines)
            .render()
            .replace("${TPMON_BANK_DB1}", &self.pg.url("bank1"))
            .replace("${TPMON_BANK_DB2}", &self.pg.url("bank2"));
        Config::raw(&text)
    }

    /// Like [`BankDbs::config`], but the databases' URLs are left as the example
    /// writes them (`${TPMON_BANK_DB1}`, `${TPMON_BANK_DB2}`), for the daemon to take
    /// from its environment ([`BankDbs::env`]).
    pub fn config_from_env(&self, failpoints: &[(&str, &str)], tx_lines: &[&str]) -> Config {
        let mut text = if self.maria.is_some() {
            example("domain-mariadb.toml")
        } else {
            example("domain.toml")
        };
        text = text
            .replace(
                "field_tables = [\"bank.fld\"]",
                &format!(
                    "field_tables = [{}]",
                    super::toml_string(&format!(
                        "{}/../../examples/bank/bank.fld",
                        env!("CARGO_MANIFEST_DIR")
                    ))
                ),
            )
            .replace("min_instances = 4", "min_instances = 2");
        if let Some(m) = &self.maria {
            text = text.replace("${TPMON_BANK_DB3}", &m.url("bank3"));
        }
        let mut tx = String::from("recovery_interval_ms = 100\n");
        for l in tx_lines {
            tx.push_str(l);
            tx.push('\n');
        }
        text = text.replace("[domain.tx]\n", &format!("[domain.tx]\n{tx}"));
        for (server, spec) in failpoints {
            let anchor = format!("name = \"{server}\"\n");
            assert!(text.contains(&anchor), "no server {server}");
            text = text.replace(
                &anchor,
                &format!("{anchor}env = {{ TPMON_FAILPOINTS = \"{spec}\" }}\n"),
            );
        }
        Config::raw(&text)
    }

    /// The environment the example's configuration expects: `TPMON_BANK_DB1` and
    /// `TPMON_BANK_DB2`.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            ("TPMON_BANK_DB1", self.pg.url("bank1")),
            ("TPMON_BANK_DB2", self.pg.url("bank2")),
        ]
    }

    fn pg_client(&self, db: &str) -> postgres::Client {
        postgres::Client::connect(&self.pg.url(db), postgres::NoTls).expect("connect")
    }

    fn maria_conn(&self) -> Option<mysql::Conn> {
        self.maria.as_ref().map(|m| {
            mysql::Conn::new(mysql::Opts::from_url(&m.url("bank3")).expect("url")).expect("connect")
        })
    }

    /// Prepared branches of the bank domain in any of the databases.
    pub fn prepared(&self) -> Vec<String> {
        let mut out = Vec::new();
        for db in ["bank1", "bank2"] {
            let mut c = self.pg_client(db);
            for r in c
                .query(
                    "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()",
                    &[],
                )
                .expect("pg_prepared_xacts")
            {
                out.push(format!("{db}: {}", r.get::<_, String>(0)));
            }
        }
        if let Some(mut c) = self.maria_conn() {
            let rows: Vec<(i64, i64, i64, Vec<u8>)> = c.query("XA RECOVER").expect("XA RECOVER");
            for (_, _, _, data) in rows {
                out.push(format!("bank3: {}", String::from_utf8_lossy(&data)));
            }
        }
        out
    }

    fn sums(&self) -> (i64, Vec<BTreeSet<i64>>) {
        let mut total = 0;
        let mut journals = Vec::new();
        for db in ["bank1", "bank2"] {
            let mut c = self.pg_client(db);
            let sum: i64 = c
                .query_one(
                    "SELECT COALESCE(SUM(balance), 0)::bigint FROM accounts",
                    &[],
                )
                .expect("sum")
                .get(0);
            total += sum;
            let ids: BTreeSet<i64> = c
                .query("SELECT txid FROM journal", &[])
                .expect("journal")
                .iter()
                .map(|r| r.get(0))
                .collect();
            journals.push(ids);
        }
        if let Some(mut c) = self.maria_conn() {
            let sum: Option<i64> = c
                .query_first("SELECT CAST(COALESCE(SUM(balance), 0) AS SIGNED) FROM accounts")
                .expect("sum");
            total += sum.unwrap_or(0);
            let ids: Vec<i64> = c.query("SELECT txid FROM journal").expect("journal");
            journals.push(ids.into_iter().collect());
        }
        (total, journals)
    }

    /// The transfers committed in database 1 (its journal's ids).
    pub fn debited(&self) -> BTreeSet<i64> {
        self.sums().1.swap_remove(0)
    }

    /// The invariants every crash test ends with, once recovery settled: no prepared
    /// branch left, the domain's log empty, money neither created nor lost, each
    /// transfer on both sides or on neither, and every acknowledged transfer present.
    pub fn check(&self, d: &Domain, acked: &[i64]) {
        wait_until(
            "no prepared branch is left and the log holds no transaction",
            Duration::from_secs(60),
            || self.prepared().is_empty() && tx_list_empty(d),
        );
        let (total, journals) = self.sums();
        let dbs = journals.len() as i64;
        assert_eq!(total, ACCOUNTS * OPENING * dbs, "money was created or lost");
        let debits = &journals[0];
        let credits: BTreeSet<i64> = journals[1..].iter().flatten().copied().collect();
        assert_eq!(
            debits, &credits,
            "a transfer committed on one side only (debits vs credits)"
        );
        for id in acked {
            assert!(debits.contains(id), "acknowledged transfer {id} is missing");
        }
    }
}

fn tx_list_empty(d: &Domain) -> bool {
    let run = super::tpmon([
        "tx",
        "list",
        "--json",
        "-c",
        d.config.to_str().unwrap_or_default(),
        "--run-dir",
        d.run_dir.to_str().unwrap_or_default(),
    ]);
    run.ok() && run.stdout.trim() == "[]"
}

/// Field keys of the bank's FIELD buffers.
pub struct Fields {
    table: FieldTable,
}

impl Default for Fields {
    fn default() -> Self {
        Fields::new()
    }
}

impl Fields {
    /// The example's field table.
    pub fn new() -> Fields {
        Fields {
            table: FieldTable::parse(&example("bank.fld"), "bank.fld").expect("bank.fld"),
        }
    }

    /// A TRANSFER request.
    pub fn transfer(&self, from: i64, to: i64, amount: i64, txid: i64, todb: i64) -> Buffer {
        let mut fb = FieldBuffer::new();
        for (name, v) in [
            ("FROM", from),
            ("TO", to),
            ("AMOUNT", amount),
            ("TXID", txid),
            ("TODB", todb),
        ] {
            let key = self.table.key_of(name).expect("field");
            fb.add(key, FieldValue::Long(v)).expect("add");
        }
        Buffer::Field(fb)
    }
}

/// The outcome of one transfer attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transfer {
    /// tx_commit said committed.
    Committed,
    /// The transaction rolled back (refused, doomed).
    RolledBack(String),
    /// The outcome is unknown to the client (a process died).
    Unknown(String),
}

/// One transfer in its own global transaction.
pub fn transfer(
    c: &mut Client,
    f: &Fields,
    from: i64,
    to: i64,
    amount: i64,
    txid: i64,
    todb: i64,
) -> Transfer {
    c.tx_set_commit_return(CommitReturn::DecisionLogged);
    if let Err(e) = c.tx_begin() {
        return Transfer::Unknown(format!("tx_begin: {e}"));
    }
    match c.call(
        "TRANSFER",
        &f.transfer(from, to, amount, txid, todb),
        Flags::NONE,
    ) {
        Ok(_) => match c.tx_commit() {
            Ok(Committed::Done) | Ok(Committed::Pending) => Transfer::Committed,
            Err(TxError::RolledBack(why)) => Transfer::RolledBack(why),
            Err(e) => Transfer::Unknown(e.to_string()),
        },
        Err(e) => {
            let _ = c.tx_rollback();
            Transfer::RolledBack(e.to_string())
        }
    }
}
