//! The decoded-image cache of in-memory image folders: after the first run decodes a folder, the
//! pixels go to one versioned binary file in a cache directory, keyed by the folder's file list
//! (relative paths, sizes, modification times), so the next run on the same, unchanged folder
//! reads it back instead of decoding every image again. A cache that is missing, stale, truncated
//! or of another version is ignored (and rewritten); it never fails a run.
//!
//! Layout (little-endian): magic `DYREPIMG`, format version u32, content key u64, C, H, W u32,
//! class count u32, each class name as u32 length + UTF-8, then per split (train, test): example
//! count u64, labels u32 each, pixels `[N, C, H, W]` u8.

use std::path::{Path, PathBuf};

use super::Split;

const MAGIC: &[u8; 8] = b"DYREPIMG";
const VERSION: u32 = 1;

/// A decoded image folder: shape `[C, H, W]`, class names, train and test splits.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub shape: [usize; 3],
    pub classes: Vec<String>,
    pub train: Split,
    pub test: Split,
}

/// The cache directory when the user names none: `$DYREP_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/dyrep`, else `$HOME/.cache/dyrep`; `None` when none of them is set.
pub fn default_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("DYREP_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|p| p.join("dyrep")))
        .or_else(|| var("HOME").map(|p| p.join(".cache").join("dyrep")))
}

/// The cache file of the folder `dir` in `cache_dir` (one file per folder: a changed folder
/// replaces its entry).
pub fn file_for(dir: &Path, cache_dir: &Path) -> PathBuf {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let h = dyrep_api::hash::fnv64(canonical.to_string_lossy().bytes());
    cache_dir.join(format!("image-folder-{h:016x}.bin"))
}

/// Reads the cache file if it holds the folder with content key `key` (the pixels go straight
/// into their final buffers: no second copy of the file in memory).
pub fn read(path: &Path, key: u64) -> Option<Decoded> {
    let file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let mut r = Reader {
        inner: std::io::BufReader::new(file),
        left: len,
    };
    let mut magic = [0u8; 8];
    r.fill(&mut magic)?;
    if &magic != MAGIC || r.u32()? != VERSION || r.u64()? != key {
        return None;
    }
    let shape = [r.u32()? as usize, r.u32()? as usize, r.u32()? as usize];
    let n_classes = r.u32()? as usize;
    let mut classes = Vec::with_capacity(n_classes.min(1 << 16));
    for _ in 0..n_classes {
        let len = r.u32()? as usize;
        classes.push(String::from_utf8(r.bytes(len)?).ok()?);
    }
    let size = shape.iter().product::<usize>();
    let train = r.split(size)?;
    let test = r.split(size)?;
    (r.left == 0).then_some(Decoded {
        shape,
        classes,
        train,
        test,
    })
}

/// Writes `decoded` under content key `key` to `out`.
pub fn write(out: &mut impl std::io::Write, decoded: &Decoded, key: u64) -> std::io::Result<()> {
    out.write_all(MAGIC)?;
    out.write_all(&VERSION.to_le_bytes())?;
    out.write_all(&key.to_le_bytes())?;
    for d in decoded.shape {
        out.write_all(&(d as u32).to_le_bytes())?;
    }
    out.write_all(&(decoded.classes.len() as u32).to_le_bytes())?;
    for c in &decoded.classes {
        out.write_all(&(c.len() as u32).to_le_bytes())?;
        out.write_all(c.as_bytes())?;
    }
    for split in [&decoded.train, &decoded.test] {
        out.write_all(&(split.len() as u64).to_le_bytes())?;
        for l in &split.labels {
            out.write_all(&l.to_le_bytes())?;
        }
        out.write_all(&split.images)?;
    }
    Ok(())
}

/// Writes the cache file atomically (a temporary file renamed into place).
pub fn store(path: &Path, decoded: &Decoded, key: u64) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map_or("cache".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let written = std::fs::File::create(&tmp).and_then(|f| {
        let mut w = std::io::BufWriter::new(f);
        write(&mut w, decoded, key)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Reads a cache file, counting what is left so a short or long file is refused.
struct Reader<R> {
    inner: R,
    left: u64,
}

impl<R: std::io::Read> Reader<R> {
    fn fill(&mut self, buf: &mut [u8]) -> Option<()> {
        let n = buf.len() as u64;
        if n > self.left {
            return None;
        }
        self.inner.read_exact(buf).ok()?;
        self.left -= n;
        Some(())
    }

    fn bytes(&mut self, n: usize) -> Option<Vec<u8>> {
        if n as u64 > self.left {
            return None;
        }
        let mut v = vec![0u8; n];
        self.fill(&mut v)?;
        Some(v)
    }

    fn u32(&mut self) -> Option<u32> {
        let mut b = [0u8; 4];
        self.fill(&mut b)?;
        Some(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Option<u64> {
        let mut b = [0u8; 8];
        self.fill(&mut b)?;
        Some(u64::from_le_bytes(b))
    }

    fn split(&mut self, size: usize) -> Option<Split> {
        let n = usize::try_from(self.u64()?).ok()?;
        let labels = self
            .bytes(n.checked_mul(4)?)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let images = self.bytes(n.checked_mul(size)?)?;
        Some(Split {
            images,
            labels,
            files: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Decoded {
        Decoded {
            shape: [1, 2, 2],
            classes: vec!["a".into(), "bé".into()],
            train: Split {
                images: (0..12).collect(),
                labels: vec![0, 1, 1],
                files: Vec::new(),
            },
            test: Split {
                images: vec![7; 4],
                labels: vec![1],
                files: Vec::new(),
            },
        }
    }

    fn encode(d: &Decoded, key: u64) -> Vec<u8> {
        let mut v = Vec::new();
        write(&mut v, d, key).unwrap();
        v
    }

    #[test]
    fn a_cache_file_reads_back_under_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.bin");
        store(&p, &sample(), 42).unwrap();
        assert_eq!(read(&p, 42), Some(sample()));
        assert_eq!(read(&p, 43), None);
    }

    #[test]
    fn a_truncated_or_foreign_cache_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.bin");
        let bytes = encode(&sample(), 1);
        for cut in [0, 7, 20, bytes.len() - 1] {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            assert_eq!(read(&p, 1), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        std::fs::write(&p, &longer).unwrap();
        assert_eq!(read(&p, 1), None);
        assert_eq!(read(&dir.path().join("missing.bin"), 1), None);
    }
}
