//! Whole-slide tumour segmentation: the pipeline behind the `infer` binary (and the
//! `infer-bench` compare tool, which runs the same stream).
//!
//! - [`pipeline`]: a slide in, streamed through the model, its outputs out;
//! - [`resolution`]: each slide read at the model's resolution;
//! - [`cohort`]: many slides: found, named, sharded, summarised;
//! - [`output`], [`pictures`], [`annotations`]: outputs written whole or not at all; the
//!   heatmap; the tumour's contours as QuPath GeoJSON and ASAP XML;
//! - [`truth`]: ground truth for Dice and IoU; [`mask`]: mask images (truth, tissue);
//! - [`evaluate`]: `infer evaluate`, a cohort's maps scored as Camelyon16 did (FROC, AUC);
//! - [`patches`]: `infer patches`, a directory of patch images;
//! - [`model_args`]: the model options both binaries take.
#![forbid(unsafe_code)]

pub mod annotations;
pub mod cohort;
pub mod evaluate;
pub mod mask;
pub mod model_args;
pub mod output;
pub mod patches;
pub mod pictures;
pub mod pipeline;
pub mod resolution;
pub mod truth;
