//! The fault-injecting TCP proxy on one directed inter-node link. Node i
//! dials node j through the proxy of link i->j, so the proxy carries i's
//! requests to j ("forward") and j's responses to i ("reverse").
//!
//! A proxy passes bytes, rejects connections (closes every open one and
//! closes each new one at once), delays each forwarded chunk, or cuts one
//! direction. A cut stops reading that direction, so the bytes wait in the
//! kernel's socket buffers and in one chunk buffer, as a TCP connection
//! behaves across a partition that heals before it times out. Each
//! direction of each connection buffers at most `CHUNK_BYTES`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The buffer of one direction of one connection, in bytes.
const CHUNK_BYTES: usize = 16 * 1024;

/// How long the proxy waits to connect to its target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A direction of the bytes through a proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the dialing node to the target node.
    Forward,
    /// From the target node back to the dialing node.
    Reverse,
}

/// The behavior of a proxy towards its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    /// Forward every byte as it arrives.
    Pass,
    /// Close every open connection and close each new one at once, so
    /// the dialing node sees its connections reset.
    Reject,
    /// Delay each forwarded chunk this long, in both directions.
    Delay(Duration),
    /// Forward nothing in this direction; the other direction passes.
    Cut(Direction),
}

impl LinkMode {
    fn cuts(self, direction: Direction) -> bool {
        self == LinkMode::Cut(direction)
    }
}

/// A running proxy. Dropping it stops the listener and every connection.
pub struct Proxy {
    address: SocketAddr,
    mode: watch::Sender<LinkMode>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free 127.0.0.1 port and forwards to `target`.
    pub async fn start(name: String, target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (mode, _) = watch::channel(LinkMode::Pass);
        let task = tokio::spawn(accept_loop(name, listener, target, mode.subscribe()));
        Ok(Proxy {
            address,
            mode,
            task,
        })
    }

    /// Returns the address the dialing node connects to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn set_mode(&self, mode: LinkMode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> LinkMode {
        *self.mode.borrow()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections until aborted. Dropping the task drops the
/// `JoinSet`, which aborts every connection task.
async fn accept_loop(
    name: String,
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<LinkMode>,
) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let inbound = match listener.accept().await {
            Ok((inbound, _)) => inbound,
            Err(error) => {
                tracing::warn!(link = %name, %error, "proxy accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if *mode.borrow() == LinkMode::Reject {
            drop(inbound);
            continue;
        }
        connections.spawn(serve_connection(
            name.clone(),
            inbound,
            target,
            mode.clone(),
        ));
    }
}

async fn serve_connection(
    name: String,
    inbound: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<LinkMode>,
) {
    let outbound = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(outbound)) => outbound,
        Ok(Err(error)) => {
            tracing::debug!(link = %name, %target, %error, "proxy failed to connect to its target");
            return;
        }
        Err(_) => {
            tracing::debug!(link = %name, %target, "proxy target did not accept in time");
            return;
        }
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (inbound_read, inbound_write) = inbound.into_split();
    let (outbound_read, outbound_write) = outbound.into_split();
    let forward = pump(
        inbound_read,
        outbound_write,
        Direction::Forward,
        mode.clone(),
    );
    let reverse = pump(
        outbound_read,
        inbound_write,
        Direction::Reverse,
        mode.clone(),
    );
    tokio::pin!(forward, reverse);
    let (mut forward_open, mut reverse_open) = (true, true);
    while forward_open || reverse_open {
        tokio::select! {
            result = &mut forward, if forward_open => {
                if result.is_err() {
                    return;
                }
                forward_open = false;
            }
            result = &mut reverse, if reverse_open => {
                if result.is_err() {
                    return;
                }
                reverse_open = false;
            }
            _ = mode.wait_for(|mode| *mode == LinkMode::Reject) => return,
        }
    }
}

/// Copies one direction chunk by chunk, applying the mode to each chunk
/// before writing it. Returns Ok at end of stream, after passing the
/// shutdown on, and an error when either side fails or the proxy stops.
async fn pump(
    mut reader: OwnedReadHalf,
    mut writer: OwnedWriteHalf,
    direction: Direction,
    mut mode: watch::Receiver<LinkMode>,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        wait_until_open(&mut mode, direction).await?;
        let read = reader.read(&mut buffer).await?;
        if read == 0 {
            writer.shutdown().await?;
            return Ok(());
        }
        wait_until_open(&mut mode, direction).await?;
        let current = *mode.borrow();
        if let LinkMode::Delay(delay) = current {
            tokio::time::sleep(delay).await;
        }
        writer.write_all(&buffer[..read]).await?;
    }
}

/// Waits while `direction` is cut; fails once the proxy is gone.
async fn wait_until_open(
    mode: &mut watch::Receiver<LinkMode>,
    direction: Direction,
) -> std::io::Result<()> {
    match mode.wait_for(|mode| !mode.cuts(direction)).await {
        Ok(_) => Ok(()),
        Err(_) => Err(std::io::Error::other("the proxy stopped")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts a server that sends `hello` on accept, then echoes what it
    /// reads.
    async fn greeting_echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    socket.write_all(b"hello").await.unwrap();
                    let mut buffer = [0u8; 1024];
                    loop {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => {
                                if socket.write_all(&buffer[..read]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        address
    }

    async fn read_exact_within(stream: &mut TcpStream, bytes: usize, limit: Duration) -> Vec<u8> {
        let mut buffer = vec![0u8; bytes];
        tokio::time::timeout(limit, stream.read_exact(&mut buffer))
            .await
            .expect("bytes arrive in time")
            .expect("read succeeds");
        buffer
    }

    async fn proxy_to_server() -> (Proxy, TcpStream) {
        let server = greeting_echo_server().await;
        let proxy = Proxy::start("test".into(), server).await.unwrap();
        let mut client = TcpStream::connect(proxy.address()).await.unwrap();
        let greeting = read_exact_within(&mut client, 5, Duration::from_secs(2)).await;
        assert_eq!(greeting, b"hello");
        (proxy, client)
    }

    /// Returns true when the stream is closed (EOF or reset) within `limit`.
    async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
        let mut buffer = [0u8; 16];
        matches!(
            tokio::time::timeout(limit, stream.read(&mut buffer)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn pass_forwards_both_directions() {
        let (_proxy, mut client) = proxy_to_server().await;
        client.write_all(b"ping").await.unwrap();
        let echo = read_exact_within(&mut client, 4, Duration::from_secs(2)).await;
        assert_eq!(echo, b"ping");
    }

    #[tokio::test]
    async fn reject_closes_open_and_new_connections() {
        let (proxy, mut client) = proxy_to_server().await;
        proxy.set_mode(LinkMode::Reject);
        assert!(closed_within(&mut client, Duration::from_secs(2)).await);

        let mut late = TcpStream::connect(proxy.address()).await.unwrap();
        assert!(closed_within(&mut late, Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn pass_after_reject_accepts_again() {
        let (proxy, _client) = proxy_to_server().await;
        proxy.set_mode(LinkMode::Reject);
        proxy.set_mode(LinkMode::Pass);
        let mut client = TcpStream::connect(proxy.address()).await.unwrap();
        let greeting = read_exact_within(&mut client, 5, Duration::from_secs(2)).await;
        assert_eq!(greeting, b"hello");
    }

    #[tokio::test]
    async fn delay_holds_each_chunk() {
        let (proxy, mut client) = proxy_to_server().await;
        proxy.set_mode(LinkMode::Delay(Duration::from_millis(150)));
        let started = tokio::time::Instant::now();
        client.write_all(b"ping").await.unwrap();
        let echo = read_exact_within(&mut client, 4, Duration::from_secs(3)).await;
        assert_eq!(echo, b"ping");
        // One chunk each way, each held 150 ms.
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn forward_cut_holds_requests_but_passes_replies() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy::start("test".into(), server.local_addr().unwrap())
            .await
            .unwrap();
        let mut client = TcpStream::connect(proxy.address()).await.unwrap();
        let (mut accepted, _) = server.accept().await.unwrap();
        proxy.set_mode(LinkMode::Cut(Direction::Forward));

        client.write_all(b"ping").await.unwrap();
        let mut buffer = [0u8; 4];
        let early =
            tokio::time::timeout(Duration::from_millis(300), accepted.read(&mut buffer)).await;
        assert!(early.is_err(), "the cut direction delivered {early:?}");

        accepted.write_all(b"pong").await.unwrap();
        let reply = read_exact_within(&mut client, 4, Duration::from_secs(2)).await;
        assert_eq!(reply, b"pong");

        proxy.set_mode(LinkMode::Pass);
        tokio::time::timeout(Duration::from_secs(2), accepted.read_exact(&mut buffer))
            .await
            .expect("held bytes arrive after the heal")
            .unwrap();
        assert_eq!(&buffer, b"ping");
    }

    #[tokio::test]
    async fn reverse_cut_holds_replies_but_passes_requests() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy::start("test".into(), server.local_addr().unwrap())
            .await
            .unwrap();
        let mut client = TcpStream::connect(proxy.address()).await.unwrap();
        let (mut accepted, _) = server.accept().await.unwrap();
        proxy.set_mode(LinkMode::Cut(Direction::Reverse));

        accepted.write_all(b"pong").await.unwrap();
        let mut buffer = [0u8; 4];
        let early =
            tokio::time::timeout(Duration::from_millis(300), client.read(&mut buffer)).await;
        assert!(early.is_err(), "the cut direction delivered {early:?}");

        client.write_all(b"ping").await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), accepted.read_exact(&mut buffer))
            .await
            .expect("the open direction delivers")
            .unwrap();
        assert_eq!(&buffer, b"ping");
    }

    #[tokio::test]
    async fn dropped_proxy_closes_connections() {
        let (proxy, mut client) = proxy_to_server().await;
        drop(proxy);
        assert!(closed_within(&mut client, Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn unreachable_target_closes_client() {
        let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = unused.local_addr().unwrap();
        drop(unused);
        let proxy = Proxy::start("test".into(), target).await.unwrap();
        let mut client = TcpStream::connect(proxy.address()).await.unwrap();
        assert!(closed_within(&mut client, Duration::from_secs(3)).await);
    }
}
