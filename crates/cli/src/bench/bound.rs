//! The disk's bound, measured in the same run as the workload: how long `fdatasync` of a
//! 4 KiB write takes in the store's directory, and so how many steps a second sequential
//! commits allow.

use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Samples of each kind of write.
const SAMPLES: usize = 200;

/// p50 of `fdatasync` after a 4 KiB write, in µs: over the same block (a write-ahead log
/// reused after a checkpoint) and at the end of a growing file (one that is not).
pub struct Fsync {
    pub overwrite_p50_us: u64,
    pub append_p50_us: u64,
}

/// Times `fdatasync` in `dir` (a scratch file, removed after).
pub fn measure(dir: &Path) -> std::io::Result<Fsync> {
    let path = dir.join(".fsync-probe");
    let block = [0x5au8; 4096];
    let overwrite_p50_us = p50(&path, |f| f.write_all_at(&block, 0))?;
    let append_p50_us = p50(&path, |mut f| f.write_all(&block))?;
    let _ = std::fs::remove_file(&path);
    Ok(Fsync {
        overwrite_p50_us,
        append_p50_us,
    })
}

/// The p50 of `write` then `fdatasync` on a fresh file at `path`, in µs.
fn p50(
    path: &Path,
    mut write: impl FnMut(&std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let file = std::fs::File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let mut hist = Histogram::<u64>::new(3).map_err(std::io::Error::other)?;
    for _ in 0..SAMPLES {
        let started = Instant::now();
        write(&file)?;
        file.sync_data()?;
        hist.record(started.elapsed().as_micros() as u64)
            .map_err(std::io::Error::other)?;
    }
    Ok(hist.value_at_quantile(0.5))
}

/// Sequential commits per workflow of each workload: a chain's submission and each of its
/// ten steps; a fan-out's submission, first step, the twenty parallel ones (one group
/// commit at best) and the join.
const CHAIN: (f64, f64) = (10.0, 11.0);
const FANOUT: (f64, f64) = (22.0, 4.0);

/// Steps per second the disk allows each workload, from the overwrite p50 (the
/// write-ahead log's usual case): `steps / (commits × fsync)`.
pub fn bound(f: &Fsync) -> Value {
    let per = |(steps, commits): (f64, f64)| {
        (steps / (commits * f.overwrite_p50_us.max(1) as f64 / 1e6)).round()
    };
    json!({"chain": per(CHAIN), "fanout": per(FANOUT)})
}
