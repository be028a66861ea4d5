/// A rectangle in level-0 pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u64,
    pub y: u64,
    pub width: u64,
    pub height: u64,
}

/// Where one patch lies, in level-0 pixels, and its place in the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchPosition {
    /// Row-major index in the grid.
    pub index: usize,
    pub row: usize,
    pub col: usize,
    pub x: u64,
    pub y: u64,
}

/// Square patches at `stride = patch - overlap` over a region of the slide.
///
/// The users' pipeline places `(W - patch) // stride + 1` columns (rows likewise) and leaves
/// the remainder on the right and bottom unpredicted. This grid adds one more column or row
/// where a remainder is left: its patches reach past the region's edge and are read with the
/// edge pixels repeated. The first `users_cols` x `users_rows` patches are exactly theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub region: Rect,
    pub patch: u64,
    pub stride: u64,
    pub cols: usize,
    pub rows: usize,
    pub users_cols: usize,
    pub users_rows: usize,
}

impl Grid {
    /// `None` when the overlap is not smaller than the patch.
    pub fn new(region: Rect, patch: u64, overlap: u64) -> Option<Grid> {
        if patch == 0 || overlap >= patch || region.width == 0 || region.height == 0 {
            return None;
        }
        let stride = patch - overlap;
        let count = |side: u64| -> (usize, usize) {
            if side < patch {
                // Too small for even one of the users' patches: one padded patch covers it.
                return (1, 0);
            }
            let users = (side - patch) / stride + 1;
            let covered = (users - 1) * stride + patch;
            let ours = users + u64::from(covered < side);
            (ours as usize, users as usize)
        };
        let (cols, users_cols) = count(region.width);
        let (rows, users_rows) = count(region.height);
        Some(Grid {
            region,
            patch,
            stride,
            cols,
            rows,
            users_cols,
            users_rows,
        })
    }

    pub fn len(&self) -> usize {
        self.cols * self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn position(&self, index: usize) -> PatchPosition {
        let (row, col) = (index / self.cols, index % self.cols);
        PatchPosition {
            index,
            row,
            col,
            x: self.region.x + col as u64 * self.stride,
            y: self.region.y + row as u64 * self.stride,
        }
    }

    pub fn positions(&self) -> impl Iterator<Item = PatchPosition> + '_ {
        (0..self.len()).map(|i| self.position(i))
    }

    /// The part of the region the users' grid covers (their map is 0 beyond it).
    pub fn users_extent(&self) -> (u64, u64) {
        let side = |n: usize| {
            if n == 0 {
                0
            } else {
                (n as u64 - 1) * self.stride + self.patch
            }
        };
        (side(self.users_cols), side(self.users_rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(width: u64, height: u64) -> Rect {
        Rect {
            x: 0,
            y: 0,
            width,
            height,
        }
    }

    #[test]
    fn users_grid_and_remainder() {
        // The demo slide: 4096 x 3072. Overlap 0 tiles it exactly (8 x 6, as PyTorch's 48).
        let grid = Grid::new(region(4096, 3072), 512, 0).unwrap();
        assert_eq!(
            (grid.cols, grid.rows, grid.users_cols, grid.users_rows),
            (8, 6, 8, 6)
        );
        // Overlap 64: PyTorch's 9 x 6 = 54 leaves 320 rows at the bottom; we add a row.
        let grid = Grid::new(region(4096, 3072), 512, 64).unwrap();
        assert_eq!((grid.users_cols, grid.users_rows), (9, 6));
        assert_eq!((grid.cols, grid.rows), (9, 7));
        assert_eq!(grid.users_extent(), (4096, 2752));
        let last = grid.position(grid.len() - 1);
        assert_eq!((last.x, last.y), (3584, 2688));
        assert!(last.y + 512 > 3072, "the added row reaches past the edge");
    }

    #[test]
    fn small_regions_and_bad_overlap() {
        let grid = Grid::new(region(300, 200), 512, 0).unwrap();
        assert_eq!((grid.cols, grid.rows, grid.users_cols), (1, 1, 0));
        assert!(Grid::new(region(300, 200), 512, 512).is_none());
    }
}
