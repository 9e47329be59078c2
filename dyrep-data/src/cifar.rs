//! CIFAR-10/100 binary batches (the `*-bin` releases). CIFAR-10: `data_batch_1..5.bin` and
//! `test_batch.bin`, records of 1 label byte + 3072 pixel bytes (`[3, 32, 32]`); CIFAR-100:
//! `train.bin` and `test.bin`, records of coarse + fine label bytes + 3072 pixels (the fine
//! label is used). Files may sit in DIR or in DIR/cifar-10-batches-bin (DIR/cifar-100-binary).

use std::path::{Path, PathBuf};

use super::{format_err, io_err, Dataset, Result, Split};

const PIXELS: usize = 3 * 32 * 32;

pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

fn locate(dir: &Path, sub: &str, first: &str) -> PathBuf {
    if dir.join(first).is_file() {
        dir.to_path_buf()
    } else {
        dir.join(sub)
    }
}

fn read_records(paths: &[PathBuf], label_bytes: usize, classes: usize) -> Result<Split> {
    let rec = label_bytes + PIXELS;
    let mut split = Split {
        images: Vec::new(),
        labels: Vec::new(),
        files: Vec::new(),
    };
    for p in paths {
        let bytes = std::fs::read(p).map_err(io_err(p))?;
        if bytes.is_empty() || bytes.len() % rec != 0 {
            return Err(format_err(
                p,
                format!(
                    "size {} is not a positive multiple of the {rec}-byte record (truncated?)",
                    bytes.len()
                ),
            ));
        }
        for r in bytes.chunks(rec) {
            let label = r[label_bytes - 1] as usize;
            if label >= classes {
                return Err(format_err(
                    p,
                    format!("label {label} out of range for {classes} classes"),
                ));
            }
            split.labels.push(label as u32);
            split.images.extend_from_slice(&r[label_bytes..]);
        }
    }
    Ok(split)
}

/// CIFAR-10 binary batches.
pub fn load_cifar10(dir: &Path) -> Result<Dataset> {
    let d = locate(dir, "cifar-10-batches-bin", "data_batch_1.bin");
    let train: Vec<PathBuf> = (1..=5)
        .map(|i| d.join(format!("data_batch_{i}.bin")))
        .collect();
    let test = vec![d.join("test_batch.bin")];
    let train = read_records(&train, 1, 10)?;
    let test = read_records(&test, 1, 10)?;
    Dataset::new(
        String::new(),
        [3, 32, 32],
        CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
        train,
        test,
        dir,
    )
}

/// CIFAR-100 binary (fine labels).
pub fn load_cifar100(dir: &Path) -> Result<Dataset> {
    let d = locate(dir, "cifar-100-binary", "train.bin");
    let train = read_records(&[d.join("train.bin")], 2, 100)?;
    let test = read_records(&[d.join("test.bin")], 2, 100)?;
    Dataset::new(
        String::new(),
        [3, 32, 32],
        (0..100).map(|i| format!("class{i}")).collect(),
        train,
        test,
        dir,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_records_and_refuses_truncated_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut rec = vec![3u8];
        rec.extend(std::iter::repeat_n(7u8, PIXELS));
        for i in 1..=5 {
            std::fs::write(d.join(format!("data_batch_{i}.bin")), &rec).unwrap();
        }
        std::fs::write(d.join("test_batch.bin"), &rec[..100]).unwrap();
        let e = load_cifar10(d).unwrap_err().to_string();
        assert!(e.contains("test_batch.bin") && e.contains("record"), "{e}");
        std::fs::write(d.join("test_batch.bin"), &rec).unwrap();
        let ds = load_cifar10(d).unwrap();
        assert_eq!(ds.train.len(), 5);
        assert_eq!(ds.train.labels[0], 3);
        assert_eq!((ds.channels, ds.height, ds.width), (3, 32, 32));
    }
}
