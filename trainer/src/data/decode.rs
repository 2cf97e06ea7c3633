//! Image decoding to RGB: JPEG through libjpeg-turbo (only the region a
//! crop reads, with DCT-domain downscaling by 1/2, 1/4 or 1/8 when the caller
//! needs fewer pixels), PNG and the other formats of the `image` crate;
//! grayscale, CMYK and alpha inputs all become RGB.

use super::{jpeg_region, RgbImage};
use std::borrow::Cow;

/// An image as a dataset provides it: already decoded, or encoded bytes the
/// transform decodes at the size it needs.
#[derive(Clone, Debug)]
pub enum ImageSource {
    /// Decoded pixels.
    Decoded(RgbImage),
    /// An encoded file.
    Encoded(Vec<u8>),
}

/// The part of an image decoded to cover a box: `rect` (x, y, width,
/// height) locates the box in `image`'s pixels, which may be DCT-scaled and
/// cut to the box plus the resampling filter's reach.
#[derive(Clone, Debug)]
pub struct Cutout<'a> {
    /// The decoded pixels.
    pub image: Cow<'a, RgbImage>,
    /// The requested box, in `image`'s pixel coordinates.
    pub rect: [f32; 4],
}

fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

impl ImageSource {
    /// Width and height without decoding pixels (headers only).
    pub fn dimensions(&self) -> Result<(usize, usize), String> {
        match self {
            ImageSource::Decoded(img) => Ok((img.width, img.height)),
            ImageSource::Encoded(bytes) if is_jpeg(bytes) => {
                let header = jpeg_region::info(bytes)?;
                Ok((header.width, header.height))
            }
            ImageSource::Encoded(bytes) => {
                let (w, h) = image::ImageReader::new(std::io::Cursor::new(bytes))
                    .with_guessed_format()
                    .map_err(|e| e.to_string())?
                    .into_dimensions()
                    .map_err(|e| e.to_string())?;
                Ok((w as usize, h as usize))
            }
        }
    }

    /// Decode to RGB, at a reduced size when the format allows it and the result
    /// stays at least `min_w × min_h` (`usize::MAX` for full size). Returns the
    /// image; its size tells the scale used.
    pub fn decode_at_least(&self, min_w: usize, min_h: usize) -> Result<RgbImage, String> {
        match self {
            ImageSource::Decoded(img) => Ok(img.clone()),
            ImageSource::Encoded(bytes) if is_jpeg(bytes) => {
                let header = jpeg_region::info(bytes)?;
                let denom = jpeg_scale_denominator(header.width, header.height, min_w, min_h);
                let whole = (0, 0, usize::MAX, usize::MAX);
                match jpeg_region::decode_region(bytes, &header, 8 / denom, whole)? {
                    Some(region) => Ok(region.image),
                    None => decode_ink_jpeg(bytes, min_w, min_h),
                }
            }
            ImageSource::Encoded(bytes) => decode_other(bytes),
        }
    }

    /// Decode what a resampling of `rect` (x, y, width, height in full-size
    /// pixels) to `out_w × out_h` reads: for JPEGs, only the rows and columns
    /// under the box plus the filter's reach (`support`, the filter radius in
    /// output pixels), at the smallest DCT scale that leaves the box at least
    /// the output size. Resampling the cutout's `rect` gives the same pixels
    /// as resampling the whole image decoded at that scale.
    pub fn decode_box(
        &self,
        rect: [f32; 4],
        out_w: usize,
        out_h: usize,
        support: f32,
    ) -> Result<Cutout<'_>, String> {
        let bytes = match self {
            ImageSource::Decoded(img) => {
                return Ok(Cutout {
                    image: Cow::Borrowed(img),
                    rect,
                })
            }
            ImageSource::Encoded(bytes) => bytes,
        };
        let [x, y, cw, ch] = rect;
        let need = |full: usize, out: usize, box_side: f32| {
            (full as f32 * out as f32 / box_side.max(1.0)).ceil() as usize
        };
        if is_jpeg(bytes) {
            let header = jpeg_region::info(bytes)?;
            let (w, h) = (header.width, header.height);
            if header.rgb_convertible {
                let m = 8 / jpeg_scale_denominator(w, h, need(w, out_w, cw), need(h, out_h, ch));
                let (sw, sh) = (jpeg_region::scaled_len(w, m), jpeg_region::scaled_len(h, m));
                let (sx, sy) = (sw as f32 / w as f32, sh as f32 / h as f32);
                let [bx, by, bw, bh] = [x * sx, y * sy, cw * sx, ch * sy];
                // The filter widens with the shrink factor; one pixel more
                // covers rounding of the box edges.
                let reach = |side: f32, out: usize| {
                    (support * (side / out.max(1) as f32).max(1.0)).ceil() + 1.0
                };
                let (rx, ry) = (reach(bw, out_w), reach(bh, out_h));
                let x0 = (bx - rx).floor().max(0.0) as usize;
                let y0 = (by - ry).floor().max(0.0) as usize;
                let x1 = ((bx + bw + rx).ceil() as usize).min(sw);
                let y1 = ((by + bh + ry).ceil() as usize).min(sh);
                let region = jpeg_region::decode_region(
                    bytes,
                    &header,
                    m,
                    (x0, y0, x1.saturating_sub(x0), y1.saturating_sub(y0)),
                )?;
                if let Some(r) = region {
                    return Ok(Cutout {
                        rect: [bx - r.x as f32, by - r.y as f32, bw, bh],
                        image: Cow::Owned(r.image),
                    });
                }
            }
        }
        let (w, h) = self.dimensions()?;
        let img = self.decode_at_least(need(w, out_w, cw), need(h, out_h, ch))?;
        let (sx, sy) = (img.width as f32 / w as f32, img.height as f32 / h as f32);
        Ok(Cutout {
            rect: [x * sx, y * sy, cw * sx, ch * sy],
            image: Cow::Owned(img),
        })
    }
}

/// The largest JPEG DCT scale denominator (1, 2, 4, 8) keeping both sides at least the minimum.
///
/// libjpeg-turbo also scales by 3/8, 5/8, 6/8 and 7/8, but without SIMD: on
/// photos of ImageNet's size those decode slower than at full scale.
pub fn jpeg_scale_denominator(w: usize, h: usize, min_w: usize, min_h: usize) -> usize {
    [8, 4, 2]
        .into_iter()
        .find(|&d| w.div_ceil(d) >= min_w.max(1) && h.div_ceil(d) >= min_h.max(1))
        .unwrap_or(1)
}

/// CMYK and YCCK JPEGs (which libjpeg would return as ink, not RGB), through
/// `jpeg-decoder`, with DCT scaling.
fn decode_ink_jpeg(bytes: &[u8], min_w: usize, min_h: usize) -> Result<RgbImage, String> {
    let mut d = jpeg_decoder::Decoder::new(bytes);
    d.read_info().map_err(|e| format!("JPEG: {e}"))?;
    let info = d.info().ok_or("JPEG: no frame header")?;
    let (w, h) = (info.width as usize, info.height as usize);
    let denom = jpeg_scale_denominator(w, h, min_w, min_h);
    if denom > 1 {
        d.scale(w.div_ceil(denom) as u16, h.div_ceil(denom) as u16)
            .map_err(|e| format!("JPEG: {e}"))?;
    }
    let data = d.decode().map_err(|e| format!("JPEG: {e}"))?;
    let info = d.info().ok_or("JPEG: no frame header")?;
    let (w, h) = (info.width as usize, info.height as usize);
    let n = w * h;
    let pixels = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => data,
        jpeg_decoder::PixelFormat::L8 => data.iter().flat_map(|&v| [v, v, v]).collect(),
        jpeg_decoder::PixelFormat::L16 => data
            .chunks_exact(2)
            .flat_map(|c| [c[0], c[0], c[0]])
            .collect(),
        // The decoder yields ink amounts (Adobe's inverted storage undone);
        // RGB = (255 − C)(255 − K)/255 per channel, as PIL converts.
        jpeg_decoder::PixelFormat::CMYK32 => data
            .chunks_exact(4)
            .flat_map(|c| {
                let k = 255 - c[3] as u32;
                [0, 1, 2].map(|i| (((255 - c[i] as u32) * k + 127) / 255) as u8)
            })
            .collect(),
    };
    if pixels.len() != n * 3 {
        return Err(format!("JPEG: decoded {} bytes for {w}x{h}", pixels.len()));
    }
    Ok(RgbImage {
        width: w,
        height: h,
        pixels,
    })
}

fn decode_other(bytes: &[u8]) -> Result<RgbImage, String> {
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?
        .into_rgb8();
    Ok(RgbImage {
        width: img.width() as usize,
        height: img.height() as usize,
        pixels: img.into_raw(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_denominator_keeps_both_sides_large_enough() {
        assert_eq!(jpeg_scale_denominator(500, 375, 224, 224), 1);
        assert_eq!(jpeg_scale_denominator(1000, 800, 224, 224), 2);
        assert_eq!(jpeg_scale_denominator(2000, 1800, 224, 224), 8);
        assert_eq!(jpeg_scale_denominator(2000, 1800, 0, 0), 8);
        assert_eq!(jpeg_scale_denominator(100, 100, 224, 224), 1);
    }
}
