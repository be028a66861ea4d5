//! The tumour as shapes other programs open: contours of `p >= 0.5` traced once, as the
//! low-resolution map streams (d3-contour's marching squares, as the contour crate has them:
//! `rings`), written as QuPath's GeoJSON and as ASAP's XML (the format of Camelyon's
//! annotations), both in level-0 pixels of the slide.

use std::fmt::Write as _;

use image::GrayImage;
use serde_json::{Value, json};

use rings::RingTracer;

mod rings;

/// The class every shape carries, as Camelyon's annotations and QuPath's built-in class name it.
const CLASS: &str = "Tumor";

/// One tumour region: its outline and its holes, closed rings in level-0 pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub exterior: Vec<[f64; 2]>,
    pub holes: Vec<Vec<[f64; 2]>>,
}

impl Region {
    /// Level-0 pixels inside the outline and outside the holes.
    pub fn area(&self) -> f64 {
        ring_area(&self.exterior) - self.holes.iter().map(|h| ring_area(h)).sum::<f64>()
    }
}

/// Shoelace area of a ring (first point repeated last or not), whatever its orientation.
fn ring_area(ring: &[[f64; 2]]) -> f64 {
    let twice: f64 = ring
        .iter()
        .zip(ring.iter().cycle().skip(1))
        .map(|(a, b)| a[0] * b[1] - b[0] * a[1])
        .sum();
    twice.abs() / 2.0
}

/// The smallest level of `p >= 0.5` in the u8 map (`v / 255 >= 0.5`).
const TUMOUR_LEVEL: u8 = 128;

/// Where a low-resolution map lies on the slide: its pixel `(x, y)` covers level-0 pixels from
/// `origin + (x, y) * downsample`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapPlacement {
    pub downsample: f64,
    pub origin: [u64; 2],
}

impl MapPlacement {
    /// Map pixel `i`'s centre along `axis` (0: x, 1: y), in level-0 pixels.
    fn centre(self, i: usize, axis: usize) -> f64 {
        self.origin[axis] as f64 + (i as f64 + 0.5) * self.downsample
    }

    /// The first map pixel along `axis` whose centre is at or past level-0 coordinate `at`.
    fn first_at(self, at: f64, axis: usize) -> usize {
        ((at - self.origin[axis] as f64) / self.downsample - 0.5)
            .ceil()
            .max(0.0) as usize
    }
}

/// Contours of `p >= 0.5` on a map placed on the slide as a [`MapPlacement`] says, traced as
/// the map's rows arrive (top to bottom, each once): when the last one has, only its cells are
/// left. Regions under a level-0 pixel's area are dropped.
pub struct TumourTracer {
    rings: RingTracer,
    placement: MapPlacement,
}

impl TumourTracer {
    /// For a map `width` wide.
    pub fn new(width: usize, placement: MapPlacement) -> TumourTracer {
        TumourTracer {
            rings: RingTracer::new(width, TUMOUR_LEVEL),
            placement,
        }
    }

    /// The map's next row.
    pub fn add_row(&mut self, row: &[u8]) {
        self.rings.add_row(row);
    }

    /// The regions of the rows added (all of the map's, unless it was cut short).
    pub fn finish(self) -> Vec<Region> {
        let MapPlacement { downsample, origin } = self.placement;
        rings::polygons(self.rings.finish(), downsample, origin.map(|v| v as f64))
            .into_iter()
            .map(|(outline, holes)| rounded(outline, holes))
            // A speck of the map's finest values: less than a level-0 pixel.
            .filter(|region| region.area() >= 1.0)
            .collect()
    }
}

/// A region with its vertices rounded to a thousandth of a level-0 pixel, for short numbers
/// in the files. Not to whole pixels: a contour's vertices lie on the map's grid lines, at
/// least 1/256 of a map pixel from its nodes, and rounded to whole level-0 pixels, parts of a
/// ring met or crossed (9 of the demo slide's 92 regions were not valid polygons to GEOS, as
/// QuPath's JTS judges them).
fn rounded(outline: Vec<[f64; 2]>, holes: Vec<Vec<[f64; 2]>>) -> Region {
    let round = |ring: Vec<[f64; 2]>| -> Vec<[f64; 2]> {
        let thousandths = |v: f64| (v * 1000.0).round() / 1000.0;
        ring.into_iter()
            .map(|[x, y]| [thousandths(x), thousandths(y)])
            .collect()
    };
    Region {
        exterior: round(outline),
        holes: holes.into_iter().map(round).collect(),
    }
}

/// What the model said inside a region, among its measurements in QuPath.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegionProbability {
    /// The mean over the map's pixels inside the region (each the mean of the probability
    /// map's pixels it covers, `STEM.prob.tif`'s).
    pub mean: f64,
    /// The highest of the probability map's pixels that the region's map pixels cover.
    pub max: f64,
}

/// A region with what the model said inside it.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasuredRegion {
    pub region: Region,
    pub probability: RegionProbability,
}

/// The regions with their [`RegionProbability`], from the map their contours were traced on:
/// `means` (row-major, `width` wide, placed as `placement` says) and `peaks` (the probability
/// map's highest value behind each of its pixels). A map pixel is inside a region where its
/// centre is (the contours pass between pixel centres, never through one): each map row's
/// centre line crosses the rings, outline and holes alike, and the pixels between the first
/// crossing and the second, the third and the fourth, ... are in. A row looks only at the
/// edges that span it (a scanline fill), so a region costs its edges and its pixels.
pub fn measure(
    regions: Vec<Region>,
    means: &[u8],
    peaks: &[u8],
    width: usize,
    placement: MapPlacement,
) -> Vec<MeasuredRegion> {
    let height = means.len() / width.max(1);
    regions
        .into_iter()
        .map(|region| {
            // The edges, each with its top end first, in order of their tops. A line crosses
            // an edge where `top <= line < bottom`, so that a vertex on the line counts once
            // where the ring passes through it and not at all where it only touches it, and
            // a level edge never.
            let mut edges: Vec<[[f64; 2]; 2]> = std::iter::once(&region.exterior)
                .chain(&region.holes)
                .flat_map(|ring| ring.iter().zip(ring.iter().cycle().skip(1)))
                .map(|(&a, &b)| if a[1] <= b[1] { [a, b] } else { [b, a] })
                .filter(|[top, bottom]| top[1] < bottom[1])
                .collect();
            edges.sort_by(|e, f| e[0][1].total_cmp(&f[0][1]));
            let mut waiting = edges.iter().peekable();
            let mut spanning: Vec<&[[f64; 2]; 2]> = Vec::new();
            let mut crossings = Vec::new();
            let (mut sum, mut count, mut max) = (0u64, 0u64, 0u8);
            let top = edges.first().map_or(f64::MAX, |edge| edge[0][1]);
            for y in placement.first_at(top, 1)..height {
                let line = placement.centre(y, 1);
                while let Some(edge) = waiting.next_if(|edge| edge[0][1] <= line) {
                    spanning.push(edge);
                }
                spanning.retain(|[_, bottom]| line < bottom[1]);
                if spanning.is_empty() && waiting.peek().is_none() {
                    break;
                }
                crossings.clear();
                crossings.extend(
                    spanning
                        .iter()
                        .map(|[a, b]| a[0] + (line - a[1]) / (b[1] - a[1]) * (b[0] - a[0])),
                );
                crossings.sort_by(f64::total_cmp);
                for span in crossings.chunks_exact(2) {
                    let [from, to] =
                        [span[0], span[1]].map(|x| placement.first_at(x, 0).min(width));
                    for at in y * width + from..y * width + to {
                        sum += means[at] as u64;
                        count += 1;
                        max = max.max(peaks[at]);
                    }
                }
            }
            let probability = RegionProbability {
                // Every region holds a pixel at or above the level; `max(1)` keeps one that
                // held none from dividing by zero.
                mean: sum as f64 / count.max(1) as f64 / 255.0,
                max: max as f64 / 255.0,
            };
            MeasuredRegion {
                region,
                probability,
            }
        })
        .collect()
}

/// [`TumourTracer`] over a whole map.
pub fn tumour_regions(map: &GrayImage, placement: MapPlacement) -> Vec<Region> {
    let width = map.width() as usize;
    let mut tracer = TumourTracer::new(width, placement);
    for row in map.as_raw().chunks_exact(width) {
        tracer.add_row(row);
    }
    tracer.finish()
}

/// A GeoJSON FeatureCollection as QuPath exports annotations: one feature per region, named
/// as [`asap_xml`] names it ("Tumor 3") and classified "Tumor", holes as polygon interiors,
/// among the measurements its area (in µm² when the slide's mpp is known, else in pixels, as
/// QuPath names them) and its probabilities, by which QuPath's measurement table sorts them.
pub fn qupath_geojson(regions: &[MeasuredRegion], mpp: Option<f64>) -> Value {
    let features: Vec<Value> = regions
        .iter()
        .enumerate()
        .map(
            |(
                index,
                MeasuredRegion {
                    region,
                    probability,
                },
            )| {
                let mut rings = vec![region.exterior.clone()];
                rings.extend(region.holes.iter().cloned());
                let mut measurements = match mpp {
                    Some(mpp) => json!({"Area µm^2": region.area() * mpp * mpp}),
                    None => json!({"Area px^2": region.area()}),
                };
                measurements["Mean probability"] = json!(probability.mean);
                measurements["Max probability"] = json!(probability.max);
                json!({
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": rings},
                    "properties": {
                        "objectType": "annotation",
                        "name": region_name(index),
                        "classification": {"name": CLASS, "color": [200, 0, 0]},
                        "isLocked": false,
                        "measurements": measurements
                    }
                })
            },
        )
        .collect();
    json!({"type": "FeatureCollection", "features": features})
}

/// The name of the region at `index` in the outputs: "Tumor 1", "Tumor 2", ...
fn region_name(index: usize) -> String {
    format!("{CLASS} {}", index + 1)
}

/// ASAP's XML as the Camelyon annotations use it: each outline an `Annotation` of group
/// "Tumor" and each hole one of group "Exclusion" (Camelyon's own evaluation and our `--truth`
/// reader cut those out), coordinates in level-0 pixels. ASAP's format has no measurements,
/// so each outline's name carries its probabilities, which ASAP's annotation list shows
/// ("Tumor 2: mean p 0.812, max p 0.969"); its holes are named after it ("Tumor 2: hole 1").
pub fn asap_xml(regions: &[MeasuredRegion]) -> String {
    let mut xml = String::from("<?xml version=\"1.0\"?>\n<ASAP_Annotations>\n\t<Annotations>\n");
    let rings = regions.iter().enumerate().flat_map(|(index, measured)| {
        let MeasuredRegion {
            region,
            probability,
        } = measured;
        let name = region_name(index);
        let outline = (
            region.exterior.as_slice(),
            format!(
                "{name}: mean p {:.3}, max p {:.3}",
                probability.mean, probability.max
            ),
            CLASS,
            "#F4FA58",
        );
        let holes = region.holes.iter().enumerate().map(move |(hole, ring)| {
            let hole_name = format!("{name}: hole {}", hole + 1);
            (ring.as_slice(), hole_name, "Exclusion", "#64FE2E")
        });
        std::iter::once(outline).chain(holes)
    });
    for (ring, name, group, colour) in rings {
        // The contour's rings repeat their first point last; ASAP closes rings itself.
        let open = match ring {
            [first, .., last] if first == last => &ring[..ring.len() - 1],
            _ => ring,
        };
        let _ = writeln!(
            xml,
            "\t\t<Annotation Name=\"{name}\" Type=\"Polygon\" PartOfGroup=\"{group}\" Color=\"{colour}\">\n\t\t\t<Coordinates>"
        );
        for (order, [x, y]) in open.iter().enumerate() {
            let _ = writeln!(
                xml,
                "\t\t\t\t<Coordinate Order=\"{order}\" X=\"{x:.4}\" Y=\"{y:.4}\" />"
            );
        }
        xml.push_str("\t\t\t</Coordinates>\n\t\t</Annotation>\n");
    }
    xml.push_str("\t</Annotations>\n\t<AnnotationGroups>\n");
    for (group, colour) in [(CLASS, "#F4FA58"), ("Exclusion", "#64FE2E")] {
        let _ = writeln!(
            xml,
            "\t\t<Group Name=\"{group}\" PartOfGroup=\"None\" Color=\"{colour}\">\n\t\t\t<Attributes />\n\t\t</Group>"
        );
    }
    xml.push_str("\t</AnnotationGroups>\n</ASAP_Annotations>\n");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(downsample: f64, origin: [u64; 2]) -> MapPlacement {
        MapPlacement { downsample, origin }
    }

    /// A 20x20 map with a blob over map pixels 4..12 x 5..10 holding a 2x1 hole.
    fn blob_with_hole() -> GrayImage {
        let mut map = GrayImage::new(20, 20);
        for y in 5..10 {
            for x in 4..12 {
                let hole = y == 7 && (7..9).contains(&x);
                map.put_pixel(x, y, image::Luma([if hole { 0 } else { 230 }]));
            }
        }
        map
    }

    #[test]
    fn a_blob_becomes_one_region_in_level_0_pixels_with_its_hole() {
        let regions = tumour_regions(&blob_with_hole(), placed(16.0, [1000, 2000]));
        assert_eq!(regions.len(), 1);
        let region = &regions[0];
        assert_eq!(region.holes.len(), 1);
        let (xs, ys): (Vec<f64>, Vec<f64>) = region.exterior.iter().map(|p| (p[0], p[1])).unzip();
        let min = |v: &[f64]| v.iter().cloned().fold(f64::MAX, f64::min);
        let max = |v: &[f64]| v.iter().cloned().fold(f64::MIN, f64::max);
        // The blob spans map pixels 4..12 x 5..10: level 0 from 1000 + 16 * 4 to about 1000 + 16 * 12.
        assert!((min(&xs) - 1064.0).abs() <= 16.0 && (max(&xs) - 1192.0).abs() <= 16.0);
        assert!((min(&ys) - 2080.0).abs() <= 16.0 && (max(&ys) - 2160.0).abs() <= 16.0);
        // 8 x 5 map pixels less the 2-pixel hole, each 16 x 16, to within the contour's
        // half-pixel boundary.
        let expected = 38.0 * 256.0;
        assert!(
            (region.area() - expected).abs() < 0.2 * expected,
            "{}",
            region.area()
        );
    }

    /// The contour crate's regions (its smoothed rings of the whole map, scaled, `rounded`,
    /// specks dropped), as `infer` traced them before it traced row by row, and valid polygons
    /// by OGC's rules (geo's, as GEOS and JTS judge them), on [`random_maps`].
    #[test]
    fn regions_are_the_contour_crates_and_valid_polygons() {
        use geo::Validation;
        let reference = |map: &GrayImage, MapPlacement { downsample, origin }| {
            let (width, height) = (map.width() as usize, map.height() as usize);
            let values: Vec<f64> = map.as_raw().iter().map(|&v| v as f64 / 255.0).collect();
            let contours = contour::ContourBuilder::new(width, height, true)
                .x_origin(origin[0] as f64)
                .y_origin(origin[1] as f64)
                .x_step(downsample)
                .y_step(downsample)
                .contours(&values, &[0.5])
                .unwrap();
            let ring = |line: &geo_types::LineString| -> Vec<[f64; 2]> {
                line.coords().map(|c| [c.x, c.y]).collect()
            };
            contours[0]
                .geometry()
                .0
                .iter()
                .map(|polygon| {
                    rounded(
                        ring(polygon.exterior()),
                        polygon.interiors().iter().map(ring).collect(),
                    )
                })
                .filter(|region| region.area() >= 1.0)
                .collect::<Vec<_>>()
        };
        let mut regions = 0;
        for (trial, (map, placement)) in random_maps().into_iter().enumerate() {
            let expected = reference(&map, placement);
            let traced = tumour_regions(&map, placement);
            assert_eq!(traced, expected, "trial {trial}");
            for region in &traced {
                let errors = polygon(region).validation_errors();
                assert!(errors.is_empty(), "trial {trial}: {errors:?} in {region:?}");
            }
            regions += expected.len();
        }
        assert!(regions > 1000, "{regions} regions: the maps test little");
        // A map cut short (a stream stopped) is traced as the map it is.
        let map = GrayImage::from_fn(30, 30, |x, y| {
            image::Luma([((x * 37 + y * 11) % 256) as u8])
        });
        let mut tracer = TumourTracer::new(30, placed(4.88, [0, 0]));
        map.as_raw()
            .chunks_exact(30)
            .take(17)
            .for_each(|row| tracer.add_row(row));
        let top = GrayImage::from_raw(30, 17, map.as_raw()[..30 * 17].to_vec()).unwrap();
        assert_eq!(tracer.finish(), reference(&top, placed(4.88, [0, 0])));
        let below = GrayImage::from_pixel(20, 20, image::Luma([TUMOUR_LEVEL - 1]));
        assert_eq!(tumour_regions(&below, placed(4.88, [0, 0])), []);
    }

    #[test]
    fn vertices_are_rounded_to_thousandths_of_a_pixel() {
        let region = rounded(
            vec![
                [0.0004, 0.0],
                [10.0, 0.0004],
                [9.9996, 10.0],
                [0.12345, 7.0006],
            ],
            vec![vec![[4.00049, 4.0], [6.0, 4.0006]]],
        );
        assert_eq!(
            region.exterior,
            [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.123, 7.001]]
        );
        assert_eq!(region.holes, [[[4.0, 4.0], [6.0, 4.001]]]);
    }

    /// 400 maps of up to 40x40 pixels, each with its placement: noise, the
    /// levels that put a contour's vertices nearest the pixel centres (127 and 128 beside 0
    /// and 255), two levels, and soft blobs with and without holes, touching the edges or
    /// not; at two scales.
    fn random_maps() -> Vec<(GrayImage, MapPlacement)> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        (0..400)
            .map(|trial| {
                let (width, height) = (1 + random(40) as u32, 1 + random(40) as u32);
                let blobs: Vec<[f64; 3]> = (0..1 + random(6))
                    .map(|_| {
                        let x = random(width as u64 + 1) as f64;
                        let y = random(height as u64 + 1) as f64;
                        [x, y, 1.0 + random(12) as f64]
                    })
                    .collect();
                let map = GrayImage::from_fn(width, height, |x, y| {
                    let distance = blobs
                        .iter()
                        .map(|[bx, by, r]| (x as f64 - bx).hypot(y as f64 - by) / r)
                        .fold(f64::MAX, f64::min);
                    image::Luma([match trial % 5 {
                        0 => random(256) as u8,
                        1 => [40, 40, 200][random(3) as usize],
                        2 => [0, 127, 128, 255][random(4) as usize],
                        4 if distance < 0.4 => 30,
                        _ => (255.0 * (1.2 - 0.7 * distance)).clamp(0.0, 255.0) as u8,
                    }])
                });
                (
                    map,
                    [placed(1.0, [0, 0]), placed(4.88, [1000, 2000])][trial % 2],
                )
            })
            .collect()
    }

    /// A region as geo's polygon.
    fn polygon(region: &Region) -> geo::Polygon {
        let ring = |ring: &Vec<[f64; 2]>| geo::LineString::from(ring.clone());
        geo::Polygon::new(
            ring(&region.exterior),
            region.holes.iter().map(ring).collect(),
        )
    }

    /// Each region's probabilities are those of the map pixels whose centres geo's `Contains`
    /// puts inside its polygon, and those pixels are the map's at or above the level, each in
    /// one region.
    #[test]
    fn region_probabilities_are_those_of_the_pixels_inside() {
        use geo::Contains;
        let mut inside = 0;
        for (trial, (map, placement)) in random_maps().into_iter().enumerate() {
            let width = map.width() as usize;
            // Peaks unlike the means, so that the maximum tells which pixels were taken.
            let peaks: Vec<u8> = (0..map.as_raw().len())
                .map(|i| (i * 7919 % 251) as u8)
                .collect();
            let regions = tumour_regions(&map, placement);
            let measured = measure(regions.clone(), map.as_raw(), &peaks, width, placement);
            assert_eq!(measured.len(), regions.len());
            let mut taken = vec![false; peaks.len()];
            for (
                region,
                MeasuredRegion {
                    region: kept,
                    probability,
                },
            ) in regions.iter().zip(&measured)
            {
                assert_eq!(kept, region, "trial {trial}");
                let polygon = polygon(region);
                let (mut sum, mut count, mut max) = (0u64, 0u64, 0u8);
                for (at, value) in map.as_raw().iter().enumerate() {
                    let point = geo::Point::new(
                        placement.centre(at % width, 0),
                        placement.centre(at / width, 1),
                    );
                    if polygon.contains(&point) {
                        sum += *value as u64;
                        count += 1;
                        max = max.max(peaks[at]);
                        assert!(!taken[at], "trial {trial}: pixel {at} in two regions");
                        taken[at] = true;
                    }
                }
                assert!(count > 0, "trial {trial}: no pixel in {region:?}");
                let expected = RegionProbability {
                    mean: sum as f64 / count as f64 / 255.0,
                    max: max as f64 / 255.0,
                };
                assert_eq!(*probability, expected, "trial {trial}");
                inside += count;
            }
            for (at, value) in map.as_raw().iter().enumerate() {
                if taken[at] {
                    assert!(
                        *value >= TUMOUR_LEVEL,
                        "trial {trial}: pixel {at} is {value}"
                    );
                }
            }
        }
        assert!(
            inside > 10_000,
            "{inside} pixels inside regions: the maps test little"
        );
    }

    /// [`blob_with_hole`]'s region, measured: its pixels are all 230; their peaks 240 where x
    /// is 9, 250 in the hole (which is not the region's).
    fn measured_blob() -> Vec<MeasuredRegion> {
        let map = blob_with_hole();
        let regions = tumour_regions(&map, placed(16.0, [0, 0]));
        let peaks = GrayImage::from_fn(20, 20, |x, y| {
            image::Luma([match (x, map.get_pixel(x, y).0[0]) {
                (_, 0) => 250,
                (9, _) => 240,
                (_, value) => value,
            }])
        });
        measure(
            regions,
            map.as_raw(),
            peaks.as_raw(),
            20,
            placed(16.0, [0, 0]),
        )
    }

    #[test]
    fn geojson_has_qupaths_fields_the_area_in_square_microns_and_the_probabilities() {
        let measured = measured_blob();
        let geojson = qupath_geojson(&measured, Some(0.5));
        let feature = &geojson["features"][0];
        assert_eq!(feature["properties"]["objectType"], "annotation");
        assert_eq!(feature["properties"]["name"], "Tumor 1");
        assert_eq!(feature["properties"]["classification"]["name"], "Tumor");
        assert_eq!(
            feature["geometry"]["coordinates"].as_array().unwrap().len(),
            2,
            "outline and hole"
        );
        let area = feature["properties"]["measurements"]["Area µm^2"]
            .as_f64()
            .unwrap();
        assert!((area - measured[0].region.area() * 0.25).abs() < 1e-9);
        let measurements = &feature["properties"]["measurements"];
        assert_eq!(measurements["Mean probability"], 230.0 / 255.0);
        assert_eq!(measurements["Max probability"], 240.0 / 255.0);
        let uncalibrated = qupath_geojson(&measured, None);
        assert!(uncalibrated["features"][0]["properties"]["measurements"]["Area px^2"].is_f64());
    }

    #[test]
    fn asap_xml_parses_with_outline_and_hole_groups() {
        let measured = measured_blob();
        let xml = asap_xml(&measured);
        let document = roxmltree::Document::parse(&xml).unwrap();
        let annotations: Vec<(&str, &str)> = document
            .descendants()
            .filter(|n| n.has_tag_name("Annotation"))
            .map(|n| {
                (
                    n.attribute("PartOfGroup").unwrap(),
                    n.attribute("Name").unwrap(),
                )
            })
            .collect();
        // 230 / 255 and 240 / 255.
        assert_eq!(
            annotations,
            [
                ("Tumor", "Tumor 1: mean p 0.902, max p 0.941"),
                ("Exclusion", "Tumor 1: hole 1")
            ]
        );
        let points = document
            .descendants()
            .filter(|n| n.has_tag_name("Coordinate"))
            .count();
        // Rings written open: one point fewer than the contour's closed rings.
        let region = &measured[0].region;
        assert_eq!(
            points,
            region.exterior.len() - 1 + region.holes[0].len() - 1
        );
    }
}
