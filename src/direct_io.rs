//! Writing whole new files with `O_DIRECT`: straight from our buffer to the disk, without
//! filling the page cache. Buffered, every byte is copied into a newly allocated page-cache
//! page (and kept there, next to wherever else the bytes live). On the 2-core VM this project
//! is measured on, a fresh page is expensive: that copy was the largest cost of a store on the
//! nodes (~1 CPU-s per 300 MB) and a third of the mount's CPU in a cold read (the extent
//! cache). Used for data that is rarely read back soon: slivers reads never fetch, and the
//! drive's extent cache (whose bytes are also in the kernel's page cache of the FUSE file).

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use aligned_vec::{AVec, ConstAlign};

/// Files at least this large are written with `O_DIRECT` (smaller ones: one page or a few,
/// not worth a second open on file systems that refuse it).
pub const DIRECT_MIN: usize = 64 << 10;
/// Alignment of `O_DIRECT` buffers, offsets and lengths (a page: enough for any block size).
pub const DIRECT_ALIGN: usize = 4096;
/// Size of the aligned staging buffer that `O_DIRECT` writes go through.
const DIRECT_CHUNK: usize = 256 << 10;

#[repr(C, align(4096))]
struct AlignedChunk([u8; DIRECT_CHUNK]);

thread_local! {
    /// One staging buffer per (blocking) thread, reused: a fresh one would cost page faults.
    static DIRECT_BUF: std::cell::RefCell<Option<Box<AlignedChunk>>> =
        const { std::cell::RefCell::new(None) };
}

fn is_einval(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// Creates `path` (which must not exist) with the concatenation of `parts`, not synced.
/// Files of at least [`DIRECT_MIN`] bytes go through `O_DIRECT` if `direct` and the file
/// system supports it (tmpfs does not, nor some FUSE file systems), else the page cache.
pub fn write_new(path: &Path, parts: &[&[u8]], direct: bool) -> io::Result<File> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if direct && len >= DIRECT_MIN {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(mut f) => match write_direct(&mut f, parts, len) {
                Ok(()) => return Ok(f),
                // Not supported after all: start over through the page cache.
                Err(e) if is_einval(&e) => {
                    drop(f);
                    let mut f = OpenOptions::new().write(true).truncate(true).open(path)?;
                    for p in parts {
                        f.write_all(p)?;
                    }
                    return Ok(f);
                }
                Err(e) => return Err(e),
            },
            Err(e) if is_einval(&e) => {}
            Err(e) => return Err(e),
        }
    }
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    for p in parts {
        f.write_all(p)?;
    }
    Ok(f)
}

/// Bytes in a page-aligned buffer: a whole file image that [`write_new_aligned`] hands to the
/// disk as it is, without the copy into a staging buffer that [`write_new`] makes.
pub type AlignedBytes = AVec<u8, ConstAlign<DIRECT_ALIGN>>;

/// An empty [`AlignedBytes`] that holds `len` bytes, and the zeros that pad them to a whole
/// number of pages, without growing.
pub fn aligned_with_capacity(len: usize) -> AlignedBytes {
    AlignedBytes::with_capacity(DIRECT_ALIGN, len.next_multiple_of(DIRECT_ALIGN))
}

/// Creates `path` (which must not exist) with the bytes of `buf`, not synced. Like
/// [`write_new`], but a file of at least [`DIRECT_MIN`] bytes goes to the disk in one
/// `O_DIRECT` write straight from `buf` (padded with zeros to a whole page for the write,
/// then the file is cut to its length; `buf` is left as it was).
pub fn write_new_aligned(path: &Path, buf: &mut AlignedBytes, direct: bool) -> io::Result<File> {
    let len = buf.len();
    if !(direct && len >= DIRECT_MIN) {
        return write_new(path, &[&buf[..]], false);
    }
    let mut f = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if is_einval(&e) => return write_new(path, &[&buf[..]], false),
        Err(e) => return Err(e),
    };
    // Within the capacity of a buffer from `aligned_with_capacity`: no reallocation.
    buf.resize(len.next_multiple_of(DIRECT_ALIGN), 0);
    let written = f.write_all(buf);
    buf.truncate(len);
    match written {
        Ok(()) => {
            f.set_len(len as u64)?;
            Ok(f)
        }
        // Not supported after all: start over through the page cache.
        Err(e) if is_einval(&e) => {
            drop(f);
            let mut f = OpenOptions::new().write(true).truncate(true).open(path)?;
            f.write_all(buf)?;
            Ok(f)
        }
        Err(e) => Err(e),
    }
}

/// Writes `parts` (`len` bytes in all) to an `O_DIRECT` file through an aligned buffer: whole
/// aligned blocks, the last one padded with zeros, then the file is cut to `len`.
fn write_direct(f: &mut File, parts: &[&[u8]], len: usize) -> io::Result<()> {
    DIRECT_BUF.with(|cell| {
        let mut slot = cell.borrow_mut();
        let buf = &mut slot
            .get_or_insert_with(|| Box::new(AlignedChunk([0; DIRECT_CHUNK])))
            .0;
        let mut filled = 0;
        for part in parts {
            let mut part: &[u8] = part;
            while !part.is_empty() {
                let take = (DIRECT_CHUNK - filled).min(part.len());
                buf[filled..filled + take].copy_from_slice(&part[..take]);
                filled += take;
                part = &part[take..];
                if filled == DIRECT_CHUNK {
                    f.write_all(&buf[..])?;
                    filled = 0;
                }
            }
        }
        if filled > 0 {
            let padded = filled.next_multiple_of(DIRECT_ALIGN);
            buf[filled..padded].fill(0);
            f.write_all(&buf[..padded])?;
        }
        Ok::<(), io::Error>(())
    })?;
    f.set_len(len as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_exactly_the_parts_direct_or_not() {
        let dir = tempfile::tempdir().unwrap();
        for (i, len) in [
            0usize,
            1,
            4095,
            4096,
            DIRECT_MIN,
            DIRECT_MIN + 1,
            3 * DIRECT_CHUNK + 7,
        ]
        .into_iter()
        .enumerate()
        {
            let data: Vec<u8> = (0..len).map(|k| (k * 31 + i) as u8).collect();
            let (a, b) = data.split_at(len / 3);
            for direct in [true, false] {
                let path = dir.path().join(format!("{i}-{direct}"));
                write_new(&path, &[a, b], direct)
                    .unwrap()
                    .sync_all()
                    .unwrap();
                assert_eq!(
                    std::fs::read(&path).unwrap(),
                    data,
                    "len {len}, direct {direct}"
                );
                // It must not exist yet.
                assert!(write_new(&path, &[a], direct).is_err());

                let path = dir.path().join(format!("{i}-{direct}-aligned"));
                let mut buf = aligned_with_capacity(len);
                buf.extend_from_slice(&data);
                let capacity = buf.capacity();
                write_new_aligned(&path, &mut buf, direct)
                    .unwrap()
                    .sync_all()
                    .unwrap();
                assert_eq!(std::fs::read(&path).unwrap(), data, "aligned, len {len}");
                assert_eq!(&buf[..], &data[..], "the buffer is left as it was");
                assert_eq!(buf.capacity(), capacity, "padding never reallocates");
                assert!(write_new_aligned(&path, &mut buf, direct).is_err());
            }
        }
    }
}
