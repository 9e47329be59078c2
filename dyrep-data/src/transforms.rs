//! The ImageNet transforms, as torchvision defines them (docs/REFERENCE.md "Training recipes"):
//! training `RandomResizedCrop(size, scale, ratio)` with bilinear resampling + horizontal flip +
//! optional colour jitter (brightness, contrast, saturation, applied in a random order); eval
//! resize of the shorter side to `size / crop_fraction` (0.875) + centre crop; normalisation
//! with the ImageNet mean and std. Resampling is PIL's antialiased bilinear filter (a triangle
//! whose support widens with the downscale factor, separable, horizontal pass first), computed
//! in f32 rather than PIL's 8-bit fixed point, so outputs agree with torchvision's to about one
//! grey level. Every random choice is drawn from the `SeededRng` passed in.

use dyrep_api::SeededRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// ImageNet's per-channel mean and std of RGB in [0, 1].
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The ImageNet transform settings (`[augment]` keys of a run's config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageNetTransform {
    /// Side of the square crops the network sees (train and eval).
    pub size: usize,
    /// RandomResizedCrop's range of the crop's area as a fraction of the image's.
    pub scale: (f64, f64),
    /// RandomResizedCrop's range of the crop's aspect ratio (width / height).
    pub ratio: (f64, f64),
    /// Horizontal flip with probability 1/2.
    pub hflip: bool,
    /// Colour jitter strength for brightness, contrast and saturation (0: off; the reference
    /// ResNet recipe uses 0.06... in timm's terms `color_jitter`).
    pub color_jitter: f32,
    /// Eval: the centre crop's share of the resized shorter side (torchvision's 0.875 = 224/256).
    pub crop_fraction: f64,
}

impl Default for ImageNetTransform {
    fn default() -> Self {
        ImageNetTransform {
            size: 224,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: true,
            color_jitter: 0.0,
            crop_fraction: 0.875,
        }
    }
}

impl ImageNetTransform {
    /// Checks the settings; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let (s0, s1) = self.scale;
        let (r0, r1) = self.ratio;
        if self.size == 0 {
            return Err("augment.size must be at least 1".into());
        }
        if !(0.0 < s0 && s0 <= s1 && s1 <= 1.0) {
            return Err(format!(
                "augment.scale ({s0}, {s1}) must satisfy 0 < min <= max <= 1"
            ));
        }
        if !(0.0 < r0 && r0 <= r1 && r1.is_finite()) {
            return Err(format!(
                "augment.ratio ({r0}, {r1}) must satisfy 0 < min <= max"
            ));
        }
        if !(0.0..=1.0).contains(&self.color_jitter) {
            return Err(format!(
                "augment.color_jitter {} must be in [0, 1]",
                self.color_jitter
            ));
        }
        if !(self.crop_fraction > 0.0 && self.crop_fraction <= 1.0) {
            return Err(format!(
                "augment.crop_fraction {} must be in (0, 1]",
                self.crop_fraction
            ));
        }
        Ok(())
    }
}

/// A rectangle of the source image in pixels: left, top, width, height.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropBox {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

/// torchvision's `RandomResizedCrop.get_params`: up to ten tries of a random area fraction in
/// `scale` and a log-uniform aspect ratio in `ratio`, then the centre crop that fits `ratio`.
pub fn random_resized_crop_box(
    w: usize,
    h: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut SeededRng,
) -> CropBox {
    let area = (w * h) as f64;
    let (log_r0, log_r1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale.0..=scale.1);
        let aspect = rng.random_range(log_r0..=log_r1).exp();
        let cw = (target * aspect).sqrt().round() as usize;
        let ch = (target / aspect).sqrt().round() as usize;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let y = rng.random_range(0..=h - ch);
            let x = rng.random_range(0..=w - cw);
            return CropBox { x, y, w: cw, h: ch };
        }
    }
    // Fallback: the whole image, narrowed to the ratio range, centred.
    let in_ratio = w as f64 / h as f64;
    let (cw, ch) = if in_ratio < ratio.0 {
        (w, ((w as f64 / ratio.0).round() as usize).clamp(1, h))
    } else if in_ratio > ratio.1 {
        (((h as f64 * ratio.1).round() as usize).clamp(1, w), h)
    } else {
        (w, h)
    };
    CropBox {
        x: (w - cw) / 2,
        y: (h - ch) / 2,
        w: cw,
        h: ch,
    }
}

/// Python's `round` (half to even), as torchvision's centre crop uses it.
fn round_half_even(v: f64) -> i64 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 && r as i64 % 2 != 0 {
        (r - v.signum()) as i64
    } else {
        r as i64
    }
}

/// The eval geometry: torchvision's `Resize(int(size / crop_fraction))` (shorter side to that,
/// the longer one scaled and truncated) then `CenterCrop(size)`. Returns the resized size and the
/// crop's offset in it: `(rw, rh, left, top)`. A resized side shorter than `size` makes the
/// crop reach outside the image; those pixels are zero, as torchvision pads them.
pub fn eval_geometry(
    w: usize,
    h: usize,
    size: usize,
    crop_fraction: f64,
) -> (usize, usize, i64, i64) {
    let short = (size as f64 / crop_fraction) as usize;
    let (rw, rh) = if w <= h {
        (short, (short as f64 * h as f64 / w as f64) as usize)
    } else {
        ((short as f64 * w as f64 / h as f64) as usize, short)
    };
    let left = round_half_even((rw as f64 - size as f64) / 2.0);
    let top = round_half_even((rh as f64 - size as f64) / 2.0);
    (rw, rh, left, top)
}

/// PIL's bilinear resampling weights along one axis: the `len` source pixels from `start` (a
/// crop: pixels outside it are never read, as torchvision crops before it resizes) mapped onto
/// `grid` outputs; for each output `o` in `window` (an offset into the grid), the first source
/// pixel and the normalised weights. Outputs outside the grid get no weights (they stay zero).
fn axis_weights(
    start: usize,
    len: usize,
    grid: usize,
    window: std::ops::Range<i64>,
) -> Vec<(usize, Vec<f32>)> {
    let scale = len as f64 / grid as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale;
    window
        .map(|o| {
            if o < 0 || o >= grid as i64 {
                return (start, Vec::new());
            }
            let center = (o as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((center + support + 0.5).floor() as usize).min(len);
            let mut w: Vec<f64> = (lo..hi)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) / filterscale).abs();
                    if t < 1.0 {
                        1.0 - t
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = w.iter().sum();
            if total > 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (start + lo, w.into_iter().map(|v| v as f32).collect())
        })
        .collect()
}

/// Resamples the region `region` of an RGB image (`rgb`: HWC u8, `w`×`h`) onto a `grid` of
/// outputs and returns the `out`×`out` window at `(left, top)` of that grid as CHW f32 in
/// [0, 1]: the horizontal pass first, then the vertical one, as PIL does.
#[allow(clippy::too_many_arguments)]
pub fn resample_window(
    rgb: &[u8],
    w: usize,
    h: usize,
    region: CropBox,
    grid: (usize, usize),
    (left, top): (i64, i64),
    out: usize,
) -> Vec<f32> {
    debug_assert!(region.x + region.w <= w && region.y + region.h <= h);
    let xs = axis_weights(region.x, region.w, grid.0, left..left + out as i64);
    let ys = axis_weights(region.y, region.h, grid.1, top..top + out as i64);
    // Horizontal pass over the source rows the vertical pass needs.
    let (row_lo, row_hi) = ys
        .iter()
        .filter(|(_, k)| !k.is_empty())
        .fold((h, 0), |(lo, hi), (s, k)| (lo.min(*s), hi.max(s + k.len())));
    let rows = row_hi.saturating_sub(row_lo);
    let mut tmp = vec![0f32; 3 * rows * out];
    for r in 0..rows {
        let src_row = &rgb[(row_lo + r) * w * 3..(row_lo + r + 1) * w * 3];
        for (ox, (x0, k)) in xs.iter().enumerate() {
            let mut acc = [0f32; 3];
            for (i, &kw) in k.iter().enumerate() {
                let p = &src_row[(x0 + i) * 3..(x0 + i) * 3 + 3];
                for c in 0..3 {
                    acc[c] += kw * p[c] as f32;
                }
            }
            for c in 0..3 {
                tmp[(c * rows + r) * out + ox] = acc[c];
            }
        }
    }
    let mut dst = vec![0f32; 3 * out * out];
    for (oy, (y0, k)) in ys.iter().enumerate() {
        for c in 0..3 {
            for ox in 0..out {
                let mut acc = 0f32;
                for (i, &kw) in k.iter().enumerate() {
                    acc += kw * tmp[(c * rows + (y0 + i - row_lo)) * out + ox];
                }
                dst[(c * out + oy) * out + ox] = (acc / 255.0).clamp(0.0, 1.0);
            }
        }
    }
    dst
}

/// Mirrors a CHW image left to right.
pub fn hflip(img: &mut [f32], size: usize) {
    for row in img.chunks_exact_mut(size) {
        row.reverse();
    }
}

fn grey(img: &[f32], plane: usize, i: usize) -> f32 {
    0.2989 * img[i] + 0.587 * img[plane + i] + 0.114 * img[2 * plane + i]
}

/// torchvision's `ColorJitter(brightness=j, contrast=j, saturation=j)` on a CHW image in
/// [0, 1]: each factor uniform in [max(0, 1 − j), 1 + j], the three applied in a random order,
/// each result clamped to [0, 1].
pub fn color_jitter(img: &mut [f32], plane: usize, strength: f32, rng: &mut SeededRng) {
    if strength <= 0.0 {
        return;
    }
    let lo = (1.0 - strength).max(0.0);
    let mut order = [0usize, 1, 2];
    for i in (1..3).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    let factors: Vec<f32> = (0..3)
        .map(|_| rng.random_range(lo..=1.0 + strength))
        .collect();
    for &op in &order {
        let f = factors[op];
        match op {
            // Brightness: blend with black.
            0 => img.iter_mut().for_each(|v| *v = (*v * f).clamp(0.0, 1.0)),
            // Contrast: blend with the mean grey level.
            1 => {
                let mean = (0..plane).map(|i| grey(img, plane, i)).sum::<f32>() / plane as f32;
                img.iter_mut()
                    .for_each(|v| *v = (f * *v + (1.0 - f) * mean).clamp(0.0, 1.0));
            }
            // Saturation: blend with the grey image.
            _ => {
                for i in 0..plane {
                    let g = grey(img, plane, i);
                    for c in 0..3 {
                        let v = &mut img[c * plane + i];
                        *v = (f * *v + (1.0 - f) * g).clamp(0.0, 1.0);
                    }
                }
            }
        }
    }
}

/// Normalises a CHW image in [0, 1] with the ImageNet mean and std.
pub fn normalize(img: &mut [f32], plane: usize) {
    for (c, ch) in img.chunks_exact_mut(plane).enumerate() {
        let (m, s) = (IMAGENET_MEAN[c], IMAGENET_STD[c]);
        ch.iter_mut().for_each(|v| *v = (*v - m) / s);
    }
}

/// The training transform of one decoded RGB image (HWC u8, `w`×`h`): random resized crop,
/// flip, jitter, normalisation; CHW f32 `size`×`size`.
pub fn train_view(
    rgb: &[u8],
    w: usize,
    h: usize,
    t: &ImageNetTransform,
    rng: &mut SeededRng,
) -> Vec<f32> {
    let b = random_resized_crop_box(w, h, t.scale, t.ratio, rng);
    let mut img = resample_window(rgb, w, h, b, (t.size, t.size), (0, 0), t.size);
    if t.hflip && rng.random_bool(0.5) {
        hflip(&mut img, t.size);
    }
    color_jitter(&mut img, t.size * t.size, t.color_jitter, rng);
    normalize(&mut img, t.size * t.size);
    img
}

/// The eval transform of one decoded RGB image: resize, centre crop, normalisation.
pub fn eval_view(rgb: &[u8], w: usize, h: usize, t: &ImageNetTransform) -> Vec<f32> {
    let (rw, rh, left, top) = eval_geometry(w, h, t.size, t.crop_fraction);
    let whole = CropBox { x: 0, y: 0, w, h };
    let mut img = resample_window(rgb, w, h, whole, (rw, rh), (left, top), t.size);
    normalize(&mut img, t.size * t.size);
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> Vec<u8> {
        (0..h)
            .flat_map(|y| (0..w).flat_map(move |x| [(10 * x) as u8, (20 * y) as u8, 7]))
            .collect()
    }

    #[test]
    fn downscaling_by_two_is_the_pil_kernel_one_three_three_one() {
        // PIL's antialiased bilinear at scale 2: weights 1/8, 3/8, 3/8, 1/8 (clipped at the
        // border and renormalised).
        let (w, h) = (8, 2);
        let rgb = ramp(w, h);
        let all = CropBox { x: 0, y: 0, w, h };
        let out = resample_window(&rgb, w, h, all, (4, 1), (0, 0), 4);
        // Column 1 of 4: source x 1..5 with 1, 3, 3, 1 over red = 10x.
        let want = (10.0 + 3.0 * 20.0 + 3.0 * 30.0 + 40.0) / 8.0 / 255.0;
        assert!((out[1] - want).abs() < 1e-6, "{} vs {want}", out[1]);
        // Column 0: source x 0..3 with weights 3, 3, 1 (the first one falls outside).
        let want0 = (0.0 + 3.0 * 10.0 + 20.0) / 7.0 / 255.0;
        assert!((out[0] - want0).abs() < 1e-6, "{} vs {want0}", out[0]);
    }

    /// The 9x7 test image of the torchvision reference below.
    fn pattern() -> Vec<u8> {
        (0..7usize)
            .flat_map(|y| {
                (0..9usize).flat_map(move |x| {
                    [
                        ((x * 37 + y * 11) % 256) as u8,
                        ((x * 5 + y * 29) % 256) as u8,
                        ((x * y * 7) % 256) as u8,
                    ]
                })
            })
            .collect()
    }

    fn within_one_grey_level(got: &[f32], want: &[u8]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let g = g * 255.0;
            assert!(
                (g - *w as f32).abs() <= 1.0,
                "value {i}: {g} vs torchvision {w}"
            );
        }
    }

    /// Reference values from torchvision 0.29 / PIL 13 on the same image (CHW, uint8):
    /// `F.resized_crop(im, top=2, left=1, height=5, width=6, [4, 4], BILINEAR)` and
    /// `F.center_crop(F.resize(im, 5, BILINEAR), [4, 4])` (benches/peer/transforms_ref.py).
    #[test]
    fn resized_crop_and_eval_view_match_torchvision() {
        let rgb = pattern();
        let crop = resample_window(
            &rgb,
            9,
            7,
            CropBox {
                x: 1,
                y: 2,
                w: 6,
                h: 5,
            },
            (4, 4),
            (0, 0),
            4,
        );
        within_one_grey_level(
            &crop,
            &[
                76, 128, 181, 233, 89, 141, 194, 179, 101, 153, 206, 98, 114, 166, 219, 111, 72,
                79, 86, 93, 106, 113, 120, 127, 140, 147, 154, 161, 174, 181, 188, 195, 22, 44, 67,
                89, 33, 66, 101, 135, 44, 89, 135, 181, 56, 112, 170, 226,
            ],
        );
        let (rw, rh, left, top) = eval_geometry(9, 7, 4, 0.8);
        assert_eq!((rw, rh, left, top), (6, 5, 1, 0));
        let whole = CropBox {
            x: 0,
            y: 0,
            w: 9,
            h: 7,
        };
        let ev = resample_window(&rgb, 9, 7, whole, (rw, rh), (left, top), 4);
        within_one_grey_level(
            &ev,
            &[
                70, 123, 181, 149, 83, 136, 194, 162, 99, 152, 205, 152, 115, 168, 197, 52, 19, 26,
                34, 41, 54, 61, 69, 76, 96, 103, 111, 118, 138, 145, 153, 160, 4, 8, 11, 15, 19,
                35, 52, 68, 37, 68, 100, 131, 55, 100, 149, 194,
            ],
        );
    }

    #[test]
    fn a_constant_image_stays_constant_at_any_scale() {
        let (w, h) = (13, 7);
        let rgb = vec![90u8; w * h * 3];
        for (grid, out) in [(5, 5), (40, 40), (17, 17)] {
            let img = resample_window(
                &rgb,
                w,
                h,
                CropBox {
                    x: 2,
                    y: 1,
                    w: 9,
                    h: 5,
                },
                (grid, grid),
                (0, 0),
                out,
            );
            assert!(img.iter().all(|v| (v - 90.0 / 255.0).abs() < 1e-5));
        }
    }

    #[test]
    fn crop_boxes_fit_the_image_and_the_ranges() {
        let mut rng = SeededRng::new(4);
        for &(w, h) in &[(500, 375), (300, 450), (32, 32), (1000, 40)] {
            for _ in 0..200 {
                let b = random_resized_crop_box(w, h, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
                assert!(
                    b.w >= 1 && b.h >= 1 && b.x + b.w <= w && b.y + b.h <= h,
                    "{b:?} in {w}x{h}"
                );
            }
        }
        // An image far outside the ratio range falls back to its centre, narrowed to the range.
        let b = random_resized_crop_box(1000, 40, (0.9, 1.0), (0.75, 4.0 / 3.0), &mut rng);
        assert_eq!(
            b,
            CropBox {
                x: 473,
                y: 0,
                w: 53,
                h: 40
            }
        );
    }

    #[test]
    fn eval_geometry_is_torchvisions_resize_and_centre_crop() {
        // Resize(256) of 500x375 → 341x256, CenterCrop(224) at (58.5 → 58, 16).
        assert_eq!(eval_geometry(500, 375, 224, 0.875), (341, 256, 58, 16));
        // Portrait 300x450 → 256x384, crop at (16, 80).
        assert_eq!(eval_geometry(300, 450, 224, 0.875), (256, 384, 16, 80));
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.5), 4);
        assert_eq!(round_half_even(-0.5), 0);
    }

    #[test]
    fn jitter_and_flip_keep_values_in_range_and_flip_twice_is_identity() {
        let mut rng = SeededRng::new(1);
        let (w, h) = (20, 10);
        let rgb = ramp(w, h);
        let t = ImageNetTransform {
            size: 8,
            color_jitter: 0.4,
            ..ImageNetTransform::default()
        };
        let b = random_resized_crop_box(w, h, t.scale, t.ratio, &mut rng);
        let mut img = resample_window(&rgb, w, h, b, (8, 8), (0, 0), 8);
        let before = img.clone();
        hflip(&mut img, 8);
        hflip(&mut img, 8);
        assert_eq!(img, before);
        color_jitter(&mut img, 64, 0.4, &mut rng);
        assert!(img.iter().all(|v| (0.0..=1.0).contains(v)));
        let view = train_view(&rgb, w, h, &t, &mut SeededRng::new(2));
        assert_eq!(view.len(), 3 * 64);
        assert_eq!(view, train_view(&rgb, w, h, &t, &mut SeededRng::new(2)));
    }
}
