//! Decode errors: what a peer's bytes can be wrong with.

use crate::message::MessageType;
use crate::types::ErrorCode;

/// Why bytes are not a valid v1 frame. Every variant is the peer's fault; each maps to the
/// ERROR code the gateway answers with ([`DecodeError::error_code`]) before it closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame does not start with "WX".
    #[error("bad magic {found:02x?}, expected 57 58")]
    BadMagic {
        /// The bytes found (the second is 0 if only one had arrived).
        found: [u8; 2],
    },
    /// A frame version other than 1.
    #[error("unsupported frame version {version}")]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
    },
    /// A type byte the contract does not define.
    #[error("unknown message type {message_type:#04x}")]
    UnknownType {
        /// The type byte found.
        message_type: u8,
    },
    /// The header announces a payload above the configured bound.
    #[error("payload of {payload_bytes} bytes exceeds the bound of {payload_bytes_max}")]
    FrameTooLarge {
        /// The announced length.
        payload_bytes: u32,
        /// The configured bound.
        payload_bytes_max: u32,
    },
    /// The payload ends before its fields do.
    #[error("{message_type} payload too short")]
    PayloadTooShort {
        /// The frame's type.
        message_type: MessageType,
    },
    /// The payload has bytes after its last field.
    #[error("{message_type} payload too long")]
    PayloadTooLong {
        /// The frame's type.
        message_type: MessageType,
    },
    /// An enumerated (or 0/1 flag) field holds a value the contract does not define.
    #[error("{message_type}.{field}: undefined value {value}")]
    BadEnum {
        /// The frame's type.
        message_type: MessageType,
        /// The field, by its contract name.
        field: &'static str,
        /// The value found.
        value: u16,
    },
    /// A `str` field is not UTF-8.
    #[error("{message_type}.{field}: not UTF-8")]
    BadUtf8 {
        /// The frame's type.
        message_type: MessageType,
        /// The field.
        field: &'static str,
    },
    /// A `str` field is longer than 1,024 bytes.
    #[error("{message_type}.{field}: string of {bytes} bytes exceeds 1024")]
    StringTooLong {
        /// The frame's type.
        message_type: MessageType,
        /// The field.
        field: &'static str,
        /// The announced length.
        bytes: u16,
    },
    /// A count above its bound (CREDIT_OFFER's `count` ≤ 16).
    #[error("{message_type}.{field}: count {count} exceeds {count_max}")]
    CountTooLarge {
        /// The frame's type.
        message_type: MessageType,
        /// The field.
        field: &'static str,
        /// The count found.
        count: usize,
        /// The bound.
        count_max: usize,
    },
    /// A `date` field that is not a calendar date.
    #[error("{message_type}.{field}: {value} is not a yyyymmdd date")]
    BadDate {
        /// The frame's type.
        message_type: MessageType,
        /// The field.
        field: &'static str,
        /// The value found.
        value: u32,
    },
    /// A field outside its domain (a TXN or TXN_ACK `seq` of 0).
    #[error("{message_type}.{field}: value out of range")]
    OutOfRange {
        /// The frame's type.
        message_type: MessageType,
        /// The field.
        field: &'static str,
    },
    /// The input ended inside a frame (only from [`crate::Decoder::decode_eof`]).
    #[error("input ended inside a frame: {available} of at least {needed} bytes")]
    Truncated {
        /// Bytes available.
        available: usize,
        /// Bytes the frame needs at least.
        needed: usize,
    },
}

/// The stable, machine-readable name of a [`DecodeError`] variant, as used in the test
/// vectors' `"error"` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum DecodeErrorKind {
    BadMagic,
    UnsupportedVersion,
    UnknownType,
    FrameTooLarge,
    PayloadTooShort,
    PayloadTooLong,
    BadEnum,
    BadUtf8,
    StringTooLong,
    CountTooLarge,
    BadDate,
    OutOfRange,
    Truncated,
}

impl DecodeErrorKind {
    /// Every kind.
    pub const ALL: &'static [DecodeErrorKind] = &[
        Self::BadMagic,
        Self::UnsupportedVersion,
        Self::UnknownType,
        Self::FrameTooLarge,
        Self::PayloadTooShort,
        Self::PayloadTooLong,
        Self::BadEnum,
        Self::BadUtf8,
        Self::StringTooLong,
        Self::CountTooLarge,
        Self::BadDate,
        Self::OutOfRange,
        Self::Truncated,
    ];

    /// The name in the test vectors, e.g. `"BAD_MAGIC"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::BadMagic => "BAD_MAGIC",
            Self::UnsupportedVersion => "UNSUPPORTED_VERSION",
            Self::UnknownType => "UNKNOWN_TYPE",
            Self::FrameTooLarge => "FRAME_TOO_LARGE",
            Self::PayloadTooShort => "PAYLOAD_TOO_SHORT",
            Self::PayloadTooLong => "PAYLOAD_TOO_LONG",
            Self::BadEnum => "BAD_ENUM",
            Self::BadUtf8 => "BAD_UTF8",
            Self::StringTooLong => "STRING_TOO_LONG",
            Self::CountTooLarge => "COUNT_TOO_LARGE",
            Self::BadDate => "BAD_DATE",
            Self::OutOfRange => "OUT_OF_RANGE",
            Self::Truncated => "TRUNCATED",
        }
    }
}

impl DecodeError {
    /// This error's kind.
    pub const fn kind(&self) -> DecodeErrorKind {
        match self {
            Self::BadMagic { .. } => DecodeErrorKind::BadMagic,
            Self::UnsupportedVersion { .. } => DecodeErrorKind::UnsupportedVersion,
            Self::UnknownType { .. } => DecodeErrorKind::UnknownType,
            Self::FrameTooLarge { .. } => DecodeErrorKind::FrameTooLarge,
            Self::PayloadTooShort { .. } => DecodeErrorKind::PayloadTooShort,
            Self::PayloadTooLong { .. } => DecodeErrorKind::PayloadTooLong,
            Self::BadEnum { .. } => DecodeErrorKind::BadEnum,
            Self::BadUtf8 { .. } => DecodeErrorKind::BadUtf8,
            Self::StringTooLong { .. } => DecodeErrorKind::StringTooLong,
            Self::CountTooLarge { .. } => DecodeErrorKind::CountTooLarge,
            Self::BadDate { .. } => DecodeErrorKind::BadDate,
            Self::OutOfRange { .. } => DecodeErrorKind::OutOfRange,
            Self::Truncated { .. } => DecodeErrorKind::Truncated,
        }
    }

    /// The ERROR code the gateway answers this with. All of them are fatal: after bytes
    /// that do not parse, the stream's framing can no longer be trusted.
    pub const fn error_code(&self) -> ErrorCode {
        match self {
            Self::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Self::UnknownType { .. } => ErrorCode::UnknownType,
            Self::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            _ => ErrorCode::MalformedFrame,
        }
    }
}
