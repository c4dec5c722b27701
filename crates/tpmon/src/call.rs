//! `tpmon call`: call one service from the command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use tpmon_buffer::{Buffer, FieldBuffer, FieldTable, FieldValue};
use tpmon_client::{Client, ClientOptions, Flags};

/// Arguments of `tpmon call`.
#[derive(Args)]
pub struct CallArgs {
    /// Domain configuration file.
    #[arg(short, long)]
    config: PathBuf,
    /// Service name.
    service: String,
    /// Send a STRING buffer.
    #[arg(long, conflicts_with_all = ["octet_hex", "carray_hex", "field"])]
    string: Option<String>,
    /// Send an X_OCTET buffer given in hex.
    #[arg(long, conflicts_with_all = ["carray_hex", "field"])]
    octet_hex: Option<String>,
    /// Send a CARRAY buffer given in hex.
    #[arg(long, conflicts_with = "field")]
    carray_hex: Option<String>,
    /// Send a FIELD buffer; repeat for more fields or occurrences (names from the
    /// domain's field tables).
    #[arg(long, value_name = "NAME=VALUE")]
    field: Vec<String>,
    /// Blocking timeout in seconds.
    #[arg(long)]
    timeout: Option<f64>,
    /// Call through this node's daemon (multi-node domains; default the first).
    #[arg(long)]
    node: Option<String>,
    /// Run directory of the domain, when it was booted with --run-dir.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Relay the call through the daemon even on the daemon's host.
    #[arg(long)]
    relay: bool,
    /// Send one-way (TPNOREPLY).
    #[arg(long)]
    no_reply: bool,
    /// Print the reply as JSON ({"ok", "kind", "urcode", "type", "data"}).
    #[arg(long)]
    json: bool,
    /// Wrap the call in a global transaction: tx_begin, the call, then tx_commit when
    /// it succeeded (tx_rollback otherwise). Exit status 14 (TPETRAN) when the
    /// transaction rolled back although the call succeeded.
    #[arg(long, conflicts_with = "no_reply")]
    tx: bool,
    /// With --tx: the transaction timeout in seconds (default: the domain's).
    #[arg(long, requires = "tx")]
    tx_timeout: Option<u64>,
    /// With --tx: return only once every branch committed (TX_COMMIT_COMPLETED).
    #[arg(long, requires = "tx")]
    tx_wait_completed: bool,
}

fn from_hex(s: &str) -> anyhow::Result<Vec<u8>> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if s.len() % 2 != 0 {
        bail!("hex data has an odd number of digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16)
                .map_err(|_| anyhow!("bad hex digits at {i}: {}", &s[i..i + 2]))
        })
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn field_table(cfg: &tpmon_config::DomainConfig) -> anyhow::Result<FieldTable> {
    let mut t =
        FieldTable::load(cfg.domain.field_tables.iter()).context("loading the field tables")?;
    if t.is_empty() {
        t = FieldTable::from_env().context("loading field tables from FIELDTBLS/FLDTBLDIR")?;
    }
    Ok(t)
}

fn request(a: &CallArgs, cfg: &tpmon_config::DomainConfig) -> anyhow::Result<(Buffer, FieldTable)> {
    let table = if a.field.is_empty() {
        FieldTable::new()
    } else {
        field_table(cfg)?
    };
    let buf = if let Some(s) = &a.string {
        Buffer::try_string(s.clone().into_bytes()).context("--string")?
    } else if let Some(h) = &a.octet_hex {
        Buffer::x_octet(from_hex(h).context("--octet-hex")?)
    } else if let Some(h) = &a.carray_hex {
        Buffer::carray(from_hex(h).context("--carray-hex")?)
    } else if !a.field.is_empty() {
        let mut fb = FieldBuffer::new();
        for f in &a.field {
            let (name, value) = f
                .split_once('=')
                .ok_or_else(|| anyhow!("--field {f}: expected NAME=VALUE"))?;
            let key = table
                .resolve(name)
                .ok_or_else(|| anyhow!("--field {f}: no field named {name} in the field tables"))?;
            let v = FieldValue::from_text(key.field_type(), value)
                .with_context(|| format!("--field {f}"))?;
            fb.add(key, v).with_context(|| format!("--field {f}"))?;
        }
        Buffer::Field(fb)
    } else {
        Buffer::string("")
    };
    Ok((buf, table))
}

fn render(b: &Option<Buffer>, table: &FieldTable) -> (String, String) {
    match b {
        None => ("NONE".into(), String::new()),
        Some(b) => {
            let ty = b.buffer_type().name().to_string();
            let text = match b {
                Buffer::String(s) => String::from_utf8_lossy(s).into_owned(),
                Buffer::Carray(d) | Buffer::XOctet(d) => to_hex(d),
                Buffer::Field(f) => f.print(table).trim_end().to_string(),
                Buffer::Record { name, data } => format!("{name}:{}", to_hex(data)),
            };
            (ty, text)
        }
    }
}

/// The client address reported by the daemon of `run_dir`, if one runs here.
fn running_address(run_dir: &std::path::Path) -> Option<String> {
    let text = tpmon_daemon::admin_request(
        run_dir,
        tpmon_proto::AdminRequest::Status,
        Duration::from_secs(2),
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["daemon"]["client_address"].as_str().map(str::to_string)
}

/// Runs the call. Exit status: 0 on success, else the XATMI error number (e.g. 6 for
/// TPENOENT, 11 for TPESVCFAIL, 13 for TPETIME); 1 for a usage or configuration error.
pub fn call(a: CallArgs) -> ExitCode {
    match run(&a) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tpmon: {}", crate::error_text(&e));
            ExitCode::from(1)
        }
    }
}

fn run(a: &CallArgs) -> anyhow::Result<ExitCode> {
    let cfg = crate::load_tool_config(&a.config, a.node.as_deref(), a.run_dir.clone())?;
    let (buf, mut table) = request(a, &cfg)?;
    // The node's daemon, if it runs on this host, knows its real address (it may have
    // been booted with --listen); otherwise use the node's configured one.
    let addr =
        running_address(&cfg.domain.run_dir).unwrap_or_else(|| cfg.domain.listen.to_string());
    let opts = ClientOptions {
        addr: Some(addr),
        domain_password: cfg
            .domain
            .password
            .as_ref()
            .map(|p| p.expose().to_string())
            .unwrap_or_default(),
        client_name: "tpmon-call".into(),
        force_relay: a.relay,
        ..ClientOptions::default()
    };
    let mut client = match Client::connect(&opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {} (urcode {}): {}", e.kind, e.urcode, e.detail);
            return Ok(ExitCode::from(e.kind.code()));
        }
    };
    let mut flags = Flags::NONE;
    if let Some(t) = a.timeout {
        if !(t.is_finite() && t > 0.0) {
            bail!("--timeout must be a positive number of seconds");
        }
        client.set_blocking_timeout(Duration::from_secs_f64(t));
    }
    if a.no_reply {
        flags |= Flags::NOREPLY;
        return match client.acall(&a.service, &buf, flags) {
            Ok(_) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("error: {} (urcode {}): {}", e.kind, e.urcode, e.detail);
                Ok(ExitCode::from(e.kind.code()))
            }
        };
    }
    if table.is_empty() {
        table = field_table(&cfg).unwrap_or_default();
    }
    if a.tx {
        if let Some(t) = a.tx_timeout {
            client
                .tx_set_timeout(Duration::from_secs(t))
                .map_err(|e| anyhow!("{e}"))?;
        }
        if a.tx_wait_completed {
            client.tx_set_commit_return(tpmon_client::CommitReturn::Completed);
        }
        client.tx_begin().map_err(|e| anyhow!("tx_begin: {e}"))?;
    }
    let mut result = client.call(&a.service, &buf, flags);
    let mut tx_note = String::new();
    if a.tx {
        let xid = client.tx_info().xid.unwrap_or_default();
        if result.is_ok() {
            match client.tx_commit() {
                Ok(tpmon_client::Committed::Done) => tx_note = format!("committed {xid}"),
                Ok(tpmon_client::Committed::Pending) => {
                    tx_note = format!("committed {xid} (some branches complete later)")
                }
                Err(e) => {
                    tx_note = format!("transaction {xid}: {e}");
                    result = Err(tpmon_client::CallError::new(
                        tpmon_client::ErrorKind::Tran,
                        format!("the call succeeded but the transaction did not commit: {e}"),
                    ));
                }
            }
        } else {
            match client.tx_rollback() {
                Ok(()) => tx_note = format!("rolled back {xid}"),
                Err(e) => tx_note = format!("rollback of {xid}: {e}"),
            }
        }
        if !a.json {
            eprintln!("{tx_note}");
        }
    }
    let (ok, kind, urcode, reply, detail) = match &result {
        Ok(r) => (true, None, r.urcode, r.buffer.clone(), String::new()),
        Err(e) => (
            false,
            Some(e.kind),
            e.urcode,
            e.reply.clone(),
            e.detail.clone(),
        ),
    };
    let (ty, text) = render(&reply, &table);
    if a.json {
        let v = serde_json::json!({
            "ok": ok,
            "kind": kind.map(|k| k.name()),
            "urcode": urcode,
            "type": ty,
            "data": text,
            "detail": detail,
            "transaction": tx_note,
        });
        println!("{v}");
    } else if !text.is_empty() {
        println!("{text}");
    }
    match kind {
        None => Ok(ExitCode::SUCCESS),
        Some(k) => {
            if !a.json {
                eprintln!(
                    "error: {} ({}), urcode {urcode}{}",
                    k,
                    k.description(),
                    if detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {detail}")
                    }
                );
            }
            Ok(ExitCode::from(k.code()))
        }
    }
}
