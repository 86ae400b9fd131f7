//! Decodes hex-encoded frames and prints each message as the test vectors' JSON, or the
//! decode error. A tool for device vendors comparing captures against the contract.
//!
//!     cargo run -p wenxiao-protocol --example explain -- 5758010200000008000001a1ee565e00
//!
//! With no argument it explains one of each kind of frame.

use bytes::BytesMut;
use std::process::ExitCode;
use wenxiao_protocol::{Decoder, Drain, Heartbeat, Message, UnixMillis};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // The built-in sample includes a bad frame on purpose; only real input fails the run.
    let sample_run = args.is_empty();
    if sample_run {
        let mut sample = BytesMut::new();
        Message::from(Heartbeat {
            sent_at_ms: UnixMillis(1_795_000_000_000),
        })
        .encode(&mut sample);
        Message::from(Drain {
            reconnect_after_ms: 30_000,
        })
        .encode(&mut sample);
        args.push(hex::encode(&sample));
        args.push("5758010900000000".to_owned());
    }
    let decoder = Decoder::default();
    let mut status = ExitCode::SUCCESS;
    for arg in args {
        let Ok(raw) = hex::decode(arg.trim()) else {
            eprintln!("{arg}: not hex");
            status = ExitCode::FAILURE;
            continue;
        };
        println!("{arg}");
        let mut buf = BytesMut::from(raw.as_slice());
        loop {
            match decoder.decode_eof(&mut buf) {
                Ok(Some(m)) => match serde_json::to_string(&m) {
                    Ok(json) => println!("  {json}"),
                    Err(e) => println!("  {m}: {e}"),
                },
                Ok(None) => break,
                Err(e) => {
                    println!(
                        "  error {}: {e} (answered with ERROR {})",
                        e.kind().name(),
                        e.error_code()
                    );
                    if !sample_run {
                        status = ExitCode::FAILURE;
                    }
                    break;
                }
            }
        }
    }
    status
}
