//! Tar shards in the WebDataset layout (`shards:DIR`): `DIR/train-*.tar` and `DIR/test-*.tar`,
//! plain tar files whose samples are consecutive members sharing a key — `<key>.jpg` (or
//! `.jpeg`, `.png`) and `<key>.cls` (the class index as decimal text) — and `DIR/classes.txt`
//! (one class name per line; without it the classes are `0..=max label`). Loading indexes every
//! shard once (member headers only; the image bytes are skipped by seeking). Training reads the
//! shards sequentially — their order shuffled per epoch, the samples shuffled in a buffer — as
//! one would from network storage (`loader.rs`); a single image (the fixed held-out batch, eval
//! of a few) is read by its offset. `pack` writes such shards from an image folder.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{format_err, io_err, Dataset, ImageSource, LoadOptions, Result, Split, StreamSpec};

/// The shards of one split, in name order, and the samples each holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSet {
    pub shards: Vec<Arc<PathBuf>>,
    /// Samples per shard (in `shards` order).
    pub counts: Vec<usize>,
}

/// What a shard member is, by its extension.
fn member_kind(name: &str) -> Option<(&str, &str)> {
    let file = name.rsplit('/').next().unwrap_or(name);
    let dot = file.find('.')?;
    let key_len = name.len() - file.len() + dot;
    Some((&name[..key_len], &file[dot + 1..]))
}

fn is_image_ext(ext: &str) -> bool {
    matches!(ext.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png")
}

/// One sample as the sequential reader yields it: the image member's name and bytes, the label.
pub struct ShardSample {
    pub name: String,
    pub bytes: Vec<u8>,
    pub label: u32,
}

/// Reads a shard's samples in order, pairing each image member with the `.cls` member of the
/// same key; `with_bytes` false skips the image bytes (indexing), keeping their offsets.
fn read_samples(
    shard: &Path,
    with_bytes: bool,
    sink: &mut dyn FnMut(ShardSample, u64, u64) -> Result<()>,
) -> Result<()> {
    let file = std::fs::File::open(shard).map_err(io_err(shard))?;
    let shard_len = file.metadata().map_err(io_err(shard))?.len();
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries_with_seek()
        .map_err(|e| format_err(shard, format!("not a tar file: {e}")))?;
    let bad = |e: std::io::Error| format_err(shard, format!("corrupt tar shard: {e}"));
    // The current key's image (name, bytes, offset, len) and label, until both are seen.
    let mut key = String::new();
    let mut image: Option<(String, Vec<u8>, u64, u64)> = None;
    let mut label: Option<u32> = None;
    let mut flush = |key: &str,
                     image: &mut Option<(String, Vec<u8>, u64, u64)>,
                     label: &mut Option<u32>|
     -> Result<()> {
        match (image.take(), label.take()) {
            (Some((name, bytes, offset, len)), Some(label)) => {
                sink(ShardSample { name, bytes, label }, offset, len)
            }
            (None, None) => Ok(()),
            (Some(_), None) => Err(format_err(
                shard,
                format!("sample `{key}` has an image but no .cls member"),
            )),
            (None, Some(_)) => Err(format_err(
                shard,
                format!("sample `{key}` has a .cls member but no image"),
            )),
        }
    };
    for entry in entries {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let Some((k, ext)) = member_kind(&name) else {
            continue;
        };
        if k != key {
            flush(&key, &mut image, &mut label)?;
            key = k.to_string();
        }
        if ext == "cls" {
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(bad)?;
            let l = text.trim().parse::<u32>().map_err(|_| {
                format_err(
                    shard,
                    format!("{name}: the class is not an integer: `{}`", text.trim()),
                )
            })?;
            label = Some(l);
        } else if is_image_ext(ext) {
            let (offset, len) = (entry.raw_file_position(), entry.size());
            // A header that claims more bytes than the shard holds: truncated or damaged.
            if offset.saturating_add(len) > shard_len {
                return Err(format_err(
                    shard,
                    format!(
                        "member {name} claims {len} bytes at offset {offset}, but the shard has {shard_len} bytes: it is truncated or damaged (pack it again)"
                    ),
                ));
            }
            let mut bytes = Vec::new();
            if with_bytes {
                entry.read_to_end(&mut bytes).map_err(bad)?;
            }
            image = Some((name, bytes, offset, len));
        }
    }
    flush(&key, &mut image, &mut label)
}

/// Every sample of a shard, in order, with its image bytes (named `shard.tar:member`).
pub fn for_each_sample(shard: &Path, f: &mut dyn FnMut(ShardSample) -> Result<()>) -> Result<()> {
    read_samples(shard, true, &mut |mut s, _, _| {
        s.name = format!("{}:{}", shard.display(), s.name);
        f(s)
    })
}

/// The shards `DIR/{split}-*.tar`, sorted by name.
fn shard_files(dir: &Path, split: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let p = e.map_err(io_err(dir))?.path();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(&format!("{split}-")) && name.ends_with(".tar") {
            out.push(p);
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(format_err(
            dir,
            format!("no {split}-*.tar shards (write them with `dyrep data pack`)"),
        ));
    }
    Ok(out)
}

/// Indexes one split's shards: the samples (where each image is, its label) and the shard set.
fn index_split(dir: &Path, split: &str) -> Result<(Split, ShardSet)> {
    let mut out = Split::default();
    let mut set = ShardSet {
        shards: Vec::new(),
        counts: Vec::new(),
    };
    for path in shard_files(dir, split)? {
        let shard = Arc::new(path);
        let before = out.len();
        read_samples(&shard, false, &mut |s, offset, len| {
            out.files.push(ImageSource::Member {
                shard: shard.clone(),
                name: s.name,
                offset,
                len,
            });
            out.labels.push(s.label);
            Ok(())
        })?;
        set.counts.push(out.len() - before);
        set.shards.push(shard);
    }
    Ok((out, set))
}

/// Loads a shard directory as a streamed dataset.
pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let (train, train_set) = index_split(dir, "train")?;
    let (test, test_set) = index_split(dir, "test")?;
    let max = train
        .labels
        .iter()
        .chain(&test.labels)
        .max()
        .copied()
        .unwrap_or(0);
    let classes_file = dir.join("classes.txt");
    let classes: Vec<String> = if classes_file.is_file() {
        let text = std::fs::read_to_string(&classes_file).map_err(io_err(&classes_file))?;
        text.lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    } else {
        (0..=max).map(|c| c.to_string()).collect()
    };
    if max as usize >= classes.len() {
        return Err(format_err(
            &classes_file,
            format!(
                "names {} classes but a shard has class {max}",
                classes.len()
            ),
        ));
    }
    let stream = StreamSpec {
        transform: opts.imagenet.clone().unwrap_or_default(),
        workers: opts.worker_count(),
        skip_bad_images: opts.skip_bad_images,
        bad_images: Default::default(),
        shards: Some([train_set, test_set]),
        max_image_pixels: opts.pixel_cap(),
    };
    Dataset::streamed(classes, train, test, stream, dir)
}

/// What `pack` wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PackReport {
    pub out: PathBuf,
    pub shards: usize,
    pub samples: usize,
    pub bytes: u64,
}

/// Writes an image folder (`train/<class>/*`, `test/<class>/*`) as tar shards of at most about
/// `shard_bytes` each (a shard closes once it reaches the size), samples in class order with
/// keys `<class index>_<n>`, and `classes.txt`. Each shard is written to a temporary file and
/// renamed into place.
pub fn pack(folder: &Path, out: &Path, shard_bytes: u64) -> Result<PackReport> {
    let opts = LoadOptions {
        imagenet: Some(Default::default()),
        ..LoadOptions::default()
    };
    // Shards already there would be read with the new ones as one dataset.
    if let Ok(rd) = std::fs::read_dir(out) {
        let earlier = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.ends_with(".tar") || n == "classes.txt");
        if let Some(name) = earlier {
            return Err(format_err(
                out,
                format!("already holds {name} (shards of an earlier pack, which training would mix with these); choose an empty --out"),
            ));
        }
    }
    // Indexing as a streamed folder: every image file, any size.
    let ds = super::folder::load(folder, &opts)?;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let mut report = PackReport {
        out: out.to_path_buf(),
        shards: 0,
        samples: 0,
        bytes: 0,
    };
    for (split, s) in [("train", &ds.train), ("test", &ds.test)] {
        let mut writer: Option<(tar::Builder<std::fs::File>, PathBuf, PathBuf)> = None;
        let mut n_shard = 0;
        let mut size = 0u64;
        for (i, (src, &label)) in s.files.iter().zip(&s.labels).enumerate() {
            if writer.is_none() {
                let name = format!("{split}-{n_shard:06}.tar");
                let tmp = out.join(format!(".{name}.tmp-{}", std::process::id()));
                let f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
                writer = Some((tar::Builder::new(f), tmp, out.join(name)));
                n_shard += 1;
                size = 0;
            }
            let Some((builder, tmp, _)) = writer.as_mut() else {
                continue;
            };
            let bytes = src.read()?;
            let ext = match &src {
                ImageSource::File(p) => p
                    .extension()
                    .map(|e| e.to_string_lossy().to_ascii_lowercase())
                    .unwrap_or_else(|| "jpg".into()),
                ImageSource::Member { name, .. } => {
                    member_kind(name).map_or("jpg".into(), |(_, e)| e.to_string())
                }
            };
            let key = format!("{label:05}_{i:09}");
            let cls = label.to_string();
            for (member, data) in [
                (format!("{key}.{ext}"), &bytes[..]),
                (format!("{key}.cls"), cls.as_bytes()),
            ] {
                let mut header = tar::Header::new_gnu();
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                builder
                    .append_data(&mut header, &member, data)
                    .map_err(|e| format_err(tmp, format!("cannot write: {e}")))?;
                size += 512 + (data.len() as u64).div_ceil(512) * 512;
            }
            report.samples += 1;
            if size >= shard_bytes {
                report.bytes += close_shard(writer.take())?;
                report.shards += 1;
            }
        }
        if writer.is_some() {
            report.bytes += close_shard(writer.take())?;
            report.shards += 1;
        }
    }
    let classes = out.join("classes.txt");
    let mut text = ds.classes.join("\n");
    text.push('\n');
    dyrep_api::durable::write_atomic(&classes, text.as_bytes()).map_err(io_err(&classes))?;
    Ok(report)
}

/// Finishes a shard and renames it into place; returns its size.
fn close_shard(writer: Option<(tar::Builder<std::fs::File>, PathBuf, PathBuf)>) -> Result<u64> {
    let Some((builder, tmp, dest)) = writer else {
        return Ok(0);
    };
    let mut f = builder
        .into_inner()
        .map_err(|e| format_err(&tmp, format!("cannot finish: {e}")))?;
    f.flush().map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    let len = f.metadata().map_err(io_err(&tmp))?.len();
    std::fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
    Ok(len)
}

/// Parses a size such as `1GB`, `500MB`, `64KiB` or `1000000` (bytes).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{text}`: expected a size such as 1GB, 500MB or 1000000"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    let bytes = n * mult;
    if !(bytes >= 1.0 && bytes.is_finite()) {
        return Err(format!("`{text}`: the size must be at least one byte"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("64KiB").unwrap(), 65_536);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("1XB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("0").is_err() && parse_size("GB").is_err());
    }

    #[test]
    fn member_names_split_into_key_and_extension() {
        assert_eq!(
            member_kind("a/b/00001_000000003.jpg"),
            Some(("a/b/00001_000000003", "jpg"))
        );
        assert_eq!(member_kind("x.seg.png"), Some(("x", "seg.png")));
        assert_eq!(member_kind("noext"), None);
    }

    /// An image folder of `n` JPEGs and PNGs of several sizes per class and split.
    fn folder(d: &Path, n: u32) {
        for split in ["train", "test"] {
            for (ci, class) in ["ant", "bee"].iter().enumerate() {
                let cd = d.join(split).join(class);
                std::fs::create_dir_all(&cd).unwrap();
                for i in 0..n {
                    let img = image::RgbImage::from_fn(24 + i, 17 + 2 * i, |x, y| {
                        image::Rgb([(x * 9) as u8, (y * 7) as u8, 120 * ci as u8])
                    });
                    let ext = if i % 2 == 0 { "jpg" } else { "png" };
                    img.save(cd.join(format!("{i}.{ext}"))).unwrap();
                }
            }
        }
    }

    fn small(ds: Dataset) -> Arc<Dataset> {
        let mut ds = ds;
        let st = ds.stream.as_mut().unwrap();
        st.transform.size = 8;
        (ds.height, ds.width) = (8, 8);
        Arc::new(ds)
    }

    #[test]
    fn packed_shards_hold_the_folder_and_stream_each_sample_once_per_epoch() {
        use crate::loader::{eval_stream, train_stream, Augment, Which};
        let tmp = tempfile::tempdir().unwrap();
        let (src, out) = (tmp.path().join("src"), tmp.path().join("shards"));
        folder(&src, 9);
        // Small shards: several per split.
        let r = pack(&src, &out, 4000).unwrap();
        assert_eq!(r.samples, 36);
        assert!(r.shards >= 4, "{r:?}");
        let ds = load(&out, &LoadOptions::default()).unwrap();
        assert_eq!(ds.classes, ["ant", "bee"]);
        assert_eq!((ds.train.len(), ds.test.len()), (18, 18));
        let [train_set, _] = ds.stream.as_ref().unwrap().shards.clone().unwrap();
        assert_eq!(train_set.counts.iter().sum::<usize>(), 18);
        let ds = small(ds);
        let epoch = |e: usize| -> Vec<(u32, Vec<f32>)> {
            train_stream(ds.clone(), 1, 3, e, &Augment::default(), None)
                .map(|b| {
                    let b = b.unwrap();
                    (b.labels[0], b.images)
                })
                .collect()
        };
        let e0 = epoch(0);
        assert_eq!(e0.len(), 18);
        let mut labels: Vec<u32> = e0.iter().map(|x| x.0).collect();
        labels.sort();
        assert_eq!(labels, [[0u32; 9], [1; 9]].concat());
        assert_eq!(
            e0,
            epoch(0),
            "the same epoch must give the same samples and crops"
        );
        assert_ne!(e0, epoch(1));
        // Eval reads members by offset, in order.
        let n: usize = eval_stream(ds, Which::Test, 5, None)
            .map(|b| b.unwrap().len())
            .sum();
        assert_eq!(n, 18);
    }

    #[test]
    fn ranks_split_the_shard_stream_into_disjoint_complete_equal_shares() {
        use crate::loader::{train_stream_of_rank, Augment};
        let tmp = tempfile::tempdir().unwrap();
        let (src, out) = (tmp.path().join("src"), tmp.path().join("shards"));
        // 11 images per class: 22 training samples, which 3 ranks cannot share evenly.
        folder(&src, 11);
        pack(&src, &out, 4000).unwrap();
        let ds = small(load(&out, &LoadOptions::default()).unwrap());
        let share = |rank: usize, world: usize, batch: usize| -> Vec<(u32, Vec<f32>)> {
            train_stream_of_rank(
                ds.clone(),
                batch,
                5,
                0,
                &Augment::default(),
                None,
                (rank, world),
            )
            .flat_map(|b| {
                let b = b.unwrap();
                let per = b.images.len() / b.len();
                (0..b.len())
                    .map(|i| (b.labels[i], b.images[i * per..(i + 1) * per].to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect()
        };
        for world in [2, 3] {
            let shares: Vec<_> = (0..world).map(|r| share(r, world, 1)).collect();
            // Equal: every rank stops after 22 / world whole batches.
            assert!(
                shares.iter().all(|s| s.len() == 22 / world),
                "world {world}"
            );
            // Disjoint and complete (up to the remainder): the labels of the shares add up
            // to the set's, 11 of each class, less what the equal cut drops.
            let mut labels: Vec<u32> = shares.iter().flatten().map(|x| x.0).collect();
            labels.sort();
            let zeros = labels.iter().filter(|&&l| l == 0).count();
            assert!(
                zeros <= 11 && labels.len() - zeros <= 11,
                "world {world}: {labels:?}"
            );
            assert_eq!(labels.len(), world * (22 / world));
            // Each rank's share is its own (a different stream from the others').
            assert_ne!(shares[0], shares[1]);
        }
        // Batches of 4 on 2 ranks: 22 / (2 × 4) = 2 batches each, though rank 0 holds 11.
        assert_eq!(share(0, 2, 4).len(), 8);
        assert_eq!(share(1, 2, 4).len(), 8);
        // One rank of one is the whole stream.
        assert_eq!(share(0, 1, 1).len(), 22);
    }

    /// Regression: packing into a folder of earlier shards kept them, and training mixed both.
    #[test]
    fn packing_into_a_folder_of_earlier_shards_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, out) = (tmp.path().join("src"), tmp.path().join("shards"));
        folder(&src, 2);
        pack(&src, &out, 1 << 30).unwrap();
        let before = std::fs::read_dir(&out).unwrap().count();
        let e = pack(&src, &out, 1 << 30).unwrap_err().to_string();
        assert!(e.contains("earlier pack") && e.contains(".tar"), "{e}");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), before);
    }

    #[test]
    fn broken_shards_are_clear_errors() {
        use crate::loader::{train_stream, Augment};
        let tmp = tempfile::tempdir().unwrap();
        let (src, out) = (tmp.path().join("src"), tmp.path().join("shards"));
        folder(&src, 2);
        // A corrupt image inside a shard: the stream's error names the shard and the member.
        std::fs::write(src.join("train/bee/0.jpg"), b"\xff\xd8 not really a jpeg").unwrap();
        pack(&src, &out, 1 << 30).unwrap();
        let ds = small(load(&out, &LoadOptions::default()).unwrap());
        let e = train_stream(ds, 4, 0, 0, &Augment::default(), None)
            .find_map(|b| b.err())
            .expect("an error")
            .to_string();
        assert!(
            e.contains("train-000000.tar:00001_") && e.contains("unreadable image"),
            "{e}"
        );
        // An image member without its .cls.
        let lone = out.join("train-000001.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&lone).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_cksum();
        b.append_data(&mut h, "k1.jpg", &b"abc"[..]).unwrap();
        b.into_inner().unwrap();
        let e = load(&out, &LoadOptions::default()).unwrap_err().to_string();
        assert!(
            e.contains("train-000001.tar") && e.contains("no .cls member"),
            "{e}"
        );
        std::fs::remove_file(&lone).unwrap();
        // Regression: a truncated member was reported as an image without its .cls member.
        let cut = out.join("train-000001.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&cut).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(4096);
        h.set_cksum();
        b.append_data(&mut h, "k1.jpg", &[7u8; 4096][..]).unwrap();
        b.into_inner().unwrap();
        let full = std::fs::read(&cut).unwrap();
        std::fs::write(&cut, &full[..512 + 1000]).unwrap();
        let e = load(&out, &LoadOptions::default()).unwrap_err().to_string();
        assert!(e.contains("k1.jpg") && e.contains("truncated"), "{e}");
        std::fs::remove_file(&cut).unwrap();
        // No shards at all.
        let e = load(tmp.path(), &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no train-*.tar shards"), "{e}");
    }
}
