//! The downstream HTTP/2 server as a listener serves it: keep-alive PINGs, graceful close.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::testing::listener;
use crate::config::Config;
use crate::server::MeshProxy;

async fn proxy(keep_alive_interval_ms: u64) -> (MeshProxy, String) {
    let mut l = listener("127.0.0.1:0", vec![]);
    l.http2.keep_alive_interval_ms = keep_alive_interval_ms;
    l.http2.keep_alive_timeout_ms = 100;
    let proxy =
        MeshProxy::new(Config { listeners: vec![l], services: vec![], admin: None, identity: None }).unwrap();
    let addr = proxy.start().await.unwrap().listeners[0].local_address.clone();
    (proxy, addr)
}

/// A raw client that sends the preface and an empty SETTINGS, then nothing (no ACKs): a hung
/// peer. Reads frames until the proxy closes the connection or `wait` passes; returns whether
/// it closed and whether a PING (not an ACK) arrived.
async fn silent_client(addr: &str, wait: Duration) -> (bool, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    let deadline = Instant::now() + wait;
    let (mut buf, mut pinged) = (Vec::new(), false);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return (false, pinged),
            Ok(r) => r.unwrap_or(0),
        };
        if n == 0 {
            return (true, pinged);
        }
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            pinged |= buf[3] == 0x6 && buf[4] & 0x1 == 0;
            buf.drain(..9 + len);
        }
    }
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_closed_one_that_answers_stays() {
    let (proxy, addr) = proxy(100).await;
    let start = Instant::now();
    let (closed, pinged) = silent_client(&addr, Duration::from_secs(5)).await;
    assert!(closed && pinged, "closed after an unanswered PING (closed {closed}, pinged {pinged})");
    assert!(start.elapsed() >= Duration::from_millis(200), "not before the interval and the timeout");

    // A client whose connection task runs answers the PINGs and keeps its connection.
    let s = TcpStream::connect(&addr).await.unwrap();
    let (client, conn) = h2::client::handshake(s).await.unwrap();
    let conn = tokio::spawn(conn);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!conn.is_finished(), "a client answering PINGs keeps its connection");
    let mut client = client.ready().await.unwrap();
    let (resp, _) =
        client.send_request(http::Request::get("http://h.test/").body(()).unwrap(), true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 404, "and it still serves requests (no route here)");
    // A response the proxy makes itself says when and how long, as hyper's HTTP/1.1 ones do.
    assert!(resp.headers().contains_key(http::header::DATE), "Date on a proxy-made HTTP/2 response");
    let length: usize = resp.headers()[http::header::CONTENT_LENGTH].to_str().unwrap().parse().unwrap();
    let mut body = resp.into_body();
    let mut got = 0;
    while let Some(chunk) = body.data().await {
        got += chunk.unwrap().len();
    }
    assert_eq!(got, length);
    proxy.close(Duration::from_millis(100)).await.unwrap();
}

/// Closing the proxy drains an HTTP/2 client connection: the stream in flight completes, the
/// client is told GOAWAY, and the connection ends without waiting out the grace period.
#[tokio::test]
async fn graceful_close_finishes_the_stream_in_flight_then_ends_the_connection() {
    // A backend that answers after 300 ms.
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow").await;
                let _ = s.read(&mut buf).await;
            });
        }
    });
    let proxy = MeshProxy::new(crate::config::testing::all_to(&backend_addr)).unwrap();
    let addr = proxy.start().await.unwrap().listeners[0].local_address.clone();
    let (client, conn) = h2::client::handshake(TcpStream::connect(&addr).await.unwrap()).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let (resp, _) =
        client.send_request(http::Request::get("http://h.test/").body(()).unwrap(), true).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    let close = tokio::spawn(async move { proxy.close(Duration::from_secs(10)).await });
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200, "the stream in flight completes");
    let mut body = resp.into_body();
    assert_eq!(body.data().await.unwrap().unwrap(), &b"slow"[..]);
    tokio::time::timeout(Duration::from_secs(3), conn).await.expect("the connection ends").unwrap().unwrap();
    close.await.unwrap().unwrap();
    assert!(start.elapsed() < Duration::from_secs(3), "close did not wait out its 10 s grace");
}

#[tokio::test]
async fn keep_alive_zero_sends_no_pings() {
    let (proxy, addr) = proxy(0).await;
    assert_eq!(silent_client(&addr, Duration::from_millis(700)).await, (false, false));
    proxy.close(Duration::from_millis(100)).await.unwrap();
}
