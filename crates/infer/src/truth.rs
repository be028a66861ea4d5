//! Ground truth for Dice and IoU: a mask image (non-zero = tumour, any size, scaled to the
//! slide; see [`crate::mask`]) or ASAP XML polygons (level-0 coordinates), sampled one
//! level-0 row at a time. Polygons of the groups Camelyon marks as not tumour (`_2` in Camelyon16, `Exclusion` as
//! `infer` writes holes, `normal` in Camelyon17) are cut out of the others.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::GrayImage;

/// Ground-truth names tried for slide `STEM` in a folder, in order (not `STEM.tif`, which
/// in a folder of Camelyon's slides and masks is the slide).
const TRUTH_SUFFIXES: [&str; 7] = [
    ".xml",
    ".png",
    "_mask.png",
    "_Mask.png",
    "_mask.tif",
    "_Mask.tif",
    "_mask.tiff",
];

/// The ground truth of slide `stem` in `dir`: `STEM.xml` (ASAP polygons) or a mask image
/// `STEM.png`, `STEM_mask.png` or Camelyon's `STEM_mask.tif` (non-zero = tumour); none for a
/// tumour-free slide.
pub fn find_in(dir: &Path, stem: &str) -> Option<PathBuf> {
    TRUTH_SUFFIXES
        .iter()
        .map(|suffix| dir.join(format!("{stem}{suffix}")))
        .find(|p| p.is_file())
}

#[derive(Debug)]
pub enum Truth {
    Mask {
        mask: GrayImage,
        scale: (f64, f64),
    },
    /// Polygons in level-0 pixels, each set filled by the even-odd rule: tumour where
    /// `tumour` covers and `excluded` does not.
    Polygons {
        tumour: Vec<Polygon>,
        excluded: Vec<Polygon>,
    },
}

impl Truth {
    /// Reads `path`: `.xml` as ASAP annotations, anything else as a mask image, which covers
    /// the whole slide: `slide_width` x `slide_height` pixels of the grid its rows are asked on.
    pub fn load(path: &Path, slide_width: f64, slide_height: f64) -> Result<Truth> {
        let is_xml = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("xml"));
        if is_xml {
            let size = std::fs::metadata(path)
                .with_context(|| format!("{}: cannot read the annotations", path.display()))?
                .len();
            if size > MAX_ANNOTATION_BYTES {
                bail!(
                    "{}: {size} bytes of annotations; more than {MAX_ANNOTATION_BYTES} is not an ASAP file this reader takes",
                    path.display()
                );
            }
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read the annotations", path.display()))?;
            return asap_polygons(&text)
                .with_context(|| format!("{}: not ASAP annotations", path.display()));
        }
        let mask = crate::mask::read(path, slide_width, slide_height)?;
        let scale = (
            mask.width() as f64 / slide_width,
            mask.height() as f64 / slide_height,
        );
        Ok(Truth::Mask { mask, scale })
    }

    /// The same truth sampled on a grid `factor` times coarser than level 0 (a pyramid
    /// level): polygons scaled down; a mask, already scaled to the size it was loaded for,
    /// unchanged.
    pub fn downscaled(self, factor: f64) -> Truth {
        match self {
            Truth::Polygons { tumour, excluded } => {
                let scale = |polygons: Vec<Polygon>| -> Vec<Polygon> {
                    polygons
                        .into_iter()
                        .map(|p| {
                            p.into_iter()
                                .map(|(x, y)| (x / factor, y / factor))
                                .collect()
                        })
                        .collect()
                };
                Truth::Polygons {
                    tumour: scale(tumour),
                    excluded: scale(excluded),
                }
            }
            mask => mask,
        }
    }

    /// Tumour or not for `width` pixels of row `y`, from column `x`, by pixel centres.
    /// `x` and `y` may fall between pixels: a map whose corner is not on this grid's.
    pub fn row(&self, x: f64, y: f64, width: usize, out: &mut Vec<bool>) {
        out.clear();
        match self {
            Truth::Mask { mask, scale } => {
                let my = ((y + 0.5) * scale.1) as u32;
                if my >= mask.height() {
                    out.resize(width, false);
                    return;
                }
                out.extend((0..width).map(|i| {
                    let mx = ((x + i as f64 + 0.5) * scale.0) as u32;
                    mx < mask.width() && mask.get_pixel(mx, my).0[0] != 0
                }));
            }
            Truth::Polygons { tumour, excluded } => {
                fill_row(tumour, x, y, width, out);
                if !excluded.is_empty() {
                    let mut cut = Vec::new();
                    fill_row(excluded, x, y, width, &mut cut);
                    out.iter_mut().zip(cut).for_each(|(t, c)| *t &= !c);
                }
            }
        }
    }
}

/// A closed ring of level-0 points.
pub type Polygon = Vec<(f64, f64)>;

/// Annotation files larger than this are refused before reading: Camelyon's largest are a
/// few MB.
const MAX_ANNOTATION_BYTES: u64 = 256 << 20;
/// XML nodes parsed at most (about 150 bytes of memory each): a file of millions of empty
/// elements stops here instead of taking gigabytes.
const MAX_ANNOTATION_NODES: u32 = 4_000_000;

/// Groups whose polygons are not tumour.
const EXCLUDED_GROUPS: [&str; 3] = ["_2", "Exclusion", "normal"];

/// Inside-or-not of `polygons` (even-odd) for `width` pixels of row `y` from column `x`, by
/// pixel centres.
fn fill_row(polygons: &[Polygon], x: f64, y: f64, width: usize, out: &mut Vec<bool>) {
    out.clear();
    out.resize(width, false);
    let centre = y + 0.5;
    let mut crossings = Vec::new();
    for polygon in polygons {
        crossings.clear();
        for (i, &(x1, y1)) in polygon.iter().enumerate() {
            let (x2, y2) = polygon[(i + 1) % polygon.len()];
            if (y1 <= centre) != (y2 <= centre) {
                crossings.push(x1 + (centre - y1) / (y2 - y1) * (x2 - x1));
            }
        }
        crossings.sort_by(f64::total_cmp);
        for span in crossings.chunks_exact(2) {
            // Pixel i is inside when its centre is.
            let from = (span[0] - 0.5 - x).ceil().max(0.0) as usize;
            let to = ((span[1] - 0.5 - x).floor() + 1.0).clamp(0.0, width as f64) as usize;
            for inside in out.iter_mut().take(to).skip(from) {
                *inside = !*inside;
            }
        }
    }
}

/// Every `<Annotation>`'s `<Coordinate X= Y=>` points, in `Order`, sorted into tumour and
/// excluded polygons by the annotation's `PartOfGroup`.
fn asap_polygons(text: &str) -> Result<Truth> {
    let options = roxmltree::ParsingOptions {
        nodes_limit: MAX_ANNOTATION_NODES,
        ..roxmltree::ParsingOptions::default()
    };
    let document = roxmltree::Document::parse_with_options(text, options)?;
    let (mut tumour, mut excluded) = (Vec::new(), Vec::new());
    for annotation in document
        .descendants()
        .filter(|n| n.has_tag_name("Annotation"))
    {
        let mut points: Vec<(u64, f64, f64)> = Vec::new();
        for coordinate in annotation
            .descendants()
            .filter(|n| n.has_tag_name("Coordinate"))
        {
            let number = |name: &str| -> Result<f64> {
                let value = coordinate
                    .attribute(name)
                    .with_context(|| format!("a Coordinate without {name}"))?;
                let number: f64 = value.parse()?;
                if !number.is_finite() {
                    bail!("a Coordinate with {name}=\"{value}\"");
                }
                Ok(number)
            };
            let order = coordinate
                .attribute("Order")
                .and_then(|o| o.parse().ok())
                .unwrap_or(points.len() as u64);
            points.push((order, number("X")?, number("Y")?));
        }
        points.sort_by_key(|p| p.0);
        if points.len() >= 3 {
            let polygon = points.into_iter().map(|(_, x, y)| (x, y)).collect();
            let group = annotation.attribute("PartOfGroup").unwrap_or("");
            if EXCLUDED_GROUPS.contains(&group) {
                excluded.push(polygon);
            } else {
                tumour.push(polygon);
            }
        }
    }
    if tumour.is_empty() {
        bail!("no tumour Annotation with at least three Coordinates");
    }
    Ok(Truth::Polygons { tumour, excluded })
}

/// Overlap counts between the predicted map (`p >= 128`) and the truth.
#[derive(Debug, Default, Clone, Copy)]
pub struct Overlap {
    pub true_positive: u64,
    pub false_positive: u64,
    pub false_negative: u64,
}

impl Overlap {
    pub fn add_row(&mut self, predicted: &[u8], truth: &[bool]) {
        for (&p, &t) in predicted.iter().zip(truth) {
            let p = p >= 128;
            self.true_positive += (p && t) as u64;
            self.false_positive += (p && !t) as u64;
            self.false_negative += (!p && t) as u64;
        }
    }

    pub fn dice(&self) -> f64 {
        let denominator = 2 * self.true_positive + self.false_positive + self.false_negative;
        if denominator == 0 {
            1.0
        } else {
            2.0 * self.true_positive as f64 / denominator as f64
        }
    }

    pub fn iou(&self) -> f64 {
        let denominator = self.true_positive + self.false_positive + self.false_negative;
        if denominator == 0 {
            1.0
        } else {
            self.true_positive as f64 / denominator as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polygons_fill_by_pixel_centres() {
        let xml = r#"<ASAP_Annotations><Annotations>
            <Annotation Name="t" PartOfGroup="Tumor"><Coordinates>
              <Coordinate Order="0" X="2" Y="1"/><Coordinate Order="1" X="6" Y="1"/>
              <Coordinate Order="2" X="6" Y="4"/><Coordinate Order="3" X="2" Y="4"/>
            </Coordinates></Annotation></Annotations></ASAP_Annotations>"#;
        let truth = asap_polygons(xml).unwrap();
        let mut row = Vec::new();
        truth.row(0.0, 2.0, 8, &mut row);
        assert_eq!(row, [false, false, true, true, true, true, false, false]);
        truth.row(0.0, 0.0, 8, &mut row);
        assert!(row.iter().all(|&t| !t));
    }

    #[test]
    fn excluded_groups_are_cut_out_and_non_finite_coordinates_refused() {
        let square = |group: &str, from: f64, to: f64| {
            format!(
                r#"<Annotation PartOfGroup="{group}"><Coordinates>
                <Coordinate Order="0" X="{from}" Y="{from}"/><Coordinate Order="1" X="{to}" Y="{from}"/>
                <Coordinate Order="2" X="{to}" Y="{to}"/><Coordinate Order="3" X="{from}" Y="{to}"/>
                </Coordinates></Annotation>"#
            )
        };
        // Camelyon16's groups: _0 tumour, _2 not; the excluded square reaches past the tumour.
        let xml = format!(
            "<ASAP_Annotations><Annotations>{}{}</Annotations></ASAP_Annotations>",
            square("_0", 0.0, 8.0),
            square("_2", 4.0, 12.0)
        );
        let truth = asap_polygons(&xml).unwrap();
        let mut row = Vec::new();
        truth.row(0.0, 6.0, 12, &mut row);
        let expected: Vec<bool> = (0..12).map(|x| x < 4).collect();
        assert_eq!(row, expected);
        let nan = square("Tumor", 0.0, 8.0).replace(r#"X="8""#, r#"X="NaN""#);
        let error = asap_polygons(&format!("<A><Annotations>{nan}</Annotations></A>"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("X=\"NaN\""), "{error}");
    }

    /// Millions of empty elements (a mutation probe's 120 MB file took 4.3 GB) stop at the
    /// node limit.
    #[test]
    fn a_flood_of_elements_stops_at_the_node_limit() {
        let flood = format!(
            "<r>{}</r>",
            "<a/>".repeat(MAX_ANNOTATION_NODES as usize + 10)
        );
        let error = format!("{:#}", asap_polygons(&flood).unwrap_err());
        assert!(error.contains("nodes limit"), "{error}");
    }

    #[test]
    fn dice_and_iou() {
        let mut overlap = Overlap::default();
        overlap.add_row(&[200, 200, 0, 0], &[true, false, true, false]);
        assert_eq!((overlap.dice(), overlap.iou()), (0.5, 1.0 / 3.0));
    }
}
