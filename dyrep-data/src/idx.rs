//! idx files (MNIST, Fashion-MNIST): `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each raw or `.gz`. Validates the magic
//! number (type 0x08 unsigned byte, rank 3 or 1), that the payload has exactly the declared
//! size, and that image and label counts agree.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{format_err, io_err, Dataset, Result, Split};

/// Decompresses if gzip, then parses an idx payload of the expected rank.
pub fn parse(bytes: &[u8], rank: usize, path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let data = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| format_err(path, format!("corrupt gzip data: {e}")))?;
        out
    } else {
        bytes.to_vec()
    };
    if data.len() < 4 {
        return Err(format_err(
            path,
            "truncated: shorter than the 4-byte idx magic number",
        ));
    }
    if data[0] != 0 || data[1] != 0 || data[2] != 0x08 || data[3] as usize != rank {
        return Err(format_err(
            path,
            format!(
                "wrong idx magic number {:02x}{:02x}{:02x}{:02x}: expected 000008{:02x} (unsigned bytes, rank {rank})",
                data[0], data[1], data[2], data[3], rank
            ),
        ));
    }
    let header = 4 + 4 * rank;
    if data.len() < header {
        return Err(format_err(path, "truncated idx header"));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            let b = &data[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let want: usize = dims.iter().product();
    let got = data.len() - header;
    if got != want {
        return Err(format_err(
            path,
            format!("payload is {got} bytes but the header {dims:?} declares {want} (truncated or corrupt file)"),
        ));
    }
    Ok((dims, data[header..].to_vec()))
}

/// An image/label pair of idx payloads into a split; returns (split, height, width).
pub fn split_from_bytes(
    images: &[u8],
    labels: &[u8],
    path: &Path,
) -> Result<(Split, usize, usize)> {
    let (idims, pixels) = parse(images, 3, path)?;
    let (ldims, lbytes) = parse(labels, 1, path)?;
    if idims[0] != ldims[0] {
        return Err(format_err(
            path,
            format!("{} images but {} labels", idims[0], ldims[0]),
        ));
    }
    Ok((
        Split {
            images: pixels,
            labels: lbytes.iter().map(|&b| b as u32).collect(),
            files: Vec::new(),
        },
        idims[1],
        idims[2],
    ))
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(format_err(
        &dir.join(stem),
        format!(
            "missing (looked for {stem}.gz and {stem} in {})",
            dir.display()
        ),
    ))
}

fn read_split(dir: &Path, prefix: &str) -> Result<(Split, usize, usize)> {
    let ip = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lp = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = std::fs::read(&ip).map_err(io_err(&ip))?;
    let labels = std::fs::read(&lp).map_err(io_err(&lp))?;
    let (idims, pixels) = parse(&images, 3, &ip)?;
    let (ldims, lbytes) = parse(&labels, 1, &lp)?;
    if idims[0] != ldims[0] {
        return Err(format_err(
            &lp,
            format!(
                "{} labels but {} has {} images",
                ldims[0],
                ip.display(),
                idims[0]
            ),
        ));
    }
    Ok((
        Split {
            images: pixels,
            labels: lbytes.iter().map(|&b| b as u32).collect(),
            files: Vec::new(),
        },
        idims[1],
        idims[2],
    ))
}

/// Loads the four idx files of an MNIST-style directory.
pub fn load_dir(dir: &Path, classes: Vec<String>) -> Result<Dataset> {
    let (train, h, w) = read_split(dir, "train")?;
    let (test, th, tw) = read_split(dir, "t10k")?;
    if (h, w) != (th, tw) {
        return Err(format_err(
            dir,
            format!("train images are {h}x{w} but test images are {th}x{tw}"),
        ));
    }
    Dataset::new(String::new(), [1, h, w], classes, train, test, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(rank: u8, dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, rank];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn parses_raw_and_gzip() {
        let raw = idx(3, &[2, 2, 2], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let (d, p) = parse(&raw, 3, Path::new("x")).unwrap();
        assert_eq!(d, vec![2, 2, 2]);
        assert_eq!(p, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        let (d2, p2) = parse(&gz.finish().unwrap(), 3, Path::new("x")).unwrap();
        assert_eq!((d2, p2), (d, p));
    }

    #[test]
    fn wrong_magic_truncation_and_count_mismatch_are_errors() {
        let e = parse(&[0, 0, 9, 3, 0, 0, 0, 0], 3, Path::new("f.idx"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.idx") && e.contains("magic"), "{e}");
        let short = idx(3, &[2, 2, 2], &[1, 2, 3]);
        let e = parse(&short, 3, Path::new("f")).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = parse(&[0x1f, 0x8b, 1, 2, 3], 1, Path::new("g.gz"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("corrupt gzip"), "{e}");
        let images = idx(3, &[2, 1, 1], &[1, 2]);
        let labels = idx(1, &[3], &[0, 1, 2]);
        let e = split_from_bytes(&images, &labels, Path::new("d"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 images but 3 labels"), "{e}");
    }

    #[test]
    fn directory_with_missing_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("train-images-idx3-ubyte"),
            idx(3, &[1, 1, 1], &[0]),
        )
        .unwrap();
        let e = load_dir(dir.path(), vec!["a".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("train-labels-idx1-ubyte"), "{e}");
    }

    #[test]
    fn labels_out_of_range_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("train-images-idx3-ubyte"), idx(3, &[1, 1, 1], &[0])).unwrap();
        std::fs::write(d.join("train-labels-idx1-ubyte"), idx(1, &[1], &[12])).unwrap();
        std::fs::write(d.join("t10k-images-idx3-ubyte"), idx(3, &[1, 1, 1], &[0])).unwrap();
        std::fs::write(d.join("t10k-labels-idx1-ubyte"), idx(1, &[1], &[0])).unwrap();
        let e = load_dir(d, (0..10).map(|i| i.to_string()).collect())
            .unwrap_err()
            .to_string();
        assert!(e.contains("label 12 out of range"), "{e}");
    }
}
