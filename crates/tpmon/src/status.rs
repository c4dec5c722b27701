//! `tpmon status` and `tpmon down`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tpmon_daemon::admin_request;
use tpmon_proto::AdminRequest;

pub fn down(config: &Path, run_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = crate::load_config(config, None, run_dir)?;
    let grace = cfg
        .servers
        .iter()
        .map(|s| s.shutdown_timeout)
        .max()
        .unwrap_or(Duration::from_secs(10));
    let text = admin_request(
        &cfg.domain.run_dir,
        AdminRequest::Down,
        grace + Duration::from_secs(10),
    )?;
    println!("domain {}: {text}", cfg.domain.name);
    Ok(())
}

pub fn status(config: &Path, json: bool, run_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = crate::load_config(config, None, run_dir)?;
    let text = admin_request(
        &cfg.domain.run_dir,
        AdminRequest::Status,
        Duration::from_secs(10),
    )?;
    let v: Value = serde_json::from_str(&text).context("the daemon's status is not JSON")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", render(&v));
    Ok(())
}

/// The human-readable status table.
pub fn render(v: &Value) -> String {
    use std::fmt::Write;
    // serde_json's Display ignores widths, so numbers are turned into strings first.
    let n = |x: &Value| match x {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let d = &v["daemon"];
    let _ = writeln!(
        out,
        "domain {}  node {}  daemon pid {}  clients at {}  up {} s  {} client(s)",
        v["domain"].as_str().unwrap_or("?"),
        v["node"].as_str().unwrap_or("?"),
        n(&d["pid"]),
        d["client_address"].as_str().unwrap_or("?"),
        n(&d["uptime_s"]),
        n(&d["clients"]),
    );
    let _ = writeln!(
        out,
        "\nSERVER            STATE     RUN/MIN/MAX  RESTARTS  SERVED    QUEUED  PIDS"
    );
    for s in v["servers"].as_array().into_iter().flatten() {
        let pids: Vec<String> = s["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| {
                i["pid"]
                    .as_u64()
                    .map(|p| format!("{p}({})", i["state"].as_str().unwrap_or("?")))
            })
            .collect();
        let counts = format!(
            "{}/{}/{}",
            n(&s["running"]),
            n(&s["min_instances"]),
            n(&s["max_instances"])
        );
        let _ = writeln!(
            out,
            "{:<17} {:<9} {:<11}  {:>8}  {:<9} {:>6}  {}",
            s["name"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?"),
            counts,
            n(&s["restarts"]),
            n(&s["served"]),
            n(&s["queued"]),
            pids.join(" ")
        );
        if let Some(f) = s["failure"].as_str() {
            let _ = writeln!(out, "    failed: {f}");
        }
    }
    let _ = writeln!(
        out,
        "\nSERVICE           SERVER            QUEUED  CALLS     FAILED  ERRORS  MEAN_US  P99_US"
    );
    for s in v["services"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<17} {:<17} {:>6}  {:<9} {:>6}  {:>6}  {:>7}  {:>6}",
            s["name"].as_str().unwrap_or("?"),
            s["server"].as_str().unwrap_or("?"),
            n(&s["queued"]),
            n(&s["calls"]),
            n(&s["failures"]),
            n(&s["errors"]),
            n(&s["mean_us"]),
            n(&s["p99_us"]),
        );
    }
    out
}
