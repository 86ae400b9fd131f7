//! A device's TLS connection, driven on rustls's unbuffered API so that an idle session
//! holds no TLS buffers.
//!
//! tokio-rustls drives rustls's buffered connection, which keeps a 4 KiB incoming-record
//! buffer for the connection's whole life. Here a connection holds bytes of its own only
//! while they wait, and frees each buffer as soon as it drains:
//! - `received`: TLS bytes read from the socket that are not yet a whole record;
//! - `plain`: decrypted bytes the reader has not taken yet;
//! - `unsent`: encrypted bytes the socket has not taken yet.
//!
//! Bounds. A read takes about `READ_CHUNK_BYTES` from the socket, and nothing more is read
//! while `plain` holds bytes, so `plain` holds at most one read's records. A write
//! encrypts at most `WRITE_CHUNK_BYTES` and takes nothing more until the socket has taken
//! it. `received` holds at most `RECEIVED_BYTES_MAX`: rustls joins a handshake message
//! split over records in place, up to its own 64 KiB limit.
//!
//! Every whole record is processed as soon as it is read, so `received` never holds one
//! when the writer asks rustls for the right to encrypt: the writer cannot decrypt
//! records the reader is not woken for.

use rustls::pki_types::CertificateDer;
use rustls::server::{ServerConfig, ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus,
};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Room reserved for one read from the socket.
const READ_CHUNK_BYTES: usize = 4_096;

/// Plaintext one write encrypts at most (one full TLS record).
const WRITE_CHUNK_BYTES: usize = 16_384;

/// Received bytes that may wait for their record or handshake message to be whole: a
/// 64 KiB handshake message and the record it ends in.
const RECEIVED_BYTES_MAX: usize = 96 * 1_024;

/// First guess of the room a record's header, tag and content type take when
/// encrypting; a larger need is asked for by rustls and met.
const RECORD_OVERHEAD_BYTES: usize = 64;

/// A server-side TLS connection over TCP.
pub struct TlsConn {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    received: Vec<u8>,
    plain: Vec<u8>,
    plain_taken: usize,
    unsent: Vec<u8>,
    unsent_written: usize,
    /// The device sent close_notify (or the TCP stream ended): reads return end of file.
    peer_closed: bool,
    /// close_notify is encrypted into `unsent`: nothing more may be written.
    close_queued: bool,
    /// rustls failed: it is not called again (it would process the failed record again),
    /// and reads and writes return this.
    failed: Option<rustls::Error>,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("received", &self.received.len())
            .field("plain", &(self.plain.len() - self.plain_taken))
            .field("unsent", &(self.unsent.len() - self.unsent_written))
            .field("peer_closed", &self.peer_closed)
            .finish()
    }
}

/// What to do once rustls allows application data.
#[derive(Clone, Copy)]
enum Then<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    CloseNotify,
}

/// Where processing the received records stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// Application data may be sent (and `Then` was done).
    Traffic,
    /// The handshake needs more bytes from the device.
    Handshaking,
    /// Both sides sent close_notify.
    Closed,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Writes a record with `f` at the end of `out`: `room` bytes first, and as many as
/// rustls asks for when that is too few (`needs` reads its ask from the error).
fn append<E: std::fmt::Display>(
    out: &mut Vec<u8>,
    mut room: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, E>,
    needs: impl Fn(&E) -> Option<usize>,
) -> Result<(), rustls::Error> {
    let at = out.len();
    loop {
        out.resize(at + room, 0);
        match f(out.get_mut(at..).unwrap_or_default()) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(e) => match needs(&e) {
                Some(required) if required > room => room = required,
                _ => {
                    out.truncate(at);
                    return Err(rustls::Error::General(e.to_string()));
                }
            },
        }
    }
}

/// Encodes a handshake or alert record at the end of `out`.
fn encode(
    e: &mut EncodeTlsData<'_, ServerConnectionData>,
    out: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    append(
        out,
        RECORD_OVERHEAD_BYTES,
        |o| e.encode(o),
        |err| match err {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            EncodeError::AlreadyEncoded => None,
        },
    )
}

/// The room an encryption asked for, if that is why it failed.
fn encrypt_needs(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        EncryptError::EncryptExhausted => None,
    }
}

impl TlsConn {
    /// Processes every whole record in `received`: application data goes to `plain`,
    /// handshake and alert records to `unsent`; then `then` is done if traffic may flow.
    fn settle(&mut self, then: Then<'_>) -> Result<Settled, rustls::Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut start = 0;
        let mut rustls_failed = false;
        let result = loop {
            let UnbufferedStatus { discard, state } = self
                .conn
                .process_tls_records(self.received.get_mut(start..).unwrap_or_default());
            let step = match state {
                Err(e) => {
                    rustls_failed = true;
                    Err(e)
                }
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    let mut read = Ok(None);
                    while let Some(record) = r.next_record() {
                        match record {
                            Ok(record) => {
                                self.plain.extend_from_slice(record.payload);
                                start += record.discard;
                            }
                            Err(e) => {
                                read = Err(e);
                                break;
                            }
                        }
                    }
                    read
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode(&mut e, &mut self.unsent).map(|()| None)
                }
                // `unsent` goes to the socket before anything encrypted later.
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    Ok(None)
                }
                Ok(ConnectionState::WriteTraffic(mut w)) => match then {
                    Then::Nothing => Ok(Some(Settled::Traffic)),
                    Then::Encrypt(data) => {
                        let records = data.len() / WRITE_CHUNK_BYTES + 1;
                        let hint = data.len() + records * RECORD_OVERHEAD_BYTES;
                        append(
                            &mut self.unsent,
                            hint,
                            |out| w.encrypt(data, out),
                            encrypt_needs,
                        )
                        .map(|()| Some(Settled::Traffic))
                    }
                    Then::CloseNotify => append(
                        &mut self.unsent,
                        RECORD_OVERHEAD_BYTES,
                        |out| w.queue_close_notify(out),
                        encrypt_needs,
                    )
                    .map(|()| Some(Settled::Traffic)),
                },
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Settled::Handshaking)),
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(None)
                }
                Ok(ConnectionState::Closed) => Ok(Some(Settled::Closed)),
                Ok(ConnectionState::ReadEarlyData(_)) => Err(rustls::Error::General(
                    "early data is not accepted".to_owned(),
                )),
                Ok(other) => Err(rustls::Error::General(format!(
                    "unexpected TLS state {other:?}"
                ))),
            };
            start += discard;
            match step {
                Ok(None) => {}
                Ok(Some(settled)) => break Ok(settled),
                Err(e) => break Err(e),
            }
        };
        if rustls_failed {
            self.encode_alert(start);
        }
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        self.received.drain(..start.min(self.received.len()));
        if self.received.is_empty() {
            self.received = Vec::new();
        }
        result
    }

    /// After an error rustls may hold an alert for the device: encode it into `unsent`.
    /// rustls hands a queued alert over before it looks at the buffer again; it is given
    /// the same buffer as before all the same (its deframer keeps offsets into it), from
    /// `start`. Called once only: a second call would process the rest of the buffer.
    fn encode_alert(&mut self, start: usize) {
        let UnbufferedStatus { state, .. } = self
            .conn
            .process_tls_records(self.received.get_mut(start..).unwrap_or_default());
        if let Ok(ConnectionState::EncodeTlsData(mut e)) = state {
            let _ = encode(&mut e, &mut self.unsent);
        }
    }

    /// Writes `unsent` to the socket with `write`, and frees it once the socket took all
    /// of it; `Pending` (or the error) while some is left.
    fn send_unsent(
        &mut self,
        mut write: impl FnMut(&mut TcpStream, &[u8]) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<()>> {
        while let Some(rest) = self
            .unsent
            .get(self.unsent_written..)
            .filter(|r| !r.is_empty())
        {
            match ready!(write(&mut self.tcp, rest)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.unsent_written += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.unsent = Vec::new();
        self.unsent_written = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes `unsent` to the socket; `Pending` until the socket took all of it.
    fn poll_send_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.send_unsent(|tcp, bytes| Pin::new(tcp).poll_write(cx, bytes))
    }

    /// Writes what the socket takes of `unsent` now, without registering for more room:
    /// the reader's side must not take the writer's wake-up. The writer sends the rest.
    fn try_send_unsent(&mut self) {
        let _ = self.send_unsent(|tcp, bytes| match tcp.try_write(bytes) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            written => Poll::Ready(written),
        });
    }

    /// Reads what the socket has into `received`; `Ok(0)` at the end of the stream.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.received.len() >= RECEIVED_BYTES_MAX {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {RECEIVED_BYTES_MAX} bytes received without a whole record"),
            )));
        }
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            self.received.reserve(READ_CHUNK_BYTES);
            match self.tcp.try_read_buf(&mut self.received) {
                // Nothing came: an idle connection keeps no room for it.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.received.is_empty() {
                        self.received = Vec::new();
                    }
                }
                other => return Poll::Ready(other),
            }
        }
    }

    /// The device's certificate (the first of its chain), once the handshake is done.
    pub fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        self.conn.peer_certificates().and_then(|c| c.first())
    }

    /// Bytes this connection holds in its own buffers (received, plaintext, unsent).
    pub fn buffered_bytes(&self) -> usize {
        self.received.capacity() + self.plain.capacity() + self.unsent.capacity()
    }
}

/// Runs the server side of a handshake on `tcp`. The caller bounds its time.
pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsConn> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut c = TlsConn {
        tcp,
        conn,
        received: Vec::new(),
        plain: Vec::new(),
        plain_taken: 0,
        unsent: Vec::new(),
        unsent_written: 0,
        peer_closed: false,
        close_queued: false,
        failed: None,
    };
    loop {
        let settled = c.settle(Then::Nothing);
        // What the handshake produced (or the alert after an error) goes out before the
        // device is waited for.
        std::future::poll_fn(|cx| c.poll_send_unsent(cx)).await?;
        match settled.map_err(tls_error)? {
            // rustls may allow data to the device before the device's Finished (and its
            // certificate) arrived: done only when the handshake is.
            Settled::Traffic if !c.conn.is_handshaking() => return Ok(c),
            Settled::Closed => return Err(io::ErrorKind::UnexpectedEof.into()),
            Settled::Traffic | Settled::Handshaking => {
                if c.peer_closed {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                if std::future::poll_fn(|cx| c.poll_receive(cx)).await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the device closed the connection during the handshake",
                    ));
                }
            }
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some(rest) = this.plain.get(this.plain_taken..).filter(|r| !r.is_empty()) {
                let n = rest.len().min(buf.remaining());
                buf.put_slice(rest.get(..n).unwrap_or_default());
                this.plain_taken += n;
                if this.plain_taken >= this.plain.len() {
                    this.plain = Vec::new();
                    this.plain_taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if ready!(this.poll_receive(cx))? == 0 {
                this.peer_closed = true;
                if !this.received.is_empty() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection ended inside a TLS record",
                    )));
                }
                return Poll::Ready(Ok(()));
            }
            let settled = this.settle(Then::Nothing);
            // An alert, or a handshake message rustls answers with: sent now if the
            // socket takes it (the answer to a key update goes out with the next write).
            this.try_send_unsent();
            if settled.map_err(tls_error)? == Settled::Closed {
                this.peer_closed = true;
            }
        }
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send_unsent(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.close_queued {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = data.len().min(WRITE_CHUNK_BYTES);
        let settled = this.settle(Then::Encrypt(data.get(..n).unwrap_or_default()));
        match settled {
            Ok(Settled::Traffic) => {}
            Ok(Settled::Handshaking) => {
                return Poll::Ready(Err(io::Error::other("the TLS handshake is not complete")));
            }
            Ok(Settled::Closed) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Err(e) => {
                this.try_send_unsent();
                return Poll::Ready(Err(tls_error(e)));
            }
        }
        // Accepted: what the socket does not take now, the next write or flush sends.
        if let Poll::Ready(Err(e)) = this.poll_send_unsent(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send_unsent(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_unsent(cx))?;
        if !this.close_queued {
            this.close_queued = true;
            // A connection rustls already failed sends no close_notify (`settle` does
            // not call rustls again); the TCP shutdown below still ends it.
            if this.settle(Then::CloseNotify).is_ok() {
                ready!(this.poll_send_unsent(cx))?;
            }
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::DevCa;
    use rand::{RngExt, SeedableRng};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use wenxiao_protocol::DeviceId;

    /// Bound on every step of these tests, so that a hang fails instead of waiting.
    const STEP_S: u64 = 20;

    struct Pki {
        ca: DevCa,
        server: Arc<ServerConfig>,
    }

    fn pki() -> Pki {
        let ca = DevCa::generate("tls_conn test CA").unwrap();
        let cert = ca.issue_server(&["localhost"]).unwrap();
        let server = crate::tls::server_config(
            &ca.pem().cert_pem,
            &cert.cert_pem,
            &cert.key_pem,
            &crate::tls::Crl::default(),
        )
        .unwrap();
        Pki { ca, server }
    }

    fn client(pki: &Pki, device: Option<&crate::pki::PemPair>) -> tokio_rustls::TlsConnector {
        let config = crate::tls::client_config(
            &pki.ca.pem().cert_pem,
            device.map(|d| (d.cert_pem.as_str(), d.key_pem.as_str())),
        )
        .unwrap();
        tokio_rustls::TlsConnector::from(config)
    }

    async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(STEP_S), f)
            .await
            .unwrap_or_else(|_| panic!("{what} did not finish within {STEP_S} s"))
    }

    /// A listener whose one connection is accepted with [`accept`], and the address a
    /// device connects to: straight, or through a relay that forwards what the device
    /// sends in random pieces of 1 to 300 bytes, so records arrive split anywhere.
    async fn server(
        config: Arc<ServerConfig>,
        split_seed: Option<u64>,
    ) -> (
        std::net::SocketAddr,
        tokio::task::JoinHandle<io::Result<TlsConn>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            accept(tcp, config).await
        });
        let Some(seed) = split_seed else {
            return (addr, accepted);
        };
        let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay.local_addr().unwrap();
        tokio::spawn(async move {
            let (device, _) = relay.accept().await.unwrap();
            let upstream = TcpStream::connect(addr).await.unwrap();
            upstream.set_nodelay(true).unwrap();
            let (mut dr, mut dw) = device.into_split();
            let (mut ur, mut uw) = upstream.into_split();
            let down = tokio::spawn(async move { tokio::io::copy(&mut ur, &mut dw).await });
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut buf = vec![0u8; 300];
            loop {
                let want = rng.random_range(1..=buf.len());
                let Ok(n) = dr.read(buf.get_mut(..want).unwrap()).await else {
                    break;
                };
                if n == 0 || uw.write_all(buf.get(..n).unwrap()).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let _ = uw.shutdown().await;
            let _ = down.await;
        });
        (relay_addr, accepted)
    }

    /// The gateway's side, as a session uses it (split into halves): echoes what it reads
    /// in random read sizes until the device closes, then closes, and hands the
    /// connection back whole.
    async fn echo(conn: TlsConn, seed: u64) -> TlsConn {
        let (mut r, mut w) = tokio::io::split(conn);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut buf = vec![0u8; 40_000];
        loop {
            let want = rng.random_range(1..=buf.len());
            let n = r.read(buf.get_mut(..want).unwrap()).await.unwrap();
            if n == 0 {
                break;
            }
            w.write_all(buf.get(..n).unwrap()).await.unwrap();
        }
        w.shutdown().await.unwrap();
        r.unsplit(w)
    }

    /// Seeded random traffic both ways, records split anywhere on the way in, and a key
    /// update asked for by the device halfway: every byte comes back in order, the
    /// device's certificate is the one it presented, both sides close cleanly, and the
    /// connection holds no buffer afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn seeded_random_traffic_arrives_whole_and_leaves_no_buffers() {
        let pki = pki();
        for seed in 0..6u64 {
            let id = DeviceId(310_100_000_000 + seed);
            let device = pki.ca.issue_device(id).unwrap();
            let split = (seed % 2 == 1).then_some(seed);
            let (addr, accepted) = server(Arc::clone(&pki.server), split).await;
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut dev = within("handshake", client(&pki, Some(&device)).connect(name, tcp))
                .await
                .unwrap();
            let conn = within("accept", accepted).await.unwrap().unwrap();
            assert_eq!(
                crate::tls::device_id_of(conn.peer_certificate()),
                Ok(id),
                "seed {seed}"
            );
            let served = tokio::spawn(echo(conn, seed));
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut sent = Vec::new();
            let mut got = Vec::new();
            let total = rng.random_range(50_000..400_000);
            let mut buf = vec![0u8; 65_536];
            let mut updated = false;
            while sent.len() < total {
                let len = rng.random_range(1..40_000usize);
                let chunk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                within("write", dev.write_all(&chunk)).await.unwrap();
                sent.extend_from_slice(&chunk);
                if !updated && sent.len() > total / 2 {
                    dev.get_mut().1.refresh_traffic_keys().unwrap();
                    updated = true;
                }
                // Read what has come back so far, so neither side's socket fills.
                while got.len() + 65_536 < sent.len() {
                    let n = within("read", dev.read(&mut buf)).await.unwrap();
                    assert!(n > 0, "seed {seed}: the echo ended early");
                    got.extend_from_slice(buf.get(..n).unwrap());
                }
            }
            within("device close", dev.shutdown()).await.unwrap();
            within("read to end", dev.read_to_end(&mut got))
                .await
                .unwrap();
            assert!(
                got == sent,
                "seed {seed}: {} of {} bytes back",
                got.len(),
                sent.len()
            );
            let conn = within("echo", served).await.unwrap();
            assert_eq!(conn.buffered_bytes(), 0, "seed {seed}: {conn:?}");
        }
    }

    /// Handshakes that must fail do, with an error and without a panic: no client
    /// certificate, one from another CA, bytes that are not TLS, and a device that closes
    /// halfway through its hello.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_handshakes_are_errors() {
        let pki = pki();
        let name = || rustls::pki_types::ServerName::try_from("localhost").unwrap();
        // No certificate.
        let (addr, accepted) = server(Arc::clone(&pki.server), None).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let dev = client(&pki, None).connect(name(), tcp).await;
        let err = within("accept", accepted).await.unwrap().err();
        assert!(err.is_some(), "accepted a device without a certificate");
        // The device hears why: the alert is sent before the connection closes.
        let heard = match dev {
            Ok(mut dev) => within("alert", dev.read(&mut [0u8; 16]))
                .await
                .expect_err("no alert")
                .to_string(),
            Err(e) => e.to_string(),
        };
        assert!(heard.contains("CertificateRequired"), "{heard}");
        // A certificate of another CA.
        let rogue = DevCa::generate("rogue CA").unwrap();
        let cert = rogue.issue_device(DeviceId(310_100_000_001)).unwrap();
        let (addr, accepted) = server(Arc::clone(&pki.server), None).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let dev = client(&pki, Some(&cert)).connect(name(), tcp).await;
        assert!(
            within("accept", accepted).await.unwrap().is_err(),
            "accepted a certificate of another CA"
        );
        drop(dev);
        // Not TLS at all: refused, and the device hears an alert or the end.
        let (addr, accepted) = server(Arc::clone(&pki.server), None).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n")
            .await
            .unwrap();
        let err = within("accept", accepted).await.unwrap().err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let mut answer = Vec::new();
        within("answer", tcp.read_to_end(&mut answer))
            .await
            .unwrap();
        assert!(answer.len() < 64, "{answer:?}");
        // Half a hello, then the end of the stream.
        let (addr, accepted) = server(Arc::clone(&pki.server), None).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
            .await
            .unwrap();
        tcp.shutdown().await.unwrap();
        let err = within("accept", accepted).await.unwrap().err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    /// A device that ends the TCP stream inside a record is an error to the reader; one
    /// that ends it between records without close_notify is the end of the stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_end_inside_a_record_is_an_error() {
        let pki = pki();
        let device = pki.ca.issue_device(DeviceId(310_100_000_009)).unwrap();
        for cut_inside in [false, true] {
            let (addr, accepted) = server(Arc::clone(&pki.server), None).await;
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            // The device's TLS runs over an in-memory pipe the test relays by hand, so it
            // can add bytes of its own and end the stream where it likes.
            let (near, mut far) = tokio::io::duplex(1 << 20);
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut dev = client(&pki, Some(&device)).connect(name, near);
            let (mut buf, mut back) = (vec![0u8; 65_536], vec![0u8; 65_536]);
            // Relay until the device's handshake is done.
            let mut dev = loop {
                tokio::select! {
                    done = &mut dev => break done.unwrap(),
                    n = far.read(&mut buf) => {
                        let n = n.unwrap();
                        tcp.write_all(buf.get(..n).unwrap()).await.unwrap();
                    }
                    n = tcp.read(&mut back) => {
                        let n = n.unwrap();
                        far.write_all(back.get(..n).unwrap()).await.unwrap();
                    }
                }
            };
            dev.write_all(b"hello").await.unwrap();
            dev.flush().await.unwrap();
            let n = within("device bytes", far.read(&mut buf)).await.unwrap();
            tcp.write_all(buf.get(..n).unwrap()).await.unwrap();
            let conn = within("accept", accepted).await.unwrap().unwrap();
            let (mut r, w) = tokio::io::split(conn);
            let mut got = [0u8; 5];
            within("read", r.read_exact(&mut got)).await.unwrap();
            assert_eq!(&got, b"hello");
            // A read that finds nothing leaves no room reserved behind it: idle, the
            // connection holds no buffer.
            let idle = tokio::time::timeout(
                std::time::Duration::from_millis(100),
                r.read(&mut [0u8; 64]),
            )
            .await;
            assert!(idle.is_err(), "read something from an idle device");
            let conn = r.unsplit(w);
            assert_eq!(conn.buffered_bytes(), 0, "{conn:?}");
            let (mut r, _w) = tokio::io::split(conn);
            if cut_inside {
                // Three bytes of a record's header, then nothing more.
                tcp.write_all(&[0x17, 0x03, 0x03]).await.unwrap();
            }
            tcp.shutdown().await.unwrap();
            let mut rest = Vec::new();
            let end = within("read to end", r.read_to_end(&mut rest)).await;
            if cut_inside {
                let err = end.expect_err("a cut record was taken for the end");
                assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
            } else {
                assert_eq!(end.unwrap(), 0);
            }
        }
    }
}
