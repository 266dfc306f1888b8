//! A minimal client for containerd's CRI stream server (the URL an `Exec` call returns),
//! speaking the Kubernetes WebSocket channel protocol `v4.channel.k8s.io` that kubelet's
//! streaming library (vendored by containerd 1.6 and 2.x) serves: every binary message
//! starts with a channel byte — 0 stdin, 1 stdout, 2 stderr, 3 error/status (a JSON
//! `metav1.Status` when the process ends), 4 terminal resize (JSON
//! `{"Width":..,"Height":..}`).

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The channel protocol requested.
pub const CHANNEL_PROTOCOL: &str = "v4.channel.k8s.io";
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
/// Bound on connecting and on each send.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How a streamed process ended.
#[derive(Debug, Clone)]
pub struct ExecOutcome {
    /// All stdout (with a tty: the terminal output, input echo included).
    pub stdout: Vec<u8>,
    /// All stderr (empty with a tty).
    pub stderr: Vec<u8>,
    /// The exit code from the status message (0 for `Success`).
    pub exit_code: i32,
    /// The raw status message.
    pub status: serde_json::Value,
}

/// One streaming session.
#[derive(Debug)]
pub struct ExecStream {
    ws: WebSocketStream<TcpStream>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<serde_json::Value>,
    closed: bool,
}

/// `http://host:port/path` → (`host:port`, `ws://host:port/path`).
fn ws_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("stream URL {url:?} is not plain http (TLS streaming is off)"))?;
    let host = rest.split('/').next().unwrap_or_default();
    ensure!(!host.is_empty(), "stream URL {url:?} has no host");
    Ok((host.to_owned(), format!("ws://{rest}")))
}

impl ExecStream {
    /// Connects to the stream URL of an `Exec` call.
    pub async fn connect(url: &str) -> Result<Self> {
        Ok(Self {
            ws: open_channel_socket(url).await?,
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: None,
            closed: false,
        })
    }

    async fn send(&mut self, channel: u8, data: &[u8]) -> Result<()> {
        let mut msg = Vec::with_capacity(data.len() + 1);
        msg.push(channel);
        msg.extend_from_slice(data);
        tokio::time::timeout(IO_TIMEOUT, self.ws.send(Message::Binary(msg.into())))
            .await
            .map_err(|_| anyhow!("sending on channel {channel}: stuck for {IO_TIMEOUT:?}"))?
            .with_context(|| format!("sending on channel {channel}"))
    }

    /// Sends `data` to the process's stdin.
    pub async fn send_stdin(&mut self, data: &[u8]) -> Result<()> {
        self.send(STDIN, data).await
    }

    /// Sends a terminal resize (columns × rows).
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        let json = serde_json::json!({ "Width": width, "Height": height }).to_string();
        self.send(RESIZE, json.as_bytes()).await
    }

    /// Stdout received so far.
    pub fn stdout(&self) -> &[u8] {
        &self.stdout
    }

    /// Reads one message; false once the stream has ended.
    async fn read_one(&mut self) -> Result<bool> {
        if self.closed {
            return Ok(false);
        }
        let Some(msg) = self.ws.next().await else {
            self.closed = true;
            return Ok(false);
        };
        let data = match msg.context("reading from the stream server")? {
            Message::Binary(b) => b.to_vec(),
            Message::Text(t) => t.as_bytes().to_vec(),
            Message::Close(_) => {
                self.closed = true;
                return Ok(false);
            }
            _ => return Ok(true),
        };
        let Some((&channel, payload)) = data.split_first() else {
            return Ok(true);
        };
        match channel {
            STDOUT => self.stdout.extend_from_slice(payload),
            STDERR => self.stderr.extend_from_slice(payload),
            STATUS if !payload.is_empty() => {
                let v = serde_json::from_slice(payload).with_context(|| {
                    format!(
                        "status message is not JSON: {:?}",
                        String::from_utf8_lossy(payload)
                    )
                })?;
                self.status = Some(v);
            }
            _ => {}
        }
        Ok(true)
    }

    /// Reads until stdout contains `needle`, within `within`.
    pub async fn wait_stdout(&mut self, needle: &str, within: Duration) -> Result<()> {
        let found = |s: &Self| String::from_utf8_lossy(&s.stdout).contains(needle);
        let run = async {
            while !found(self) {
                if !self.read_one().await? {
                    bail!("the stream ended before stdout showed {needle:?}");
                }
            }
            Ok(())
        };
        match tokio::time::timeout(within, run).await {
            Ok(r) => r.with_context(|| {
                format!(
                    "waiting for {needle:?}; stdout so far: {:?}",
                    String::from_utf8_lossy(&self.stdout)
                )
            }),
            Err(_) => bail!(
                "stdout did not show {needle:?} within {within:?}; stdout so far: {:?}",
                String::from_utf8_lossy(&self.stdout)
            ),
        }
    }

    /// Reads until the server ends the stream, within `within`; the exit code comes from
    /// the status message.
    pub async fn finish(mut self, within: Duration) -> Result<ExecOutcome> {
        let run = async {
            while self.read_one().await? {}
            Ok::<_, anyhow::Error>(())
        };
        match tokio::time::timeout(within, run).await {
            Ok(r) => r?,
            Err(_) => bail!(
                "the exec stream did not end within {within:?}; stdout so far: {:?}",
                String::from_utf8_lossy(&self.stdout)
            ),
        }
        let status = self.status.take().ok_or_else(|| {
            anyhow!(
                "the stream ended without a status message; stdout: {:?}",
                String::from_utf8_lossy(&self.stdout)
            )
        })?;
        let exit_code = exit_code(&status)?;
        Ok(ExecOutcome {
            stdout: self.stdout,
            stderr: self.stderr,
            exit_code,
            status,
        })
    }
}

/// A WebSocket to a stream URL (`Exec`, `PortForward`), speaking [`CHANNEL_PROTOCOL`].
pub async fn open_channel_socket(url: &str) -> Result<WebSocketStream<TcpStream>> {
    let (host, ws) = ws_url(url)?;
    let mut request = ws
        .as_str()
        .into_client_request()
        .with_context(|| format!("building a WebSocket request for {ws}"))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(CHANNEL_PROTOCOL),
    );
    let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(&host))
        .await
        .map_err(|_| anyhow!("connecting to the stream server {host}: no answer"))?
        .with_context(|| format!("connecting to the stream server {host}"))?;
    let (ws, response) =
        tokio::time::timeout(IO_TIMEOUT, tokio_tungstenite::client_async(request, tcp))
            .await
            .map_err(|_| anyhow!("WebSocket handshake with {url}: no answer"))?
            .with_context(|| format!("WebSocket handshake with {url}"))?;
    let protocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    ensure!(
        protocol == CHANNEL_PROTOCOL,
        "the stream server chose protocol {protocol:?}, not {CHANNEL_PROTOCOL}"
    );
    Ok(ws)
}

/// The exit code a `metav1.Status` reports: 0 for `Success`, the `ExitCode` cause of a
/// `NonZeroExitCode` failure.
pub fn exit_code(status: &serde_json::Value) -> Result<i32> {
    if status["status"] == "Success" {
        return Ok(0);
    }
    let causes = status["details"]["causes"].as_array();
    let code = causes
        .into_iter()
        .flatten()
        .find(|c| c["reason"] == "ExitCode")
        .and_then(|c| c["message"].as_str())
        .and_then(|m| m.parse().ok());
    code.ok_or_else(|| anyhow!("the exec failed without an exit code: {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_status() {
        let (host, ws) = ws_url("http://127.0.0.1:4567/exec/AbC").unwrap();
        assert_eq!(host, "127.0.0.1:4567");
        assert_eq!(ws, "ws://127.0.0.1:4567/exec/AbC");
        assert!(ws_url("https://x/y").is_err());
        let ok = serde_json::json!({"metadata": {}, "status": "Success"});
        assert_eq!(exit_code(&ok).unwrap(), 0);
        let failed = serde_json::json!({
            "metadata": {}, "status": "Failure",
            "message": "command terminated with non-zero exit code: exit status 3",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}
        });
        assert_eq!(exit_code(&failed).unwrap(), 3);
        let broken = serde_json::json!({"status": "Failure", "message": "boom"});
        assert!(exit_code(&broken).is_err());
    }
}
