//! Marching squares on a u8 map fed row by row: d3-contour's algorithm, as the contour crate
//! implements it (its rings, point for point, with its linear smoothing; the tests compare),
//! but each pair of rows traced as it arrives, so that only the last is left when the map is
//! complete, and cells decided on u8 levels.
//!
//! Grid node `(x, y)` (a map pixel) sits at `(x + 0.5, y + 0.5)`; cell `(x, y)`, for `x` in
//! `-1..width` and `y` in `-1..height`, has nodes `(x, y)` to `(x + 1, y + 1)` at its corners,
//! those outside the map below the level. A ring's points are the midpoints of the cell
//! edges it crosses, moved along the edge to where the values cross the level.

use std::collections::HashMap;

/// The segments crossing a cell, start and end in the cell's coordinates, by its corners at or
/// above the level: bit 0 lower left, 1 lower right, 2 upper right, 3 upper left. Outlines
/// run counter-clockwise (positive shoelace sum in these coordinates, y down), holes clockwise.
const CASES: [&[[[f64; 2]; 2]]; 16] = [
    &[],
    &[[[1.0, 1.5], [0.5, 1.0]]],
    &[[[1.5, 1.0], [1.0, 1.5]]],
    &[[[1.5, 1.0], [0.5, 1.0]]],
    &[[[1.0, 0.5], [1.5, 1.0]]],
    &[[[1.0, 1.5], [0.5, 1.0]], [[1.0, 0.5], [1.5, 1.0]]],
    &[[[1.0, 0.5], [1.0, 1.5]]],
    &[[[1.0, 0.5], [0.5, 1.0]]],
    &[[[0.5, 1.0], [1.0, 0.5]]],
    &[[[1.0, 1.5], [1.0, 0.5]]],
    &[[[0.5, 1.0], [1.0, 0.5]], [[1.5, 1.0], [1.0, 1.5]]],
    &[[[1.5, 1.0], [1.0, 0.5]]],
    &[[[0.5, 1.0], [1.5, 1.0]]],
    &[[[1.0, 1.5], [1.5, 1.0]]],
    &[[[0.5, 1.0], [1.0, 1.5]]],
    &[],
];

pub type Ring = Vec<[f64; 2]>;

/// An open run of segments, its ends keyed by their unsmoothed points' indices.
struct Fragment {
    start: usize,
    end: usize,
    ring: Ring,
}

/// The closed rings of `value >= level` over a map streamed top to bottom (as many rows as
/// come: a map cut short is traced as the map it is).
pub struct RingTracer {
    width: usize,
    level: u8,
    /// The row above the next one (none before the first).
    above: Option<Vec<u8>>,
    rows: usize,
    fragments: HashMap<usize, Fragment>,
    by_start: HashMap<usize, usize>,
    by_end: HashMap<usize, usize>,
    next_fragment: usize,
    rings: Vec<Ring>,
}

impl RingTracer {
    pub fn new(width: usize, level: u8) -> RingTracer {
        RingTracer {
            width,
            level,
            above: None,
            rows: 0,
            fragments: HashMap::new(),
            by_start: HashMap::new(),
            by_end: HashMap::new(),
            next_fragment: 0,
            rings: Vec::new(),
        }
    }

    /// Traces the cells between the previous row and `row` (the map's next, `width` long).
    pub fn add_row(&mut self, row: &[u8]) {
        let above = self.above.take();
        self.cells(self.rows as i64 - 1, above.as_deref(), Some(row));
        self.above = Some(row.to_vec());
        self.rows += 1;
    }

    /// Traces the cells below the last row; the rings in the order they closed, in grid
    /// coordinates (node `(x, y)` at `(x + 0.5, y + 0.5)`).
    pub fn finish(mut self) -> Vec<Ring> {
        let above = self.above.take();
        self.cells(self.rows as i64 - 1, above.as_deref(), None);
        self.rings
    }

    /// The cells of row `y`, between node rows `above` (`y`) and `below` (`y + 1`).
    fn cells(&mut self, y: i64, above: Option<&[u8]>, below: Option<&[u8]>) {
        // Each row's bits (1: at or above the level) with a 0 either side, outside the map.
        let bits = |row: Option<&[u8]>| {
            let mut bits = vec![0u8; self.width + 2];
            for (bit, &value) in bits[1..].iter_mut().zip(row.unwrap_or_default()) {
                *bit = (value >= self.level) as u8;
            }
            bits
        };
        let (top, bottom) = (bits(above), bits(below));
        let rows = Rows {
            y,
            above,
            below,
            present: (y + 1) as usize + below.is_some() as usize,
        };
        for x in 0..=self.width {
            let case = bottom[x] | bottom[x + 1] << 1 | top[x + 1] << 2 | top[x] << 3;
            for segment in CASES[case as usize] {
                self.stitch(segment, x as i64 - 1, &rows);
            }
        }
    }

    /// The unsmoothed point's key: unique per cell edge.
    fn key(&self, [x, y]: [f64; 2]) -> usize {
        (x * 2.0 + y * ((self.width + 1) * 4) as f64) as usize
    }

    /// The point moved along its edge to where the values cross the level (the contour
    /// crate's linear smoothing, its arithmetic kept; points on the map's border stay).
    fn smooth(&self, [x, y]: [f64; 2], rows: &Rows) -> [f64; 2] {
        let threshold = 0.5;
        let (xt, yt) = (x.trunc() as usize, y.trunc() as usize);
        let value = |row: usize, col: usize| rows.at(row)[col] as f64 / 255.0;
        // The crate's bounds are the whole map's; rows not come yet are not read.
        let height = rows.present;
        let mut smoothed = [x, y];
        if yt * self.width + xt < self.width * height {
            // On a horizontal edge, between nodes (xt - 1, yt) and (xt, yt).
            if x > 0.0 && x < self.width as f64 && (xt as f64 - x).abs() < f64::EPSILON {
                let (v0, v1) = (value(yt, xt - 1), value(yt, xt));
                smoothed[0] = x + (threshold - v0) / (v1 - v0) - 0.5;
            }
            // On a vertical edge, between nodes (xt, yt - 1) and (xt, yt).
            if y > 0.0 && y < height as f64 && (yt as f64 - y).abs() < f64::EPSILON {
                let (v0, v1) = (value(yt - 1, xt), value(yt, xt));
                smoothed[1] = y + (threshold - v0) / (v1 - v0) - 0.5;
            }
        }
        smoothed
    }

    /// Joins the segment of cell `(x, rows.y)` to the open fragments, closing a ring when its
    /// ends meet.
    fn stitch(&mut self, segment: &[[f64; 2]; 2], x: i64, rows: &Rows) {
        let at = |[px, py]: [f64; 2]| [px + x as f64, py + rows.y as f64];
        let (start, end) = (at(segment[0]), at(segment[1]));
        let (start_key, end_key) = (self.key(start), self.key(end));
        let (start, end) = (self.smooth(start, rows), self.smooth(end, rows));
        if let Some(f) = self.by_end.remove(&start_key) {
            match self.by_start.remove(&end_key) {
                Some(g) if g == f => {
                    let mut ring = self.take(f).ring;
                    ring.push(end);
                    self.rings.push(ring);
                }
                Some(g) => {
                    let (mut f, g) = (self.take(f), self.take(g));
                    f.ring.extend(g.ring);
                    self.open(f.start, g.end, f.ring);
                }
                None => {
                    let fragment = self.fragments.get_mut(&f).expect("open");
                    fragment.ring.push(end);
                    fragment.end = end_key;
                    self.by_end.insert(end_key, f);
                }
            }
        } else if let Some(f) = self.by_start.remove(&end_key) {
            let fragment = self.fragments.get_mut(&f).expect("open");
            fragment.ring.insert(0, start);
            fragment.start = start_key;
            self.by_start.insert(start_key, f);
        } else {
            self.open(start_key, end_key, vec![start, end]);
        }
    }

    fn open(&mut self, start: usize, end: usize, ring: Ring) {
        let id = self.next_fragment;
        self.next_fragment += 1;
        self.by_start.insert(start, id);
        self.by_end.insert(end, id);
        self.fragments.insert(id, Fragment { start, end, ring });
    }

    fn take(&mut self, id: usize) -> Fragment {
        self.fragments.remove(&id).expect("open")
    }
}

/// The node rows a cell row reads.
struct Rows<'a> {
    y: i64,
    above: Option<&'a [u8]>,
    below: Option<&'a [u8]>,
    /// Node rows come so far, `below` included.
    present: usize,
}

impl Rows<'_> {
    /// Node row `row`, `y` or `y + 1`.
    fn at(&self, row: usize) -> &[u8] {
        let row = if row as i64 == self.y {
            self.above
        } else {
            self.below
        };
        row.expect("smoothing reads only the rows beside a crossed edge")
    }
}

/// The rings, scaled by `step` and moved by `origin` (in the contour crate's arithmetic), as
/// outlines (positive shoelace sum) each with the holes whose first point off an outline lies
/// in it, a hole going to the first such outline.
pub fn polygons(rings: Vec<Ring>, step: f64, origin: [f64; 2]) -> Vec<(Ring, Vec<Ring>)> {
    let (mut polygons, mut holes) = (Vec::new(), Vec::new());
    for mut ring in rings {
        if origin != [0.0, 0.0] || step != 1.0 {
            for point in &mut ring {
                *point = [point[0] * step + origin[0], point[1] * step + origin[1]];
            }
        }
        if shoelace(&ring) > 0.0 {
            polygons.push((ring, Vec::new()));
        } else {
            holes.push(ring);
        }
    }
    for hole in holes {
        if let Some((_, holes)) = polygons
            .iter_mut()
            .find(|(outline, _)| contains(outline, &hole) != -1)
        {
            holes.push(hole);
        }
    }
    polygons
}

/// Twice the signed area (the contour crate's sum, from the last point to the first).
fn shoelace(ring: &[[f64; 2]]) -> f64 {
    let last = ring[ring.len() - 1];
    let closing = last[1] * ring[0][0] - last[0] * ring[0][1];
    ring.windows(2).fold(closing, |sum, pair| {
        sum + (pair[0][1] * pair[1][0] - pair[0][0] * pair[1][1])
    })
}

/// 1 if the first of `hole`'s points not on `ring` lies inside it, -1 outside, 0 if none.
fn contains(ring: &[[f64; 2]], hole: &[[f64; 2]]) -> i32 {
    hole.iter()
        .map(|point| ring_contains(ring, *point))
        .find(|&side| side != 0)
        .unwrap_or(0)
}

/// 1 inside `ring`, -1 outside, 0 on it (even-odd crossings).
fn ring_contains(ring: &[[f64; 2]], point: [f64; 2]) -> i32 {
    let [x, y] = point;
    let mut inside = -1;
    let mut j = ring.len() - 1;
    for i in 0..ring.len() {
        let ([xi, yi], [xj, yj]) = (ring[i], ring[j]);
        if on_segment(ring[i], ring[j], point) {
            return 0;
        }
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = -inside;
        }
        j = i;
    }
    inside
}

fn on_segment(a: [f64; 2], b: [f64; 2], c: [f64; 2]) -> bool {
    let collinear =
        ((b[0] - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (b[1] - a[1])).abs() < f64::EPSILON;
    let between = |p: f64, q: f64, r: f64| p <= q && q <= r || r <= q && q <= p;
    collinear
        && if (a[0] - b[0]).abs() < f64::EPSILON {
            between(a[1], c[1], b[1])
        } else {
            between(a[0], c[0], b[0])
        }
}
