//! YUV 4:2:0 to packed BGR, the layout OpenCV and imagezmq's `send_image`
//! use. Only `--format raw` pays for this; the JPEG path never converts.

use crate::frame::{chroma_size, Frame, PixelLayout};

/// Converts `frame` to BGR (BT.601 full range, as JPEG decoders do) into `out`.
pub fn i420_to_bgr(frame: &Frame, out: &mut Vec<u8>) {
    let (w, h) = (frame.width, frame.height);
    let (cw, _) = chroma_size(w, h);
    out.clear();
    out.reserve(w * h * 3);
    for row in 0..h {
        let luma = frame.y.row(row, w);
        for (x, &y) in luma.iter().enumerate() {
            let (u, v) = match frame.layout {
                PixelLayout::I420 => (frame.u.row(row / 2, cw)[x / 2], frame.v.row(row / 2, cw)[x / 2]),
                PixelLayout::Nv12 => {
                    let uv = frame.u.row(row / 2, cw * 2);
                    (uv[x / 2 * 2], uv[x / 2 * 2 + 1])
                }
            };
            let (y, u, v) = (y as i32 * 256, u as i32 - 128, v as i32 - 128);
            let clamp = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
            out.extend_from_slice(&[clamp(y + 454 * u), clamp(y - 88 * u - 183 * v), clamp(y + 359 * v)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameBuf;

    #[test]
    fn grey_and_red_convert_to_expected_bgr() {
        let mut buf = FrameBuf::new(2, 2);
        let frame = buf.as_frame();
        let mut out = Vec::new();
        i420_to_bgr(&frame, &mut out);
        assert_eq!(out, vec![128; 12]);
        // Full-range red is Y=76, U=85, V=255.
        let (y, u, v) = buf.planes_mut();
        y.fill(76);
        u.fill(85);
        v.fill(255);
        i420_to_bgr(&buf.as_frame(), &mut out);
        let (b, g, r) = (out[0], out[1], out[2]);
        assert!(b < 5 && g < 5 && r > 250, "{:?}", &out[..3]);
    }
}
