//! Feeds arbitrary bytes to the decoder as a stream: every frame it accepts must
//! re-encode to the same bytes, and it must never ask to buffer beyond its bound.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wenxiao_protocol::{Decoder, Progress};

fuzz_target!(|data: &[u8]| {
    // The first byte picks a payload bound, so lowered bounds are explored too.
    let (bound, input) = match data.split_first() {
        Some((b, rest)) => (1_024 + u32::from(*b) * 252, rest),
        None => (65_536, data),
    };
    let decoder = Decoder::new(bound);
    let mut offset = 0;
    while let Some(rest) = input.get(offset..) {
        match decoder.decode(rest) {
            Ok(Progress::Frame { message, frame_bytes }) => {
                let mut again = BytesMut::new();
                message.encode(&mut again);
                assert_eq!(&again[..], &rest[..frame_bytes], "re-encoding differs");
                offset += frame_bytes;
            }
            Ok(Progress::NeedMore { frame_bytes_min }) => {
                assert!(frame_bytes_min <= decoder.frame_bytes_max());
                break;
            }
            Err(e) => {
                let _ = e.error_code();
                break;
            }
        }
    }
});
