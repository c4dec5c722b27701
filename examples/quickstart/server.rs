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
    let mut greeting = String::from("hello");
    Server::new()
        .on_init(move |_ctx, args| {
            // `--greeting WORD` changes GREET's prefix; anything else is a start error.
            let mut it = args.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--greeting" => {
                        greeting = it.next().cloned().ok_or("--greeting needs a value")?
                    }
                    other => return Err(format!("unknown argument {other}")),
                }
            }
            std::env::set_var("QS_GREETING", &greeting);
            Ok(())
        })
        .service("TOUPPER", |_ctx, req| {
            tpreturn(
                Outcome::Success,
                0,
                Buffer::string(text(&req.buffer).to_uppercase()),
            )
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
