/*
 * Region decoding of JPEG files through libjpeg-turbo's classic API.
 *
 * A RandomResizedCrop needs only part of the image, often at reduced size.
 * libjpeg-turbo can scale in the DCT domain (scale_num/8), skip the inverse
 * DCT and colour conversion of rows above the region (jpeg_skip_scanlines)
 * and of columns outside it (jpeg_crop_scanline), and stop after the
 * region's last row. Only the entropy decoding of the rows above the region
 * remains.
 *
 * This lives in C because libjpeg reports fatal errors through a callback
 * that must not return: the standard answer is setjmp/longjmp, which must
 * not cross Rust frames. Every call here returns a status instead.
 */
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

/* Status codes shared with trainer/src/data/jpeg_region.rs. */
#define RIDE_JPEG_OK 0
#define RIDE_JPEG_ERROR 1
#define RIDE_JPEG_UNSUPPORTED_COLOR 2
#define RIDE_JPEG_BUFFER_TOO_SMALL 3

/* The decoded region: columns [x, x + width), rows [y, y + height) of the
 * image scaled to scaled_width × scaled_height. */
typedef struct {
  uint32_t width;
  uint32_t height;
  uint32_t scaled_width;
  uint32_t scaled_height;
  uint32_t x;
  uint32_t y;
} ride_jpeg_region;

typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf on_error;
  int truncated;
} error_manager;

static void fail(j_common_ptr cinfo) {
  error_manager *err = (error_manager *)cinfo->err;
  longjmp(err->on_error, 1);
}

/* Warnings do not stop libjpeg; a file that ends early is filled with grey,
 * which we treat as an error so the sample is skipped, as PIL does. Other
 * warnings (extraneous bytes, for example) are ignored, as PIL ignores them. */
static void warn(j_common_ptr cinfo, int level) {
  error_manager *err = (error_manager *)cinfo->err;
  if (level < 0) {
    if (cinfo->err->msg_code == JWRN_JPEG_EOF) err->truncated = 1;
    cinfo->err->num_warnings++;
  }
}

static void message(j_common_ptr cinfo, char *out, size_t out_len) {
  char buf[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, buf);
  snprintf(out, out_len, "%s", buf);
}

static int is_rgb_convertible(J_COLOR_SPACE space) {
  return space == JCS_YCbCr || space == JCS_RGB || space == JCS_GRAYSCALE;
}

/* Dimensions and colour model, from the headers only. */
int ride_jpeg_info(const uint8_t *data, size_t len, ride_jpeg_region *info, char *err_out,
                   size_t err_len) {
  struct jpeg_decompress_struct cinfo;
  error_manager err;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = fail;
  err.pub.emit_message = warn;
  err.truncated = 0;
  if (setjmp(err.on_error)) {
    message((j_common_ptr)&cinfo, err_out, err_len);
    jpeg_destroy_decompress(&cinfo);
    return RIDE_JPEG_ERROR;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, (unsigned long)len);
  jpeg_read_header(&cinfo, TRUE);
  memset(info, 0, sizeof *info);
  info->width = info->scaled_width = cinfo.image_width;
  info->height = info->scaled_height = cinfo.image_height;
  int status = is_rgb_convertible(cinfo.jpeg_color_space) ? RIDE_JPEG_OK
                                                          : RIDE_JPEG_UNSUPPORTED_COLOR;
  jpeg_destroy_decompress(&cinfo);
  return status;
}

/*
 * Decode rows [y, y + height) and at least columns [x, x + width) of the
 * image scaled by scale_num/8, as RGB, into out (row stride = the returned
 * width × 3). jpeg_crop_scanline may widen the columns to an iMCU boundary;
 * `got` says which region was decoded. The region is clipped to the scaled
 * image. With chroma subsampling, the first and last decoded columns lack
 * their neighbours' chroma unless they are image edges: they can differ
 * from a whole-image decode, so callers ask for one column more each side.
 */
int ride_jpeg_decode_region(const uint8_t *data, size_t len, int scale_num, uint32_t x,
                            uint32_t y, uint32_t width, uint32_t height, uint8_t *out,
                            size_t out_cap, ride_jpeg_region *got, char *err_out,
                            size_t err_len) {
  struct jpeg_decompress_struct cinfo;
  error_manager err;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = fail;
  err.pub.emit_message = warn;
  err.truncated = 0;
  if (setjmp(err.on_error)) {
    message((j_common_ptr)&cinfo, err_out, err_len);
    jpeg_destroy_decompress(&cinfo);
    return RIDE_JPEG_ERROR;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, (unsigned long)len);
  jpeg_read_header(&cinfo, TRUE);
  if (!is_rgb_convertible(cinfo.jpeg_color_space)) {
    jpeg_destroy_decompress(&cinfo);
    return RIDE_JPEG_UNSUPPORTED_COLOR;
  }
  cinfo.out_color_space = JCS_RGB;
  cinfo.scale_num = (unsigned int)(scale_num < 1 ? 1 : scale_num > 8 ? 8 : scale_num);
  cinfo.scale_denom = 8;
  jpeg_start_decompress(&cinfo);
  JDIMENSION full_w = cinfo.output_width, full_h = cinfo.output_height;
  JDIMENSION rx = x < full_w ? x : full_w - 1, ry = y < full_h ? y : full_h - 1;
  JDIMENSION rw = (width == 0 || width > full_w - rx) ? full_w - rx : width;
  JDIMENSION rh = (height == 0 || height > full_h - ry) ? full_h - ry : height;
  JDIMENSION xoff = rx, cw = rw;
  if (xoff > 0 || cw < full_w) jpeg_crop_scanline(&cinfo, &xoff, &cw);
  size_t stride = (size_t)cinfo.output_width * 3;
  if (stride * rh > out_cap) {
    got->width = cinfo.output_width;
    got->height = rh;
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return RIDE_JPEG_BUFFER_TOO_SMALL;
  }
  if (ry > 0) jpeg_skip_scanlines(&cinfo, ry);
  JDIMENSION row = 0;
  while (row < rh && cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW dst = out + stride * row;
    row += jpeg_read_scanlines(&cinfo, &dst, 1);
  }
  int truncated = err.truncated;
  got->width = cinfo.output_width;
  got->height = row;
  got->scaled_width = full_w;
  got->scaled_height = full_h;
  got->x = xoff;
  got->y = ry;
  /* The rows below the region are never decoded. */
  jpeg_abort_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  if (truncated) {
    snprintf(err_out, err_len, "premature end of JPEG data");
    return RIDE_JPEG_ERROR;
  }
  return RIDE_JPEG_OK;
}
