//! What a slide says about itself beyond its pixels, named as OpenSlide names it: the vendor,
//! microns per pixel, objective power and a flat map of properties (`aperio.MPP`,
//! `dicom.PhotometricInterpretation`, `tiff.ImageDescription`, `openslide.level[0].width`...).

use std::collections::BTreeMap;

use crate::slide::Level;

#[derive(Debug, Clone, Default)]
pub struct Metadata {
    /// OpenSlide's vendor name: `generic-tiff`, `aperio`, `dicom`, ...
    pub vendor: String,
    /// Level-0 microns per pixel (x; slides with non-square pixels are rare and read as x).
    pub mpp: Option<f64>,
    /// The scanner's objective magnification (`AppMag` in Aperio's description).
    pub objective_power: Option<f64>,
    pub properties: BTreeMap<String, String>,
}

impl Metadata {
    /// Adds OpenSlide's `openslide.*` properties that every backend shares, without replacing
    /// any the backend set itself (OpenSlide's own, for the vendor backend).
    pub fn add_standard_properties(&mut self, levels: &[Level], associated: &[(String, u64, u64)]) {
        let mut standard = BTreeMap::new();
        standard.insert("openslide.vendor".to_string(), self.vendor.clone());
        standard.insert("openslide.level-count".into(), levels.len().to_string());
        for (i, level) in levels.iter().enumerate() {
            let key = |what: &str| format!("openslide.level[{i}].{what}");
            standard.insert(key("width"), level.width.to_string());
            standard.insert(key("height"), level.height.to_string());
            standard.insert(key("downsample"), level.downsample.to_string());
            standard.insert(key("tile-width"), level.tile_width.to_string());
            standard.insert(key("tile-height"), level.tile_height.to_string());
        }
        for (name, width, height) in associated {
            standard.insert(
                format!("openslide.associated.{name}.width"),
                width.to_string(),
            );
            standard.insert(
                format!("openslide.associated.{name}.height"),
                height.to_string(),
            );
        }
        if let Some(mpp) = self.mpp {
            standard.insert("openslide.mpp-x".into(), mpp.to_string());
            standard.insert("openslide.mpp-y".into(), mpp.to_string());
        }
        if let Some(power) = self.objective_power {
            standard.insert("openslide.objective-power".into(), power.to_string());
        }
        for (key, value) in standard {
            self.properties.entry(key).or_insert(value);
        }
    }
}

/// Aperio's ImageDescription: `Aperio Image Library vX \r\n<header>|Key = Value|Key = Value...`.
/// `None` when the description is not Aperio's.
pub fn aperio(description: &str) -> Option<Metadata> {
    if !description.starts_with("Aperio") {
        return None;
    }
    let mut properties = BTreeMap::new();
    for field in description.split('|').skip(1) {
        if let Some((key, value)) = field.split_once('=') {
            properties.insert(format!("aperio.{}", key.trim()), value.trim().to_string());
        }
    }
    let number = |key: &str| -> Option<f64> {
        properties
            .get(key)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    Some(Metadata {
        vendor: "aperio".into(),
        mpp: number("aperio.MPP"),
        objective_power: number("aperio.AppMag"),
        properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aperio_description_gives_its_fields_mpp_and_magnification() {
        let description = "Aperio Image Library v12.0.15 \r\n2048x1536 [0,0 2048x1536] (256x256) JPEG/RGB Q=90|AppMag = 20|ScanScope ID = SS1|MPP = 0.4990";
        let metadata = aperio(description).unwrap();
        assert_eq!(metadata.vendor, "aperio");
        assert_eq!(metadata.mpp, Some(0.499));
        assert_eq!(metadata.objective_power, Some(20.0));
        assert_eq!(metadata.properties["aperio.ScanScope ID"], "SS1");
        assert!(aperio("ImageJ=1.5").is_none());
    }
}
