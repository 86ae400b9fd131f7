//! Constants of the v1 contract and the bounds derived from them.

/// The two magic bytes that open every frame: "WX".
pub const MAGIC: [u8; 2] = [0x57, 0x58];

/// The frame version this crate speaks.
pub const VERSION: u8 = 1;

/// magic (2) + version (1) + type (1) + payload length (4).
pub const FRAME_HEADER_BYTES: usize = 8;

/// The contract's default bound on a frame's payload length N. It is also the ceiling:
/// a deployment may lower the bound but not raise it, so that every v1 message this crate
/// can build (a full HOTLIST_UPDATE chunk is the largest) fits every peer's decoder.
pub const FRAME_PAYLOAD_BYTES_MAX: u32 = 65_536;

/// The smallest payload bound a decoder may be configured with: the largest fixed-size
/// v1 payload (TXN, 70 bytes) rounded up, with room for a HELLO with a short firmware
/// string and an ERROR with a short message.
pub const FRAME_PAYLOAD_BYTES_MIN_CONFIGURABLE: u32 = 1_024;

/// A wire `str` holds at most this many bytes of UTF-8.
pub const TEXT_BYTES_MAX: usize = 1_024;

/// CREDIT_OFFER carries at most this many credits (the contract's `count u8 (≤ 16)`).
pub const CREDIT_OFFER_COUNT_MAX: usize = 16;

/// HOTLIST_UPDATE's fixed part: version (4) + base_version (4) + last (1) + two u16 counts.
pub(crate) const HOTLIST_FIXED_BYTES: usize = 13;

/// Card numbers (added plus removed) one HOTLIST_UPDATE frame can carry within
/// [`FRAME_PAYLOAD_BYTES_MAX`]: ⌊(65,536 − 13) / 8⌋ = 8,190.
pub const HOTLIST_CARDS_PER_FRAME_MAX: usize =
    (FRAME_PAYLOAD_BYTES_MAX as usize - HOTLIST_FIXED_BYTES) / 8;

/// A device must send HELLO this soon after the TLS handshake (contract, Session 1).
pub const HELLO_TIMEOUT_MS: u64 = 10_000;

/// A session silent for this many heartbeat periods is closed (contract, Session 4).
pub const IDLE_HEARTBEAT_PERIODS: u64 = 3;
