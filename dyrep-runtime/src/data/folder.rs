//! Image folders: `DIR/train/<class>/*` and `DIR/test/<class>/*`, jpeg or png, decoded with the
//! `image` crate to RGB. Classes are the sorted subfolder names of `train/`; `test/` must have
//! the same ones. Every image must have the size of the first.

use std::path::{Path, PathBuf};

use super::{format_err, io_err, Dataset, Result, Split};

fn class_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let p = e.path();
        if p.is_dir() {
            out.push((e.file_name().to_string_lossy().into_owned(), p));
        }
    }
    out.sort();
    Ok(out)
}

fn read_split(root: &Path, classes: &[String], size: &mut Option<(u32, u32)>) -> Result<Split> {
    let mut split = Split {
        images: Vec::new(),
        labels: Vec::new(),
    };
    for (label, class) in classes.iter().enumerate() {
        let cdir = root.join(class);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&cdir)
            .map_err(io_err(&cdir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png")
                })
            })
            .collect();
        files.sort();
        for f in files {
            let img = image::open(&f)
                .map_err(|e| format_err(&f, format!("unreadable image: {e}")))?
                .to_rgb8();
            let dims = img.dimensions();
            match size {
                None => *size = Some(dims),
                Some(s) if *s != dims => {
                    return Err(format_err(
                        &f,
                        format!(
                            "image is {}x{} but earlier ones are {}x{}",
                            dims.0, dims.1, s.0, s.1
                        ),
                    ))
                }
                _ => {}
            }
            let (w, h) = (dims.0 as usize, dims.1 as usize);
            let raw = img.into_raw(); // HWC
            for c in 0..3 {
                for i in 0..h * w {
                    split.images.push(raw[i * 3 + c]);
                }
            }
            split.labels.push(label as u32);
        }
    }
    Ok(split)
}

/// Loads an image folder dataset.
pub fn load(dir: &Path) -> Result<Dataset> {
    let (train_dir, test_dir) = (dir.join("train"), dir.join("test"));
    for d in [&train_dir, &test_dir] {
        if !d.is_dir() {
            return Err(format_err(
                d,
                "missing: an image folder needs train/<class>/* and test/<class>/*",
            ));
        }
    }
    let classes: Vec<String> = class_dirs(&train_dir)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    if classes.is_empty() {
        return Err(format_err(
            &train_dir,
            "no class folders (expected train/<class>/*)",
        ));
    }
    let test_classes: Vec<String> = class_dirs(&test_dir)?.into_iter().map(|(n, _)| n).collect();
    if let Some(extra) = test_classes.iter().find(|c| !classes.contains(c)) {
        return Err(format_err(
            &test_dir.join(extra),
            "class folder not present under train/",
        ));
    }
    let mut size = None;
    let train = read_split(&train_dir, &classes, &mut size)?;
    let test = read_split(&test_dir, &classes, &mut size)?;
    let (w, h) = size.unwrap_or((0, 0));
    Dataset::new(
        String::new(),
        [3, h as usize, w as usize],
        classes,
        train,
        test,
        dir,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pngs_and_refuses_unreadable_ones() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for split in ["train", "test"] {
            for class in ["cat", "dog"] {
                let cd = d.join(split).join(class);
                std::fs::create_dir_all(&cd).unwrap();
                let img = image::RgbImage::from_fn(4, 3, |x, y| image::Rgb([x as u8, y as u8, 9]));
                img.save(cd.join("0.png")).unwrap();
            }
        }
        let ds = load(d).unwrap();
        assert_eq!(ds.classes, vec!["cat", "dog"]);
        assert_eq!((ds.channels, ds.height, ds.width), (3, 3, 4));
        assert_eq!(ds.train.len(), 2);
        // CHW layout: first plane is R = x.
        assert_eq!(&ds.train.images[..4], &[0, 1, 2, 3]);
        std::fs::write(d.join("test/dog/bad.png"), b"not a png").unwrap();
        let e = load(d).unwrap_err().to_string();
        assert!(e.contains("bad.png") && e.contains("unreadable"), "{e}");
    }

    #[test]
    fn folder_without_classes_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("train")).unwrap();
        std::fs::create_dir_all(dir.path().join("test")).unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no class folders"), "{e}");
    }
}
