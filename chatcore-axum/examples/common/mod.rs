//! What the memory examples share: the process's resident set, and a bare-TCP WebSocket
//! handshake whose client side costs next to nothing.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// This process's resident set in bytes (Linux only: `/proc/self/statm`).
pub fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm (Linux only)");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// Opens one WebSocket with a raw `request` (an upgrade request ending in a blank line) and
/// reads the handshake answer, failing unless it is `101`.
pub async fn open_websocket(
    addr: std::net::SocketAddr,
    request: &str,
) -> std::io::Result<tokio::net::TcpStream> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::other("connection closed during the handshake"));
        }
        response.push(byte[0]);
    }
    if !response.starts_with(b"HTTP/1.1 101") {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&response).into_owned(),
        ));
    }
    Ok(stream)
}
