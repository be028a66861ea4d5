//! What goes in and comes out of the model: RGB u8 patches and per-pixel probabilities.

/// An RGB u8 patch, row-major, 3 bytes a pixel (what a slide reader or an image decoder hands out).
#[derive(Debug, Clone, Copy)]
pub struct RgbPatch<'a> {
    pub width: usize,
    pub height: usize,
    pub pixels: &'a [u8],
}

impl<'a> RgbPatch<'a> {
    pub fn new(width: usize, height: usize, pixels: &'a [u8]) -> Self {
        Self {
            width,
            height,
            pixels,
        }
    }
}

/// The users' normalisation, `(p / 255 - 0.5) / 0.5`, computed in f32 as torchvision's
/// `ToTensor` + `Normalize` do, appended to `out` as CHW planes.
pub fn normalise_into(patch: &RgbPatch, out: &mut Vec<f32>) {
    let plane = patch.width * patch.height;
    let start = out.len();
    out.resize(start + 3 * plane, 0.0);
    let (red, rest) = out[start..].split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    let normalise = |p: u8| (p as f32 / 255.0 - 0.5) / 0.5;
    for (i, rgb) in patch.pixels.chunks_exact(3).enumerate() {
        red[i] = normalise(rgb[0]);
        green[i] = normalise(rgb[1]);
        blue[i] = normalise(rgb[2]);
    }
}

/// Per-pixel tumour probability of one patch: the max over the model's sigmoid channels.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbabilityMap {
    pub width: usize,
    pub height: usize,
    /// Row-major, in [0, 1].
    pub values: Vec<f32>,
}

impl ProbabilityMap {
    /// The saved map of the users' pipeline: `floor(255 p)` as u8.
    pub fn to_u8(&self) -> Vec<u8> {
        self.values.iter().map(|&p| probability_to_u8(p)).collect()
    }
}

/// A batch's tumour probabilities as the engine returns them, one patch after another
/// (`[N, H, W]`, row-major): lent patch by patch rather than copied into a map each.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbabilityMaps {
    pub width: usize,
    pub height: usize,
    /// Row-major, in [0, 1].
    pub values: Vec<f32>,
}

impl ProbabilityMaps {
    /// Patch `index`'s probabilities, row-major.
    pub fn map(&self, index: usize) -> &[f32] {
        let plane = self.width * self.height;
        &self.values[index * plane..][..plane]
    }

    /// Each patch's probabilities, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[f32]> {
        self.values.chunks_exact(self.width * self.height)
    }

    /// A map of its own for each patch.
    pub fn into_maps(self) -> Vec<ProbabilityMap> {
        self.iter()
            .map(|values| ProbabilityMap {
                width: self.width,
                height: self.height,
                values: values.to_vec(),
            })
            .collect()
    }
}

/// `floor(255 p)`, clamped to the u8 range.
pub fn probability_to_u8(p: f32) -> u8 {
    (255.0 * p).clamp(0.0, 255.0) as u8
}
