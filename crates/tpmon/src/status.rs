//! `tpmon status` and `tpmon down`: ask the daemon of one node (in a multi-node domain
//! `--node` picks it, default the first) on its admin socket, and render the status as
//! text. Holds no protocol logic.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tpmon_daemon::admin_request;
use tpmon_proto::AdminRequest;

pub fn down(config: &Path, node: Option<&str>, run_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = crate::load_tool_config(config, node, run_dir)?;
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

pub fn status(
    config: &Path,
    json: bool,
    node: Option<&str>,
    run_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let cfg = crate::load_tool_config(config, node, run_dir)?;
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
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    if nodes.len() > 1 {
        let _ = writeln!(
            out,
            "\nNODE              LINK                   STATE    OUT   IN    CONNECTS      SENT  RECEIVED  LAST ERROR"
        );
        for nd in &nodes {
            let name = nd["name"].as_str().unwrap_or("?");
            let link = nd["link"].as_str().unwrap_or("-");
            if nd["this"].as_bool() == Some(true) {
                // "this, recovering" until its boot recovery has finished.
                let state = match nd["recovery"].as_str() {
                    Some("recovering") => "this, recovering",
                    _ => "this",
                };
                let _ = writeln!(out, "{:<17} {:<22} {state}", name, link);
                continue;
            }
            let updown = |x: &Value| match x.as_bool() {
                Some(true) => "up",
                Some(false) => "down",
                None => "?",
            };
            // The last error is history once the link is up again (JSON keeps it).
            let error = if nd["link_up"].as_bool() == Some(true) {
                "-"
            } else {
                nd["last_error"].as_str().unwrap_or("-")
            };
            // Up but taking no new calls: it has not finished its boot recovery
            // (CHECK_RECOVERED_NODE), or it announced its shutdown.
            let state = if nd["link_up"].as_bool() == Some(true) && nd["recovered"] == false {
                "recovering"
            } else if nd["link_up"].as_bool() == Some(true) && nd["routable"] == false {
                "leaving"
            } else {
                updown(&nd["link_up"])
            };
            let _ = writeln!(
                out,
                "{:<17} {:<22} {:<7}  {:<4}  {:<4}  {:>8}  {:>8}  {:>8}  {}",
                name,
                link,
                state,
                updown(&nd["outbound_up"]),
                updown(&nd["inbound_up"]),
                n(&nd["connects"]),
                n(&nd["calls_sent"]),
                n(&nd["calls_received"]),
                error,
            );
        }
    }
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
        if s["state"] == "remote" {
            let _ = writeln!(
                out,
                "{:<17} remote (node {})",
                s["name"].as_str().unwrap_or("?"),
                s["node"].as_str().unwrap_or("?"),
            );
            continue;
        }
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
