//! `tokio_util::codec` adapters (feature `codec`).

use crate::codec::Decoder;
use crate::error::DecodeError;
use crate::message::Message;
use bytes::BytesMut;

/// A framed-stream codec for v1 messages. Decoding never buffers more than one frame's
/// bound: `FramedRead` grows its buffer only as far as this codec reserves.
#[derive(Debug, Clone, Copy, Default)]
pub struct WxCodec {
    decoder: Decoder,
}

impl WxCodec {
    /// A codec whose decoder enforces `decoder`'s payload bound.
    pub fn new(decoder: Decoder) -> Self {
        Self { decoder }
    }
}

/// A failure of the framed stream: the peer's bytes, or the socket.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The peer sent bytes that are not a valid frame.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Reading or writing the socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl tokio_util::codec::Decoder for WxCodec {
    type Item = Message;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        Ok(self.decoder.decode_buf(src)?)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        Ok(self.decoder.decode_eof(src)?)
    }
}

impl tokio_util::codec::Encoder<Message> for WxCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        item.encode(dst);
        Ok(())
    }
}

impl tokio_util::codec::Encoder<&Message> for WxCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        item.encode(dst);
        Ok(())
    }
}
