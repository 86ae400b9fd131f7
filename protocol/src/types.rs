//! Field types of the v1 protocol: identifiers, amounts, counters and enumerations.
//!
//! Every type here can only hold a value the contract allows ("parse, don't validate"):
//! enumerations reject unknown codes, [`Seq`] is never zero, [`Text`] is never longer than
//! [`TEXT_BYTES_MAX`], [`BusinessDate`] is a real calendar date.

use crate::limits::TEXT_BYTES_MAX;
use crate::serde_util::{deserialize_i64, deserialize_u64, serialize_i64, serialize_u64};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::num::NonZeroU64;

/// A newtype over `u64` written to JSON as a number, or a string beyond 2^53.
macro_rules! u64_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw wire value.
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                Self(v)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serialize_u64(self.0, s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                deserialize_u64(d).map(Self)
            }
        }
    };
}

/// A newtype over a small unsigned integer, written to JSON as a number.
macro_rules! small_newtype {
    ($(#[$m:meta])* $name:ident($repr:ty)) => {
        $(#[$m])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $repr);

        impl $name {
            /// The raw wire value.
            pub const fn get(self) -> $repr {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<$repr> for $name {
            fn from(v: $repr) -> Self {
                Self(v)
            }
        }
    };
}

u64_newtype!(
    /// A device's id: the decimal Subject CN of its client certificate.
    DeviceId
);
u64_newtype!(
    /// A city card number, or the card number of a SIM card applet.
    CardNo
);
u64_newtype!(
    /// A credit (money owed to a card) as numbered by the gateway.
    CreditId
);
u64_newtype!(
    /// The gateway's number for one device session.
    SessionId
);
small_newtype!(
    /// The card's transaction counter: offline (purchase) counter for PURCHASE and SIGN_IN,
    /// online (load) counter for TOP_UP and REFUND.
    CardCounter(u32)
);
small_newtype!(
    /// The card's online (load) sequence number.
    OnlineSeq(u16)
);
small_newtype!(
    /// A number of loyalty points (10 points = 1 yuan).
    Points(u32)
);
small_newtype!(
    /// A device-chosen request id, echoed in the answer.
    ReqId(u32)
);
small_newtype!(
    /// Version of the card hot list (blacklist) held by a device.
    HotlistVersion(u32)
);

/// Money in fen (0.01 yuan). Arithmetic is checked: there is no `Add` impl on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Fen(pub i64);

impl Fen {
    /// No money.
    pub const ZERO: Fen = Fen(0);

    /// The raw wire value.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// `self + rhs`, or `None` on overflow.
    pub const fn checked_add(self, rhs: Fen) -> Option<Fen> {
        match self.0.checked_add(rhs.0) {
            Some(v) => Some(Fen(v)),
            None => None,
        }
    }

    /// `self - rhs`, or `None` on overflow.
    pub const fn checked_sub(self, rhs: Fen) -> Option<Fen> {
        match self.0.checked_sub(rhs.0) {
            Some(v) => Some(Fen(v)),
            None => None,
        }
    }

    /// True for amounts below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }
}

impl fmt::Display for Fen {
    /// Yuan with two decimals, e.g. `-12.05`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

impl Serialize for Fen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_i64(self.0, s)
    }
}

impl<'de> Deserialize<'de> for Fen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_i64(d).map(Fen)
    }
}

/// A point in time: milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// The raw wire value.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

impl Serialize for UnixMillis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_i64(self.0, s)
    }
}

impl<'de> Deserialize<'de> for UnixMillis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_i64(d).map(UnixMillis)
    }
}

/// A non-zero 64-bit identifier whose zero on the wire means "none".
macro_rules! nonzero_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(NonZeroU64);

        impl $name {
            /// `None` for zero.
            pub const fn new(v: u64) -> Option<Self> {
                match NonZeroU64::new(v) {
                    Some(n) => Some(Self(n)),
                    None => None,
                }
            }

            /// The raw wire value (never zero).
            pub const fn get(self) -> u64 {
                self.0.get()
            }

            /// The wire value of an optional id: zero for `None`.
            pub fn wire(id: Option<Self>) -> u64 {
                id.map_or(0, Self::get)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<$name> for u64 {
            fn from(v: $name) -> u64 {
                v.get()
            }
        }

        impl TryFrom<u64> for $name {
            type Error = ZeroValue;
            fn try_from(v: u64) -> Result<Self, ZeroValue> {
                Self::new(v).ok_or(ZeroValue)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serialize_u64(self.get(), s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = deserialize_u64(d)?;
                Self::new(v).ok_or_else(|| serde::de::Error::custom("must not be zero"))
            }
        }
    };
}

/// A zero where the contract requires a non-zero value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("value must not be zero")]
pub struct ZeroValue;

nonzero_newtype!(
    /// A transaction's sequence number on its device: ≥ 1, strictly increasing.
    Seq
);
nonzero_newtype!(
    /// A points hold, created by POINTS_AUTH and consumed by one TXN.
    HoldId
);

/// Serde for `Option<Seq>`/`Option<HoldId>` fields whose wire zero means "none".
pub(crate) mod zero_is_none {
    use crate::serde_util::{deserialize_u64, serialize_u64};
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S, T>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
        T: Copy + Into<u64>,
    {
        serialize_u64(v.map_or(0, Into::into), s)
    }

    pub(crate) fn deserialize<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        let v = deserialize_u64(d)?;
        if v == 0 {
            return Ok(None);
        }
        T::try_from(v)
            .map(Some)
            .map_err(|_| serde::de::Error::custom("out of range"))
    }
}

/// A `bytes4` field (a MAC, a TAC or a card random), written to JSON as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Bytes4(pub [u8; 4]);

impl Bytes4 {
    /// All zeros: the MAC2 of a declined LOAD_AUTH.
    pub const ZERO: Bytes4 = Bytes4([0; 4]);
}

impl fmt::Debug for Bytes4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes4({})", hex::encode(self.0))
    }
}

impl fmt::Display for Bytes4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for Bytes4 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes4 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 4];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(Bytes4(out))
    }
}

/// A calendar date `yyyymmdd` (the wire's `date`): always a real date of years 1–9999.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BusinessDate(u32);

/// A `date` value that is not a calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not a yyyymmdd calendar date")]
pub struct InvalidDate(pub u32);

impl BusinessDate {
    /// Parses a `yyyymmdd` value.
    pub const fn new(yyyymmdd: u32) -> Result<Self, InvalidDate> {
        let (y, m, d) = (yyyymmdd / 10_000, yyyymmdd / 100 % 100, yyyymmdd % 100);
        if y == 0 || y > 9999 || m == 0 || m > 12 || d == 0 || d > days_in_month(y, m) {
            return Err(InvalidDate(yyyymmdd));
        }
        Ok(Self(yyyymmdd))
    }

    /// From year, month and day.
    pub const fn from_ymd(year: u32, month: u32, day: u32) -> Result<Self, InvalidDate> {
        Self::new(year.saturating_mul(10_000) + month.saturating_mul(100) + day)
    }

    /// The `yyyymmdd` wire value.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The year.
    pub const fn year(self) -> u32 {
        self.0 / 10_000
    }

    /// The month, 1–12.
    pub const fn month(self) -> u32 {
        self.0 / 100 % 100
    }

    /// The day of the month, 1–31.
    pub const fn day(self) -> u32 {
        self.0 % 100
    }
}

const fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        _ => 0,
    }
}

impl fmt::Display for BusinessDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}",
            self.year(),
            self.month(),
            self.day()
        )
    }
}

impl Serialize for BusinessDate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for BusinessDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(u32::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A wire `str`: valid UTF-8 of at most [`TEXT_BYTES_MAX`] bytes.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Text(String);

/// A string longer than a wire `str` may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("string of {0} bytes exceeds the {TEXT_BYTES_MAX}-byte limit")]
pub struct TextTooLong(pub usize);

impl Text {
    /// Wraps `s` if it fits on the wire.
    pub fn new(s: impl Into<String>) -> Result<Self, TextTooLong> {
        let s = s.into();
        if s.len() > TEXT_BYTES_MAX {
            return Err(TextTooLong(s.len()));
        }
        Ok(Self(s))
    }

    /// Wraps the longest prefix of `s`, cut at a character boundary, that fits on the wire.
    /// For messages we compose ourselves (ERROR texts), where a cut is better than a failure.
    pub fn truncated(s: &str) -> Self {
        let mut end = s.len().min(TEXT_BYTES_MAX);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        Self(s.get(..end).unwrap_or_default().to_owned())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Text {
    type Error = TextTooLong;
    fn try_from(s: String) -> Result<Self, TextTooLong> {
        Self::new(s)
    }
}

impl TryFrom<&str> for Text {
    type Error = TextTooLong;
    fn try_from(s: &str) -> Result<Self, TextTooLong> {
        Self::new(s)
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// An enumeration carried on the wire as an integer code, named in JSON by its spec name.
macro_rules! wire_enum {
    (
        $(#[$m:meta])*
        pub enum $name:ident : $repr:ty {
            $( $(#[$vm:meta])* $variant:ident = $val:literal => $wire:literal, )+
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[repr($repr)]
        pub enum $name {
            $( $(#[$vm])* #[serde(rename = $wire)] $variant = $val, )+
        }

        impl $name {
            /// Every value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire code.
            pub const fn code(self) -> $repr {
                self as $repr
            }

            /// The value with this wire code, if any.
            pub const fn from_code(code: $repr) -> Option<Self> {
                match code {
                    $( $val => Some(Self::$variant), )+
                    _ => None,
                }
            }

            /// The name used in the contract (`"PURCHASE"`, `"BAD_MAC"`…).
            pub const fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $wire, )+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}
pub(crate) use wire_enum;

wire_enum! {
    /// The kind of a device, declared in HELLO and held in the registry.
    pub enum DeviceKind: u8 {
        /// A point-of-sale terminal at a contracted merchant.
        Pos = 1 => "POS",
        /// A self-service top-up (load) kiosk.
        Kiosk = 2 => "KIOSK",
        /// A mobile operator's over-the-air load system, serving its SIM cards.
        OtaEndpoint = 3 => "OTA_ENDPOINT",
        /// A public venue's door reader for sign-ins.
        SigninReader = 4 => "SIGNIN_READER",
    }
}

wire_enum! {
    /// The kind of a transaction.
    pub enum TxnKind: u8 {
        /// A purchase at a contracted merchant.
        Purchase = 1 => "PURCHASE",
        /// A sign-in at a public venue (no money).
        SignIn = 2 => "SIGN_IN",
        /// Money loaded onto the card at a kiosk.
        TopUp = 3 => "TOP_UP",
        /// A refund of an earlier purchase on the same device.
        Refund = 4 => "REFUND",
    }
}

wire_enum! {
    /// What a transaction paid for.
    pub enum Item: u8 {
        /// Nothing (sign-ins, top-ups).
        None = 0 => "NONE",
        /// Books.
        Book = 1 => "BOOK",
        /// A ticket for a domestic film.
        FilmDomestic = 2 => "FILM_DOMESTIC",
        /// A ticket for a foreign film (no subsidy).
        FilmForeign = 3 => "FILM_FOREIGN",
        /// A performance ticket.
        Performance = 4 => "PERFORMANCE",
        /// Anything else.
        Other = 5 => "OTHER",
    }
}

wire_enum! {
    /// The outcome a device reports for a credit load.
    pub enum CreditOutcome: u8 {
        /// The card applied the load.
        Loaded = 1 => "LOADED",
        /// Not loaded; the credit may be offered again.
        NotLoadedRetry = 2 => "NOT_LOADED_RETRY",
        /// Not loaded and should not be retried automatically: parked for staff.
        NotLoadedFinal = 3 => "NOT_LOADED_FINAL",
    }
}

wire_enum! {
    /// The status of a TXN_ACK.
    pub enum TxnStatus: u8 {
        /// Durably committed now.
        Stored = 1 => "STORED",
        /// Already stored with identical content; the device treats it as STORED.
        Duplicate = 2 => "DUPLICATE",
        /// Recorded as rejected; final, not to be re-sent.
        Rejected = 3 => "REJECTED",
    }
}

wire_enum! {
    /// The status of a POINTS_AUTH_RESULT or a LOAD_AUTH.
    pub enum AuthStatus: u8 {
        /// Granted.
        Approved = 1 => "APPROVED",
        /// Refused; the reason says why.
        Declined = 2 => "DECLINED",
    }
}

wire_enum! {
    /// The status of a CREDIT_RESULT_ACK.
    pub enum ResultStatus: u8 {
        /// The result is recorded now.
        Recorded = 1 => "RECORDED",
        /// The same result was already recorded.
        Duplicate = 2 => "DUPLICATE",
        /// The result was not accepted; the reason says why.
        Rejected = 3 => "REJECTED",
    }
}

wire_enum! {
    /// The code of an ERROR frame.
    pub enum ErrorCode: u16 {
        /// A frame or payload that does not parse.
        MalformedFrame = 1 => "MALFORMED_FRAME",
        /// A frame version other than 1.
        UnsupportedVersion = 2 => "UNSUPPORTED_VERSION",
        /// A message type the contract does not define.
        UnknownType = 3 => "UNKNOWN_TYPE",
        /// A payload longer than the frame bound.
        FrameTooLarge = 4 => "FRAME_TOO_LARGE",
        /// A message other than HELLO before HELLO.
        HelloRequired = 5 => "HELLO_REQUIRED",
        /// No HELLO within the deadline after the handshake.
        HelloTimeout = 6 => "HELLO_TIMEOUT",
        /// The certificate does not prove the HELLO's device id.
        AuthFailed = 7 => "AUTH_FAILED",
        /// The device id is not in the registry (or not of the declared kind).
        DeviceUnknown = 8 => "DEVICE_UNKNOWN",
        /// The device is in the registry but not active.
        DeviceDisabled = 9 => "DEVICE_DISABLED",
        /// A newer session of the same device took over.
        SessionReplaced = 10 => "SESSION_REPLACED",
        /// Nothing received for 3 × heartbeat_s.
        IdleTimeout = 11 => "IDLE_TIMEOUT",
        /// More than max_in_flight TXNs unacknowledged.
        TooManyInFlight = 12 => "TOO_MANY_IN_FLIGHT",
        /// The device sends faster than it is allowed to.
        RateLimited = 13 => "RATE_LIMITED",
        /// The gateway is shutting down.
        ShuttingDown = 14 => "SHUTTING_DOWN",
        /// The clearing store cannot commit now; re-send later.
        StoreUnavailable = 15 => "STORE_UNAVAILABLE",
        /// A message that is not valid in this direction or state.
        UnexpectedMessage = 16 => "UNEXPECTED_MESSAGE",
    }
}

impl ErrorCode {
    /// Whether the contract makes this code fatal (the gateway closes after it). Codes
    /// 12–15 "may be either": the sender decides per case and sets the frame's flag.
    pub const fn always_fatal(self) -> bool {
        !matches!(
            self,
            Self::TooManyInFlight | Self::RateLimited | Self::ShuttingDown | Self::StoreUnavailable
        )
    }
}

wire_enum! {
    /// The reason code of a TXN_ACK, POINTS_AUTH_RESULT, LOAD_AUTH or CREDIT_RESULT_ACK.
    pub enum Reason: u16 {
        /// No particular reason.
        None = 0 => "NONE",
        /// The same seq was stored with different content.
        SeqConflict = 100 => "SEQ_CONFLICT",
        /// That card already has a recorded transaction with that counter value.
        CardCounterReplay = 101 => "CARD_COUNTER_REPLAY",
        /// A field is out of its allowed range or inconsistent with another.
        InvalidField = 102 => "INVALID_FIELD",
        /// Not allowed for this device's kind or merchant.
        KindNotAllowed = 103 => "KIND_NOT_ALLOWED",
        /// The points hold is unknown, expired, consumed or for another card/amount.
        HoldInvalid = 104 => "HOLD_INVALID",
        /// No such credit.
        UnknownCredit = 105 => "UNKNOWN_CREDIT",
        /// The credit is bound to another device or card.
        CreditNotYours = 106 => "CREDIT_NOT_YOURS",
        /// A TAC or MAC does not verify.
        BadMac = 107 => "BAD_MAC",
        /// Another load of this card is unresolved.
        CreditInDoubt = 108 => "CREDIT_IN_DOUBT",
        /// Stored, but earns no subsidy (e.g. a foreign film).
        NotEligible = 200 => "NOT_ELIGIBLE",
        /// Stored, but the subsidy budget is spent.
        BudgetExhausted = 201 => "BUDGET_EXHAUSTED",
        /// Stored, but the card is blacklisted.
        CardBlacklisted = 202 => "CARD_BLACKLISTED",
        /// Stored, but the merchant is suspended.
        MerchantSuspended = 203 => "MERCHANT_SUSPENDED",
        /// The once-per-day limit is reached.
        DailyLimitReached = 204 => "DAILY_LIMIT_REACHED",
        /// Not enough points.
        InsufficientPoints = 205 => "INSUFFICIENT_POINTS",
        /// Points may pay at most 50 % of a purchase.
        PointsCapExceeded = 206 => "POINTS_CAP_EXCEEDED",
    }
}
