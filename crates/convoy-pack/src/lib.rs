//! Packing a directory into a release: content-defined chunks addressed by
//! BLAKE3, a canonical versioned manifest whose hash is the root digest, the
//! package descriptor, a chunk store on disk, and unpacking with path checks.
//!
//! Invariant: nothing here trusts bytes it did not hash. A [`VerifiedChunk`]
//! can only be made by hashing, and the [`ChunkStore`] only accepts those.

mod chunk;
mod delta;
mod descriptor;
mod diff;
mod frames;
mod links;
mod manifest;
mod nofollow;
mod path;
mod store;
mod sync;
mod tree;

pub use chunk::{cut, ChunkError, ChunkId, ChunkIdError, VerifiedChunk, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};
pub use delta::{
    apply_release_delta, decode_bounded, decode_delta, delta_memory, encode_delta, make_release_delta, read_range,
    Applied, ChunkSource, DeltaError, DeltaStats, ReadAt, DELTA_FORMAT, MARGIN, SEGMENT,
};
pub use descriptor::{Descriptor, DescriptorError, Health, Hooks, DESCRIPTOR_FILE};
pub use diff::{diff, TreeDiff};
pub use frames::{encode_frame, FrameDecoder, FrameTooLarge, FRAME_HEADER, MAX_FRAME};
pub use manifest::{ChunkRef, Entry, Manifest, ManifestError, MANIFEST_FORMAT};
pub use nofollow::{open_dir_nofollow, open_parent_nofollow, openat_nofollow};
pub use path::{PathError, RelPath};
pub use store::{conformance as chunk_store_conformance, ChunkStore, Remote};
pub use sync::{apply_ops, block_size, make_ops, signatures, SyncError, SYNC_MAX_FILE};
pub use tree::{chunk_file, pack_tree, scan_tree, unpack, PackError};
