//! Overlapping patch predictions blended into one map, emitted row by row.
//!
//! Patches may arrive in any order; they are applied in grid order. Only the band of rows the
//! open patch row covers (`patch` rows of the region's width) is held: once patch row `r` is
//! complete, no later patch touches the rows above `(r + 1) * stride`, so those are emitted
//! and the band moves down.

use std::collections::BTreeMap;

use crate::grid::Grid;

/// How overlapping predictions combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Blend {
    /// The users' semantics: each patch's map quantised to `floor(255 p)`, overlaps averaged
    /// and truncated (`uint8(sum / count)`).
    Mean,
    /// Probabilities weighted by a Gaussian falling off toward the patch border (sigma = patch / 8,
    /// as MONAI's sliding-window inference), then quantised.
    Gaussian,
}

/// The band's accumulators. `Mean` without overlap writes each pixel's level once (the map's
/// own bytes, handed on as they are). `Mean` with overlap sums whole u8 levels: u16 sums and
/// u8 counts (3 bytes a pixel, where f32 sums and weights take 8: 154 MB rather than 410 for a
/// band 100000 pixels wide), while each pixel is covered by at most 255 patches; weighted
/// blends, and means over more patches, sum f32.
enum Band {
    Levels { level: Vec<u8> },
    Counts { sum: Vec<u16>, count: Vec<u8> },
    Weights { sum: Vec<f32>, weight: Vec<f32> },
}

/// `P` is how a patch's probabilities are held: anything that lends them as a slice (a slice
/// of a whole batch's output, shared, spares the model's thread a copy per patch).
pub struct Stitcher<P = Vec<f32>> {
    grid: Grid,
    blend: Blend,
    width: usize,
    height: usize,
    /// Per-patch weights (all 1 for `Mean`), `patch` x `patch`.
    kernel: Vec<f32>,
    /// Accumulators for region rows `band_top .. band_top + patch`.
    band: Band,
    band_top: usize,
    next_index: usize,
    pending: BTreeMap<usize, Option<P>>,
}

impl<P: AsRef<[f32]>> Stitcher<P> {
    pub fn new(grid: Grid, blend: Blend) -> Stitcher<P> {
        let patch = grid.patch as usize;
        let width = grid.region.width as usize;
        let kernel = match blend {
            Blend::Mean => vec![1.0; patch * patch],
            Blend::Gaussian => gaussian_kernel(patch),
        };
        let most_covering = (grid.patch.div_ceil(grid.stride)).pow(2);
        let band = if blend == Blend::Mean && grid.stride == grid.patch {
            Band::Levels {
                level: vec![0; patch * width],
            }
        } else if blend == Blend::Mean && most_covering <= u8::MAX as u64 {
            Band::Counts {
                sum: vec![0; patch * width],
                count: vec![0; patch * width],
            }
        } else {
            Band::Weights {
                sum: vec![0.0; patch * width],
                weight: vec![0.0; patch * width],
            }
        };
        Stitcher {
            grid,
            blend,
            width,
            height: grid.region.height as usize,
            kernel,
            band,
            band_top: 0,
            next_index: 0,
            pending: BTreeMap::new(),
        }
    }

    /// Adds patch `index`'s probabilities (`patch` x `patch`, row-major), or `None` for a
    /// patch that was not run (no tissue). Hands `emit` every run of finished region rows
    /// (u8, `width` per row), top to bottom.
    pub fn add(&mut self, index: usize, probabilities: Option<P>, emit: &mut dyn FnMut(Vec<u8>)) {
        self.pending.insert(index, probabilities);
        while let Some(probabilities) = self.pending.remove(&self.next_index) {
            if let Some(probabilities) = probabilities {
                self.accumulate(self.next_index, probabilities.as_ref());
            }
            let position = self.grid.position(self.next_index);
            self.next_index += 1;
            if position.col + 1 == self.grid.cols {
                self.finish_patch_row(position.row, emit);
            }
        }
    }

    /// Whether every patch has been added and every row emitted.
    pub fn is_complete(&self) -> bool {
        self.next_index == self.grid.len()
    }

    /// Patches received but waiting for an earlier one.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    fn accumulate(&mut self, index: usize, probabilities: &[f32]) {
        let patch = self.grid.patch as usize;
        let position = self.grid.position(index);
        let x0 = (position.x - self.grid.region.x) as usize;
        let y0 = (position.y - self.grid.region.y) as usize;
        let cols = patch.min(self.width - x0);
        let rows = patch.min(self.height - y0);
        for row in 0..rows {
            let band_row = y0 + row - self.band_top;
            let dst = band_row * self.width + x0;
            let src = row * patch;
            let values = &probabilities[src..src + cols];
            match &mut self.band {
                Band::Levels { level: levels } => {
                    for (out, &value) in levels[dst..dst + cols].iter_mut().zip(values) {
                        *out = level(value) as u8;
                    }
                }
                Band::Counts { sum, count } => {
                    for (sum, &value) in sum[dst..dst + cols].iter_mut().zip(values) {
                        *sum += level(value);
                    }
                    for count in &mut count[dst..dst + cols] {
                        *count += 1;
                    }
                }
                Band::Weights { sum, weight } => {
                    let weights = &self.kernel[src..src + cols];
                    let sums = &mut sum[dst..dst + cols];
                    let totals = &mut weight[dst..dst + cols];
                    for i in 0..cols {
                        let value = match self.blend {
                            Blend::Mean => level(values[i]) as f32,
                            Blend::Gaussian => values[i],
                        };
                        sums[i] += weights[i] * value;
                        totals[i] += weights[i];
                    }
                }
            }
        }
    }

    fn finish_patch_row(&mut self, row: usize, emit: &mut dyn FnMut(Vec<u8>)) {
        let stride = self.grid.stride as usize;
        let last = row + 1 == self.grid.rows;
        let done_until = if last {
            self.height
        } else {
            ((row + 1) * stride).min(self.height)
        };
        let count = done_until - self.band_top;
        if count == 0 {
            return;
        }
        let pixels = count * self.width;
        let out: Vec<u8> = match &mut self.band {
            // Without overlap every row of the band is finished at once: the band itself goes,
            // and a zeroed one (the level of patches not run) takes its place.
            Band::Levels { level } => {
                let mut rows = std::mem::replace(level, vec![0; level.len()]);
                rows.truncate(pixels);
                rows
            }
            // The users' `uint8(sum / count)`, in f32, which vectorises where u16 division does
            // not: f32 division of integers below 2^16 is off the exact quotient (at most 255)
            // by at most 255 * 2^-24, while a quotient that is not an integer is at least 1/255
            // from the next one (the divisor is below 256), so the floor is the same; 0 / 0 is
            // NaN, which makes 0.
            Band::Counts { sum, count } => sum[..pixels]
                .iter()
                .zip(&count[..pixels])
                .map(|(&sum, &count)| floor_level(sum as f32 / count as f32) as u8)
                .collect(),
            Band::Weights { sum, weight } => sum[..pixels]
                .iter()
                .zip(&weight[..pixels])
                .map(|(&sum, &weight)| {
                    // No weight (no patch run here): 0 / 0, NaN, which makes 0.
                    let blended = sum / weight;
                    (match self.blend {
                        Blend::Mean => floor_level(blended),
                        // The weighted mean of equal values comes back a few ulps low: nudge
                        // before flooring, so that a constant stays that constant.
                        Blend::Gaussian => floor_level(255.0 * blended + 1e-3),
                    }) as u8
                })
                .collect(),
        };
        emit(out);
        // Move the band down: the rows not yet finished go to the top, the rest is cleared.
        match &mut self.band {
            Band::Levels { .. } => {}
            Band::Counts { sum, count } => {
                shift_up(sum, pixels);
                shift_up(count, pixels);
            }
            Band::Weights { sum, weight } => {
                shift_up(sum, pixels);
                shift_up(weight, pixels);
            }
        }
        self.band_top = done_until;
    }
}

/// The users' quantisation of a probability: `floor(255 p)`, within 0..=255 (NaN: 0).
fn level(p: f32) -> u16 {
    floor_level(255.0 * p)
}

/// `floor(x)` within 0..=255 (NaN: 0).
///
/// Written so that it vectorises on the baseline x86-64 (SSE2), where a float-to-integer
/// cast does not (it saturates, element by element) and `floor` is a library call: adding
/// 2^23 to a value in 0..=255 rounds it to the nearest integer and leaves that integer in the
/// low bits; one less where that rounded up is the floor.
fn floor_level(x: f32) -> u16 {
    const TO_INTEGER: f32 = 8_388_608.0;
    // Not `clamp`, which keeps NaN: `max` returns the other operand when one is NaN.
    #[expect(clippy::manual_clamp, reason = "NaN must become 0")]
    let x = x.max(0.0).min(255.0);
    let rounded = x + TO_INTEGER;
    (rounded.to_bits() as u16) - u16::from(rounded - TO_INTEGER > x)
}

/// Drops the first `by` values, moves the rest to the front and zeroes the tail.
fn shift_up<T: Copy + Default>(values: &mut [T], by: usize) {
    values.copy_within(by.., 0);
    let keep = values.len() - by;
    values[keep..].fill(T::default());
}

/// MONAI's Gaussian importance map: sigma = patch / 8, centred, normalised to a maximum of 1,
/// floored so border pixels keep a little weight.
fn gaussian_kernel(patch: usize) -> Vec<f32> {
    let sigma = patch as f32 / 8.0;
    let centre = (patch as f32 - 1.0) / 2.0;
    let profile: Vec<f32> = (0..patch)
        .map(|i| (-((i as f32 - centre).powi(2)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let mut kernel = Vec::with_capacity(patch * patch);
    for y in &profile {
        for x in &profile {
            kernel.push((y * x).max(1e-3));
        }
    }
    kernel
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::Rect;

    fn grid(width: u64, height: u64, patch: u64, overlap: u64) -> Grid {
        let region = Rect {
            x: 0,
            y: 0,
            width,
            height,
        };
        Grid::new(region, patch, overlap).unwrap()
    }

    /// The whole map, stitched with patches given in `order`.
    fn stitch(
        grid: Grid,
        blend: Blend,
        order: &[usize],
        value: impl Fn(usize) -> Option<f32>,
    ) -> Vec<u8> {
        let mut stitcher = Stitcher::new(grid, blend);
        let mut map = Vec::new();
        let area = (grid.patch * grid.patch) as usize;
        for &i in order {
            let patch = value(i).map(|v| vec![v; area]);
            stitcher.add(i, patch, &mut |rows| map.extend(rows));
        }
        assert!(stitcher.is_complete() && stitcher.waiting() == 0);
        map
    }

    #[test]
    fn mean_of_overlaps_is_the_users_uint8_of_sum_over_count() {
        // 2 x 2 patches of 4 with overlap 2 over 6 x 6: the centre 2 x 2 is covered 4 times.
        let grid = grid(6, 6, 4, 2);
        let order: Vec<usize> = (0..grid.len()).collect();
        let map = stitch(grid, Blend::Mean, &order, |i| Some([0.1, 0.2, 0.3, 0.5][i]));
        let u8_of = |p: f32| (255.0 * p).floor();
        let centre = ((u8_of(0.1) + u8_of(0.2) + u8_of(0.3) + u8_of(0.5)) / 4.0).floor() as u8;
        assert_eq!(map.len(), 36);
        assert_eq!(map[0], u8_of(0.1) as u8);
        assert_eq!(map[2 * 6 + 2], centre);
        assert_eq!(map[5 * 6 + 5], u8_of(0.5) as u8);
        // The top-right pixel: patches 0 and 1 overlap columns 2 and 3 only.
        assert_eq!(map[3], ((u8_of(0.1) + u8_of(0.2)) / 2.0).floor() as u8);
    }

    #[test]
    fn arrival_order_does_not_matter_and_skipped_patches_leave_zero() {
        let grid = grid(10, 7, 4, 1);
        let in_order: Vec<usize> = (0..grid.len()).collect();
        let reversed: Vec<usize> = in_order.iter().rev().copied().collect();
        let value = |i: usize| {
            if i.is_multiple_of(3) {
                None
            } else {
                Some(i as f32 / 20.0)
            }
        };
        for blend in [Blend::Mean, Blend::Gaussian] {
            let a = stitch(grid, blend, &in_order, value);
            let b = stitch(grid, blend, &reversed, value);
            assert_eq!(a, b);
            assert_eq!(a.len(), 70);
        }
        // Patch 0 was skipped and nothing else covers (0, 0).
        assert_eq!(stitch(grid, Blend::Mean, &in_order, value)[0], 0);
    }

    /// Past 255 patches over a pixel (stride 1 under 16-pixel patches: 256), `Mean` sums in
    /// f32 instead of u16 sums and u8 counts, with the same result.
    #[test]
    fn mean_over_more_than_255_patches() {
        let value = |i: usize| Some([0.2, 0.9][i % 2]);
        for (patch, overlap) in [(16, 15), (16, 14)] {
            let grid = grid(40, 24, patch, overlap);
            let order: Vec<usize> = (0..grid.len()).collect();
            let map = stitch(grid, Blend::Mean, &order, value);
            // Column 0 of row 0 is covered by patch 0 alone.
            assert_eq!(map[0], 51, "overlap {overlap}");
            assert!(
                map.iter().all(|&v| (51..=229).contains(&v)),
                "overlap {overlap}"
            );
        }
    }

    /// Without overlap each pixel is its own patch's level, written once; patches not run
    /// leave 0, and the last column and row of patches are cut at the region's edge.
    #[test]
    fn without_overlap_each_pixel_is_its_patchs_level() {
        let grid = grid(10, 7, 4, 0);
        let order: Vec<usize> = (0..grid.len()).rev().collect();
        let value = |i: usize| (i != 4).then_some(0.07 * i as f32 + 0.01);
        let map = stitch(grid, Blend::Mean, &order, value);
        assert_eq!(map.len(), 70);
        for (i, &pixel) in map.iter().enumerate() {
            let (x, y) = (i % 10, i / 10);
            let patch = (y / 4) * grid.cols + x / 4;
            let expected = value(patch).map_or(0, |p| (255.0 * p).floor() as u8);
            assert_eq!(pixel, expected, "pixel ({x}, {y}) of patch {patch}");
        }
    }

    /// `floor_level` is `floor` clamped to 0..=255 (NaN: 0) for values all over that range,
    /// just beside each integer, and outside it.
    #[test]
    fn floor_level_is_the_clamped_floor() {
        let mut values: Vec<f32> = (-80..=2400).map(|i| i as f32 / 8.0).collect();
        for k in 0..=256 {
            let k = k as f32;
            values.extend([k.next_down(), k, k.next_up()]);
        }
        values.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30]);
        for x in values {
            let expected = if x.is_nan() {
                0
            } else {
                x.clamp(0.0, 255.0).floor() as u16
            };
            assert_eq!(floor_level(x), expected, "{x:e}");
        }
    }

    #[test]
    fn gaussian_of_a_constant_is_that_constant() {
        let grid = grid(20, 20, 8, 4);
        let order: Vec<usize> = (0..grid.len()).collect();
        let map = stitch(grid, Blend::Gaussian, &order, |_| Some(0.6));
        assert!(map.iter().all(|&v| v == 153), "{map:?}");
    }
}
