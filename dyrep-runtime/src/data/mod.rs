//! Datasets (README.md "The `dyrep` command", data specs): idx (MNIST, Fashion-MNIST; `.gz` or
//! raw), CIFAR-10/100 binary batches, image folders (`train/<class>/*`, `test/<class>/*`,
//! jpeg/png), and the bundled default (a class-balanced Fashion-MNIST subset compiled into the
//! binary). Images are kept as u8 `[N, C, H, W]`; normalisation and augmentation happen when
//! batches are made (`loader`). Every malformed input is a `DataError` naming the file and what is
//! wrong.

pub mod cifar;
pub mod folder;
pub mod idx;
pub mod loader;

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

/// One split: u8 pixels `[n, c, h, w]` and labels.
#[derive(Clone, Debug)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
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
        Split {
            images: chosen
                .iter()
                .flat_map(|&i| &self.images[i * image_size..(i + 1) * image_size])
                .copied()
                .collect(),
            labels: chosen.iter().map(|&i| self.labels[i]).collect(),
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
        Split {
            images: self.images[..n * image_size].to_vec(),
            labels: self.labels[..n].to_vec(),
        }
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
    /// Per-channel mean and std of the training pixels (in [0, 1]), used to normalise.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// The seed of the subsets `--train-limit` / `--test-limit` take: the same images for every run
/// seed and mode, so runs that differ only in those compare on the same data.
pub const SUBSET_SEED: u64 = 0;

impl Dataset {
    /// The dataset with at most `train` training and `test` test examples, each a class-balanced
    /// subset ([`Split::balanced_subset`], seed [`SUBSET_SEED`]); the normalisation statistics
    /// are those of the training examples kept.
    pub fn limited(mut self, train: Option<usize>, test: Option<usize>) -> Dataset {
        let (size, k) = (self.image_size(), self.num_classes());
        if let Some(n) = train.filter(|&n| n < self.train.len()) {
            self.train = self.train.balanced_subset(n, k, SUBSET_SEED, size);
            (self.mean, self.std) =
                channel_stats(&self.train.images, self.channels, self.height * self.width);
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
        include_bytes!("../../../data/fashion-mnist-subset/train-images-idx3-ubyte.gz");
    const TRAIN_LABELS: &[u8] =
        include_bytes!("../../../data/fashion-mnist-subset/train-labels-idx1-ubyte.gz");
    const TEST_IMAGES: &[u8] =
        include_bytes!("../../../data/fashion-mnist-subset/t10k-images-idx3-ubyte.gz");
    const TEST_LABELS: &[u8] =
        include_bytes!("../../../data/fashion-mnist-subset/t10k-labels-idx1-ubyte.gz");
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

/// Loads a dataset from a spec: `default`, `fashion-mnist:DIR`, `mnist:DIR`, `cifar10:DIR`,
/// `cifar100:DIR`, `image-folder:DIR`.
pub fn load(spec: &str) -> Result<Dataset> {
    let spec = spec.trim();
    if spec.is_empty() || spec == "default" {
        return bundled_default();
    }
    let Some((kind, dir)) = spec.split_once(':') else {
        return Err(DataError::Spec {
            spec: spec.into(),
            reason: "expected KIND:DIR (fashion-mnist, mnist, cifar10, cifar100, image-folder) or `default`".into(),
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
        "image-folder" => folder::load(dir)?,
        other => {
            let known = [
                "fashion-mnist",
                "mnist",
                "cifar10",
                "cifar100",
                "image-folder",
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
        }
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
