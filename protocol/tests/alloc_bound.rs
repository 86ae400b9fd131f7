//! The decoder never allocates more than one frame's bound, whatever bytes it is fed.
//! A counting global allocator measures the peak of this thread's live heap during each
//! decode; it is the only unsafe code in the workspace, confined to this test binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_wrap
)]
#![allow(unsafe_code)]

use bytes::BytesMut;
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use wenxiao_protocol::Decoder;

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    // `try_with`: during thread teardown the slots may be gone; nothing to count then.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the wrapper only
// updates thread-local counters, which never allocate (const-initialised `Cell`s).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize));
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as isize - layout.size() as isize);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak bytes allocated on this thread while `f` runs, above the level at its start.
fn peak_during(f: impl FnOnce()) -> isize {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    f();
    PEAK.with(Cell::get) - start
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    #[test]
    fn decoding_allocates_at_most_one_frame(
        mut input in proptest::collection::vec(any::<u8>(), 0..2_048),
        type_byte in prop_oneof![Just(0x01u8), Just(0x45), Just(0x48), Just(0x4E), any::<u8>()],
        len in prop_oneof![0u32..2_048, 0u32..=70_000, any::<u32>()],
        bound in 1_024u32..=65_536,
    ) {
        let mut header = vec![0x57, 0x58, 1, type_byte];
        header.extend_from_slice(&len.to_be_bytes());
        input.splice(0..0, header);
        let decoder = Decoder::new(bound);
        let mut buf = BytesMut::from(input.as_slice());
        let peak = peak_during(|| {
            // Decode repeatedly as a reader would, until an error or a need for bytes.
            while let Ok(Some(m)) = decoder.decode_buf(&mut buf) {
                drop(m);
            }
        });
        // One frame's bound (the reserve for a partial frame, or the decoded message's
        // strings and card lists, which are at most its payload), plus bookkeeping.
        let bound_bytes = decoder.frame_bytes_max() as isize + 1_024;
        prop_assert!(peak <= bound_bytes, "peak {} > {}", peak, bound_bytes);
    }
}
