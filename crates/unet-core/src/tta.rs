//! Test-time augmentation: each patch is also run flipped (and, for `d4`, transposed), each
//! copy's probabilities are mapped back onto the patch, and the copies are averaged before
//! any rounding. The UNet is not exactly equivariant (its training saw tissue in every
//! orientation, its arithmetic does not), so the average is steadier at boundaries.

use crate::patch::{ProbabilityMaps, RgbPatch};
use crate::predictor::{PendingMaps, PredictError, Predictor};
use crate::target::parse_choice;

/// Which copies of each patch run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tta {
    /// The patch as it is.
    #[default]
    Off,
    /// The 4 flips: none, left-right, top-bottom, both.
    Flips,
    /// The 8 symmetries of the square: the 4 flips, with and without a transpose.
    D4,
}
parse_choice!(Tta, "test-time augmentation", "off" => Tta::Off, "flips" => Tta::Flips, "d4" => Tta::D4);

impl Tta {
    /// Forward passes per patch.
    pub fn copies(self) -> usize {
        self.symmetries().len()
    }

    fn symmetries(self) -> &'static [Symmetry] {
        const fn s(transpose: bool, flip_x: bool, flip_y: bool) -> Symmetry {
            Symmetry {
                transpose,
                flip_x,
                flip_y,
            }
        }
        const ALL: [Symmetry; 8] = [
            s(false, false, false),
            s(false, true, false),
            s(false, false, true),
            s(false, true, true),
            s(true, false, false),
            s(true, true, false),
            s(true, false, true),
            s(true, true, true),
        ];
        match self {
            Tta::Off => &ALL[..1],
            Tta::Flips => &ALL[..4],
            Tta::D4 => &ALL,
        }
    }
}

/// A transpose (first), then flips: every symmetry of a square is one of the 8.
#[derive(Debug, Clone, Copy)]
struct Symmetry {
    transpose: bool,
    flip_x: bool,
    flip_y: bool,
}

impl Symmetry {
    /// The size of a `width x height` image's copy.
    fn size(self, width: usize, height: usize) -> (usize, usize) {
        if self.transpose {
            (height, width)
        } else {
            (width, height)
        }
    }

    /// The index, in the copy, of pixel `(x, y)` of a `width x height` image.
    fn place(self, x: usize, y: usize, width: usize, height: usize) -> usize {
        let (copy_width, copy_height) = self.size(width, height);
        let (x, y) = if self.transpose { (y, x) } else { (x, y) };
        let x = if self.flip_x { copy_width - 1 - x } else { x };
        let y = if self.flip_y { copy_height - 1 - y } else { y };
        y * copy_width + x
    }

    /// The copy of an RGB patch.
    fn apply(self, patch: &RgbPatch) -> Vec<u8> {
        let (width, height) = (patch.width, patch.height);
        let mut copy = vec![0; patch.pixels.len()];
        for y in 0..height {
            for x in 0..width {
                let (from, to) = (3 * (y * width + x), 3 * self.place(x, y, width, height));
                copy[to..to + 3].copy_from_slice(&patch.pixels[from..from + 3]);
            }
        }
        copy
    }

    /// Adds the copy's map, mapped back onto the patch, to `sum`.
    fn add_back(self, copy: &[f32], width: usize, height: usize, sum: &mut [f32]) {
        for y in 0..height {
            for x in 0..width {
                sum[y * width + x] += copy[self.place(x, y, width, height)];
            }
        }
    }
}

impl Predictor {
    /// [`Predictor::predict_maps_with`] submitted: without augmentation the forward is queued
    /// ([`Predictor::submit_maps`]); with it, the copies' forwards have run when this returns.
    pub fn submit_maps_with<'a>(
        &'a self,
        patches: &[RgbPatch],
        tta: Tta,
    ) -> Result<PendingMaps<'a>, PredictError> {
        match tta {
            Tta::Off => self.submit_maps(patches),
            _ => Ok(PendingMaps::done(self.predict_maps_with(patches, tta)?)),
        }
    }

    /// [`Predictor::predict_maps`] averaged over the augmentation's copies of each patch (one
    /// forward per copy, a batch of the same size); `Tta::Off` is `predict_maps`.
    pub fn predict_maps_with(
        &self,
        patches: &[RgbPatch],
        tta: Tta,
    ) -> Result<ProbabilityMaps, PredictError> {
        let first = match patches.first() {
            Some(first) if tta != Tta::Off => *first,
            // No copies to average, or no patch (which `predict_maps` refuses).
            _ => return self.predict_maps(patches),
        };
        let (width, height) = (first.width, first.height);
        let mut sums = vec![0.0; patches.len() * width * height];
        for &symmetry in tta.symmetries() {
            let pixels: Vec<Vec<u8>> = patches.iter().map(|p| symmetry.apply(p)).collect();
            let copies: Vec<RgbPatch> = patches
                .iter()
                .zip(&pixels)
                .map(|(p, pixels)| {
                    let (width, height) = symmetry.size(p.width, p.height);
                    RgbPatch::new(width, height, pixels)
                })
                .collect();
            // Every patch is `width x height`: the forward refuses a batch of mixed sizes.
            let maps = self.predict_maps(&copies)?;
            for (map, sum) in maps.iter().zip(sums.chunks_exact_mut(width * height)) {
                symmetry.add_back(map, width, height, sum);
            }
        }
        let copies = tta.copies() as f32;
        sums.iter_mut().for_each(|v| *v /= copies);
        Ok(ProbabilityMaps {
            width,
            height,
            values: sums,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every symmetry is a permutation, and mapping a copy back undoes it.
    #[test]
    fn copies_map_back_onto_the_patch() {
        let (width, height) = (5, 3);
        let pixels: Vec<u8> = (0..width * height * 3).map(|i| i as u8).collect();
        let patch = RgbPatch::new(width, height, &pixels);
        for &symmetry in Tta::D4.symmetries() {
            let copy = symmetry.apply(&patch);
            // The copy's red channel as a "map", mapped back, is the patch's red channel.
            let map: Vec<f32> = copy.chunks_exact(3).map(|p| p[0] as f32).collect();
            let mut back = vec![0.0; width * height];
            symmetry.add_back(&map, width, height, &mut back);
            let red: Vec<f32> = pixels.chunks_exact(3).map(|p| p[0] as f32).collect();
            assert_eq!(back, red, "{symmetry:?}");
        }
        // The 8 copies of a square are all different.
        let square: Vec<u8> = (0..4 * 4 * 3).map(|i| i as u8).collect();
        let mut copies: Vec<Vec<u8>> = Tta::D4
            .symmetries()
            .iter()
            .map(|s| s.apply(&RgbPatch::new(4, 4, &square)))
            .collect();
        copies.sort();
        copies.dedup();
        assert_eq!(copies.len(), 8);
    }

    #[test]
    fn names_parse() {
        assert_eq!("d4".parse::<Tta>(), Ok(Tta::D4));
        assert_eq!(Tta::Flips.to_string(), "flips");
        assert_eq!(Tta::Flips.copies(), 4);
        assert!("rot".parse::<Tta>().is_err());
    }
}
