//! Images scaled to a size for people to look at (thumbnails, a heatmap's background).
//!
//! fast_image_resize rather than `image::imageops::resize`: the same bilinear (triangle)
//! filter, values within 1 level of it, 11x faster (5000x5000 to 4096x4096 RGB on 2 cores:
//! 0.10 s against 1.11 s), which is most of a slide's fixed cost once the model runs on a GPU.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{ImageBuffer, Luma, Pixel, Rgb};

/// 8-bit pixels that [`resize`] scales.
pub trait Resizable: Pixel<Subpixel = u8> {
    const TYPE: PixelType;
}

impl Resizable for Rgb<u8> {
    const TYPE: PixelType = PixelType::U8x3;
}

impl Resizable for Luma<u8> {
    const TYPE: PixelType = PixelType::U8;
}

/// `image` scaled to `width` x `height` with a bilinear filter (an area filter's width when
/// shrinking, as `image`'s `Triangle`). An empty source gives a black image.
pub fn resize<P: Resizable>(
    image: &ImageBuffer<P, Vec<u8>>,
    width: u32,
    height: u32,
) -> ImageBuffer<P, Vec<u8>> {
    if image.dimensions() == (width, height) {
        return image.clone();
    }
    resize_rows(image, 0.0, image.height() as f64, width, height)
}

/// Rows `top .. top + rows` of `image` (fractional) scaled as [`resize`] scales a whole image:
/// the filter also reads the rows of `image` beyond them, so that the bands of a larger image,
/// each read with the rows its filter reaches, scale as the whole image would.
pub(crate) fn resize_rows<P: Resizable>(
    image: &ImageBuffer<P, Vec<u8>>,
    top: f64,
    rows: f64,
    width: u32,
    height: u32,
) -> ImageBuffer<P, Vec<u8>> {
    let mut out = Image::new(width, height, P::TYPE);
    // Clamped so that the crop ends inside the image however `top + rows` rounds.
    let rows = rows.min(image.height() as f64 - top);
    if image.width() > 0 && rows > 0.0 && width > 0 && height > 0 {
        let source = ImageRef::new(image.width(), image.height(), image.as_raw(), P::TYPE)
            .expect("an ImageBuffer holds width x height pixels of its type");
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
            .crop(0.0, top, image.width() as f64, rows);
        Resizer::new()
            .resize(&source, &mut out, &options)
            .expect("source and destination share a pixel type and the crop lies inside");
    }
    ImageBuffer::from_raw(width, height, out.into_vec()).expect("sized for width x height")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use image::{GrayImage, RgbImage};

    /// Against `image`'s own triangle filter, shrinking and growing, RGB and grey.
    #[test]
    fn resize_is_images_triangle_filter_within_one_level() {
        let rgb = RgbImage::from_fn(97, 61, |x, y| {
            Rgb([
                (x * 5 % 256) as u8,
                (y * 7 % 256) as u8,
                ((x * y) % 256) as u8,
            ])
        });
        for (w, h) in [(40, 25), (150, 90), (97, 61)] {
            assert_within_one_level(&rgb, w, h);
        }
        let grey = GrayImage::from_fn(64, 48, |x, y| Luma([((x + 3 * y) % 256) as u8]));
        assert_within_one_level(&grey, 16, 12);
        assert_eq!(resize(&RgbImage::new(0, 0), 3, 2), RgbImage::new(3, 2));
    }

    /// `resize` and `image`'s triangle filter give the same size and values within one level.
    fn assert_within_one_level<P: Resizable + 'static>(
        image: &ImageBuffer<P, Vec<u8>>,
        w: u32,
        h: u32,
    ) {
        let ours = resize(image, w, h);
        let theirs = image::imageops::resize(image, w, h, image::imageops::FilterType::Triangle);
        assert_eq!(ours.dimensions(), (w, h));
        let most = largest_difference(ours.as_raw(), theirs.as_raw());
        assert!(most <= Some(1), "{w}x{h}: {most:?}");
    }

    /// The largest difference between two images' samples (`None` for empty images).
    pub(crate) fn largest_difference(a: &[u8], b: &[u8]) -> Option<u8> {
        a.iter().zip(b).map(|(a, b)| a.abs_diff(*b)).max()
    }
}
