//! The evaluation mask: tumour grown by a distance, holes filled, 8-connected lesions
//! labelled in raster order, isolated tumour cells marked (as `scipy.ndimage` and
//! `skimage.measure` compute them for Camelyon's and MONAI's evaluations).

use crate::Plane;

/// A squared distance no pixel reaches.
const FAR: f64 = f64::MAX / 4.0;

/// The lesions of one slide at the evaluation level.
#[derive(Debug, Clone)]
pub struct Lesions {
    width: usize,
    /// 0 outside every lesion, else the lesion's label (1 first).
    labels: Vec<u32>,
    /// By label - 1: an isolated tumour cell.
    isolated: Vec<bool>,
}

impl Lesions {
    /// From a tumour mask (true = tumour): grown by `grow` pixels (pixels whose centre is
    /// nearer than that to a tumour pixel's), holes filled, split into 8-connected lesions; a
    /// lesion whose major axis (that of the ellipse with its second moments) is under
    /// `isolated_below` pixels is an isolated tumour cell.
    pub fn new(tumour: Plane<bool>, grow: f64, isolated_below: f64) -> Lesions {
        let Plane { width, height, .. } = tumour;
        assert_eq!(tumour.values.len(), width * height);
        let squared = squared_distances(tumour);
        let mut inside: Vec<bool> = squared.iter().map(|&d| d.sqrt() < grow).collect();
        fill_holes(&mut inside, width, height);
        let labels = label_8_connected(&inside, width, height);
        let isolated = major_axes(&labels, width)
            .into_iter()
            .map(|axis| axis < isolated_below)
            .collect();
        Lesions {
            width,
            labels,
            isolated,
        }
    }

    /// Lesion labels, isolated tumour cells included.
    pub fn labels(&self) -> usize {
        self.isolated.len()
    }

    /// Lesions that count: not isolated tumour cells.
    pub fn targets(&self) -> usize {
        self.isolated.iter().filter(|&&isolated| !isolated).count()
    }

    pub fn isolated_tumour_cells(&self) -> usize {
        self.labels() - self.targets()
    }

    /// The label at pixel `(x, y)`, 0 outside every lesion.
    pub fn label_at(&self, x: usize, y: usize) -> u32 {
        self.labels[y * self.width + x]
    }

    pub fn is_isolated(&self, label: u32) -> bool {
        self.isolated[label as usize - 1]
    }
}

/// Each pixel's squared Euclidean distance to the nearest tumour pixel ([`FAR`] in a mask
/// without tumour): exact, by Felzenszwalb and Huttenlocher's lower envelope of parabolas,
/// along columns then rows.
fn squared_distances(tumour: Plane<bool>) -> Vec<f64> {
    let Plane { width, height, .. } = tumour;
    let mut grid: Vec<f64> = tumour
        .values
        .iter()
        .map(|&t| if t { 0.0 } else { FAR })
        .collect();
    let mut line = Vec::new();
    let mut out = Vec::new();
    for x in 0..width {
        line.clear();
        line.extend((0..height).map(|y| grid[y * width + x]));
        envelope(&line, &mut out);
        for (y, &d) in out.iter().enumerate() {
            grid[y * width + x] = d;
        }
    }
    for row in grid.chunks_exact_mut(width) {
        line.clear();
        line.extend_from_slice(row);
        envelope(&line, &mut out);
        row.copy_from_slice(&out);
    }
    grid
}

/// `out[q] = min over p of (q - p)² + f[p]`, in linear time.
fn envelope(f: &[f64], out: &mut Vec<f64>) {
    let n = f.len();
    out.clear();
    out.resize(n, FAR);
    // The parabolas of the envelope (their apex positions) and where each takes over.
    let mut apex = vec![0usize; n];
    let mut from = vec![0f64; n + 1];
    let mut k = 0usize;
    let mut seen = false;
    for q in 0..n {
        if f[q] >= FAR {
            continue;
        }
        if !seen {
            seen = true;
            apex[0] = q;
            from[0] = f64::NEG_INFINITY;
            from[1] = f64::INFINITY;
            continue;
        }
        let meet = |p: usize| {
            ((f[q] + (q * q) as f64) - (f[p] + (p * p) as f64)) / (2.0 * (q as f64 - p as f64))
        };
        let mut s = meet(apex[k]);
        while s <= from[k] {
            k -= 1;
            s = meet(apex[k]);
        }
        k += 1;
        apex[k] = q;
        from[k] = s;
        from[k + 1] = f64::INFINITY;
    }
    if !seen {
        return;
    }
    let mut k = 0;
    for (q, value) in out.iter_mut().enumerate() {
        while from[k + 1] < q as f64 {
            k += 1;
        }
        let d = q as f64 - apex[k] as f64;
        *value = d * d + f[apex[k]];
    }
}

/// Sets every background pixel not 4-connected to the image's border (a hole).
fn fill_holes(inside: &mut [bool], width: usize, height: usize) {
    let mut outside = vec![false; inside.len()];
    let mut stack: Vec<usize> = (0..width)
        .flat_map(|x| [x, (height - 1) * width + x])
        .chain((0..height).flat_map(|y| [y * width, y * width + width - 1]))
        .filter(|&i| !inside[i])
        .collect();
    while let Some(i) = stack.pop() {
        if outside[i] || inside[i] {
            continue;
        }
        outside[i] = true;
        let (x, y) = (i % width, i / width);
        if x > 0 {
            stack.push(i - 1);
        }
        if x + 1 < width {
            stack.push(i + 1);
        }
        if y > 0 {
            stack.push(i - width);
        }
        if y + 1 < height {
            stack.push(i + width);
        }
    }
    for (pixel, outside) in inside.iter_mut().zip(outside) {
        *pixel = !outside;
    }
}

/// 8-connected regions, labelled 1, 2, ... in the raster order of their first pixel.
pub(crate) fn label_8_connected(inside: &[bool], width: usize, height: usize) -> Vec<u32> {
    let mut labels = vec![0u32; inside.len()];
    let mut next = 0u32;
    let mut stack = Vec::new();
    for start in 0..inside.len() {
        if !inside[start] || labels[start] != 0 {
            continue;
        }
        next += 1;
        labels[start] = next;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = ((i % width) as isize, (i / width) as isize);
            for (dx, dy) in [
                (-1, -1),
                (0, -1),
                (1, -1),
                (-1, 0),
                (1, 0),
                (-1, 1),
                (0, 1),
                (1, 1),
            ] {
                let (nx, ny) = (x + dx, y + dy);
                if nx < 0 || ny < 0 || nx >= width as isize || ny >= height as isize {
                    continue;
                }
                let j = ny as usize * width + nx as usize;
                if inside[j] && labels[j] == 0 {
                    labels[j] = next;
                    stack.push(j);
                }
            }
        }
    }
    labels
}

/// Each label's major axis length: 4 √λ, λ the larger eigenvalue of the covariance of its
/// pixels' (row, column) coordinates (scikit-image's `major_axis_length`).
pub(crate) fn major_axes(labels: &[u32], width: usize) -> Vec<f64> {
    let count = labels.iter().copied().max().unwrap_or(0) as usize;
    let pixels = || {
        labels
            .iter()
            .enumerate()
            .filter(|&(_, &l)| l != 0)
            .map(|(i, &l)| (l as usize - 1, (i / width) as f64, (i % width) as f64))
    };
    // Centroids first, then moments about them (no cancellation on large lesions).
    let mut sums = vec![(0.0f64, 0.0f64, 0.0f64); count];
    for (l, r, c) in pixels() {
        sums[l].0 += 1.0;
        sums[l].1 += r;
        sums[l].2 += c;
    }
    let mut moments = vec![(0.0f64, 0.0f64, 0.0f64); count];
    for (l, r, c) in pixels() {
        let (n, sr, sc) = sums[l];
        let (dr, dc) = (r - sr / n, c - sc / n);
        moments[l].0 += dr * dr;
        moments[l].1 += dc * dc;
        moments[l].2 += dr * dc;
    }
    sums.iter()
        .zip(moments)
        .map(|(&(n, _, _), (rr, cc, rc))| {
            let (a, c, b) = (rr / n, cc / n, rc / n);
            let larger = (a + c) / 2.0 + (((a - c) / 2.0).powi(2) + b * b).sqrt();
            4.0 * larger.max(0.0).sqrt()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(width: usize, height: usize, values: &[bool]) -> Plane<'_, bool> {
        Plane {
            width,
            height,
            values,
        }
    }

    #[test]
    fn distances_are_exact_euclidean() {
        let (width, height) = (7, 5);
        let mut tumour = vec![false; width * height];
        tumour[2 * width + 1] = true;
        tumour[4 * width + 6] = true;
        let squared = squared_distances(plane(width, height, &tumour));
        for y in 0..height {
            for x in 0..width {
                let brute = [(1, 2), (6, 4)]
                    .iter()
                    .map(|&(tx, ty)| {
                        let (dx, dy) = (x as f64 - tx as f64, y as f64 - ty as f64);
                        dx * dx + dy * dy
                    })
                    .fold(f64::MAX, f64::min);
                assert_eq!(squared[y * width + x], brute, "({x}, {y})");
            }
        }
        assert!(
            squared_distances(plane(3, 2, &[false; 6]))
                .iter()
                .all(|&d| d >= FAR)
        );
    }

    #[test]
    fn a_ring_is_filled_and_far_spots_are_separate_lesions() {
        // A 9x9 ring (one lesion, hole filled) and a single pixel far away (an isolated cell).
        let (width, height) = (40, 20);
        let mut tumour = vec![false; width * height];
        for y in 2..11 {
            for x in 2..11 {
                tumour[y * width + x] = y == 2 || y == 10 || x == 2 || x == 10;
            }
        }
        tumour[15 * width + 35] = true;
        let lesions = Lesions::new(plane(width, height, &tumour), 0.5, 5.0);
        assert_eq!(lesions.labels(), 2);
        assert_eq!(lesions.label_at(6, 6), 1, "the hole is filled");
        assert_eq!(lesions.label_at(35, 15), 2);
        assert!(!lesions.is_isolated(1) && lesions.is_isolated(2));
        assert_eq!((lesions.targets(), lesions.isolated_tumour_cells()), (1, 1));
        // Grown by 3 pixels, a spot 4 pixels from the ring's edge joins it.
        tumour[6 * width + 14] = true;
        let grown = Lesions::new(plane(width, height, &tumour), 3.0, 5.0);
        assert_eq!(grown.label_at(14, 6), grown.label_at(6, 6));
    }

    #[test]
    fn major_axis_of_a_line_is_its_length_scaled_as_scikit_image() {
        // A 1 x n line: variance (n² - 1) / 12, major axis 4 √that.
        let n = 11;
        let labels: Vec<u32> = (0..20).map(|x| (x < n) as u32).collect();
        let axis = major_axes(&labels, 20)[0];
        let expected = 4.0 * (((n * n - 1) as f64) / 12.0).sqrt();
        assert!((axis - expected).abs() < 1e-12, "{axis} {expected}");
    }
}
