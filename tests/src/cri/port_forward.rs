//! The streaming side of CRI `PortForward` (what `kubectl port-forward` speaks to kubelet):
//! kubelet's streaming library, vendored by containerd 1.6 and 2.x, serves it over WebSocket
//! with the channel protocol `v4.channel.k8s.io`, one port per `?port=N` query parameter and
//! two channels per port: data (0) and error (1). The server opens each channel with a
//! message holding the port (u16, little-endian); after that every message on channel 0 is
//! stream data, and text on channel 1 is the reason forwarding failed. The server closes the
//! socket once the connection inside the pod has ended.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::exec_stream::open_channel_socket;

const DATA: u8 = 0;
const ERROR: u8 = 1;
/// The largest data message sent.
const CHUNK: usize = 32 * 1024;
/// Bound on each send.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One forwarded connection to a port of the pod.
pub struct PortForwardStream {
    ws: WebSocketStream<TcpStream>,
    port: u16,
}

impl PortForwardStream {
    /// Connects to the URL of a `PortForward` call for `port`.
    pub async fn connect(url: &str, port: u16) -> Result<Self> {
        let separator = if url.contains('?') { '&' } else { '?' };
        let ws = open_channel_socket(&format!("{url}{separator}port={port}")).await?;
        let mut s = Self { ws, port };
        for channel in [DATA, ERROR] {
            let first = tokio::time::timeout(IO_TIMEOUT, s.next_binary())
                .await
                .map_err(|_| anyhow!("no port announcement on channel {channel}"))??;
            let expected = [&[channel][..], &port.to_le_bytes()].concat();
            ensure!(
                first.as_deref() == Some(&expected[..]),
                "channel {channel} opened with {first:?}, not {expected:?}"
            );
        }
        Ok(s)
    }

    async fn next_binary(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            match self.ws.next().await {
                None => return Ok(None),
                Some(msg) => match msg.context("reading from the stream server")? {
                    Message::Binary(b) => return Ok(Some(b.to_vec())),
                    Message::Close(_) => return Ok(None),
                    _ => {}
                },
            }
        }
    }

    /// Sends `data` to the pod's port.
    pub async fn send(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(CHUNK) {
            let msg = [&[DATA][..], chunk].concat();
            tokio::time::timeout(IO_TIMEOUT, self.ws.send(Message::Binary(msg.into())))
                .await
                .map_err(|_| anyhow!("sending to port {}: stuck", self.port))?
                .with_context(|| format!("sending to port {}", self.port))?;
        }
        Ok(())
    }

    /// Closes the client's side: the connection in the pod sees end of stream.
    pub async fn close(mut self) -> Result<()> {
        tokio::time::timeout(IO_TIMEOUT, self.ws.close(None))
            .await
            .map_err(|_| anyhow!("closing the port-forward socket: stuck"))?
            .context("closing the port-forward socket")?;
        // Drain until the server's close arrives.
        while tokio::time::timeout(IO_TIMEOUT, self.next_binary())
            .await
            .map_err(|_| anyhow!("the server did not confirm the close"))??
            .is_some()
        {}
        Ok(())
    }

    /// Everything the pod sends until the server closes, at most `limit` bytes, within
    /// `within`; text on the error channel is an error.
    pub async fn read_to_end(&mut self, limit: usize, within: Duration) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        let run = async {
            while let Some(msg) = self.next_binary().await? {
                let Some((&channel, payload)) = msg.split_first() else {
                    continue;
                };
                match channel {
                    DATA => data.extend_from_slice(payload),
                    ERROR if !payload.is_empty() => bail!(
                        "port-forward to {} failed: {}",
                        self.port,
                        String::from_utf8_lossy(payload)
                    ),
                    _ => {}
                }
                ensure!(data.len() <= limit, "more than {limit} bytes arrived");
            }
            Ok(())
        };
        tokio::time::timeout(within, run)
            .await
            .map_err(|_| anyhow!("port {} sent no end within {within:?}", self.port))??;
        Ok(data)
    }
}
