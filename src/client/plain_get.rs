//! GETs of slivers and metadata from `http://` nodes, without reqwest; a sliver's symbols are
//! read straight into the sliver's buffer.
//!
//! Why not through `reqwest` like every other request: its body arrives as chunks of hyper's
//! own read buffer, which are copied into the sliver buffer, and that buffer is replaced by
//! fresh memory as the chunks are handed out. For a 64 MiB read on the 2-core machine this
//! project is measured on, that copy and the page faults of the fresh buffers were about a
//! third of the client's CPU (see `ARCHITECTURE.md`, `client/`). Here the socket's bytes go
//! from the kernel to their place in the sliver buffer in one copy. Metadata comes the same
//! way: a read asks for it while its first slivers stream in, and through reqwest (another
//! task, another thread) its answer now and then came tens of milliseconds late, holding up
//! every verification.
//!
//! Only the plainest exchange is handled: `GET`, a `200` answer framed by `Content-Length`.
//! Parsing is httparse's (hyper's own parser). Anything else, including an error status
//! (whose JSON message the regular path reports), chunked framing, `1xx` answers or TLS,
//! is declined with [`Outcome::Declined`] before any of the body is consumed, and the caller
//! repeats the request through `reqwest`. The connection is then dropped, never reused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::encoding::SliverBcsReader;

/// Largest response head accepted (a node's is about 200 bytes).
const MAX_HEAD: usize = 16 << 10;
/// Reads of bodies (or parts) that are fed, not read in place, go through this much at most.
const STAGED: usize = 64 << 10;
/// Idle connections kept per node: as many as a read has requests in flight to one node.
const IDLE_PER_NODE: usize = 8;

/// Idle keep-alive connections to `http://` nodes, by `host:port`; shared by a client's
/// requests.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<TcpStream>>>,
}

impl Pool {
    fn take(&self, authority: &str) -> Option<TcpStream> {
        self.idle
            .lock()
            .ok()?
            .get_mut(authority)
            .and_then(|conns| conns.pop())
    }

    fn give_back(&self, authority: &str, conn: TcpStream) {
        if let Ok(mut idle) = self.idle.lock() {
            let conns = idle.entry(authority.to_string()).or_default();
            if conns.len() < IDLE_PER_NODE {
                conns.push(conn);
            }
        }
    }
}

/// Where a body goes: bytes fed through `feed`, or read by the caller straight into `spare`
/// (then counted with `advance`) where the sink has room that needs no checks.
pub trait BodySink {
    fn feed(&mut self, bytes: &[u8]) -> Result<(), PlainError>;
    fn spare(&mut self) -> Option<&mut [u8]> {
        None
    }
    fn advance(&mut self, _n: usize) {}
}

impl BodySink for SliverBcsReader<'_> {
    fn feed(&mut self, bytes: &[u8]) -> Result<(), PlainError> {
        Ok(SliverBcsReader::feed(self, bytes)?)
    }
    fn spare(&mut self) -> Option<&mut [u8]> {
        self.symbols_spare()
    }
    fn advance(&mut self, n: usize) {
        SliverBcsReader::advance(self, n);
    }
}

/// A small body (metadata), collected whole; a longer one than `limit` is an error.
pub struct Collect {
    pub bytes: Vec<u8>,
    pub limit: usize,
}

impl BodySink for Collect {
    fn feed(&mut self, bytes: &[u8]) -> Result<(), PlainError> {
        if self.bytes.len() + bytes.len() > self.limit {
            return Err(PlainError::Framing(format!(
                "the body is longer than {} bytes",
                self.limit
            )));
        }
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }
}

/// How a plain GET ended, short of an I/O error.
#[derive(Debug)]
pub enum Outcome {
    /// The whole body went into the reader.
    Done,
    /// The answer is not a plain `200` with a `Content-Length`: nothing of the body was
    /// consumed; ask again through the regular client.
    Declined,
}

/// Why a plain GET failed.
#[derive(Debug, thiserror::Error)]
pub enum PlainError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Framing(String),
    #[error(transparent)]
    Body(#[from] crate::encoding::EncodingError),
}

/// `host:port` of an `http://` base URL (`None` for any other scheme or a URL with a path
/// the plain path does not handle).
pub fn authority(base: &str) -> Option<&str> {
    let rest = base.strip_prefix("http://")?;
    (!rest.is_empty() && !rest.contains(['/', '@', '?', '#'])).then_some(rest)
}

/// GETs `path` from `authority` and hands the body to `reader` (a sliver's symbols are read
/// straight into their destination). `connect_timeout` bounds a new connection; the caller bounds the
/// whole exchange.
pub async fn get_into(
    pool: &Arc<Pool>,
    authority: &str,
    path: &str,
    connect_timeout: Duration,
    reader: &mut (dyn BodySink + Send),
) -> Result<Outcome, PlainError> {
    // A kept connection may have been closed by the node meanwhile; that shows as an error or
    // an end of stream before any byte of the answer, and the request is then sent once more
    // on a new connection (a GET is safe to repeat).
    if let Some(conn) = pool.take(authority) {
        match exchange(pool, authority, conn, path, reader).await {
            Err(Attempt::Stale) => {}
            Err(Attempt::Failed(e)) => return Err(e),
            Ok(outcome) => return Ok(outcome),
        }
    }
    let conn = tokio::time::timeout(connect_timeout, TcpStream::connect(authority))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no connection within {:.1} s",
                    connect_timeout.as_secs_f64()
                ),
            )
        })??;
    conn.set_nodelay(true)?;
    match exchange(pool, authority, conn, path, reader).await {
        Ok(outcome) => Ok(outcome),
        Err(Attempt::Failed(e)) => Err(e),
        Err(Attempt::Stale) => Err(PlainError::Framing(
            "the node closed the connection without answering".into(),
        )),
    }
}

enum Attempt {
    /// The connection ended before the first byte of an answer.
    Stale,
    Failed(PlainError),
}

impl<E: Into<PlainError>> From<E> for Attempt {
    fn from(e: E) -> Self {
        Attempt::Failed(e.into())
    }
}

async fn exchange(
    pool: &Arc<Pool>,
    authority: &str,
    mut conn: TcpStream,
    path: &str,
    reader: &mut (dyn BodySink + Send),
) -> Result<Outcome, Attempt> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {authority}\r\naccept: application/octet-stream\r\nuser-agent: walrusfs/{}\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if conn.write_all(request.as_bytes()).await.is_err() {
        return Err(Attempt::Stale);
    }

    // The head, and whatever of the body came with it.
    let mut head = Vec::with_capacity(4096);
    let (status, body_len, keep_alive, head_len) = loop {
        if head.len() == head.capacity() {
            if head.len() >= MAX_HEAD {
                return Err(PlainError::Framing(format!(
                    "the answer's head is longer than {MAX_HEAD} bytes"
                ))
                .into());
            }
            head.reserve(head.len());
        }
        match conn.read_buf(&mut head).await {
            Ok(0) | Err(_) if head.is_empty() => return Err(Attempt::Stale),
            Ok(0) => {
                return Err(PlainError::Framing("the answer ends inside its head".into()).into());
            }
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&head) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(head_len)) => {
                let status = response.code.unwrap_or(0);
                let mut length = None;
                let mut chunked = false;
                let mut close = response.version == Some(0);
                for h in response.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<u64>().ok());
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = true;
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close = h.value.eq_ignore_ascii_case(b"close");
                    }
                }
                match length {
                    Some(len) if status == 200 && !chunked => {
                        break (status, len, !close, head_len);
                    }
                    _ => {
                        tracing::debug!(status, chunked, "plain sliver GET declined");
                        return Ok(Outcome::Declined);
                    }
                }
            }
            Err(e) => {
                return Err(PlainError::Framing(format!("malformed answer head: {e}")).into());
            }
        }
    };
    debug_assert_eq!(status, 200);

    // The body: what came with the head, then the symbols read in place, then the rest.
    let mut left = body_len;
    let early = &head[head_len..];
    if early.len() as u64 > left {
        return Err(PlainError::Framing("more bytes than Content-Length announced".into()).into());
    }
    reader.feed(early)?;
    left -= early.len() as u64;
    // For what the sink does not take in place: a length prefix or trailer, a sliver
    // collected into a new vector, a metadata body. Allocated when first needed.
    let mut staged: Vec<u8> = Vec::new();
    while left > 0 {
        let n = match reader.spare() {
            Some(spare) => {
                let want = spare.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = conn.read(&mut spare[..want]).await?;
                reader.advance(n);
                n
            }
            None => {
                if staged.is_empty() {
                    staged.resize(usize::try_from(left).map_or(STAGED, |l| l.min(STAGED)), 0);
                }
                let want = staged
                    .len()
                    .min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = conn.read(&mut staged[..want]).await?;
                reader.feed(&staged[..n])?;
                n
            }
        };
        if n == 0 {
            return Err(PlainError::Framing(format!(
                "the body ends after {} of {body_len} bytes",
                body_len - left
            ))
            .into());
        }
        left -= n as u64;
    }
    if keep_alive {
        pool.give_back(authority, conn);
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::{Sliver, SliverType};
    use tokio::net::TcpListener;

    /// A server that answers the requests on each connection with the next scripted answers:
    /// one list of raw answers per connection, the connection closed after its list.
    async fn scripted(script: Vec<Vec<Vec<u8>>>) -> (String, tokio::task::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let mut requests = 0;
            for answers in script {
                let (mut conn, _) = listener.accept().await.unwrap();
                for answer in answers {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut b = [0u8; 1];
                        if conn.read(&mut b).await.unwrap() == 0 {
                            return requests;
                        }
                        head.push(b[0]);
                    }
                    assert!(head.starts_with(b"GET /"));
                    requests += 1;
                    conn.write_all(&answer).await.unwrap();
                }
            }
            requests
        });
        (addr, task)
    }

    fn sliver(len: usize) -> Sliver {
        Sliver {
            sliver_type: SliverType::Primary,
            index: 3,
            symbol_size: 4,
            data: (0..len).map(|i| (i * 7 + 1) as u8).collect(),
        }
    }

    fn ok(body: &[u8], extra: &str) -> Vec<u8> {
        let mut a = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{extra}\r\n",
            body.len()
        )
        .into_bytes();
        a.extend_from_slice(body);
        a
    }

    async fn get(
        pool: &Arc<Pool>,
        addr: &str,
        len: usize,
    ) -> (Result<Outcome, PlainError>, Vec<u8>, Option<(u16, u16)>) {
        let mut dest = vec![0u8; len];
        let mut reader = SliverBcsReader::into_slice(SliverType::Primary, &mut dest);
        let got = get_into(pool, addr, "/s", Duration::from_secs(2), &mut reader).await;
        let framing = reader.finish_in_place().ok();
        (got, dest, framing)
    }

    #[tokio::test]
    async fn bodies_land_in_place_and_connections_are_kept_or_replaced() {
        let s = sliver(40_000);
        let bcs = s.to_bcs();
        // Connection 1: two answers, then closed (the third request finds it stale and
        // goes out again on connection 2, transparently).
        let (addr, server) = scripted(vec![
            vec![ok(&bcs, ""), ok(&bcs, "")],
            vec![ok(&bcs, "connection: close\r\n")],
        ])
        .await;
        let pool = Arc::new(Pool::default());
        for _ in 0..3 {
            let (got, dest, framing) = get(&pool, &addr, s.data.len()).await;
            assert!(matches!(got.unwrap(), Outcome::Done));
            assert_eq!(dest, s.data);
            assert_eq!(framing, Some((4, 3)));
        }
        // `connection: close` was honoured: nothing kept.
        assert!(pool.take(&addr).is_none());
        assert_eq!(server.await.unwrap(), 3);
    }

    #[tokio::test]
    async fn other_answers_are_declined_before_their_body() {
        for answer in [
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}".to_vec(),
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\n\r\nno length".to_vec(),
            b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
        ] {
            let (addr, _server) = scripted(vec![vec![answer]]).await;
            let pool = Arc::new(Pool::default());
            let (got, dest, _) = get(&pool, &addr, 400).await;
            assert!(matches!(got.unwrap(), Outcome::Declined));
            assert!(dest.iter().all(|&b| b == 0), "nothing may be written");
            assert!(
                pool.take(&addr).is_none(),
                "a declined connection is not kept"
            );
        }
    }

    #[tokio::test]
    async fn broken_answers_are_errors() {
        let s = sliver(4000);
        let bcs = s.to_bcs();
        let mut cut = ok(&bcs, "");
        cut.truncate(cut.len() - 100);
        // Announces one byte more than the sliver: the reader refuses the extra byte.
        let mut longer = bcs.clone();
        longer.push(0);
        let long_length = ok(&longer, "");
        let huge_head =
            format!("HTTP/1.1 200 OK\r\nx: {}\r\n\r\n", "a".repeat(MAX_HEAD)).into_bytes();
        for (answer, want) in [
            (cut, "ends after"),
            (long_length, "follow the end"),
            (b"SMTP ready\r\n\r\n".to_vec(), "malformed answer head"),
            (huge_head, "longer than"),
            (b"HTTP/1.1 200 OK\r\ncontent-le".to_vec(), "inside its head"),
        ] {
            let (addr, _server) = scripted(vec![vec![answer]]).await;
            let pool = Arc::new(Pool::default());
            let (got, _, _) = get(&pool, &addr, s.data.len()).await;
            let e = got.expect_err(want).to_string();
            assert!(e.contains(want), "{e:?} should say {want:?}");
        }
        // Wrong sliver length: refused by the framing check as soon as the prefix arrives.
        let (addr, _server) = scripted(vec![vec![ok(&bcs, "")]]).await;
        let (got, _, _) = get(&Arc::new(Pool::default()), &addr, 400).await;
        assert!(
            got.expect_err("length")
                .to_string()
                .contains("the blob's slivers have 400")
        );
        // Nobody listening.
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = free.local_addr().unwrap().to_string();
        drop(free);
        let (got, _, _) = get(&Arc::new(Pool::default()), &addr, 400).await;
        assert!(matches!(got, Err(PlainError::Io(_))));
    }

    #[tokio::test]
    async fn a_declined_answer_is_asked_again_through_reqwest() {
        let not_found = br#"HTTP/1.1 404 Not Found
content-type: application/json
content-length: 58

{"error":{"code":404,"message":"this node has no sliver"}}"#
            .iter()
            .copied()
            .filter(|&b| b != b'\r')
            .flat_map(|b| {
                if b == b'\n' {
                    vec![b'\r', b'\n']
                } else {
                    vec![b]
                }
            })
            .collect::<Vec<u8>>();
        // The JSON body has no newline, so only the head's line ends became CRLF.
        let (addr, server) = scripted(vec![vec![not_found.clone()], vec![not_found]]).await;
        let api = crate::client::NodeApi::new(
            reqwest::Client::new(),
            &format!("http://{addr}"),
            Duration::from_secs(2),
        )
        .with_plain_gets(Arc::new(Pool::default()), Duration::from_secs(2));
        let blob_id = crate::encoding::BlobId([7; 32]);
        let mut dest = vec![0u8; 64];
        let e = api
            .get_sliver_into(&blob_id, 1, SliverType::Primary, &mut dest)
            .await
            .expect_err("404");
        assert!(e.is_not_found(), "{e}");
        assert!(e.to_string().contains("this node has no sliver"), "{e}");
        assert_eq!(server.await.unwrap(), 2, "once plain, once through reqwest");
    }

    #[tokio::test]
    async fn a_sliver_collected_into_a_new_vector_arrives_whole() {
        // Longer than the staging buffer: several staged reads, each through the framing.
        let s = sliver(3 * STAGED + 4);
        let (addr, _server) = scripted(vec![vec![ok(&s.to_bcs(), "")]]).await;
        let mut reader = SliverBcsReader::new(SliverType::Primary);
        let got = get_into(
            &Arc::new(Pool::default()),
            &addr,
            "/s",
            Duration::from_secs(2),
            &mut reader,
        )
        .await;
        assert!(matches!(got, Ok(Outcome::Done)));
        assert_eq!(reader.finish().unwrap(), s);
    }

    #[tokio::test]
    async fn small_bodies_are_collected_within_their_limit() {
        let (addr, _server) =
            scripted(vec![vec![ok(b"0123456789", ""), ok(b"0123456789", "")]]).await;
        let pool = Arc::new(Pool::default());
        let mut fits = Collect {
            bytes: Vec::new(),
            limit: 10,
        };
        assert!(matches!(
            get_into(&pool, &addr, "/s", Duration::from_secs(2), &mut fits).await,
            Ok(Outcome::Done)
        ));
        assert_eq!(fits.bytes, b"0123456789");
        let mut short = Collect {
            bytes: Vec::new(),
            limit: 9,
        };
        let e = get_into(&pool, &addr, "/s", Duration::from_secs(2), &mut short)
            .await
            .expect_err("over the limit");
        assert!(e.to_string().contains("longer than 9 bytes"), "{e}");
    }

    #[test]
    fn only_plain_http_authorities_qualify() {
        assert_eq!(authority("http://127.0.0.1:9000"), Some("127.0.0.1:9000"));
        assert_eq!(authority("http://node.example:80"), Some("node.example:80"));
        assert_eq!(authority("https://node.example"), None);
        assert_eq!(authority("http://node.example/prefix"), None);
        assert_eq!(authority("http://user@node.example"), None);
        assert_eq!(authority("http://"), None);
    }
}
