//! A minimal blocking HTTP/1.1 client for the sim's plain-HTTP control API (loopback only).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use crate::TestkitError;

/// Read/write timeout of one control call. Some calls (`/backup`, `/config-lock`) run a short task first.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Send `method path` with `body` as JSON (no body for `Value::Null`) to `host:port` and return the JSON
/// answer (`Value::Null` for an empty body). A non-2xx answer is [`TestkitError::Control`].
pub(crate) fn call(host: &str, port: u16, method: &str, path: &str, body: &Value) -> anyhow::Result<Value> {
    let method = method.to_ascii_uppercase();
    let payload = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(body)?
    };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nAccept: application/json\r\n\
         Content-Length: {}\r\n",
        payload.len()
    );
    if !payload.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str("\r\n");

    let context = || format!("control API {method} {path} on http://{host}:{port}");
    let mut stream =
        TcpStream::connect((host, port)).map_err(|e| anyhow::anyhow!("{}: connect: {e}", context()))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.write_all(&payload))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| anyhow::anyhow!("{}: read: {e}", context()))?;

    let (status, text) = parse_response(&raw).map_err(|e| anyhow::anyhow!("{}: {e}", context()))?;
    if !(200..300).contains(&status) {
        return Err(TestkitError::Control {
            method,
            path: path.to_string(),
            status,
            body: text,
        }
        .into());
    }
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: answer is not JSON ({e}): {text}", context()))
}

/// (status, body text) of a complete HTTP/1.1 response; handles `Transfer-Encoding: chunked`.
fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of the response head")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut body = &raw[split + 4..];
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    let decoded;
    if chunked {
        decoded = dechunk(body)?;
        body = &decoded;
    } else if let Some(n) = length {
        body = &body[..n.min(body.len())];
    }
    Ok((status, String::from_utf8_lossy(body).into_owned()))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&data[..end]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        data = &data[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            return Err("truncated chunk".to_string());
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked_bodies() {
        let plain =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\": true}";
        assert_eq!(parse_response(plain).unwrap(), (200, "{\"ok\": true".to_string()));
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nno g\r\n6\r\nuest 1\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (404, "no guest 1".to_string()));
        assert!(parse_response(b"garbage").is_err());
    }
}
