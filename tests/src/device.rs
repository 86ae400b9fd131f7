#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A device over a real TLS socket, for tests: frames in and out, and valid TXNs signed
//! with the development master keys.

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;
use wenxiao_gateway::config::Config;
use wenxiao_gateway::pki::PemPair;
use wenxiao_protocol::mac::{KeyPurpose, TxnTacInput};
use wenxiao_protocol::*;

/// Longest a test waits for one frame.
pub const RECV_TIMEOUT_MS: u64 = 10_000;

/// One connected device.
pub struct TestDevice {
    /// Its id.
    pub id: DeviceId,
    /// The framed TLS stream.
    pub framed: Framed<TlsStream<TcpStream>, WxCodec>,
    /// WELCOME, once received.
    pub welcome: Option<Welcome>,
}

impl std::fmt::Debug for TestDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDevice").field("id", &self.id).finish()
    }
}

/// What reading from the gateway produced.
#[derive(Debug)]
pub enum Recv {
    /// A frame.
    Frame(Message),
    /// The connection ended (EOF, reset, or a TLS alert).
    Closed(String),
}

impl TestDevice {
    /// TLS-connects to the gateway; `cert` None presents no client certificate.
    pub async fn connect(
        addr: SocketAddr,
        ca_pem: &str,
        cert: Option<&PemPair>,
        id: DeviceId,
    ) -> std::io::Result<Self> {
        let config = wenxiao_gateway::tls::client_config(
            ca_pem,
            cert.map(|c| (c.cert_pem.as_str(), c.key_pem.as_str())),
        )
        .map_err(std::io::Error::other)?;
        let tcp = TcpStream::connect(addr).await?;
        let name =
            rustls::pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        Ok(Self {
            id,
            framed: Framed::new(tls, WxCodec::default()),
            welcome: None,
        })
    }

    /// Sends one message.
    pub async fn send(&mut self, m: impl Into<Message>) {
        self.framed.send(m.into()).await.unwrap();
    }

    /// Sends one message; `Err` when the connection is gone.
    pub async fn try_send(&mut self, m: impl Into<Message>) -> Result<(), CodecError> {
        self.framed.send(m.into()).await
    }

    /// Writes raw bytes (for malformed-frame tests).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let io = self.framed.get_mut();
        io.write_all(bytes).await.unwrap();
        io.flush().await.unwrap();
    }

    /// Writes raw bytes; `Err` when the connection is gone.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let io = self.framed.get_mut();
        io.write_all(bytes).await?;
        io.flush().await
    }

    /// The next frame or the end of the connection, within [`RECV_TIMEOUT_MS`].
    pub async fn recv(&mut self) -> Recv {
        match tokio::time::timeout(Duration::from_millis(RECV_TIMEOUT_MS), self.framed.next()).await
        {
            Err(_) => panic!(
                "device {}: nothing received within {RECV_TIMEOUT_MS} ms",
                self.id
            ),
            Ok(None) => Recv::Closed("eof".to_owned()),
            Ok(Some(Err(e))) => Recv::Closed(e.to_string()),
            Ok(Some(Ok(m))) => Recv::Frame(m),
        }
    }

    /// The next frame or the end of the connection, however long it takes (bound it
    /// with a timeout of the caller's).
    pub async fn recv_any(&mut self) -> Recv {
        match self.framed.next().await {
            None => Recv::Closed("eof".to_owned()),
            Some(Err(e)) => Recv::Closed(e.to_string()),
            Some(Ok(m)) => Recv::Frame(m),
        }
    }

    /// The next frame; panics on close.
    pub async fn frame(&mut self) -> Message {
        match self.recv().await {
            Recv::Frame(m) => m,
            Recv::Closed(why) => panic!("device {}: connection closed: {why}", self.id),
        }
    }

    /// Expects a fatal ERROR with `code`, then the connection's end.
    pub async fn expect_fatal(&mut self, code: ErrorCode) {
        loop {
            match self.recv().await {
                Recv::Frame(Message::Error(e)) => {
                    assert_eq!(e.code, code, "{}", e.message);
                    assert!(e.fatal);
                    break;
                }
                Recv::Frame(Message::TxnAck(_)) => continue,
                other => panic!("device {}: expected ERROR {code}, got {other:?}", self.id),
            }
        }
        match self.recv().await {
            Recv::Closed(_) => {}
            other => panic!(
                "device {}: expected close after ERROR, got {other:?}",
                self.id
            ),
        }
    }

    /// Sends HELLO as a POS (or the given kind via [`Self::hello_as`]) and waits for WELCOME.
    pub async fn hello(&mut self) -> Welcome {
        let kind = match self.id.get() / 100_000_000 {
            3101 => DeviceKind::Pos,
            3102 => DeviceKind::Kiosk,
            3103 => DeviceKind::OtaEndpoint,
            _ => DeviceKind::SigninReader,
        };
        self.hello_as(kind).await
    }

    /// Sends HELLO declaring `kind` and waits for WELCOME.
    pub async fn hello_as(&mut self, kind: DeviceKind) -> Welcome {
        self.send(hello(self.id, kind)).await;
        match self.frame().await {
            Message::Welcome(w) => {
                self.welcome = Some(w);
                w
            }
            other => panic!("device {}: expected WELCOME, got {other:?}", self.id),
        }
    }

    /// Sends HELLO and waits for WELCOME; `None` when the connection ends first (or a
    /// fatal ERROR comes), as through a proxy whose node went away.
    pub async fn try_hello(&mut self) -> Option<Welcome> {
        let kind = match self.id.get() / 100_000_000 {
            3101 => DeviceKind::Pos,
            3102 => DeviceKind::Kiosk,
            3103 => DeviceKind::OtaEndpoint,
            _ => DeviceKind::SigninReader,
        };
        self.try_send(hello(self.id, kind)).await.ok()?;
        match self.recv().await {
            Recv::Frame(Message::Welcome(w)) => {
                self.welcome = Some(w);
                Some(w)
            }
            _ => None,
        }
    }

    /// Waits for the TXN_ACK of `seq`, skipping other acks.
    pub async fn ack(&mut self) -> TxnAck {
        match self.frame().await {
            Message::TxnAck(a) => a,
            other => panic!("device {}: expected TXN_ACK, got {other:?}", self.id),
        }
    }
}

/// A HELLO from `id` declaring `kind`.
pub fn hello(id: DeviceId, kind: DeviceKind) -> Hello {
    Hello {
        device_id: id,
        kind,
        last_seq: None,
        hotlist_version: HotlistVersion(0),
        firmware: Text::new("test 1.0").unwrap(),
    }
}

/// A book purchase by `card` at `device`, with a valid TAC under the development keys.
pub fn book_purchase(device: DeviceId, seq: u64, card: u64, counter: u32, amount: i64) -> Txn {
    sign(
        device,
        Txn {
            seq: Seq::new(seq).unwrap(),
            kind: TxnKind::Purchase,
            card_no: CardNo(card),
            card_counter: CardCounter(counter),
            amount_fen: Fen(amount),
            list_price_fen: Fen(0),
            item: Item::Book,
            points_hold_id: None,
            points_used: Points(0),
            refund_of_seq: None,
            occurred_at_ms: UnixMillis(1_795_000_000_000 + i64::from(counter)),
            tac: Bytes4::ZERO,
        },
    )
}

/// Sets `t.tac` to the card's TAC for `device`.
pub fn sign(device: DeviceId, mut t: Txn) -> Txn {
    let keys = Config::default().master_keys().unwrap();
    t.tac = TxnTacInput {
        card_no: t.card_no,
        card_counter: t.card_counter,
        kind: t.kind,
        amount_fen: t.amount_fen,
        device_id: device,
        occurred_at_ms: t.occurred_at_ms,
    }
    .tac(&keys.card_key(KeyPurpose::Purchase, t.card_no));
    t
}
