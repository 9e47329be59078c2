//! Datasets (DESIGN.md "Data specs"): idx (MNIST, Fashion-MNIST; `.gz` or raw), CIFAR-10/100
//! binary batches, image folders (`train/<class>/*`, `test/<class>/*`, jpeg/png), and the
//! bundled default (a class-balanced Fashion-MNIST subset compiled into the binary). Images are
//! kept as u8 `[N, C, H, W]`; normalisation and augmentation happen when batches are made
//! (`loader`). Every malformed input is a `DataError` naming the file and what is wrong.

pub mod cifar;
pub mod folder;
pub mod idx;
pub mod loader;

use std::path::{Path, PathBuf};

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

impl Dataset {
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
