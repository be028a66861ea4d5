//! What a person looks at: the heatmap overlay, and tumour contours for QuPath.

use anyhow::Result;
use contour::ContourBuilder;
use image::{GrayImage, RgbImage};
use serde_json::{Value, json};

/// The probability map at low resolution, averaged from level-0 rows as they are emitted.
pub struct LowResolutionMap {
    /// Level-0 pixels per map pixel.
    pub downsample: f64,
    width: usize,
    height: usize,
    sum: Vec<u32>,
    count: Vec<u32>,
}

impl LowResolutionMap {
    pub fn new(region_width: u64, region_height: u64, downsample: f64) -> Self {
        let width = ((region_width as f64 / downsample).ceil() as usize).max(1);
        let height = ((region_height as f64 / downsample).ceil() as usize).max(1);
        Self {
            downsample,
            width,
            height,
            sum: vec![0; width * height],
            count: vec![0; width * height],
        }
    }

    /// Adds region row `y` (level-0 pixels from the region's left edge).
    pub fn add_row(&mut self, y: u64, row: &[u8]) {
        let my = ((y as f64 / self.downsample) as usize).min(self.height - 1);
        let line = my * self.width;
        for (x, &value) in row.iter().enumerate() {
            let mx = ((x as f64 / self.downsample) as usize).min(self.width - 1);
            self.sum[line + mx] += value as u32;
            self.count[line + mx] += 1;
        }
    }

    pub fn to_image(&self) -> GrayImage {
        let pixels = self
            .sum
            .iter()
            .zip(&self.count)
            .map(|(&s, &c)| (s + c / 2).checked_div(c).unwrap_or(0) as u8)
            .collect();
        GrayImage::from_raw(self.width as u32, self.height as u32, pixels).expect("sized")
    }
}

/// OpenCV's `COLORMAP_JET`, as the users' pipeline applied it: blue (0) to red (255).
pub fn jet(value: u8) -> [u8; 3] {
    let x = value as f32 / 255.0;
    let channel =
        |centre: f32| ((1.5 - (4.0 * x - centre).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [channel(3.0), channel(2.0), channel(1.0)]
}

/// The jet-coloured map at 60 % over the slide at 40 %.
pub fn heatmap(slide: &RgbImage, map: &GrayImage) -> RgbImage {
    let map = image::imageops::resize(
        map,
        slide.width(),
        slide.height(),
        image::imageops::FilterType::Triangle,
    );
    RgbImage::from_fn(slide.width(), slide.height(), |x, y| {
        let colour = jet(map.get_pixel(x, y).0[0]);
        let under = slide.get_pixel(x, y).0;
        image::Rgb(
            [0, 1, 2].map(|c| (0.6 * colour[c] as f32 + 0.4 * under[c] as f32).round() as u8),
        )
    })
}

/// Contours of `p >= 0.5` on the low-resolution map, in level-0 pixels, as a GeoJSON
/// FeatureCollection QuPath imports (one annotation per polygon, classified "Tumor").
pub fn tumour_geojson(map: &GrayImage, downsample: f64, origin: (u64, u64)) -> Result<Value> {
    let values: Vec<f64> = map.pixels().map(|p| p.0[0] as f64 / 255.0).collect();
    let builder = ContourBuilder::new(map.width() as usize, map.height() as usize, true)
        .x_origin(origin.0 as f64)
        .y_origin(origin.1 as f64)
        .x_step(downsample)
        .y_step(downsample);
    let contours = builder
        .contours(&values, &[0.5])
        .map_err(|e| anyhow::anyhow!("contours: {e:?}"))?;
    let features: Vec<Value> = contours
        .iter()
        .flat_map(|c| c.geometry().0.iter())
        .map(|polygon| {
            let mut rings: Vec<Vec<[f64; 2]>> = vec![
                polygon
                    .exterior()
                    .coords()
                    .map(|c| [c.x.round(), c.y.round()])
                    .collect(),
            ];
            rings.extend(polygon.interiors().iter().map(|interior| {
                interior
                    .coords()
                    .map(|c| [c.x.round(), c.y.round()])
                    .collect()
            }));
            json!({
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": "Tumor", "color": [200, 0, 0]},
                    "isLocked": false
                }
            })
        })
        .collect();
    Ok(json!({"type": "FeatureCollection", "features": features}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_runs_blue_to_red() {
        assert_eq!(jet(0), [0, 0, 128]);
        assert_eq!(jet(255), [128, 0, 0]);
        let middle = jet(128);
        assert!(
            middle[1] == 255 && middle[0] > 100 && middle[2] > 100,
            "{middle:?}"
        );
    }

    #[test]
    fn a_square_blob_becomes_one_polygon_in_level_0_pixels() {
        let mut map = GrayImage::new(20, 20);
        for y in 5..10 {
            for x in 4..12 {
                map.put_pixel(x, y, image::Luma([230]));
            }
        }
        let geojson = tumour_geojson(&map, 16.0, (1000, 2000)).unwrap();
        let features = geojson["features"].as_array().unwrap();
        assert_eq!(features.len(), 1);
        let ring = features[0]["geometry"]["coordinates"][0]
            .as_array()
            .unwrap();
        let xs: Vec<f64> = ring.iter().map(|p| p[0].as_f64().unwrap()).collect();
        let ys: Vec<f64> = ring.iter().map(|p| p[1].as_f64().unwrap()).collect();
        let (min_x, max_x) = (
            xs.iter().cloned().fold(f64::MAX, f64::min),
            xs.iter().cloned().fold(0.0, f64::max),
        );
        let (min_y, max_y) = (
            ys.iter().cloned().fold(f64::MAX, f64::min),
            ys.iter().cloned().fold(0.0, f64::max),
        );
        // The blob spans map pixels 4..12 x 5..10: level 0 from 1000 + 16 * 4 to about 1000 + 16 * 12.
        assert!(
            (min_x - 1064.0).abs() <= 16.0 && (max_x - 1192.0).abs() <= 16.0,
            "{min_x} {max_x}"
        );
        assert!(
            (min_y - 2080.0).abs() <= 16.0 && (max_y - 2160.0).abs() <= 16.0,
            "{min_y} {max_y}"
        );
    }
}
