//! Window bookkeeping for shifted-window attention: relative position
//! indices, shift masks and window partition/reverse.

use tch::{Device, Kind, Tensor};

/// The `[N, N]` index into the relative position bias table for a
/// `ws x ws` window (`N = ws*ws`), as in Swin: `(dy + ws-1) * (2ws-1) + (dx + ws-1)`.
pub fn relative_position_index(ws: i64) -> Vec<i64> {
    let n = (ws * ws) as usize;
    let coords: Vec<(i64, i64)> = (0..ws).flat_map(|y| (0..ws).map(move |x| (y, x))).collect();
    let mut idx = Vec::with_capacity(n * n);
    for &(yi, xi) in &coords {
        for &(yj, xj) in &coords {
            idx.push((yi - yj + ws - 1) * (2 * ws - 1) + (xi - xj + ws - 1));
        }
    }
    idx
}

/// The additive attention mask `[nW, N, N]` for a cyclically shifted
/// `h x w` feature map: 0 within the same region, -100 across regions.
pub fn shift_attention_mask(h: i64, w: i64, ws: i64, shift: i64) -> Vec<f32> {
    let region = |p: i64, size: i64| -> i64 {
        if p < size - ws {
            0
        } else if p < size - shift {
            1
        } else {
            2
        }
    };
    let (nwh, nww) = (h / ws, w / ws);
    let n = (ws * ws) as usize;
    let mut mask = Vec::with_capacity((nwh * nww) as usize * n * n);
    for wy in 0..nwh {
        for wx in 0..nww {
            let ids: Vec<i64> = (0..ws)
                .flat_map(|y| (0..ws).map(move |x| (y, x)))
                .map(|(y, x)| region(wy * ws + y, h) * 3 + region(wx * ws + x, w))
                .collect();
            for &a in &ids {
                for &b in &ids {
                    mask.push(if a == b { 0.0 } else { -100.0 });
                }
            }
        }
    }
    mask
}

/// `[B, H, W, C]` → `[B*nW, ws*ws, C]`.
pub fn window_partition(x: &Tensor, ws: i64) -> Tensor {
    let s = x.size();
    let (b, h, w, c) = (s[0], s[1], s[2], s[3]);
    x.view([b, h / ws, ws, w / ws, ws, c])
        .permute([0, 1, 3, 2, 4, 5])
        .contiguous()
        .view([-1, ws * ws, c])
}

/// `[B*nW, ws*ws, C]` → `[B, H, W, C]`.
pub fn window_reverse(windows: &Tensor, ws: i64, h: i64, w: i64) -> Tensor {
    let c = windows.size()[2];
    let b = windows.size()[0] / ((h / ws) * (w / ws));
    windows
        .view([b, h / ws, w / ws, ws, ws, c])
        .permute([0, 1, 3, 2, 4, 5])
        .contiguous()
        .view([b, h, w, c])
}

/// The relative position index as a tensor on `device`.
pub fn relative_position_index_tensor(ws: i64, device: Device) -> Tensor {
    Tensor::from_slice(&relative_position_index(ws))
        .view([ws * ws, ws * ws])
        .to_device(device)
}

/// The shift mask as a `[nW, N, N]` float tensor on `device`.
pub fn shift_mask_tensor(h: i64, w: i64, ws: i64, shift: i64, device: Device) -> Tensor {
    let n = ws * ws;
    Tensor::from_slice(&shift_attention_mask(h, w, ws, shift))
        .view([(h / ws) * (w / ws), n, n])
        .to_kind(Kind::Float)
        .to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_index_by_hand_for_2x2() {
        // ws=2: table is 3x3; token 0=(0,0), 3=(1,1).
        let idx = relative_position_index(2);
        assert_eq!(idx.len(), 16);
        // (0,0)-(0,0): dy=0,dx=0 -> (1)*3 + 1 = 4 (the centre)
        assert_eq!(idx[0], 4);
        // (0,0)-(1,1): dy=-1,dx=-1 -> 0*3 + 0 = 0
        assert_eq!(idx[3], 0);
        // (1,1)-(0,0): dy=1,dx=1 -> 2*3 + 2 = 8
        assert_eq!(idx[12], 8);
    }

    #[test]
    fn shift_mask_separates_wrapped_regions() {
        // 4x4 map, window 2, shift 1: the first window never wraps; the last
        // (bottom-right) mixes 4 regions.
        let m = shift_attention_mask(4, 4, 2, 1);
        assert_eq!(m.len(), 4 * 4 * 4);
        assert!(m[..16].iter().all(|&v| v == 0.0));
        let last = &m[48..];
        assert_eq!(
            last.iter().filter(|&&v| v == 0.0).count(),
            4,
            "only the diagonal shares a region"
        );
    }

    #[test]
    fn partition_and_reverse_are_inverse() {
        let x = Tensor::arange(2 * 4 * 4 * 3, (Kind::Float, Device::Cpu)).view([2, 4, 4, 3]);
        let w = window_partition(&x, 2);
        assert_eq!(w.size(), vec![8, 4, 3]);
        // window 1 of image 0 is rows 0-1, cols 2-3; its first token is (0,2).
        assert_eq!(w.get(1).get(0).get(0).double_value(&[]), (2 * 3) as f64);
        assert!(window_reverse(&w, 2, 4, 4).equal(&x));
    }
}
