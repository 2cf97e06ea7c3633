//! Image decoding to RGB: JPEG (with DCT-domain downscaling by 1/2, 1/4 or
//! 1/8 when the caller needs fewer pixels), PNG and the other formats of the
//! `image` crate; grayscale, CMYK and alpha inputs all become RGB.

use super::RgbImage;

/// An image as a dataset provides it: already decoded, or encoded bytes the
/// transform decodes at the size it needs.
#[derive(Clone, Debug)]
pub enum ImageSource {
    /// Decoded pixels.
    Decoded(RgbImage),
    /// An encoded file.
    Encoded(Vec<u8>),
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
                let mut d = jpeg_decoder::Decoder::new(bytes.as_slice());
                d.read_info().map_err(|e| format!("JPEG: {e}"))?;
                let info = d.info().ok_or("JPEG: no frame header")?;
                Ok((info.width as usize, info.height as usize))
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
            ImageSource::Encoded(bytes) if is_jpeg(bytes) => decode_jpeg(bytes, min_w, min_h),
            ImageSource::Encoded(bytes) => decode_other(bytes),
        }
    }
}

/// The largest JPEG DCT scale denominator (1, 2, 4, 8) keeping both sides at least the minimum.
pub fn jpeg_scale_denominator(w: usize, h: usize, min_w: usize, min_h: usize) -> usize {
    [8, 4, 2]
        .into_iter()
        .find(|&d| w.div_ceil(d) >= min_w.max(1) && h.div_ceil(d) >= min_h.max(1))
        .unwrap_or(1)
}

/// Full-size decodes of 1- and 3-component JPEGs go through zune-jpeg (SIMD,
/// the fastest pure-Rust decoder); `None` means "use the scaling decoder".
fn decode_jpeg_full(bytes: &[u8]) -> Option<Result<RgbImage, String>> {
    use zune_core::{bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions};
    let opts = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut d = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), opts);
    if let Err(e) = d.decode_headers() {
        return Some(Err(format!("JPEG: {e:?}")));
    }
    // CMYK/YCCK conversions follow PIL's formula in our own path below.
    if d.input_colorspace()
        .is_some_and(|c| c.num_components() == 4)
    {
        return None;
    }
    let pixels = match d.decode() {
        Ok(p) => p,
        Err(e) => return Some(Err(format!("JPEG: {e:?}"))),
    };
    let info = d.info()?;
    let (w, h) = (info.width as usize, info.height as usize);
    if d.output_colorspace() != Some(ColorSpace::RGB) || pixels.len() != w * h * 3 {
        return None;
    }
    Some(Ok(RgbImage {
        width: w,
        height: h,
        pixels,
    }))
}

fn decode_jpeg(bytes: &[u8], min_w: usize, min_h: usize) -> Result<RgbImage, String> {
    let mut d = jpeg_decoder::Decoder::new(bytes);
    d.read_info().map_err(|e| format!("JPEG: {e}"))?;
    let info = d.info().ok_or("JPEG: no frame header")?;
    let (w, h) = (info.width as usize, info.height as usize);
    let denom = jpeg_scale_denominator(w, h, min_w, min_h);
    if denom == 1 {
        if let Some(result) = decode_jpeg_full(bytes) {
            return result;
        }
    }
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
