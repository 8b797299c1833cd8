//! A TCP proxy that can stop answering: a network path to the API server that goes silent
//! without closing anything (a partition, a dead middlebox, a half-open connection). Bytes are
//! held, never dropped, while it is stalled, and connections opened meanwhile wait; nothing is
//! reset, so a client learns of it only from its own timeouts. Listens on 127.0.0.1:0.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct StallingProxy {
    address: SocketAddr,
    stalled: watch::Sender<bool>,
    accepting: JoinHandle<()>,
}

impl StallingProxy {
    /// Forwards every connection to `target` (which must be on this machine).
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        anyhow::ensure!(
            target.ip().is_loopback(),
            "the proxy only forwards to loopback"
        );
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (stalled, watching) = watch::channel(false);
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let watching = watching.clone();
                tokio::spawn(async move {
                    let mut gate = watching.clone();
                    if gate.wait_for(|stalled| !stalled).await.is_err() {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pass(client_read, server_write, watching.clone()),
                        pass(server_read, client_write, watching),
                    );
                });
            }
        });
        Ok(StallingProxy {
            address,
            stalled,
            accepting,
        })
    }

    /// `https://<address>`, to put in a kubeconfig in place of the API server's.
    pub fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// From now on no byte passes, either way, until [`StallingProxy::resume`].
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        // Connections' tasks end with their connections, or at once if held while stalled.
        self.accepting.abort();
    }
}

/// Copies `from` to `to`, holding each chunk while the proxy is stalled.
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buffer).await else {
            return;
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if gate.wait_for(|stalled| !stalled).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
