//! Camelyon16's evaluation, as the challenge's `Evaluation_FROC.py` and MONAI's `LesionFROC`
//! compute it, and Camelyon17's, on maps at one pyramid level ("the evaluation level", 5 in
//! Camelyon16):
//!
//! - [`Lesions`]: the ground truth's tumour grown by 75 µm, holes filled, split into
//!   8-connected lesions; lesions whose major axis is under 275 µm are isolated tumour cells,
//!   which neither count as targets nor as false positives when hit;
//! - [`detections`]: the probability map's local maxima above 0.5, each suppressing a 48-pixel
//!   box around it (MONAI's `ProbNMS`);
//! - [`SlideOutcome`]: each detection a hit on a lesion or a false positive;
//! - [`Froc`]: sensitivity against false positives per slide over a cohort, and its score,
//!   the mean sensitivity at 1/4, 1/2, 1, 2, 4 and 8 false positives per slide;
//! - [`roc_auc`]: the slide-level area under the ROC curve;
//! - [`staging`]: Camelyon17's task, each node classed by its largest metastasis, each
//!   patient's pN stage, and the quadratic-weighted kappa between stagings.
//!
//! One difference from MONAI, on purpose: a slide without tumour has no lesions here (as in
//! Camelyon's code), where MONAI's distance transform of an empty mask invents a small one in
//! the top-left corner (then left out as an isolated tumour cell).
#![forbid(unsafe_code)]

mod lesions;
pub mod staging;

pub use lesions::Lesions;

/// Camelyon16's false-positive rates at which sensitivity is averaged.
pub const FP_RATES: [f64; 6] = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0];
/// Tumour within this distance of a tumour pixel belongs to its lesion (about 5 cells).
pub const GROW_MICRONS: f64 = 75.0;
/// Lesions whose longest diameter is under this (after growing) are isolated tumour cells.
pub const ITC_MICRONS: f64 = 200.0 + GROW_MICRONS;
/// Detections: local maxima strictly above this probability...
pub const DETECTION_THRESHOLD: f32 = 0.5;
/// ...each clearing a box of this side (in evaluation-level pixels) around it.
pub const DETECTION_BOX: usize = 48;

/// A probability map or mask at the evaluation level: `width x height`, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Plane<'a, T> {
    pub width: usize,
    pub height: usize,
    pub values: &'a [T],
}

/// A local maximum of the probability map, in evaluation-level pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub probability: f32,
    pub x: usize,
    pub y: usize,
}

/// The map's local maxima above [`DETECTION_THRESHOLD`], highest first: the highest pixel
/// (the first in raster order among equals) is a detection, the [`DETECTION_BOX`] around it
/// is cleared, and so on while any pixel above the threshold is left.
pub fn detections(map: Plane<f32>) -> Vec<Detection> {
    let Plane {
        width,
        height,
        values,
    } = map;
    assert_eq!(values.len(), width * height);
    let mut candidates: Vec<usize> = (0..values.len())
        .filter(|&i| values[i] > DETECTION_THRESHOLD)
        .collect();
    // Highest first, raster order among equals (NumPy's argmax).
    candidates.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    let mut cleared = vec![false; values.len()];
    let (below, above) = (DETECTION_BOX / 2, DETECTION_BOX - DETECTION_BOX / 2);
    let mut found = Vec::new();
    for index in candidates {
        if cleared[index] {
            continue;
        }
        let (x, y) = (index % width, index / width);
        found.push(Detection {
            probability: values[index],
            x,
            y,
        });
        for row in y.saturating_sub(below)..(y + above).min(height) {
            cleared[row * width + x.saturating_sub(below)..row * width + (x + above).min(width)]
                .fill(true);
        }
    }
    found
}

/// One slide's detections against its lesions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlideOutcome {
    /// Probabilities of detections outside every lesion.
    pub false_positives: Vec<f32>,
    /// For each lesion label, the highest probability of a detection on it (0 if none, and
    /// always 0 for isolated tumour cells).
    pub lesion_hits: Vec<f32>,
    /// Lesions that count (not isolated tumour cells).
    pub targets: usize,
}

impl SlideOutcome {
    pub fn new(lesions: &Lesions, detections: &[Detection]) -> SlideOutcome {
        let mut outcome = SlideOutcome {
            false_positives: Vec::new(),
            lesion_hits: vec![0.0; lesions.labels()],
            targets: lesions.targets(),
        };
        for detection in detections {
            match lesions.label_at(detection.x, detection.y) {
                0 => outcome.false_positives.push(detection.probability),
                label if lesions.is_isolated(label) => {}
                label => {
                    let hit = &mut outcome.lesion_hits[label as usize - 1];
                    *hit = hit.max(detection.probability);
                }
            }
        }
        outcome
    }

    /// Lesions (not isolated tumour cells) with a detection on them.
    pub fn lesions_found(&self) -> usize {
        self.lesion_hits.iter().filter(|&&p| p > 0.0).count()
    }
}

/// The FROC curve of a cohort and its score.
#[derive(Debug, Clone, PartialEq)]
pub struct Froc {
    /// Falling false positives per slide, one point per threshold, ending at 0...
    pub false_positives_per_slide: Vec<f64>,
    /// ...and the fraction of lesions found at each.
    pub sensitivity: Vec<f64>,
    /// Sensitivity at each of [`FP_RATES`], interpolated.
    pub sensitivity_at: [f64; 6],
    /// Their mean: Camelyon16's FROC score.
    pub score: f64,
}

impl Froc {
    /// The cohort's curve: a point for each distinct detection probability but the lowest
    /// (Camelyon's choice, kept so that scores compare), then the point (0, 0). `None` when the
    /// cohort has no lesion to find.
    pub fn new(slides: &[SlideOutcome]) -> Option<Froc> {
        let targets: usize = slides.iter().map(|s| s.targets).sum();
        if targets == 0 || slides.is_empty() {
            return None;
        }
        let sorted = |values: Vec<f32>| {
            let mut values = values;
            values.sort_by(f32::total_cmp);
            values
        };
        let fps = sorted(
            slides
                .iter()
                .flat_map(|s| s.false_positives.clone())
                .collect(),
        );
        let hits = sorted(slides.iter().flat_map(|s| s.lesion_hits.clone()).collect());
        let mut thresholds: Vec<f32> = fps.iter().chain(&hits).copied().collect();
        thresholds.sort_by(f32::total_cmp);
        thresholds.dedup();
        // How many of `sorted` are at least `threshold`.
        let at_least = |sorted: &[f32], threshold: f32| {
            sorted.len() - sorted.partition_point(|&p| p < threshold)
        };
        let images = slides.len() as f64;
        let mut false_positives_per_slide = Vec::new();
        let mut sensitivity = Vec::new();
        for &threshold in thresholds.iter().skip(1) {
            false_positives_per_slide.push(at_least(&fps, threshold) as f64 / images);
            sensitivity.push(at_least(&hits, threshold) as f64 / targets as f64);
        }
        false_positives_per_slide.push(0.0);
        sensitivity.push(0.0);
        // NumPy's interp over the rising curve.
        let rising_fps: Vec<f64> = false_positives_per_slide.iter().rev().copied().collect();
        let rising_sensitivity: Vec<f64> = sensitivity.iter().rev().copied().collect();
        let sensitivity_at = FP_RATES.map(|rate| interp(rate, &rising_fps, &rising_sensitivity));
        Some(Froc {
            false_positives_per_slide,
            sensitivity,
            score: sensitivity_at.iter().sum::<f64>() / FP_RATES.len() as f64,
            sensitivity_at,
        })
    }
}

/// `numpy.interp(x, xs, ys)` for non-decreasing `xs` (repeats allowed): the value at the
/// last point not above `x`, or the straight line from it to the next.
fn interp(x: f64, xs: &[f64], ys: &[f64]) -> f64 {
    let last = xs.len() - 1;
    if x < xs[0] {
        return ys[0];
    }
    if x > xs[last] {
        return ys[last];
    }
    let j = xs.partition_point(|&v| v <= x) - 1;
    if j == last || xs[j] == x {
        return ys[j];
    }
    let slope = (ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j]);
    slope * (x - xs[j]) + ys[j]
}

/// The area under the ROC curve of slide scores against slide labels (tumour or not): the
/// chance that a tumour slide scores above a normal one, ties counting half. `None` unless
/// both kinds of slide are present.
pub fn roc_auc(scores: &[f64], tumour: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), tumour.len());
    let positives: Vec<f64> = (0..scores.len())
        .filter(|&i| tumour[i])
        .map(|i| scores[i])
        .collect();
    let mut negatives: Vec<f64> = (0..scores.len())
        .filter(|&i| !tumour[i])
        .map(|i| scores[i])
        .collect();
    if positives.is_empty() || negatives.is_empty() {
        return None;
    }
    negatives.sort_by(f64::total_cmp);
    let wins: f64 = positives
        .iter()
        .map(|&p| {
            let below = negatives.partition_point(|&n| n < p);
            let tied = negatives.partition_point(|&n| n <= p) - below;
            below as f64 + 0.5 * tied as f64
        })
        .sum();
    Some(wins / (positives.len() * negatives.len()) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interp_matches_numpy_on_repeated_points() {
        // numpy.interp([0.25, 0.5, 1, 2], [0, 0, 0.5, 0.5, 1.5], [1, 0.8, 0.6, 0.5, 0.2])
        let (xs, ys) = ([0.0, 0.0, 0.5, 0.5, 1.5], [1.0, 0.8, 0.6, 0.5, 0.2]);
        let got = [0.25, 0.5, 1.0, 2.0].map(|x| interp(x, &xs, &ys));
        assert_eq!(got, [0.7, 0.5, 0.35, 0.2]);
    }

    #[test]
    fn detections_clear_a_box_and_prefer_raster_order_among_equals() {
        let (width, height) = (100, 60);
        let mut values = vec![0.0f32; width * height];
        values[10 * width + 10] = 0.9;
        values[10 * width + 30] = 0.9; // inside the first one's box: cleared
        values[50 * width + 5] = 0.9; // outside: found, after (10, 10)
        values[30 * width + 80] = 0.7;
        values[40 * width + 90] = 0.5; // not above 0.5
        let found = detections(Plane {
            width,
            height,
            values: &values,
        });
        let places: Vec<(usize, usize)> = found.iter().map(|d| (d.x, d.y)).collect();
        assert_eq!(places, [(10, 10), (5, 50), (80, 30)]);
    }

    #[test]
    fn auc_counts_ties_half() {
        assert_eq!(
            roc_auc(&[0.9, 0.4, 0.4, 0.1], &[true, true, false, false]),
            Some(0.875)
        );
        assert_eq!(roc_auc(&[0.9], &[true]), None);
    }
}
