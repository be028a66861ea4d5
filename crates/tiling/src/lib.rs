//! Patch grids over a slide, which patches hold tissue, and stitching their predictions back
//! into one map, row by row, without ever holding the whole map.
//!
//! - [`Grid`]: patch positions (the users' grid, plus the right and bottom remainder it drops).
//! - [`TissueMask`]: Otsu on saturation at a low pyramid level, cleaned up; which patches run.
//! - [`Stitcher`]: overlapping patch maps blended (`mean` or `gaussian`) and emitted as finished rows.
#![forbid(unsafe_code)]

mod grid;
mod stitch;
mod tissue;

pub use grid::{Grid, PatchPosition, Rect};
pub use stitch::{Blend, Stitcher};
pub use tissue::TissueMask;
