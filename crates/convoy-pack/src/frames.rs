//! The framing of many chunks in one response (`POST /chunks/fetch`): for
//! each chunk, its 32-byte id, a big-endian u32 length, then that many bytes
//! of zstd. The decoder takes bytes as they arrive and never trusts a
//! length beyond what a chunk can be.

use crate::{ChunkId, CHUNK_MAX};

/// Bytes before each frame's payload.
pub const FRAME_HEADER: usize = 36;

/// Largest payload accepted: zstd never grows a chunk by more than this.
pub const MAX_FRAME: usize = 2 * CHUNK_MAX as usize;

/// Appends one frame.
pub fn encode_frame(out: &mut Vec<u8>, id: &ChunkId, compressed: &[u8]) {
    out.extend_from_slice(&id.0);
    out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
    out.extend_from_slice(compressed);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("chunk frame of {0} bytes is larger than any chunk can be")]
pub struct FrameTooLarge(pub usize);

/// Splits a byte stream into frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<(ChunkId, Vec<u8>)>, FrameTooLarge> {
        if self.buf.len() < FRAME_HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[32..36].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(FrameTooLarge(len));
        }
        if self.buf.len() < FRAME_HEADER + len {
            return Ok(None);
        }
        let id = ChunkId(self.buf[..32].try_into().expect("32 bytes"));
        let payload = self.buf[FRAME_HEADER..FRAME_HEADER + len].to_vec();
        self.buf.drain(..FRAME_HEADER + len);
        Ok(Some((id, payload)))
    }

    /// Bytes of an unfinished frame still held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Frames survive any split of the stream into pieces.
        #[test]
        fn round_trip_in_any_pieces(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6),
                                    cuts in proptest::collection::vec(1usize..64, 1..20)) {
            let mut stream = Vec::new();
            let frames: Vec<(ChunkId, Vec<u8>)> = payloads.iter().map(|p| (ChunkId::of(p), p.clone())).collect();
            for (id, p) in &frames {
                encode_frame(&mut stream, id, p);
            }
            let mut d = FrameDecoder::default();
            let mut got = Vec::new();
            let mut rest = &stream[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                d.push(&rest[..n]);
                rest = &rest[n..];
                i += 1;
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            prop_assert_eq!(got, frames);
            prop_assert_eq!(d.pending(), 0);
        }

        /// Garbage never panics the decoder nor makes it hold a huge frame.
        #[test]
        fn garbage_is_refused_or_waited_on(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut d = FrameDecoder::default();
            d.push(&bytes);
            while let Ok(Some((_, p))) = d.next_frame() {
                prop_assert!(p.len() <= MAX_FRAME);
            }
        }
    }

    #[test]
    fn oversized_lengths_are_refused() {
        let mut d = FrameDecoder::default();
        let mut header = vec![0u8; 32];
        header.extend_from_slice(&(MAX_FRAME as u32 + 1).to_be_bytes());
        d.push(&header);
        assert_eq!(d.next_frame(), Err(FrameTooLarge(MAX_FRAME + 1)));
    }
}
