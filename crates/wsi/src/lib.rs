//! Whole-slide images: pyramidal TIFFs read as OpenSlide reads them, in pure Rust, and
//! pyramidal tiled TIFFs written in bounded memory.
//!
//! ```no_run
//! let slide = wsi::Slide::open("slide.tif")?;
//! for (i, level) in slide.levels().iter().enumerate() {
//!     println!("level {i}: {}x{} (downsample {})", level.width, level.height, level.downsample);
//! }
//! let region = slide.read_region(0, 1024, 512, 512, 512)?; // RGB8, white outside the image
//! region.save("region.png").unwrap();
//! # Ok::<(), wsi::WsiError>(())
//! ```
//!
//! Formats read: TIFF (generic and Aperio SVS) and DICOM-WSI (a folder of instances, or any
//! one of them). TIFF layouts read: tiled JPEG (YCbCr 4:2:0 with or without shared `JPEGTables`, or RGB), LZW
//! and deflate with or without the horizontal predictor, uncompressed; classic TIFF and
//! BigTIFF; pyramids in the main IFD chain or as SubIFDs; stripped single-level files.
#![forbid(unsafe_code)]

mod cache;
mod decode;
mod dicom;
mod directory;
mod error;
mod metadata;
pub mod resize;
mod slide;
mod tiled_slide;
#[cfg(feature = "openslide")]
mod vendor;
pub mod writer;

pub use error::{DecodeError, Result, WsiError};
pub use resize::resize;
pub use slide::{
    BACKGROUND, DEFAULT_CACHE_BYTES, Level, MAX_REGION_BYTES, Region, SCALED_BAND_BYTES, Slide,
};
pub use writer::{Channels, Layout, PyramidWriter, WriterOptions};
