//! Safe wrapper over the C shim (`csrc/jpeg_region.c`) that decodes a
//! region of a JPEG with libjpeg-turbo, optionally DCT-scaled by `m/8`.
//!
//! Decoding a RandomResizedCrop's region costs the entropy decoding of the
//! rows above its bottom edge plus the inverse DCT and colour conversion of
//! the region alone, instead of a whole-image decode.

use super::RgbImage;
use std::os::raw::{c_char, c_int};

const OK: c_int = 0;
const UNSUPPORTED_COLOR: c_int = 2;
const BUFFER_TOO_SMALL: c_int = 3;
const MESSAGE_LEN: usize = 200;

/// Images with more pixels are refused, as PIL refuses them
/// (`DecompressionBombError` above twice `MAX_IMAGE_PIXELS`): a corrupt or
/// hostile header must not make a long run allocate gigabytes.
pub const MAX_PIXELS: usize = 178_956_970;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RegionC {
    width: u32,
    height: u32,
    scaled_width: u32,
    scaled_height: u32,
    x: u32,
    y: u32,
}

extern "C" {
    fn ride_jpeg_info(
        data: *const u8,
        len: usize,
        info: *mut RegionC,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn ride_jpeg_decode_region(
        data: *const u8,
        len: usize,
        scale_num: c_int,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        out: *mut u8,
        out_cap: usize,
        got: *mut RegionC,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// Header facts of a JPEG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JpegInfo {
    /// Full width in pixels.
    pub width: usize,
    /// Full height in pixels.
    pub height: usize,
    /// False for CMYK/YCCK files, which this decoder leaves to another.
    pub rgb_convertible: bool,
}

/// A decoded region: `image` holds columns `x..x + image.width` and rows
/// `y..y + image.height` of the image scaled to `scaled_width × scaled_height`.
#[derive(Clone, Debug)]
pub struct Region {
    /// The pixels.
    pub image: RgbImage,
    /// Left edge in scaled pixels.
    pub x: usize,
    /// Top edge in scaled pixels.
    pub y: usize,
    /// Width of the whole scaled image.
    pub scaled_width: usize,
    /// Height of the whole scaled image.
    pub scaled_height: usize,
}

fn message(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    format!("JPEG: {}", String::from_utf8_lossy(&bytes))
}

/// Read the headers only.
pub fn info(bytes: &[u8]) -> Result<JpegInfo, String> {
    let mut got = RegionC::default();
    let mut err = [0 as c_char; MESSAGE_LEN];
    // SAFETY: the pointers cover `bytes`, `got` and `err` for their stated
    // lengths; the shim reads and writes nothing else.
    let status = unsafe {
        ride_jpeg_info(
            bytes.as_ptr(),
            bytes.len(),
            &mut got,
            err.as_mut_ptr(),
            MESSAGE_LEN,
        )
    };
    match status {
        OK | UNSUPPORTED_COLOR => Ok(JpegInfo {
            width: got.width as usize,
            height: got.height as usize,
            rgb_convertible: status == OK,
        }),
        _ => Err(message(&err)),
    }
}

/// The size libjpeg gives an image of `full` pixels at scale `m/8`.
pub fn scaled_len(full: usize, m: usize) -> usize {
    (full * m).div_ceil(8)
}

/// Decode rows `y..y + height` and at least columns `x..x + width` of the
/// image scaled by `scale_num/8` (coordinates in scaled pixels, clipped to
/// the image whose headers `header` describes). Those pixels equal a
/// whole-image decode's at the same scale. `Ok(None)` for CMYK/YCCK files,
/// which the caller decodes another way.
pub fn decode_region(
    bytes: &[u8],
    header: &JpegInfo,
    scale_num: usize,
    (x, y, width, height): (usize, usize, usize, usize),
) -> Result<Option<Region>, String> {
    if header.width.saturating_mul(header.height) > MAX_PIXELS {
        return Err(format!(
            "JPEG: {}x{} pixels is over the limit of {MAX_PIXELS} (a corrupt header or a decompression bomb)",
            header.width, header.height
        ));
    }
    let scale_num = scale_num.clamp(1, 8);
    let (sw, sh) = (
        scaled_len(header.width, scale_num),
        scaled_len(header.height, scale_num),
    );
    let (x, y) = (x.min(sw.saturating_sub(1)), y.min(sh.saturating_sub(1)));
    let (width, height) = (
        width.min(sw.saturating_sub(x)),
        height.min(sh.saturating_sub(y)),
    );
    // libjpeg upsamples chroma at the region's side edges as if they were
    // image edges; one extra column each side keeps the requested ones exact.
    let (x, width) = (
        x.saturating_sub(1),
        (width + 2).min(sw - x.saturating_sub(1)),
    );
    let mut pixels = vec![0u8; sw * 3 * height.max(1)];
    let mut got = RegionC::default();
    let mut err = [0 as c_char; MESSAGE_LEN];
    let clip = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    // SAFETY: as in `info`; `pixels` is writable for `pixels.len()` bytes,
    // which the shim checks before writing.
    let status = unsafe {
        ride_jpeg_decode_region(
            bytes.as_ptr(),
            bytes.len(),
            scale_num as c_int,
            clip(x),
            clip(y),
            clip(width),
            clip(height),
            pixels.as_mut_ptr(),
            pixels.len(),
            &mut got,
            err.as_mut_ptr(),
            MESSAGE_LEN,
        )
    };
    match status {
        OK => {}
        UNSUPPORTED_COLOR => return Ok(None),
        BUFFER_TOO_SMALL => {
            return Err(format!(
                "JPEG: header size {}x{} disagrees with the decoder's",
                header.width, header.height
            ))
        }
        _ => return Err(message(&err)),
    }
    let (w, h) = (got.width as usize, got.height as usize);
    pixels.truncate(w * h * 3);
    Ok(Some(Region {
        image: RgbImage {
            width: w,
            height: h,
            pixels,
        },
        x: got.x as usize,
        y: got.y as usize,
        scaled_width: got.scaled_width as usize,
        scaled_height: got.scaled_height as usize,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photo(w: usize, h: usize) -> RgbImage {
        let mut img = RgbImage::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let p = (y * w + x) * 3;
                img.pixels[p] = ((x * 7 + y * 3) % 256) as u8;
                img.pixels[p + 1] = ((x * x / 5 + y) % 256) as u8;
                img.pixels[p + 2] = (((x ^ y) * 5) % 256) as u8;
            }
        }
        img
    }

    fn encode(img: &RgbImage, sampling: jpeg_encoder::SamplingFactor) -> Vec<u8> {
        encode_with(img, sampling, false)
    }

    fn encode_with(
        img: &RgbImage,
        sampling: jpeg_encoder::SamplingFactor,
        progressive: bool,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut out, 90);
        enc.set_sampling_factor(sampling);
        enc.set_progressive(progressive);
        enc.encode(
            &img.pixels,
            img.width as u16,
            img.height as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .expect("encode");
        out
    }

    fn pixel(img: &RgbImage, x: usize, y: usize) -> [u8; 3] {
        let p = (y * img.width + x) * 3;
        [img.pixels[p], img.pixels[p + 1], img.pixels[p + 2]]
    }

    /// A region equals the same pixels of a whole-image decode at the same
    /// scale: skipping rows, cropping columns and stopping early change
    /// nothing inside the region, for 4:2:0, 4:4:4 and progressive files.
    #[test]
    fn regions_equal_the_same_pixels_of_a_full_decode() {
        use jpeg_encoder::SamplingFactor::{F_1_1, F_2_2};
        let img = photo(203, 157);
        for (sampling, progressive) in [(F_2_2, false), (F_1_1, false), (F_2_2, true)] {
            let bytes = encode_with(&img, sampling, progressive);
            let header = info(&bytes).expect("header");
            assert_eq!((header.width, header.height), (203, 157));
            assert!(header.rgb_convertible);
            for m in [8, 5, 4, 1] {
                let full = decode_region(&bytes, &header, m, (0, 0, usize::MAX, usize::MAX))
                    .expect("decodes")
                    .expect("RGB");
                assert_eq!(
                    (full.image.width, full.image.height),
                    (scaled_len(203, m), scaled_len(157, m))
                );
                let (sw, sh) = (full.image.width, full.image.height);
                for (x, y, w, h) in [(sw / 3, sh / 4, sw / 3, sh / 2), (1, sh - 5, 7, 5)] {
                    let r = decode_region(&bytes, &header, m, (x, y, w, h))
                        .expect("decodes")
                        .expect("RGB");
                    assert!(r.x <= x && r.x + r.image.width >= x + w, "{m}: columns");
                    assert_eq!((r.y, r.image.height), (y, h), "{m}: rows");
                    assert_eq!((r.scaled_width, r.scaled_height), (sw, sh));
                    for yy in 0..h {
                        for xx in x..x + w {
                            assert_eq!(
                                pixel(&r.image, xx - r.x, yy),
                                pixel(&full.image, xx, y + yy),
                                "{sampling:?} m={m} at ({xx}, {})",
                                y + yy
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn grayscale_files_become_rgb_with_equal_channels() {
        let (w, h) = (40usize, 24usize);
        let luma: Vec<u8> = (0..w * h).map(|i| (i % w * 6) as u8).collect();
        let mut bytes = Vec::new();
        jpeg_encoder::Encoder::new(&mut bytes, 95)
            .encode(&luma, w as u16, h as u16, jpeg_encoder::ColorType::Luma)
            .expect("encode");
        let header = info(&bytes).expect("header");
        assert!(header.rgb_convertible);
        let r = decode_region(&bytes, &header, 8, (0, 0, w, h))
            .expect("decodes")
            .expect("RGB");
        assert_eq!((r.image.width, r.image.height), (w, h));
        for (i, px) in r.image.pixels.chunks_exact(3).enumerate() {
            assert!(px[0] == px[1] && px[1] == px[2], "pixel {i}: {px:?}");
            assert!((px[0] as i32 - luma[i] as i32).abs() <= 3, "pixel {i}");
        }
    }

    #[test]
    fn truncated_and_garbage_files_are_errors_not_grey_pixels() {
        let bytes = encode(&photo(160, 120), jpeg_encoder::SamplingFactor::F_2_2);
        let cut = &bytes[..bytes.len() / 2];
        let header = info(cut).expect("the headers survive");
        let err = decode_region(cut, &header, 8, (0, 0, 160, 120)).expect_err("truncated");
        assert!(err.contains("premature end"), "{err}");
        // The top rows lie in the part that survived: still decodable.
        assert!(decode_region(cut, &header, 8, (0, 0, 160, 8)).is_ok());
        let err = info(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 16, b'J', b'F']).expect_err("garbage");
        assert!(err.starts_with("JPEG: "), "{err}");
        let bomb = JpegInfo {
            width: 60_000,
            height: 60_000,
            rgb_convertible: true,
        };
        let err = decode_region(&bytes, &bomb, 8, (0, 0, 10, 10)).expect_err("too large");
        assert!(err.contains("over the limit"), "{err}");
    }

    /// Damaged files never crash the process: every one of many random
    /// corruptions (flipped bytes, cuts) gives pixels or an error.
    #[test]
    fn random_corruptions_give_pixels_or_errors() {
        use rand::{Rng, SeedableRng};
        let good = encode(&photo(96, 80), jpeg_encoder::SamplingFactor::F_2_2);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (mut decoded, mut failed) = (0, 0);
        for _ in 0..400 {
            let mut bytes = good.clone();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(2..bytes.len());
                bytes[at] = rng.random();
            }
            if rng.random_bool(0.3) {
                bytes.truncate(rng.random_range(3..bytes.len()));
            }
            let region = info(&bytes).and_then(|h| {
                let m = [1, 2, 4, 8][rng.random_range(0..4)];
                decode_region(&bytes, &h, m, (5, 7, 40, 30))
            });
            match region {
                Ok(_) => decoded += 1,
                Err(e) => {
                    assert!(e.starts_with("JPEG: "), "{e}");
                    failed += 1;
                }
            }
        }
        assert!(
            decoded > 0 && failed > 0,
            "{decoded} decoded, {failed} failed"
        );
    }
}
