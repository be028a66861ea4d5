//! DICOM-WSI (the VL Whole Slide Microscopy Image IOD), as OpenSlide 4 reads it: a series of
//! instances, one per pyramid level (and one each for a label, overview or thumbnail), each a
//! grid of tiled frames.
//!
//! Each instance is read in one walk that fetches no value it does not need: the file meta
//! group by hand, then the data set with dicom-rs's lazy reader, every value's declared length
//! checked against the file before anything is skipped or read (dicom-rs allocates a value's
//! declared length before reading it, so a damaged 4-byte length would otherwise cost
//! gigabytes), the few attributes used read (each a few bytes), everything else skipped, up
//! to the top-level pixel data. The frames' positions are then found by reading only the
//! 8-byte item headers of the encapsulated fragments, once, and every later read is a
//! positioned read of one frame, like a TIFF tile's. No instance is ever loaded whole, and no
//! second parser reads the same bytes differently.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use dicom_core::{PrimitiveValue, Tag};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::TransferSyntaxIndex;
use dicom_encoding::transfer_syntax::TransferSyntax;
use dicom_parser::StatefulDecode;
use dicom_parser::dataset::LazyDataToken;
use dicom_parser::dataset::lazy_read::LazyDataSetReader;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use crate::directory::{Compression, Directory, MAX_CHUNK_BYTES, MAX_SIDE};
use crate::error::{Result, WsiError};
use crate::metadata::Metadata;
use crate::tiled_slide::Pyramid;

const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
const JPEG_2000_LOSSLESS: &str = "1.2.840.10008.1.2.4.90";
const JPEG_2000: &str = "1.2.840.10008.1.2.4.91";
const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
/// Explicit VRs whose value length is 2 bytes; every other VR, an unknown one too, has 2
/// reserved bytes and a 4-byte length (PS3.5 7.1.2; dicom-rs decodes headers so).
const SHORT_LENGTH_VRS: [&[u8; 2]; 21] = [
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
    b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
];
/// Item and sequence delimitation tags of encapsulated pixel data, as (group, element).
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);
/// The top-level attributes an instance is laid out from (and reports as properties).
/// SpecificCharacterSet is read first so that the text after it is decoded in its set.
const TOP_LEVEL_ATTRIBUTES: [Tag; 17] = [
    tags::SPECIFIC_CHARACTER_SET,
    tags::IMAGE_TYPE,
    tags::SAMPLES_PER_PIXEL,
    tags::PHOTOMETRIC_INTERPRETATION,
    tags::ROWS,
    tags::COLUMNS,
    tags::BITS_ALLOCATED,
    tags::NUMBER_OF_FRAMES,
    tags::TOTAL_PIXEL_MATRIX_COLUMNS,
    tags::TOTAL_PIXEL_MATRIX_ROWS,
    tags::DIMENSION_ORGANIZATION_TYPE,
    tags::CONCATENATION_UID,
    tags::MANUFACTURER,
    tags::MANUFACTURER_MODEL_NAME,
    tags::SERIES_INSTANCE_UID,
    tags::STUDY_INSTANCE_UID,
    tags::CONTAINER_IDENTIFIER,
];
/// The most bytes an attribute that is read may declare: each is a number, a code or a UID,
/// so a longer one is damage, and the walk never allocates more than this for a value.
const MAX_ATTRIBUTE_BYTES: u64 = 64 * 1024;

/// Whether `path` is a DICOM file (the `DICM` magic after the 128-byte preamble).
pub fn is_dicom(path: &Path) -> bool {
    let mut head = [0; 132];
    File::open(path)
        .and_then(|mut file| file.read_exact(&mut head))
        .is_ok()
        && &head[128..] == b"DICM"
}

/// The series `path` belongs to (a file: its own series; a folder: its one WSI series),
/// its levels largest first.
pub fn read_series(path: &Path) -> Result<Pyramid> {
    let (folder, given) = if path.is_dir() {
        (path.to_path_buf(), None)
    } else {
        let folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        (folder.to_path_buf(), Some(path))
    };
    let given = match given {
        Some(file) => Some(Instance::read(file)?),
        None => None,
    };
    if let Some(instance) = &given
        && instance.flavour.is_none()
    {
        return Err(not_wsi(
            path,
            "it is not a VL Whole Slide Microscopy Image instance",
        ));
    }
    let mut siblings = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&folder)
        .map_err(|source| WsiError::Io {
            path: folder.clone(),
            cause: source,
        })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_dicom(p))
        .collect();
    entries.sort();
    for file in entries {
        if given.as_ref().is_some_and(|g| same_file(&g.path, &file)) {
            continue;
        }
        // Another series' file, or one that is not a slide at all, is not ours to refuse.
        if let Ok(instance) = Instance::read(&file)
            && instance.flavour.is_some()
        {
            siblings.push(instance);
        }
    }
    let series = match &given {
        Some(instance) => instance.series_uid.clone(),
        None => {
            let mut uids: Vec<&str> = siblings.iter().map(|i| i.series_uid.as_str()).collect();
            uids.sort();
            uids.dedup();
            match uids.as_slice() {
                [one] => one.to_string(),
                [] => {
                    return Err(not_wsi(
                        path,
                        "the folder holds no DICOM whole-slide instances",
                    ));
                }
                several => {
                    return Err(WsiError::BadRequest {
                        path: path.to_path_buf(),
                        reason: format!(
                            "the folder mixes {} DICOM series ({}): open one file of the series to read",
                            several.len(),
                            several.join(", ")
                        ),
                    });
                }
            }
        }
    };
    let instances: Vec<Instance> = given
        .into_iter()
        .chain(siblings)
        .filter(|i| i.series_uid == series)
        .collect();
    assemble(path, instances)
}

/// Levels (VOLUME instances, one per size) and associated images from one series' instances.
fn assemble(path: &Path, instances: Vec<Instance>) -> Result<Pyramid> {
    let mut files = Vec::new();
    let mut levels: Vec<(Directory, Instance)> = Vec::new();
    let mut associated = Vec::new();
    for instance in instances {
        let name = match instance.flavour.as_deref() {
            Some("VOLUME") => None,
            Some("LABEL") => Some("label"),
            Some("OVERVIEW") => Some("macro"),
            Some("THUMBNAIL") => Some("thumbnail"),
            _ => continue,
        };
        let duplicate = match name {
            None => levels.iter().any(|(d, _)| d.width == instance.width),
            Some(name) => associated.iter().any(|(n, _)| n == name),
        };
        if duplicate {
            // Another focal plane or a second copy: the first (in file-name order) is read.
            continue;
        }
        let directory = instance.directory(files.len())?;
        files.push(instance.path.clone());
        match name {
            None => levels.push((directory, instance)),
            Some(name) => associated.push((name.to_string(), directory)),
        }
    }
    levels.sort_by_key(|(d, _)| std::cmp::Reverse(d.width));
    let Some((_, base)) = levels.first() else {
        return Err(not_wsi(
            path,
            "the series has no VOLUME instance (no pyramid level)",
        ));
    };
    let metadata = Metadata {
        vendor: "dicom".into(),
        mpp: base.mpp,
        objective_power: None,
        properties: base.properties.clone(),
    };
    Ok(Pyramid {
        files,
        levels: levels.into_iter().map(|(d, _)| d).collect(),
        associated,
        layout: "dicom-instances",
        metadata,
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn not_wsi(path: &Path, reason: &str) -> WsiError {
    WsiError::NotTiff {
        path: path.to_path_buf(),
        reason: format!("not a DICOM whole slide: {reason}"),
    }
}

/// One instance's attributes: enough to lay out its frames.
struct Instance {
    path: PathBuf,
    series_uid: String,
    /// ImageType's third value (`VOLUME`, `LABEL`, `OVERVIEW`, `THUMBNAIL`); `None` when the
    /// instance is not a whole-slide image.
    flavour: Option<String>,
    transfer_syntax: String,
    photometric: String,
    samples_per_pixel: u16,
    bits_allocated: u16,
    /// The whole image and one frame, in pixels.
    width: u64,
    height: u64,
    frame_width: u64,
    frame_height: u64,
    frames: u64,
    organisation: String,
    concatenated: bool,
    mpp: Option<f64>,
    /// Where the pixel data lies; `None` when the instance has none.
    pixel_data: Option<PixelData>,
    file_len: u64,
    properties: BTreeMap<String, String>,
}

impl Instance {
    fn read(path: &Path) -> Result<Instance> {
        let damaged = |reason: String| WsiError::Damaged {
            path: path.to_path_buf(),
            reason,
        };
        let io = |source| WsiError::Io {
            path: path.to_path_buf(),
            cause: source,
        };
        let file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let meta = walk_file_meta(&file, file_len).map_err(damaged)?;
        let data_set = DataSet::walk(&file, file_len, &meta).map_err(damaged)?;
        let is_wsi = meta.sop_class_uid == uids::VL_WHOLE_SLIDE_MICROSCOPY_IMAGE_STORAGE;
        let text = |tag: Tag| -> String {
            data_set
                .get(tag)
                .map(|v| v.to_str())
                .map(|s| s.trim().trim_end_matches('\0').to_string())
                .unwrap_or_default()
        };
        let number = |tag: Tag| -> Option<u64> { data_set.get(tag).and_then(|v| v.to_int().ok()) };
        let image_type: Vec<String> = data_set
            .get(tags::IMAGE_TYPE)
            .map(|v| v.to_multi_str())
            .map(|values| values.iter().map(|v| v.trim().to_string()).collect())
            .unwrap_or_default();
        let flavour = is_wsi.then(|| image_type.get(2).cloned()).flatten();
        let frame_width = number(tags::COLUMNS).unwrap_or(0);
        let frame_height = number(tags::ROWS).unwrap_or(0);
        let spacing = data_set.pixel_spacing();

        let mut properties = BTreeMap::new();
        for (i, value) in image_type.iter().enumerate() {
            properties.insert(format!("dicom.ImageType[{i}]"), value.clone());
        }
        for (tag, name) in [
            (
                tags::PHOTOMETRIC_INTERPRETATION,
                "PhotometricInterpretation",
            ),
            (
                tags::DIMENSION_ORGANIZATION_TYPE,
                "DimensionOrganizationType",
            ),
            (tags::MANUFACTURER, "Manufacturer"),
            (tags::MANUFACTURER_MODEL_NAME, "ManufacturerModelName"),
            (tags::SERIES_INSTANCE_UID, "SeriesInstanceUID"),
            (tags::STUDY_INSTANCE_UID, "StudyInstanceUID"),
            (tags::CONTAINER_IDENTIFIER, "ContainerIdentifier"),
        ] {
            let value = text(tag);
            if !value.is_empty() {
                properties.insert(format!("dicom.{name}"), value);
            }
        }
        properties.insert(
            "dicom.TransferSyntaxUID".into(),
            meta.transfer_syntax.clone(),
        );
        if let Some(spacing) = &spacing {
            for (i, value) in spacing.iter().enumerate() {
                properties.insert(
                    format!(
                        "dicom.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing[{i}]"
                    ),
                    value.to_string(),
                );
            }
        }
        if let Some(icc) = data_set.icc_profile_len {
            properties.insert("openslide.icc-size".into(), icc.to_string());
        }
        Ok(Instance {
            path: path.to_path_buf(),
            series_uid: text(tags::SERIES_INSTANCE_UID),
            flavour,
            transfer_syntax: meta.transfer_syntax,
            photometric: text(tags::PHOTOMETRIC_INTERPRETATION),
            samples_per_pixel: number(tags::SAMPLES_PER_PIXEL).unwrap_or(1) as u16,
            bits_allocated: number(tags::BITS_ALLOCATED).unwrap_or(8) as u16,
            width: number(tags::TOTAL_PIXEL_MATRIX_COLUMNS).unwrap_or(frame_width),
            height: number(tags::TOTAL_PIXEL_MATRIX_ROWS).unwrap_or(frame_height),
            frame_width,
            frame_height,
            frames: number(tags::NUMBER_OF_FRAMES).unwrap_or(1),
            organisation: text(tags::DIMENSION_ORGANIZATION_TYPE),
            concatenated: data_set.get(tags::CONCATENATION_UID).is_some(),
            // PixelSpacing is (row, column) spacing in mm: x is the column spacing.
            mpp: spacing
                .and_then(|s| s.get(1).copied())
                .map(|mm| mm * 1000.0)
                .filter(|mpp| mpp.is_finite() && *mpp > 0.0),
            pixel_data: data_set.pixel_data,
            file_len,
            properties,
        })
    }

    /// The frame grid, with each frame's place in file number `file`.
    fn directory(&self, file: usize) -> Result<Directory> {
        let unsupported = |what: String| WsiError::Unsupported {
            path: self.path.clone(),
            what,
        };
        let syntax_name = TransferSyntaxRegistry
            .get(&self.transfer_syntax)
            .map_or("an unknown transfer syntax", |ts| ts.name());
        let compression = match self.transfer_syntax.as_str() {
            JPEG_BASELINE => Compression::Jpeg,
            // YBR_ICT and YBR_RCT name the codestream's own colour transform, which the
            // decoder inverts; where there is none, YBR_ICT's components are YCbCr.
            JPEG_2000_LOSSLESS | JPEG_2000 => Compression::Jpeg2000 {
                ycbcr: self.photometric == "YBR_ICT",
            },
            EXPLICIT_VR_LITTLE_ENDIAN | IMPLICIT_VR_LITTLE_ENDIAN => Compression::None,
            other => {
                return Err(unsupported(format!(
                    "DICOM transfer syntax {syntax_name} ({other}): JPEG baseline, JPEG 2000 and uncompressed frames are read"
                )));
            }
        };
        let photometric_ok = match compression {
            Compression::Jpeg => matches!(
                self.photometric.as_str(),
                "YBR_FULL_422" | "YBR_FULL" | "RGB" | "MONOCHROME2"
            ),
            Compression::Jpeg2000 { .. } => matches!(
                self.photometric.as_str(),
                "YBR_ICT" | "YBR_RCT" | "RGB" | "MONOCHROME2"
            ),
            _ => matches!(self.photometric.as_str(), "RGB" | "MONOCHROME2"),
        };
        if !photometric_ok {
            return Err(unsupported(format!(
                "photometric interpretation {:?} in {syntax_name}",
                self.photometric
            )));
        }
        if self.bits_allocated != 8 || !matches!(self.samples_per_pixel, 1 | 3) {
            return Err(unsupported(format!(
                "{} samples of {} bits per pixel (8-bit grey or RGB is read)",
                self.samples_per_pixel, self.bits_allocated
            )));
        }
        if self.organisation == "TILED_SPARSE" {
            return Err(unsupported(
                "TILED_SPARSE frames (per-frame positions); TILED_FULL is read".into(),
            ));
        }
        if self.concatenated {
            return Err(unsupported(
                "a level split over several instances (concatenation)".into(),
            ));
        }
        let (width, height) = (self.width, self.height);
        if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
            return Err(self.damaged(format!(
                "declared size {width}x{height} is outside 1..={MAX_SIDE} pixels a side"
            )));
        }
        let frame_bytes = self
            .frame_width
            .checked_mul(self.frame_height)
            .and_then(|n| n.checked_mul(self.samples_per_pixel as u64))
            .filter(|&n| n > 0 && n <= MAX_CHUNK_BYTES)
            .ok_or_else(|| {
                self.damaged(format!(
                    "frame size {}x{} is zero or over {MAX_CHUNK_BYTES} bytes decoded",
                    self.frame_width, self.frame_height
                ))
            })?;
        let chunks = width.div_ceil(self.frame_width) * height.div_ceil(self.frame_height);
        // TILED_FULL: row-major frames, the first focal plane and optical path first.
        if self.frames < chunks {
            return Err(self.damaged(format!(
                "{width}x{height} in {}x{} frames needs {chunks} frames, NumberOfFrames is {}",
                self.frame_width, self.frame_height, self.frames
            )));
        }
        let frames = self.frame_places(compression, frame_bytes)?;
        if (frames.len() as u64) < chunks {
            return Err(self.damaged(format!(
                "{chunks} frames are needed, the pixel data holds {}",
                frames.len()
            )));
        }
        let (offsets, byte_counts) = frames.into_iter().take(chunks as usize).unzip();
        Ok(Directory {
            file,
            width,
            height,
            chunk_width: self.frame_width,
            chunk_height: self.frame_height,
            tiled: true,
            compression,
            samples_per_pixel: self.samples_per_pixel,
            horizontal_predictor: false,
            jpeg_tables: None,
            offsets,
            byte_counts,
        })
    }

    /// (offset, length) of every frame in the file.
    fn frame_places(&self, compression: Compression, frame_bytes: u64) -> Result<Vec<(u64, u64)>> {
        let file = File::open(&self.path).map_err(|source| self.io(source))?;
        match self.pixel_data {
            None => Err(self.damaged("the instance has no pixel data")),
            Some(PixelData::Native { offset, length }) => {
                if compression != Compression::None {
                    return Err(self.damaged("compressed transfer syntax with native pixel data"));
                }
                let frames = (length / frame_bytes).min(self.frames);
                if offset + frames * frame_bytes > self.file_len {
                    return Err(self.damaged(format!(
                        "pixel data ({length} bytes at offset {offset}) lies past the end of the file ({} bytes): is it truncated?",
                        self.file_len
                    )));
                }
                Ok((0..frames)
                    .map(|i| (offset + i * frame_bytes, frame_bytes))
                    .collect())
            }
            Some(PixelData::Encapsulated { first_item }) => {
                // Items: the Basic Offset Table, then the fragments, then a delimiter.
                let mut items = Vec::new();
                let mut position = first_item;
                loop {
                    let mut header = [0u8; 8];
                    file.read_exact_at(&mut header, position).map_err(|_| {
                        self.damaged(format!(
                            "the pixel data ends at byte {} before its last frame: is the file truncated?",
                            self.file_len.min(position)
                        ))
                    })?;
                    let group = u16::from_le_bytes([header[0], header[1]]);
                    let element = u16::from_le_bytes([header[2], header[3]]);
                    let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
                    if (group, element) == SEQUENCE_END {
                        break;
                    }
                    if (group, element) != ITEM || length == u32::MAX {
                        return Err(self.damaged(format!(
                            "expected a pixel data item at byte {position}, found ({group:04X},{element:04X})"
                        )));
                    }
                    let value = position + 8;
                    if value + length as u64 > self.file_len {
                        return Err(self.damaged(format!(
                            "frame data ({length} bytes at offset {value}) lies past the end of the file ({} bytes): is it truncated?",
                            self.file_len
                        )));
                    }
                    items.push((value, length as u64));
                    position = value + length as u64;
                }
                let fragments = items.split_off(1.min(items.len()));
                if fragments.len() as u64 > self.frames {
                    return Err(WsiError::Unsupported {
                        path: self.path.clone(),
                        what: format!(
                            "{} fragments for {} frames (frames split over several fragments)",
                            fragments.len(),
                            self.frames
                        ),
                    });
                }
                Ok(fragments)
            }
        }
    }
}

impl Instance {
    fn damaged(&self, reason: impl Into<String>) -> WsiError {
        WsiError::Damaged {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn io(&self, source: std::io::Error) -> WsiError {
        WsiError::Io {
            path: self.path.clone(),
            cause: source,
        }
    }
}

#[derive(Clone, Copy)]
enum PixelData {
    Native { offset: u64, length: u64 },
    Encapsulated { first_item: u64 },
}

/// What the file meta group says about the data set after it.
struct FileMeta {
    transfer_syntax: String,
    sop_class_uid: String,
    /// Where the data set begins.
    data_set_start: u64,
}

/// The file meta group, each element's declared length checked against the file. The group
/// is always explicit VR little endian: after the 128-byte preamble and "DICM", the
/// (0002,0000) group length element (12 bytes), then the elements it counts, read as
/// dicom-rs reads them.
fn walk_file_meta(file: &File, file_len: u64) -> std::result::Result<FileMeta, String> {
    let truncated = || "the file meta group is cut short: is the file truncated?".to_string();
    let mut group_length = [0u8; 12];
    file.read_exact_at(&mut group_length, 132)
        .map_err(|_| truncated())?;
    let group_length = u32::from_le_bytes(group_length[8..12].try_into().expect("4 bytes"));
    let group_end = 144 + group_length as u64;
    let (mut transfer_syntax, mut sop_class_uid) = (String::new(), String::new());
    let mut position = 144u64;
    while position < group_end {
        let mut header = [0u8; 12];
        file.read_exact_at(&mut header[..8], position)
            .map_err(|_| truncated())?;
        let group = u16::from_le_bytes([header[0], header[1]]);
        let element = u16::from_le_bytes([header[2], header[3]]);
        // As dicom-rs decodes a header: item tags have no VR and a 4-byte length.
        let (length, value) = if group == 0xFFFE {
            let length = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
            (length as u64, position + 8)
        } else if SHORT_LENGTH_VRS.iter().any(|vr| header[4..6] == vr[..]) {
            (
                u16::from_le_bytes([header[6], header[7]]) as u64,
                position + 8,
            )
        } else {
            file.read_exact_at(&mut header[8..12], position + 8)
                .map_err(|_| truncated())?;
            let length = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
            (length as u64, position + 12)
        };
        if value + length > file_len {
            return Err(format!(
                "file meta element ({group:04X},{element:04X}) declares {length} bytes at offset {value}, past the end of the file ({file_len} bytes): is it truncated?"
            ));
        }
        let uid = match (group, element) {
            (0x0002, 0x0002) => Some(&mut sop_class_uid),
            (0x0002, 0x0010) => Some(&mut transfer_syntax),
            _ => None,
        };
        if let Some(uid) = uid {
            if length > MAX_ATTRIBUTE_BYTES {
                return Err(format!(
                    "file meta element ({group:04X},{element:04X}) declares {length} bytes for a UID"
                ));
            }
            let mut bytes = vec![0u8; length as usize];
            file.read_exact_at(&mut bytes, value)
                .map_err(|_| truncated())?;
            *uid = String::from_utf8_lossy(&bytes)
                .trim_end_matches(['\0', ' '])
                .to_string();
        }
        position = value + length;
    }
    // dicom-rs reads whole elements, so the data set begins after the last one read, which
    // a damaged group length can put past the group's declared end.
    Ok(FileMeta {
        transfer_syntax,
        sop_class_uid,
        data_set_start: position,
    })
}

/// The values an instance needs, from one walk of its data set.
#[derive(Default)]
struct DataSet {
    /// The attributes read, by where they lie: [`TOP_LEVEL_ATTRIBUTES`] and PixelSpacing.
    values: BTreeMap<(Place, Tag), PrimitiveValue>,
    /// The ICC profile's size in OpticalPathSequence's first item, as OpenSlide reports it.
    icc_profile_len: Option<u64>,
    pixel_data: Option<PixelData>,
}

impl DataSet {
    /// Walks the data set to the top-level Pixel Data element, checking that every value's
    /// declared length fits in the file, reading the values kept and skipping the rest.
    fn walk(file: &File, file_len: u64, meta: &FileMeta) -> std::result::Result<DataSet, String> {
        let unparsable = |err: &dyn std::error::Error| format!("DICOM: {}", one_line(err));
        let syntax: &TransferSyntax = TransferSyntaxRegistry
            .get(&meta.transfer_syntax)
            .ok_or_else(|| format!("unknown transfer syntax {:?}", meta.transfer_syntax))?;
        // A data set codec (deflate) would need the whole data set inflated first.
        if !syntax.is_codec_free() && !syntax.is_encapsulated_pixel_data() {
            return Err(format!(
                "{} is not read (a compressed data set)",
                syntax.name()
            ));
        }
        let mut source = BufReader::new(file.try_clone().map_err(|err| unparsable(&err))?);
        source
            .seek(SeekFrom::Start(meta.data_set_start))
            .map_err(|err| unparsable(&err))?;
        let mut reader =
            LazyDataSetReader::new_with_ts(source, syntax).map_err(|err| unparsable(&err))?;
        let mut data_set = DataSet::default();
        // The sequences the walk is inside, outermost first, each with the items begun in it.
        let mut sequences: Vec<(Tag, usize)> = Vec::new();
        while let Some(token) = reader.advance() {
            match token.map_err(|err| unparsable(&err))? {
                LazyDataToken::SequenceStart { tag, .. } => sequences.push((tag, 0)),
                LazyDataToken::PixelSequenceStart if sequences.is_empty() => {
                    data_set.pixel_data = Some(PixelData::Encapsulated {
                        first_item: reader.into_decoder().position(),
                    });
                    break;
                }
                LazyDataToken::PixelSequenceStart => sequences.push((tags::PIXEL_DATA, 0)),
                LazyDataToken::ItemStart { .. } => {
                    if let Some((_, items)) = sequences.last_mut() {
                        *items += 1;
                    }
                }
                LazyDataToken::SequenceEnd => {
                    sequences.pop();
                }
                LazyDataToken::LazyValue { header, decoder } => {
                    let (tag, offset, length) =
                        (header.tag, decoder.position(), header.len.0 as u64);
                    if sequences.is_empty() && tag == tags::PIXEL_DATA {
                        data_set.pixel_data = Some(PixelData::Native { offset, length });
                        break;
                    }
                    if header.len.is_defined() && offset + length > file_len {
                        return Err(format!(
                            "element {tag} declares {length} bytes at offset {offset}, past the end of the file ({file_len} bytes): is it truncated?"
                        ));
                    }
                    let place = place(&sequences);
                    if place == Place::OpticalPath
                        && tag == tags::ICC_PROFILE
                        && header.len.is_defined()
                    {
                        data_set.icc_profile_len = Some(length);
                    }
                    let token = LazyDataToken::LazyValue { header, decoder };
                    let wanted = match place {
                        Place::TopLevel => TOP_LEVEL_ATTRIBUTES.contains(&tag),
                        Place::PixelMeasures => tag == tags::PIXEL_SPACING,
                        Place::OpticalPath | Place::Elsewhere => false,
                    };
                    if !wanted {
                        token.skip().map_err(|err| unparsable(&err))?;
                        continue;
                    }
                    if length > MAX_ATTRIBUTE_BYTES {
                        return Err(format!(
                            "element {tag} declares {length} bytes, more than such an attribute holds"
                        ));
                    }
                    let value = token.into_value().map_err(|err| unparsable(&err))?;
                    data_set.values.insert((place, tag), value);
                }
                value @ LazyDataToken::LazyItemValue { .. } => {
                    value.skip().map_err(|err| unparsable(&err))?;
                }
                _ => {}
            }
        }
        Ok(data_set)
    }

    /// A top-level attribute.
    fn get(&self, tag: Tag) -> Option<&PrimitiveValue> {
        self.values.get(&(Place::TopLevel, tag))
    }

    /// SharedFunctionalGroupsSequence[0] > PixelMeasuresSequence[0] > PixelSpacing, in mm.
    fn pixel_spacing(&self) -> Option<Vec<f64>> {
        self.values
            .get(&(Place::PixelMeasures, tags::PIXEL_SPACING))
            .and_then(|v| v.to_multi_float64().ok())
            .filter(|s| s.len() == 2)
    }
}

/// Where in the data set's nesting a value lies, of the places the walk reads from.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    TopLevel,
    /// SharedFunctionalGroupsSequence's first item > PixelMeasuresSequence's first item.
    PixelMeasures,
    /// OpticalPathSequence's first item.
    OpticalPath,
    Elsewhere,
}

fn place(sequences: &[(Tag, usize)]) -> Place {
    match sequences {
        [] => Place::TopLevel,
        [
            (tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, 1),
            (tags::PIXEL_MEASURES_SEQUENCE, 1),
        ] => Place::PixelMeasures,
        [(tags::OPTICAL_PATH_SEQUENCE, 1)] => Place::OpticalPath,
        _ => Place::Elsewhere,
    }
}

/// An error's text with its causes (dicom-rs's top-level messages are vague: "Could not read
/// data set token"), on one line (parsers' messages may carry newlines or debug dumps).
fn one_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
