//! Image folders: `DIR/train/<class>/*` and `DIR/test/<class>/*`, jpeg or png (grey, RGB,
//! RGBA, CMYK: all converted to RGB), indexed first (classes are the sorted subfolder names of
//! `train/`; `test/` must have the same ones). Then either streamed — the files stay on disk and
//! each batch decodes its images with the ImageNet transforms (`loader.rs`, `transforms.rs`) —
//! when the run asks for those transforms, when the images differ in size, or when the decoded
//! pixels would not fit the memory budget; or decoded on `workers` threads in file order into
//! memory (every image must have the size of the first), or read back from the decoded cache
//! (`cache.rs`) when the folder is unchanged since a run decoded it.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::cache::{self, Decoded};
use super::transforms::ImageNetTransform;
use super::{format_err, io_err, Dataset, LoadOptions, Result, Split, StreamSpec};
use dyrep_api::hash::{fnv64_extend, FNV_START};

/// The files of a folder, by split, with their labels, before any decoding.
#[derive(Debug)]
struct FolderIndex {
    classes: Vec<String>,
    train: Vec<(PathBuf, u32)>,
    test: Vec<(PathBuf, u32)>,
}

fn class_dirs(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        if e.path().is_dir() {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

/// The images of one class folder, sorted; a file that is not an image (hidden files aside) or
/// an empty folder is an error.
fn class_files(cdir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(cdir).map_err(io_err(cdir))? {
        let p = e.map_err(io_err(cdir))?.path();
        let hidden = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden || p.is_dir() {
            continue;
        }
        if !is_image(&p) {
            return Err(format_err(
                &p,
                "not an image (expected .jpg, .jpeg or .png): move it out of the class folder",
            ));
        }
        files.push(p);
    }
    if files.is_empty() {
        return Err(format_err(
            cdir,
            "empty class folder (no .jpg, .jpeg or .png files)",
        ));
    }
    files.sort();
    Ok(files)
}

fn index(dir: &Path) -> Result<FolderIndex> {
    let (train_dir, test_dir) = (dir.join("train"), dir.join("test"));
    for d in [&train_dir, &test_dir] {
        if !d.is_dir() {
            return Err(format_err(
                d,
                "missing: an image folder needs train/<class>/* and test/<class>/*",
            ));
        }
    }
    let classes = class_dirs(&train_dir)?;
    if classes.is_empty() {
        return Err(format_err(
            &train_dir,
            "no class folders (expected train/<class>/*)",
        ));
    }
    let test_classes = class_dirs(&test_dir)?;
    if let Some(extra) = test_classes.iter().find(|c| !classes.contains(c)) {
        return Err(format_err(
            &test_dir.join(extra),
            "class folder not present under train/",
        ));
    }
    if let Some(missing) = classes.iter().find(|c| !test_classes.contains(c)) {
        return Err(format_err(
            &test_dir.join(missing),
            "missing: every class of train/ needs a folder of test images",
        ));
    }
    let files = |root: &Path| -> Result<Vec<(PathBuf, u32)>> {
        let mut out = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            for f in class_files(&root.join(class))? {
                out.push((f, label as u32));
            }
        }
        Ok(out)
    };
    Ok(FolderIndex {
        train: files(&train_dir)?,
        test: files(&test_dir)?,
        classes,
    })
}

/// The content key of a folder: every file's path below `dir`, size and modification time, and
/// the class list.
fn content_key(dir: &Path, idx: &FolderIndex) -> Result<u64> {
    let mut h = FNV_START;
    for c in &idx.classes {
        h = fnv64_extend(h, c.bytes());
        h = fnv64_extend(h, [0u8]);
    }
    for (f, label) in idx.train.iter().chain(&idx.test) {
        let meta = std::fs::metadata(f).map_err(io_err(f))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let rel = f.strip_prefix(dir).unwrap_or(f);
        h = fnv64_extend(h, rel.to_string_lossy().bytes());
        h = fnv64_extend(h, meta.len().to_le_bytes());
        h = fnv64_extend(h, mtime.to_le_bytes());
        h = fnv64_extend(h, label.to_le_bytes());
    }
    Ok(h)
}

/// One decoded image: its (width, height) and its pixels as CHW.
fn decode(f: &Path, max_pixels: u64) -> Result<((u32, u32), Vec<u8>)> {
    let bytes = std::fs::read(f).map_err(io_err(f))?;
    let img = super::decode_rgb(&bytes, f, max_pixels)?;
    let dims = img.dimensions();
    let plane = dims.0 as usize * dims.1 as usize;
    let raw = img.into_raw(); // HWC
    let mut chw = vec![0u8; 3 * plane];
    for (i, px) in raw.chunks_exact(3).enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = px[c];
        }
    }
    Ok((dims, chw))
}

/// Decodes `files` on `workers` threads (each a contiguous run of files) straight into the
/// split's pixel buffer, in file order; every image must have the size `size` (set by the first
/// image when `None`). The first error in file order wins.
fn decode_all(
    files: &[(PathBuf, u32)],
    workers: usize,
    size: &mut Option<(u32, u32)>,
    max_pixels: u64,
) -> Result<Split> {
    let labels: Vec<u32> = files.iter().map(|(_, l)| *l).collect();
    let Some((first, _)) = files.first() else {
        return Ok(Split {
            images: Vec::new(),
            labels,
            files: Vec::new(),
        });
    };
    let dims = match *size {
        Some(d) => d,
        None => decode(first, max_pixels)?.0,
    };
    *size = Some(dims);
    let per_image = 3 * dims.0 as usize * dims.1 as usize;
    let mut images = vec![0u8; per_image * files.len()];
    let per = files.len().div_ceil(workers.clamp(1, files.len()));
    let decode_run = |run: &[(PathBuf, u32)], out: &mut [u8]| -> Result<()> {
        for ((f, _), dst) in run.iter().zip(out.chunks_exact_mut(per_image.max(1))) {
            let (got, chw) = decode(f, max_pixels)?;
            if got != dims {
                return Err(format_err(
                    f,
                    format!(
                        "image is {}x{} but earlier ones are {}x{}: an in-memory folder needs one size; stream it with the ImageNet transforms ([augment.imagenet] or --image-size)",
                        got.0, got.1, dims.0, dims.1
                    ),
                ));
            }
            dst.copy_from_slice(&chw);
        }
        Ok(())
    };
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(per)
            .zip(images.chunks_mut((per * per_image).max(1)))
            .map(|(run, out)| s.spawn(move || decode_run(run, out)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(format_err(
                        Path::new("image decoder"),
                        "a decoding thread panicked",
                    ))
                })
            })
            .collect()
    });
    results.into_iter().collect::<Result<()>>()?;
    Ok(Split {
        images,
        labels,
        files: Vec::new(),
    })
}

/// Loads an image folder dataset (from the decoded cache when `opts` has a cache directory and
/// the folder is unchanged).
pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let idx = index(dir)?;
    let stream = match &opts.imagenet {
        Some(t) => Some(t.clone()),
        None => needs_streaming(&idx, opts.memory_budget)?.then(ImageNetTransform::default),
    };
    if let Some(transform) = stream {
        return streamed(dir, idx, transform, opts);
    }
    let cached = match &opts.cache_dir {
        Some(cache_dir) => Some((cache::file_for(dir, cache_dir), content_key(dir, &idx)?)),
        None => None,
    };
    let hit = cached
        .as_ref()
        .and_then(|(path, key)| cache::read(path, *key));
    let decoded = match hit {
        Some(d) => {
            tracing::debug!(target: "dyrep::data", "{}: decoded images read from the cache", dir.display());
            d
        }
        None => {
            let workers = opts.worker_count();
            let mut size = None;
            let train = decode_all(&idx.train, workers, &mut size, opts.pixel_cap())?;
            let test = decode_all(&idx.test, workers, &mut size, opts.pixel_cap())?;
            let (w, h) = size.unwrap_or((0, 0));
            let d = Decoded {
                shape: [3, h as usize, w as usize],
                classes: idx.classes,
                train,
                test,
            };
            if let Some((path, key)) = &cached {
                store(path, &d, *key);
            }
            d
        }
    };
    Dataset::new(
        String::new(),
        decoded.shape,
        decoded.classes,
        decoded.train,
        decoded.test,
        dir,
    )
}

/// Whether a folder must be streamed: its images differ in size (checked on the headers of the
/// first image of every class folder and up to 64 others spread over the folder), or its decoded
/// pixels would exceed `budget` bytes (0: 4 GiB).
fn needs_streaming(idx: &FolderIndex, budget: u64) -> Result<bool> {
    let budget = if budget == 0 { 4 << 30 } else { budget };
    let all: Vec<&PathBuf> = idx.train.iter().chain(&idx.test).map(|(f, _)| f).collect();
    let mut sample: Vec<&PathBuf> = Vec::new();
    let mut last_label = None;
    for (f, l) in idx.train.iter().chain(&idx.test) {
        if last_label != Some(*l) {
            sample.push(f);
            last_label = Some(*l);
        }
    }
    let step = (all.len() / 64).max(1);
    sample.extend(all.iter().step_by(step).copied());
    let mut first = None;
    for f in sample {
        let dims = image::image_dimensions(f)
            .map_err(|e| format_err(f, format!("unreadable image: {e}")))?;
        match first {
            None => first = Some(dims),
            Some(d) if d != dims => return Ok(true),
            _ => {}
        }
    }
    let (w, h) = first.unwrap_or((0, 0));
    Ok(all.len() as u64 * 3 * w as u64 * h as u64 > budget)
}

/// The folder as a streamed dataset (nothing decoded yet).
fn streamed(
    dir: &Path,
    idx: FolderIndex,
    transform: ImageNetTransform,
    opts: &LoadOptions,
) -> Result<Dataset> {
    transform.validate().map_err(|e| format_err(dir, e))?;
    let split = |files: Vec<(PathBuf, u32)>| {
        let (files, labels): (Vec<PathBuf>, Vec<u32>) = files.into_iter().unzip();
        let files = files.into_iter().map(super::ImageSource::File).collect();
        Split {
            images: Vec::new(),
            labels,
            files,
        }
    };
    tracing::info!(
        target: "dyrep::data",
        "{}: streamed ({} + {} images, {}x{} crops, {} decoding threads)",
        dir.display(),
        idx.train.len(),
        idx.test.len(),
        transform.size,
        transform.size,
        opts.worker_count()
    );
    let stream = StreamSpec {
        transform,
        workers: opts.worker_count(),
        skip_bad_images: opts.skip_bad_images,
        bad_images: Default::default(),
        shards: None,
        max_image_pixels: opts.pixel_cap(),
    };
    Dataset::streamed(idx.classes, split(idx.train), split(idx.test), stream, dir)
}

/// Writes the cache file; a failure is logged, never fatal (the next run decodes again).
fn store(path: &Path, decoded: &Decoded, key: u64) {
    if let Err(e) = cache::store(path, decoded, key) {
        tracing::warn!(target: "dyrep::data", "cannot write the image cache {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_cache(workers: usize) -> LoadOptions {
        LoadOptions {
            workers,
            ..LoadOptions::default()
        }
    }

    /// A folder of `n` images per class and split: PNGs and JPEGs, RGB, grey and RGBA, 5x3.
    fn make_folder(d: &Path, n: u8) {
        for split in ["train", "test"] {
            for (ci, class) in ["cat", "dog"].iter().enumerate() {
                let cd = d.join(split).join(class);
                std::fs::create_dir_all(&cd).unwrap();
                for i in 0..n {
                    let v = i * 10 + ci as u8;
                    match i % 3 {
                        0 => image::RgbImage::from_fn(5, 3, |x, y| {
                            image::Rgb([x as u8 + v, y as u8, 9])
                        })
                        .save(cd.join(format!("{i}.png")))
                        .unwrap(),
                        1 => {
                            image::GrayImage::from_fn(5, 3, |x, _| image::Luma([x as u8 * 40 + v]))
                                .save(cd.join(format!("{i}.jpg")))
                                .unwrap()
                        }
                        _ => image::RgbaImage::from_fn(5, 3, |x, _| {
                            image::Rgba([v, x as u8, 3, 255])
                        })
                        .save(cd.join(format!("{i}.png")))
                        .unwrap(),
                    }
                }
            }
        }
    }

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
        let ds = load(d, &no_cache(1)).unwrap();
        assert_eq!(ds.classes, vec!["cat", "dog"]);
        assert_eq!((ds.channels, ds.height, ds.width), (3, 3, 4));
        assert_eq!(ds.train.len(), 2);
        // CHW layout: first plane is R = x.
        assert_eq!(&ds.train.images[..4], &[0, 1, 2, 3]);
        std::fs::write(d.join("test/dog/bad.png"), b"not a png").unwrap();
        let e = load(d, &no_cache(2)).unwrap_err().to_string();
        assert!(e.contains("bad.png") && e.contains("unreadable"), "{e}");
    }

    #[test]
    fn parallel_decoding_gives_the_serial_result() {
        let dir = tempfile::tempdir().unwrap();
        make_folder(dir.path(), 7);
        let one = load(dir.path(), &no_cache(1)).unwrap();
        for workers in [2, 3, 64] {
            let many = load(dir.path(), &no_cache(workers)).unwrap();
            assert_eq!(many.train.images, one.train.images, "{workers} workers");
            assert_eq!(many.train.labels, one.train.labels);
            assert_eq!(many.test.images, one.test.images);
        }
        assert_eq!(one.train.len(), 14);
        assert_eq!(one.train.labels[..7], [0; 7]);
    }

    #[test]
    fn the_cache_returns_the_decoded_folder_and_follows_changes() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("set");
        make_folder(&d, 4);
        let opts = LoadOptions {
            workers: 2,
            cache_dir: Some(cache_dir.path().to_path_buf()),
            ..LoadOptions::default()
        };
        let fresh = load(&d, &opts).unwrap();
        let file = cache::file_for(&d, cache_dir.path());
        assert!(file.is_file(), "no cache file written");
        // A hit reads the cache, not the images: make the images unreadable to prove it.
        let first = d.join("train/cat/0.png");
        let original = std::fs::read(&first).unwrap();
        let key = content_key(&d, &index(&d).unwrap()).unwrap();
        assert!(cache::read(&file, key).is_some());
        let hit = load(&d, &opts).unwrap();
        assert_eq!(hit.train.images, fresh.train.images);
        assert_eq!(
            (hit.mean.clone(), hit.classes.clone()),
            (fresh.mean.clone(), fresh.classes.clone())
        );
        // A changed image (new pixels, new size on disk) changes the key: decoded again.
        image::RgbImage::from_fn(5, 3, |_, _| image::Rgb([200, 100, 50]))
            .save(&first)
            .unwrap();
        assert_ne!(std::fs::read(&first).unwrap(), original);
        let changed = load(&d, &opts).unwrap();
        assert_eq!(&changed.train.images[..15], &[200; 15]);
        // A corrupt cache file is ignored.
        std::fs::write(&file, b"DYREPIMG garbage").unwrap();
        let again = load(&d, &opts).unwrap();
        assert_eq!(again.train.images, changed.train.images);
    }

    #[test]
    fn folder_problems_are_one_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_folder(d, 2);
        std::fs::write(d.join("train/cat/notes.txt"), "x").unwrap();
        let e = load(d, &no_cache(1)).unwrap_err().to_string();
        assert!(e.contains("notes.txt") && e.contains("not an image"), "{e}");
        std::fs::remove_file(d.join("train/cat/notes.txt")).unwrap();
        std::fs::write(d.join("train/cat/.DS_Store"), "x").unwrap();
        load(d, &no_cache(1)).unwrap();
        std::fs::create_dir_all(d.join("train/owl")).unwrap();
        std::fs::create_dir_all(d.join("test/owl")).unwrap();
        image::RgbImage::new(5, 3)
            .save(d.join("test/owl/0.png"))
            .unwrap();
        let e = load(d, &no_cache(1)).unwrap_err().to_string();
        assert!(
            e.contains("train/owl") && e.contains("empty class folder"),
            "{e}"
        );
        image::RgbImage::new(5, 3)
            .save(d.join("train/owl/0.png"))
            .unwrap();
        std::fs::remove_dir_all(d.join("test/owl")).unwrap();
        let e = load(d, &no_cache(1)).unwrap_err().to_string();
        assert!(e.contains("test/owl") && e.contains("missing"), "{e}");
        std::fs::create_dir_all(d.join("test/owl")).unwrap();
        image::RgbImage::new(6, 3)
            .save(d.join("test/owl/0.png"))
            .unwrap();
        // Images of another size: the folder is streamed instead of decoded into memory.
        let ds = load(d, &no_cache(1)).unwrap();
        assert!(ds.stream.is_some() && ds.train.images.is_empty());
        // An odd size the header sample misses fails the in-memory decode, naming the file.
        let mut size = Some((5, 3));
        let e = decode_all(
            &[(d.join("test/owl/0.png"), 0)],
            1,
            &mut size,
            crate::MAX_IMAGE_PIXELS,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("6x3") && e.contains("5x3") && e.contains("--image-size"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn folder_without_classes_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("train")).unwrap();
        std::fs::create_dir_all(dir.path().join("test")).unwrap();
        let e = load(dir.path(), &no_cache(1)).unwrap_err().to_string();
        assert!(e.contains("no class folders"), "{e}");
    }

    /// A folder of images of many sizes and kinds: `n` per class and split, JPEG and PNG, RGB,
    /// grey and RGBA, from 20x13 to 61x47.
    fn make_mixed_folder(d: &Path, n: u32) {
        for split in ["train", "test"] {
            for (ci, class) in ["cat", "dog", "owl"].iter().enumerate() {
                let cd = d.join(split).join(class);
                std::fs::create_dir_all(&cd).unwrap();
                for i in 0..n {
                    let (w, h) = (20 + 7 * i + ci as u32, 13 + 5 * i);
                    let v = (40 * ci as u32 + 9 * i) as u8;
                    match i % 3 {
                        0 => {
                            image::RgbImage::from_fn(w, h, |x, y| image::Rgb([v, x as u8, y as u8]))
                                .save(cd.join(format!("{i}.jpg")))
                                .unwrap()
                        }
                        1 => image::GrayImage::from_fn(w, h, |x, _| image::Luma([v ^ x as u8]))
                            .save(cd.join(format!("{i}.png")))
                            .unwrap(),
                        _ => image::RgbaImage::from_fn(w, h, |x, y| {
                            image::Rgba([x as u8, v, y as u8, 200])
                        })
                        .save(cd.join(format!("{i}.png")))
                        .unwrap(),
                    }
                }
            }
        }
    }

    #[test]
    fn images_of_many_sizes_are_streamed_and_each_is_seen_once_per_epoch() {
        use crate::loader::{eval_stream, train_stream, Augment, Which};
        let dir = tempfile::tempdir().unwrap();
        make_mixed_folder(dir.path(), 5);
        let opts = LoadOptions {
            workers: 3,
            ..LoadOptions::default()
        };
        let ds = std::sync::Arc::new(load(dir.path(), &opts).unwrap());
        let st = ds.stream.as_ref().expect("streamed");
        assert_eq!((ds.channels, ds.height, ds.width), (3, 224, 224));
        assert_eq!(st.transform, ImageNetTransform::default());
        assert!(ds.train.images.is_empty() && ds.train.files.len() == 15);
        // A small crop size keeps the test fast.
        let mut small = (*ds).clone();
        let t = ImageNetTransform {
            size: 16,
            color_jitter: 0.2,
            ..ImageNetTransform::default()
        };
        small.stream.as_mut().unwrap().transform = t.clone();
        (small.height, small.width) = (16, 16);
        let small = std::sync::Arc::new(small);
        // Batches of 1 over a whole epoch: every label once (drop_last keeps all 15).
        let batches: Vec<_> = train_stream(small.clone(), 1, 7, 0, &Augment::default(), None)
            .map(Result::unwrap)
            .collect();
        assert_eq!(batches.len(), 15);
        let mut labels: Vec<u32> = batches.iter().map(|b| b.labels[0]).collect();
        labels.sort();
        assert_eq!(labels, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2]);
        assert!(batches.iter().all(|b| b.images.len() == 3 * 16 * 16));
        // The same epoch again (a resume) gives the same crops, whatever the thread count.
        let again: Vec<Vec<f32>> = train_stream(small.clone(), 5, 7, 0, &Augment::default(), None)
            .map(|b| b.unwrap().images)
            .collect();
        let mut one_thread = (*small).clone();
        one_thread.stream.as_mut().unwrap().workers = 1;
        let serial: Vec<Vec<f32>> = train_stream(
            std::sync::Arc::new(one_thread),
            5,
            7,
            0,
            &Augment::default(),
            None,
        )
        .map(|b| b.unwrap().images)
        .collect();
        assert_eq!(again, serial);
        let other_epoch: Vec<Vec<f32>> =
            train_stream(small.clone(), 5, 7, 1, &Augment::default(), None)
                .map(|b| b.unwrap().images)
                .collect();
        assert_ne!(again, other_epoch);
        // Eval views are deterministic centre crops.
        let e1: Vec<_> = eval_stream(small.clone(), Which::Test, 4, None)
            .map(|b| b.unwrap().images)
            .collect();
        let e2: Vec<_> = eval_stream(small, Which::Test, 4, None)
            .map(|b| b.unwrap().images)
            .collect();
        assert_eq!(e1, e2);
    }

    #[test]
    fn a_corrupt_streamed_image_fails_naming_it_or_is_skipped_and_counted() {
        use crate::loader::{eval_stream, Which};
        let dir = tempfile::tempdir().unwrap();
        make_mixed_folder(dir.path(), 3);
        // Truncated after the header: the index and the size check pass, decoding fails.
        let bad = dir.path().join("test/dog/0.jpg");
        let bytes = std::fs::read(&bad).unwrap();
        std::fs::write(&bad, &bytes[..bytes.len() / 3]).unwrap();
        let t = ImageNetTransform {
            size: 8,
            ..ImageNetTransform::default()
        };
        let mut opts = LoadOptions {
            imagenet: Some(t),
            ..LoadOptions::default()
        };
        let ds = std::sync::Arc::new(load(dir.path(), &opts).unwrap());
        let e = eval_stream(ds, Which::Test, 4, None)
            .find_map(|b| b.err())
            .expect("an error")
            .to_string();
        assert!(
            e.contains("test/dog/0.jpg") && e.contains("unreadable image"),
            "{e}"
        );
        opts.skip_bad_images = true;
        let ds = std::sync::Arc::new(load(dir.path(), &opts).unwrap());
        let seen: usize = eval_stream(ds.clone(), Which::Test, 4, None)
            .map(|b| b.unwrap().len())
            .sum();
        assert_eq!((seen, ds.bad_images()), (8, 1));
    }
}
