//! dyrep-data: the data pipeline (docs/USAGE.md, data specs), a crate of its own that builds and
//! tests without the rest of dyrep's runtime. Datasets: idx (MNIST, Fashion-MNIST; `.gz` or
//! raw), CIFAR-10/100 binary batches, image folders (`train/<class>/*`, `test/<class>/*`,
//! jpeg/png), tar shards, and the bundled default (a class-balanced Fashion-MNIST subset compiled
//! into the binary). Images are kept as u8 `[N, C, H, W]`; normalisation and augmentation happen
//! when batches are made (`loader`). Every malformed input is a `DataError` naming the file and
//! what is wrong; the runtime's error wraps it.
//!
//! Where things live: this file the `Dataset`, its splits, specs and fingerprint; `idx.rs`,
//! `cifar.rs`, `folder.rs` and `shards.rs` one format each (`shards.rs` also packs them);
//! `cache.rs` the decoded-image cache of image folders; `transforms.rs` the ImageNet-style
//! transforms; `loader.rs` seeded, augmented batches on a background thread.

pub mod cache;
pub mod cifar;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod shards;
pub mod transforms;

use std::path::{Path, PathBuf};

use dyrep_api::SeededRng;

/// Errors reading or validating a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    #[error("bad data spec `{spec}`: {reason}")]
    Spec { spec: String, reason: String },
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn format_err(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// One split: u8 pixels `[n, c, h, w]` and labels — or, for a streamed image folder, the image
/// files (decoded when a batch is made) and labels, with no pixels in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
    /// Where a streamed split's images are (empty when the pixels are in memory).
    pub files: Vec<ImageSource>,
}

/// Where one streamed image's encoded bytes are: a file, or a member of a tar shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    File(PathBuf),
    /// `len` bytes at `offset` of the shard `shard` (member `name`).
    Member {
        shard: std::sync::Arc<PathBuf>,
        name: String,
        offset: u64,
        len: u64,
    },
}

impl ImageSource {
    /// The encoded image.
    pub fn read(&self) -> Result<Vec<u8>> {
        match self {
            ImageSource::File(p) => std::fs::read(p).map_err(io_err(p)),
            ImageSource::Member {
                shard, offset, len, ..
            } => {
                use std::io::{Read, Seek, SeekFrom};
                let mut f = std::fs::File::open(shard.as_path()).map_err(io_err(shard))?;
                f.seek(SeekFrom::Start(*offset)).map_err(io_err(shard))?;
                let mut buf = vec![0u8; *len as usize];
                f.read_exact(&mut buf).map_err(io_err(shard))?;
                Ok(buf)
            }
        }
    }

    /// The path errors name (`shard.tar:member` for a shard member).
    pub fn describe(&self) -> PathBuf {
        match self {
            ImageSource::File(p) => p.clone(),
            ImageSource::Member { shard, name, .. } => {
                PathBuf::from(format!("{}:{name}", shard.display()))
            }
        }
    }
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `n` examples (all if `n` is larger), as even across the `num_classes` classes as the
    /// split allows: each class's examples are shuffled by a stream of `seed`, then taken one
    /// per class in class order, round after round, until `n` are taken (a class that runs out
    /// leaves its share to the others). The chosen examples keep their order in the split.
    pub fn balanced_subset(
        &self,
        n: usize,
        num_classes: usize,
        seed: u64,
        image_size: usize,
    ) -> Split {
        use rand::Rng;
        if n >= self.len() {
            return self.clone();
        }
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
        for (i, &l) in self.labels.iter().enumerate() {
            by_class[l as usize].push(i);
        }
        for (class, members) in by_class.iter_mut().enumerate() {
            let mut rng = SeededRng::for_purpose(seed, &format!("subset:{class}"));
            for i in (1..members.len()).rev() {
                members.swap(i, rng.random_range(0..=i));
            }
        }
        let mut chosen = Vec::with_capacity(n);
        let mut round = 0;
        while chosen.len() < n {
            for members in &by_class {
                if let Some(&i) = members.get(round) {
                    if chosen.len() < n {
                        chosen.push(i);
                    }
                }
            }
            round += 1;
        }
        chosen.sort_unstable();
        self.select(&chosen, image_size)
    }

    /// The examples `indices`, in that order.
    pub fn select(&self, indices: &[usize], image_size: usize) -> Split {
        let images = match self.images.is_empty() {
            true => Vec::new(),
            false => indices
                .iter()
                .flat_map(|&i| &self.images[i * image_size..(i + 1) * image_size])
                .copied()
                .collect(),
        };
        let files = match self.files.is_empty() {
            true => Vec::new(),
            false => indices.iter().map(|&i| self.files[i].clone()).collect(),
        };
        Split {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            files,
        }
    }

    /// Examples per class (`num_classes` entries).
    pub fn class_counts(&self, num_classes: usize) -> Vec<usize> {
        let mut counts = vec![0; num_classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// The first `n` examples (all if `n` is larger).
    pub fn truncated(&self, n: usize, image_size: usize) -> Split {
        let n = n.min(self.len());
        self.select(&(0..n).collect::<Vec<_>>(), image_size)
    }
}

/// A classification dataset with train and test splits.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The spec it was loaded from (`default`, `fashion-mnist:DIR`, ...).
    pub spec: String,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub classes: Vec<String>,
    pub train: Split,
    pub test: Split,
    /// Per-channel mean and std of the training pixels (in [0, 1]), used to normalise (the
    /// ImageNet constants for a streamed dataset).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Set for a streamed image folder: how its files become tensors.
    pub stream: Option<StreamSpec>,
}

/// How a streamed image folder's files become tensors (`loader.rs`): decoded on `workers`
/// threads per batch, with the ImageNet transforms at `transform.size`.
#[derive(Clone, Debug)]
pub struct StreamSpec {
    pub transform: transforms::ImageNetTransform,
    pub workers: usize,
    /// Skip (and count) images that cannot be decoded instead of failing the run.
    pub skip_bad_images: bool,
    /// How many images were skipped so far (shared by every copy of the dataset).
    pub bad_images: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Tar shards (train, test): training reads them sequentially (`loader.rs`).
    pub shards: Option<[shards::ShardSet; 2]>,
    /// The most pixels one image may decode to.
    pub max_image_pixels: u64,
}

/// The seed of the subsets `--train-limit` / `--test-limit` take: the same images for every run
/// seed and mode, so runs that differ only in those compare on the same data.
pub const SUBSET_SEED: u64 = 0;

impl Dataset {
    /// A fingerprint of what a run trains and tests on: the classes, the image shape, every
    /// example's label and pixels (in memory) or file path, size and modification time
    /// (streamed), or shard member. A resume compares it with the run's, so data replaced,
    /// added or removed since the run started is not trained on silently.
    pub fn fingerprint(&self) -> String {
        use dyrep_api::hash::{fnv64_extend, FNV_START};
        let mut h = FNV_START;
        for c in &self.classes {
            h = fnv64_extend(h, c.bytes().chain([0u8]));
        }
        for d in [self.channels, self.height, self.width] {
            h = fnv64_extend(h, (d as u64).to_le_bytes());
        }
        for split in [&self.train, &self.test] {
            h = fnv64_extend(h, (split.labels.len() as u64).to_le_bytes());
            h = fnv64_extend(h, split.labels.iter().flat_map(|l| l.to_le_bytes()));
            h = fnv64_extend(h, split.images.iter().copied());
            for f in &split.files {
                h = match f {
                    ImageSource::File(p) => {
                        let (len, mtime) = std::fs::metadata(p).map_or((0, 0), |m| {
                            let t = m
                                .modified()
                                .ok()
                                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                                .map_or(0, |d| d.as_nanos());
                            (m.len(), t)
                        });
                        let h = fnv64_extend(h, p.to_string_lossy().bytes());
                        let h = fnv64_extend(h, len.to_le_bytes());
                        fnv64_extend(h, mtime.to_le_bytes())
                    }
                    ImageSource::Member {
                        shard,
                        name,
                        offset,
                        len,
                    } => {
                        let h = fnv64_extend(h, shard.to_string_lossy().bytes());
                        let h = fnv64_extend(h, name.bytes());
                        fnv64_extend(h, offset.to_le_bytes().into_iter().chain(len.to_le_bytes()))
                    }
                };
            }
        }
        format!("{h:016x}")
    }

    /// The dataset with at most `train` training and `test` test examples, each a class-balanced
    /// subset ([`Split::balanced_subset`], seed [`SUBSET_SEED`]); the normalisation statistics
    /// are those of the training examples kept.
    pub fn limited(mut self, train: Option<usize>, test: Option<usize>) -> Dataset {
        let (size, k) = (self.image_size(), self.num_classes());
        if let Some(n) = train.filter(|&n| n < self.train.len()) {
            self.train = self.train.balanced_subset(n, k, SUBSET_SEED, size);
            if self.stream.is_none() {
                (self.mean, self.std) =
                    channel_stats(&self.train.images, self.channels, self.height * self.width);
            }
        }
        if let Some(n) = test.filter(|&n| n < self.test.len()) {
            self.test = self.test.balanced_subset(n, k, SUBSET_SEED, size);
        }
        self
    }

    /// The classes the training split has no example of.
    pub fn classes_missing_from_training(&self) -> Vec<&str> {
        self.train
            .class_counts(self.num_classes())
            .iter()
            .zip(&self.classes)
            .filter(|(&n, _)| n == 0)
            .map(|(_, name)| name.as_str())
            .collect()
    }

    pub fn image_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Assembles and validates a dataset; computes the normalisation statistics.
    pub fn new(
        spec: String,
        shape: [usize; 3],
        classes: Vec<String>,
        train: Split,
        test: Split,
        source: &Path,
    ) -> Result<Dataset> {
        let [c, h, w] = shape;
        let size = c * h * w;
        for (name, s) in [("train", &train), ("test", &test)] {
            if s.is_empty() {
                return Err(format_err(source, format!("the {name} split is empty")));
            }
            if s.images.len() != s.len() * size {
                return Err(format_err(
                    source,
                    format!(
                        "{name} split: {} bytes of pixels for {} labels of {c}x{h}x{w}",
                        s.images.len(),
                        s.len()
                    ),
                ));
            }
            if let Some(bad) = s.labels.iter().find(|&&l| l as usize >= classes.len()) {
                return Err(format_err(
                    source,
                    format!(
                        "{name} split: label {bad} out of range for {} classes",
                        classes.len()
                    ),
                ));
            }
        }
        let (mean, std) = channel_stats(&train.images, c, h * w);
        Ok(Dataset {
            spec,
            channels: c,
            height: h,
            width: w,
            classes,
            train,
            test,
            mean,
            std,
            stream: None,
        })
    }

    /// A streamed image folder: splits of files and labels, RGB crops of `stream.transform.size`.
    pub fn streamed(
        classes: Vec<String>,
        train: Split,
        test: Split,
        stream: StreamSpec,
        source: &Path,
    ) -> Result<Dataset> {
        for (name, s) in [("train", &train), ("test", &test)] {
            if s.is_empty() || s.files.len() != s.len() {
                return Err(format_err(
                    source,
                    format!("the {name} split has no images"),
                ));
            }
        }
        let size = stream.transform.size;
        Ok(Dataset {
            spec: String::new(),
            channels: 3,
            height: size,
            width: size,
            classes,
            train,
            test,
            mean: transforms::IMAGENET_MEAN.to_vec(),
            std: transforms::IMAGENET_STD.to_vec(),
            stream: Some(stream),
        })
    }

    /// Images skipped as undecodable so far (`skip_bad_images`).
    pub fn bad_images(&self) -> usize {
        self.stream.as_ref().map_or(0, |s| {
            s.bad_images.load(std::sync::atomic::Ordering::Relaxed)
        })
    }
}

fn channel_stats(images: &[u8], c: usize, plane: usize) -> (Vec<f32>, Vec<f32>) {
    let mut sum = vec![0f64; c];
    let mut sq = vec![0f64; c];
    let mut count = vec![0f64; c];
    for (i, chunk) in images.chunks(plane).enumerate() {
        let ch = i % c;
        for &p in chunk {
            let v = p as f64 / 255.0;
            sum[ch] += v;
            sq[ch] += v * v;
        }
        count[ch] += chunk.len() as f64;
    }
    let mean: Vec<f32> = (0..c)
        .map(|i| (sum[i] / count[i].max(1.0)) as f32)
        .collect();
    let std: Vec<f32> = (0..c)
        .map(|i| {
            let m = sum[i] / count[i].max(1.0);
            ((sq[i] / count[i].max(1.0) - m * m).max(1e-12).sqrt()) as f32
        })
        .collect();
    (mean, std)
}

/// Fashion-MNIST class names.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
];

/// The bundled default: 800 train + 200 test images per class of Fashion-MNIST (MIT licence,
/// Zalando SE; see data/fashion-mnist-subset/LICENSE), compiled into the binary.
pub fn bundled_default() -> Result<Dataset> {
    const TRAIN_IMAGES: &[u8] =
        include_bytes!("../../data/fashion-mnist-subset/train-images-idx3-ubyte.gz");
    const TRAIN_LABELS: &[u8] =
        include_bytes!("../../data/fashion-mnist-subset/train-labels-idx1-ubyte.gz");
    const TEST_IMAGES: &[u8] =
        include_bytes!("../../data/fashion-mnist-subset/t10k-images-idx3-ubyte.gz");
    const TEST_LABELS: &[u8] =
        include_bytes!("../../data/fashion-mnist-subset/t10k-labels-idx1-ubyte.gz");
    let origin = Path::new("<bundled fashion-mnist subset>");
    let train = idx::split_from_bytes(TRAIN_IMAGES, TRAIN_LABELS, origin)?;
    let test = idx::split_from_bytes(TEST_IMAGES, TEST_LABELS, origin)?;
    Dataset::new(
        "default".into(),
        [1, train.1, train.2],
        FASHION_MNIST_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        train.0,
        test.0,
        origin,
    )
}

/// How to load a dataset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadOptions {
    /// Image-decoding threads; 0: one per core.
    pub workers: usize,
    /// Where decoded image folders are cached (`data/cache.rs`); `None`: no cache.
    pub cache_dir: Option<PathBuf>,
    /// Stream image folders with these ImageNet transforms. `None`: an image folder is streamed
    /// (with the default transforms) only when its images differ in size or would not fit
    /// `memory_budget` once decoded; otherwise it is decoded into memory.
    pub imagenet: Option<transforms::ImageNetTransform>,
    /// Bytes of decoded pixels an in-memory image folder may take (0: 4 GiB).
    pub memory_budget: u64,
    /// Streamed folders: skip (and count) images that cannot be decoded.
    pub skip_bad_images: bool,
    /// The most pixels one image may decode to (0: [`MAX_IMAGE_PIXELS`]).
    pub max_image_pixels: u64,
}

impl LoadOptions {
    /// Every core, and the default cache directory ([`cache::default_dir`]).
    pub fn standard() -> LoadOptions {
        LoadOptions {
            cache_dir: cache::default_dir(),
            ..LoadOptions::default()
        }
    }

    /// The most pixels one image may decode to.
    pub fn pixel_cap(&self) -> u64 {
        match self.max_image_pixels {
            0 => MAX_IMAGE_PIXELS,
            n => n,
        }
    }

    /// The number of decoding threads to start.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// Loads a dataset from a spec with the standard options ([`LoadOptions::standard`]).
pub fn load(spec: &str) -> Result<Dataset> {
    load_with(spec, &LoadOptions::standard())
}

/// The default of the most pixels one image may decode to (width × height; `max_image_pixels`):
/// 100 megapixels, 300 MB as RGB, far beyond any training image and small enough that a few
/// decoding threads cannot exhaust memory on a damaged or crafted file (a PNG of a few hundred
/// KB can claim 20000 × 20000).
pub const MAX_IMAGE_PIXELS: u64 = 100_000_000;

/// Decodes an encoded image (`name` for messages) to RGB, refusing one whose header claims more
/// than `max_pixels` before its pixels are allocated.
pub(crate) fn decode_rgb(bytes: &[u8], name: &Path, max_pixels: u64) -> Result<image::RgbImage> {
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format_err(name, format!("unreadable image: {e}")))
    };
    let (w, h) = reader()?
        .into_dimensions()
        .map_err(|e| format_err(name, format!("unreadable image: {e}")))?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(format_err(
            name,
            format!(
                "image claims {w}x{h} pixels, more than the {max_pixels} one image may decode to (max_image_pixels; a damaged or crafted file?); remove it, pass --skip-bad-images, or raise max_image_pixels"
            ),
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    let mut r = reader()?;
    r.limits(limits);
    Ok(r.decode()
        .map_err(|e| format_err(name, format!("unreadable image: {e}")))?
        .to_rgb8())
}

/// The directory a data spec reads (`KIND:DIR`), if it names one.
pub fn spec_path(spec: &str) -> Option<PathBuf> {
    let (_, dir) = spec.trim().split_once(':')?;
    Some(PathBuf::from(dir))
}

/// Loads a dataset from a spec: `default`, `fashion-mnist:DIR`, `mnist:DIR`, `cifar10:DIR`,
/// `cifar100:DIR`, `image-folder:DIR`.
pub fn load_with(spec: &str, opts: &LoadOptions) -> Result<Dataset> {
    let spec = spec.trim();
    if spec.is_empty() || spec == "default" {
        return bundled_default();
    }
    let Some((kind, dir)) = spec.split_once(':') else {
        return Err(DataError::Spec {
            spec: spec.into(),
            reason: "expected KIND:DIR (fashion-mnist, mnist, cifar10, cifar100, image-folder, shards) or `default`".into(),
        });
    };
    let dir = Path::new(dir);
    if !dir.is_dir() {
        return Err(DataError::Spec {
            spec: spec.into(),
            reason: format!("{} is not a directory", dir.display()),
        });
    }
    let mut ds = match kind {
        "fashion-mnist" => idx::load_dir(
            dir,
            FASHION_MNIST_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )?,
        "mnist" => idx::load_dir(dir, (0..10).map(|d| d.to_string()).collect())?,
        "cifar10" => cifar::load_cifar10(dir)?,
        "cifar100" => cifar::load_cifar100(dir)?,
        "image-folder" => folder::load(dir, opts)?,
        "shards" => shards::load(dir, opts)?,
        other => {
            let known = [
                "fashion-mnist",
                "mnist",
                "cifar10",
                "cifar100",
                "image-folder",
                "shards",
            ];
            let hint = dyrep_api::registry::nearest(other, known)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            return Err(DataError::Spec {
                spec: spec.into(),
                reason: format!(
                    "unknown kind `{other}`{hint}; known: {}, or `default`",
                    known.join(", ")
                ),
            });
        }
    };
    ds.spec = spec.to_string();
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A split sorted by class (as an image folder loads): 10, 10 and 2 examples of three
    /// classes, each image's bytes naming its index.
    fn sorted_split() -> Split {
        let labels: Vec<u32> = [(0u32, 10), (1, 10), (2, 2)]
            .iter()
            .flat_map(|&(c, n)| std::iter::repeat_n(c, n))
            .collect();
        Split {
            images: (0..labels.len() as u8).flat_map(|i| [i, i]).collect(),
            labels,
            files: Vec::new(),
        }
    }

    /// The CRC-32 (IEEE) a PNG chunk ends with.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    /// Regression: a small PNG whose header claims 20000×20000 pixels took 1.5 GB per worker.
    #[test]
    fn an_image_claiming_absurd_dimensions_is_refused_before_decoding() {
        let mut png = Vec::new();
        image::RgbImage::new(4, 4)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        // IHDR: length (4 bytes) at 8, type at 12, width and height at 16..24, CRC at 29..33.
        png[16..20].copy_from_slice(&20_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&20_000u32.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let e = decode_rgb(&png, Path::new("bomb.png"), MAX_IMAGE_PIXELS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bomb.png") && e.contains("20000x20000"), "{e}");
    }

    /// Regression: a limit took the first N examples, so a class-sorted split gave one class.
    #[test]
    fn limits_take_class_balanced_seeded_subsets() {
        let s = sorted_split();
        let sub = s.balanced_subset(9, 3, 0, 2);
        // Round robin 0,1,2 | 0,1,2 | 0,1 | 0: class 2 has only two.
        assert_eq!(sub.class_counts(3), vec![4, 3, 2]);
        let sub6 = s.balanced_subset(6, 3, 0, 2);
        assert_eq!(sub6.class_counts(3), vec![2, 2, 2]);
        // Every chosen image is an original with its label, in the split's order, none twice.
        let idx: Vec<u8> = sub.images.chunks(2).map(|c| c[0]).collect();
        assert!(idx.windows(2).all(|w| w[0] < w[1]), "{idx:?}");
        for (&i, &l) in idx.iter().zip(&sub.labels) {
            assert_eq!(s.labels[i as usize], l);
        }
        // Seeded: the same seed gives the same subset, another seed (almost surely) another.
        assert_eq!(s.balanced_subset(9, 3, 0, 2).images, sub.images);
        assert_ne!(s.balanced_subset(9, 3, 1, 2).images, sub.images);
        // Not the first examples of each class.
        assert_ne!(&idx[..2], &[0, 1]);
        // A limit at or over the size keeps everything.
        assert_eq!(s.balanced_subset(22, 3, 0, 2).labels, s.labels);
    }

    /// `benches/peer/cifar10-subset-1000.txt` (the images the PyTorch check of the reproduction
    /// trains on) must be the subset `--train-limit 10000` keeps of CIFAR-10's 10 × 5,000
    /// training images, or that check trains on other data than the grid.
    #[test]
    fn the_peer_subset_file_is_the_reproductions_training_subset() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../benches/peer/cifar10-subset-1000.txt"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let (classes, per_class) = (10usize, 5000usize);
        let split = Split {
            images: Vec::new(),
            labels: (0..classes as u32)
                .flat_map(|c| std::iter::repeat_n(c, per_class))
                .collect(),
            files: (0..classes * per_class)
                .map(|i| ImageSource::File(PathBuf::from(i.to_string())))
                .collect(),
        };
        let sub = split.balanced_subset(10_000, classes, SUBSET_SEED, 3 * 32 * 32);
        let mut chosen = vec![Vec::new(); classes];
        for (file, &label) in sub.files.iter().zip(&sub.labels) {
            let ImageSource::File(p) = file else {
                panic!("not a file: {file:?}")
            };
            let index: usize = p.to_str().unwrap().parse().unwrap();
            chosen[label as usize].push(index - label as usize * per_class);
        }
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), classes, "{path}: one line per class");
        for (class, line) in lines.iter().enumerate() {
            let mut listed: Vec<usize> = line
                .split_whitespace()
                .map(|t| t.parse().unwrap())
                .collect();
            listed.sort_unstable();
            assert_eq!(listed, chosen[class], "{path}: class {class}");
        }
    }

    #[test]
    fn a_limited_dataset_recomputes_its_statistics_and_reports_missing_classes() {
        let ds = bundled_default().unwrap();
        let full_mean = ds.mean.clone();
        let small = ds.clone().limited(Some(100), Some(30));
        assert_eq!(small.train.class_counts(10), vec![10; 10]);
        assert_eq!(small.test.class_counts(10), vec![3; 10]);
        assert_ne!(small.mean, full_mean);
        assert!(small.classes_missing_from_training().is_empty());
        let tiny = ds.limited(Some(4), None);
        assert_eq!(tiny.classes_missing_from_training().len(), 6);
    }

    #[test]
    fn bundled_default_is_balanced_fashion_mnist() {
        let ds = bundled_default().unwrap();
        assert_eq!((ds.channels, ds.height, ds.width), (1, 28, 28));
        assert_eq!(ds.train.len(), 8000);
        assert_eq!(ds.test.len(), 2000);
        for c in 0..10u32 {
            assert_eq!(ds.train.labels.iter().filter(|&&l| l == c).count(), 800);
            assert_eq!(ds.test.labels.iter().filter(|&&l| l == c).count(), 200);
        }
        assert!(ds.mean[0] > 0.2 && ds.mean[0] < 0.4, "{:?}", ds.mean);
        assert!(ds.std[0] > 0.2 && ds.std[0] < 0.5, "{:?}", ds.std);
    }

    #[test]
    fn bad_specs_are_clear_errors() {
        let e = load("fashionmnist:/tmp").unwrap_err().to_string();
        assert!(e.contains("did you mean `fashion-mnist`"), "{e}");
        let e = load("cifar10:/definitely/not/here")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a directory"), "{e}");
        assert!(load("what").unwrap_err().to_string().contains("KIND:DIR"));
    }
}
