//! The simulator's HTTP/1.1 client for the gateway's admin server and console API: one
//! request per connection (`Connection: close`), the answer read up to a bound.

use anyhow::Context;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request's text: `method path`, `headers` (each `Name: value`), and `body` (JSON when
/// not empty).
pub fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[String],
    body: &str,
) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        text.push_str(h);
        text.push_str("\r\n");
    }
    if !body.is_empty() || method != "GET" {
        text.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text
}

/// Sends `request` on a connection of its own to `addr` and reads the answer, of at most
/// `bytes_max`: (status, body).
pub async fn exchange(
    addr: SocketAddr,
    request: String,
    bytes_max: u64,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.take(bytes_max + 1).read_to_end(&mut raw).await?;
    anyhow::ensure!(
        u64::try_from(raw.len()).unwrap_or(u64::MAX) <= bytes_max,
        "the answer from {addr} is longer than {bytes_max} bytes"
    );
    parse_response(&raw)
}

/// An HTTP/1.1 response: (status, body), the body de-chunked if it came chunked.
pub fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let text = std::str::from_utf8(raw).context("the answer is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the answer has no end of headers")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .context("the answer has no status line")?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// A chunked body's content.
fn dechunk(mut rest: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size_line, after) = rest.split_once("\r\n").context("a chunk has no size")?;
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("chunk size {size_hex:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(after.get(..size).context("a chunk is cut short")?);
        rest = after
            .get(size..)
            .and_then(|r| r.strip_prefix("\r\n"))
            .context("a chunk does not end its line")?;
    }
}
