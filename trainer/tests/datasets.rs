//! Real dataset formats end to end, on fixtures generated here: an
//! ImageNet-LT-style list with RGB, grayscale-PNG and CMYK-JPEG images and a
//! corrupt JPEG (skipped, counted, logged once); bad lists rejected before
//! training with the offending lines; image folders; `data-stats`.

mod common;

use common::{text, tiny_config, train_cpu, train_epochs, trainer};
use std::path::Path;

fn rgb_jpeg(path: &Path, w: u16, h: u16, seed: u8) {
    let pixels: Vec<u8> = (0..w as usize * h as usize)
        .flat_map(|i| {
            [
                (i % 251) as u8 ^ seed,
                (i / w as usize % 256) as u8,
                seed.wrapping_mul(3),
            ]
        })
        .collect();
    jpeg_encoder::Encoder::new_file(path, 90)
        .unwrap()
        .encode(&pixels, w, h, jpeg_encoder::ColorType::Rgb)
        .unwrap();
}

fn cmyk_jpeg(path: &Path, w: u16, h: u16) {
    // Pure magenta + yellow ink, no black: red.
    let pixels: Vec<u8> = (0..w as usize * h as usize)
        .flat_map(|_| [0u8, 255, 255, 0])
        .collect();
    jpeg_encoder::Encoder::new_file(path, 95)
        .unwrap()
        .encode(&pixels, w, h, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
}

fn gray_png(path: &Path, w: u32, h: u32) {
    let img = image::GrayImage::from_fn(w, h, |x, y| image::Luma([((x + y) % 256) as u8]));
    img.save(path).unwrap();
}

/// Two classes: class 0 with 6 images, class 1 with 4 (one of them corrupt).
fn make_list_dataset(root: &Path) {
    std::fs::create_dir_all(root.join("train")).unwrap();
    std::fs::create_dir_all(root.join("test")).unwrap();
    let mut train = String::new();
    for i in 0..5 {
        rgb_jpeg(&root.join(format!("train/a{i}.jpg")), 96, 72, i as u8 * 40);
        train.push_str(&format!("train/a{i}.jpg 0\n"));
    }
    gray_png(&root.join("train/g.png"), 64, 80);
    train.push_str("train/g.png 0\n");
    cmyk_jpeg(&root.join("train/c0.jpg"), 80, 64);
    cmyk_jpeg(&root.join("train/c1.jpg"), 64, 64);
    rgb_jpeg(&root.join("train/b.jpg"), 120, 90, 7);
    std::fs::write(
        root.join("train/broken.jpg"),
        [0xFF, 0xD8, 0xFF, 0xE0, 0, 16, b'J', b'F'],
    )
    .unwrap();
    train.push_str("train/c0.jpg 1\ntrain/c1.jpg 1\ntrain/b.jpg 1\ntrain/broken.jpg 1\n");
    std::fs::write(root.join("ImageNet_LT_train.txt"), train).unwrap();
    rgb_jpeg(&root.join("test/t0.jpg"), 80, 60, 1);
    cmyk_jpeg(&root.join("test/t1.jpg"), 70, 70);
    std::fs::write(
        root.join("ImageNet_LT_test.txt"),
        "test/t0.jpg 0\ntest/t1.jpg 1\n",
    )
    .unwrap();
}

fn list_config(dir: &Path, root: &Path) -> std::path::PathBuf {
    let cfg = tiny_config(dir, 2, "RIDE");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "DATASET: synthetic",
            &format!("DATASET: imagenet-lt\n  DATA_PATH: {}", root.display()),
        )
        .replace("IMG_SIZE: 32", "IMG_SIZE: 64")
        .replace("BATCH_SIZE: 16", "BATCH_SIZE: 4")
        .replace("AUTO_AUGMENT: none", "AUTO_AUGMENT: rand-m9-mstd0.5-inc1");
    let cfg = dir.join("list.yaml");
    std::fs::write(&cfg, format!("{text}MODEL_CLASSES_PLACEHOLDER")).unwrap();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("MODEL_CLASSES_PLACEHOLDER", "")
        .replace("MODEL:\n", "MODEL:\n  NUM_CLASSES: 2\n");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

#[test]
fn list_dataset_trains_with_grayscale_cmyk_and_a_corrupt_jpeg() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    make_list_dataset(&root);
    let cfg = list_config(dir.path(), &root);
    let out = dir.path().join("out");
    let o = train_epochs(&cfg, &out, 2);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    // The corrupt file: skipped every epoch, logged once, counted in the summary.
    assert_eq!(t.matches("warning: skipping sample").count(), 1, "{t}");
    assert!(t.contains("broken.jpg"), "{t}");
    let skipped: usize = t
        .lines()
        .find_map(|l| {
            l.strip_prefix("skipped      ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no skipped line:\n{t}"));
    assert!(skipped >= 1, "{t}");
    assert!(
        t.contains("2 samples"),
        "evaluation on both test images:\n{t}"
    );
}

#[test]
fn bad_lists_fail_before_training_naming_the_lines() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    make_list_dataset(&root);
    std::fs::write(
        root.join("ImageNet_LT_train.txt"),
        "train/a0.jpg 0\ntrain/missing.jpg 0\ntrain/a1.jpg 7\ntrain/a2.jpg\n",
    )
    .unwrap();
    let cfg = list_config(dir.path(), &root);
    let o = train_cpu(&cfg, &dir.path().join("out"), &["--metrics-addr", "off"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    for needle in [
        "ImageNet_LT_train.txt",
        "missing files: 1",
        "line 2: ",
        "missing.jpg",
        "labels outside 0..2 (MODEL.NUM_CLASSES): 1",
        "line 3: train/a1.jpg 7",
        "lines without 'path label': 1",
        "classes without any image: 1",
        "class 1",
    ] {
        assert!(t.contains(needle), "missing '{needle}' in:\n{t}");
    }
    assert!(!t.contains("training tiny"), "{t}");
}

#[test]
fn image_folders_and_data_stats() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("folders");
    for (split, n) in [("train", [3usize, 1]), ("val", [1, 1])] {
        for (c, name) in ["cat", "dog"].iter().enumerate() {
            let d = root.join(split).join(name);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..n[c] {
                rgb_jpeg(&d.join(format!("{i}.jpg")), 64, 48, (i * 30) as u8);
            }
        }
    }
    let cfg = tiny_config(dir.path(), 2, "RIDE");
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "DATASET: synthetic",
            &format!("DATASET: imagenet\n  DATA_PATH: {}", root.display()),
        )
        .replace("MODEL:\n", "MODEL:\n  NUM_CLASSES: 2\n");
    std::fs::write(&cfg, text_cfg).unwrap();
    let plot = dir.path().join("sizes.svg");
    let o = trainer(&[
        "data-stats",
        "--cfg",
        cfg.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
        "--json",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("images 4  classes 2"), "{t}");
    assert!(
        t.contains("| few (≤20)            |       2 |       4 |"),
        "{t}"
    );
    let json: serde_json::Value =
        serde_json::from_str(t.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    assert_eq!(json["class_counts"], serde_json::json!([3, 1]));
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
    // A class count that does not match the folders is a config error naming the key.
    let o = trainer(&[
        "data-stats",
        "--cfg",
        cfg.to_str().unwrap(),
        "--opts",
        "MODEL.NUM_CLASSES",
        "5",
    ]);
    assert!(text(&o).contains("MODEL.NUM_CLASSES is 5"), "{}", text(&o));
}

#[test]
fn cmyk_and_grayscale_decode_to_rgb() {
    use ride_trainer::data::ImageSource;
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("c.jpg");
    cmyk_jpeg(&c, 16, 16);
    let img = ImageSource::Encoded(std::fs::read(&c).unwrap())
        .decode_at_least(usize::MAX, usize::MAX)
        .unwrap();
    let px = &img.pixels[(8 * 16 + 8) * 3..(8 * 16 + 8) * 3 + 3];
    assert!(
        px[0] > 230 && px[1] < 25 && px[2] < 25,
        "magenta+yellow ink should be red, got {px:?}"
    );
    let g = dir.path().join("g.png");
    gray_png(&g, 10, 10);
    let img = ImageSource::Encoded(std::fs::read(&g).unwrap())
        .decode_at_least(usize::MAX, usize::MAX)
        .unwrap();
    assert_eq!(
        &img.pixels[(3 * 10 + 4) * 3..(3 * 10 + 4) * 3 + 3],
        &[7, 7, 7]
    );
}
