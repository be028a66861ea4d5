//! Many threads read regions of one slide at once and see what one thread sees, through a
//! tile cache far smaller than the slide.

use std::path::Path;
use std::sync::Arc;

use wsi::Slide;

#[test]
fn threads_reading_one_slide_agree_with_a_single_reader() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/slides/tiny_vips_jpeg.tif");
    let reference = Slide::open(&path).unwrap();
    // Room for two decoded 512x512 tiles: evictions all the time.
    let shared = Arc::new(Slide::open_with_cache(&path, 2 * 512 * 512 * 3).unwrap());
    let regions: Vec<(i64, i64)> = (0..24)
        .map(|i| ((i * 97 % 1700) as i64, (i * 61 % 1200) as i64))
        .collect();
    std::thread::scope(|scope| {
        for thread in 0..6 {
            let shared = shared.clone();
            let regions = &regions;
            let reference = &reference;
            scope.spawn(move || {
                for (i, &(x, y)) in regions.iter().enumerate().skip(thread) {
                    let got = shared.read_region(0, x, y, 300, 300).unwrap();
                    let want = reference.read_region(0, x, y, 300, 300).unwrap();
                    assert!(got == want, "thread {thread}, region {i} at ({x}, {y})");
                }
            });
        }
    });
}
