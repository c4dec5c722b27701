//! A fault-injection server for tpmon's integration tests: services that crash, hang,
//! panic, ask for a restart or misbehave on purpose. Not an example to imitate.

use std::process::ExitCode;
use std::time::Duration;

use tpmon_server::{tpforward, tpreturn, Buffer, Flags, Outcome, Server};

fn text(b: &Option<Buffer>) -> String {
    b.as_ref()
        .and_then(|b| b.as_str())
        .unwrap_or_default()
        .to_string()
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
        .on_init(|_ctx, args| {
            if args.iter().any(|a| a == "--fail-init") {
                return Err("asked to fail by --fail-init".into());
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
        .service("FWDNONE", |_ctx, req| tpforward("NOSUCH", req.buffer))
        .run()
}
