//! Segments on object storage (`[storage] object_store = "s3://bucket/prefix"`).
//!
//! The WAL stays on local disk; segments live in the bucket. A flush (or a
//! compaction) writes its segment locally as before, uploads it, and only then
//! commits it: the WAL checkpoint never passes a segment that is not in the
//! bucket. A segment's object key mirrors its local path under the data
//! directory (`<prefix>/segments/<tenant>/<hour>/<name>.parquet`), so the names
//! keep carrying the flush ranges that recovery reads.
//!
//! The rollups (`metrics/`) and the sessions (`sessions/`, finalized files and
//! the open sessions' snapshots) are small, and detection reads them every
//! pass: they stay whole on local disk and are mirrored in the bucket under the
//! same keys, each uploaded before the checkpoint that commits it and deleted
//! with its local file. A store started on an empty data directory (a new
//! machine, a lost disk) downloads them, takes its checkpoint from the newest
//! flush in the bucket, and serves what the bucket holds.
//!
//! The local copies form a cache of whole segments, at most `cache_bytes` in all,
//! least recently used first out. Fresh segments enter it as they are written, so
//! detection, which reads the last hours, seldom goes to the bucket. A query reads
//! a cached segment from disk and any other through the object store, fetching
//! only the footer (kept by DataFusion's metadata cache) and the pages it needs.
//! A copy is deleted only after two minutes unused, the grace a query that
//! planned against it has to finish reading it.

use std::collections::HashMap;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use parking_lot::Mutex;

use crate::error::StoreError;

/// Directories of small files kept whole on local disk and mirrored in the
/// bucket.
pub(crate) const MIRRORED: [&str; 2] = ["metrics", "sessions"];

/// Files larger than this are uploaded in parts.
const SINGLE_PUT_BYTES: u64 = 16 << 20;
/// How long a cached copy stays after its last use, at least.
const CACHE_GRACE: Duration = Duration::from_secs(120);

/// An object in the bucket, under its local path.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub path: PathBuf,
    pub bytes: u64,
    pub modified: SystemTime,
}

#[derive(Debug, Default)]
struct Cache {
    /// Local copy → (bytes, last use).
    files: HashMap<PathBuf, (u64, Instant)>,
    total: u64,
}

pub(crate) struct Remote {
    store: Arc<dyn ObjectStore>,
    url: ObjectStoreUrl,
    prefix: Key,
    /// What the configuration said, for messages.
    shown: String,
    data_dir: PathBuf,
    cache_bytes: u64,
    cache: Mutex<Cache>,
    /// Runs the object store's requests for callers that block (flushes,
    /// compaction, opening the store), inside or outside another runtime.
    /// (An `Option` only so that dropping it never blocks.)
    runtime: Option<tokio::runtime::Runtime>,
    /// Objects a failed flush or compaction uploaded and could not delete
    /// yet. No checkpoint may pass them: a restart would serve their spans
    /// next to the same spans flushed again.
    orphans: Mutex<Vec<PathBuf>>,
}

impl Drop for Remote {
    fn drop(&mut self) {
        // The last handle to the store may go inside an async task.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.shown).field("cache_bytes", &self.cache_bytes).finish()
    }
}

fn remote_err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Remote(format!("{what}: {e}"))
}

/// `(bucket, prefix)` of an `s3://bucket/prefix` URL.
pub fn parse_s3_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| format!("{url:?} is not an s3:// URL (s3://bucket or s3://bucket/prefix)"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    if bucket.len() < 3 || bucket.len() > 63 || !bucket.chars().all(valid) {
        return Err(format!("{bucket:?} is not an S3 bucket name (3 to 63 of a-z, 0-9, '-' and '.')"));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|p| p.is_empty() && !prefix.is_empty() || p == "." || p == "..") {
        return Err(format!("{prefix:?} is not a usable key prefix"));
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

impl Remote {
    /// The bucket of `url`, with credentials, region and endpoint from the usual
    /// `AWS_*` environment variables.
    pub fn open(url: &str, data_dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let (bucket, prefix) = parse_s3_url(url).map_err(StoreError::Refused)?;
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .build()
            .map_err(|e| remote_err(&format!("object store {url}"), e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("andon-object-store")
            .enable_all()
            .build()?;
        let url_of_bucket =
            ObjectStoreUrl::parse(format!("s3://{bucket}")).map_err(|e| remote_err("object store url", e))?;
        Ok(Self {
            store: Arc::new(store),
            url: url_of_bucket,
            prefix: Key::from(prefix),
            shown: url.to_owned(),
            data_dir: data_dir.to_path_buf(),
            cache_bytes,
            cache: Mutex::default(),
            runtime: Some(runtime),
            orphans: Mutex::default(),
        })
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Runs `fut` on the store's own runtime and waits for it.
    fn block<F, T>(&self, fut: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let Some(rt) = &self.runtime else { unreachable!("the runtime goes only with the store") };
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| StoreError::Remote("the object store's runtime stopped".into()))?
    }

    /// The object key of a local path under the data directory.
    pub fn key(&self, local: &Path) -> Result<Key, StoreError> {
        let rel = local
            .strip_prefix(&self.data_dir)
            .map_err(|_| StoreError::Corrupt(format!("{} is outside the store", local.display())))?;
        let mut parts: Vec<String> = self.prefix.parts().map(|p| p.as_ref().to_owned()).collect();
        for c in rel.components() {
            let c = c.as_os_str().to_str().ok_or_else(|| StoreError::Corrupt(format!("{}", local.display())))?;
            parts.push(c.to_owned());
        }
        Ok(Key::from_iter(parts))
    }

    /// The local path a key mirrors, if it lies under the prefix.
    fn local(&self, key: &Key) -> Option<PathBuf> {
        let mut path = self.data_dir.clone();
        for p in key.prefix_match(&self.prefix)? {
            path.push(p.as_ref());
        }
        Some(path)
    }

    /// Uploads the local file `path` to its key.
    pub fn upload(&self, path: &Path) -> Result<(), StoreError> {
        let key = self.key(path)?;
        let store = Arc::clone(&self.store);
        let len = fs::metadata(path)?.len();
        let file = path.to_path_buf();
        let what = format!("uploading {}", key);
        self.block(async move {
            if len <= SINGLE_PUT_BYTES {
                let data = Bytes::from(tokio::fs::read(&file).await?);
                store.put(&key, PutPayload::from(data)).await.map_err(|e| remote_err(&what, e))?;
                return Ok(());
            }
            let upload = store.put_multipart(&key).await.map_err(|e| remote_err(&what, e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
            let mut f = tokio::fs::File::open(&file).await?;
            let mut buf = vec![0u8; 8 << 20];
            loop {
                let n = tokio::io::AsyncReadExt::read(&mut f, &mut buf).await?;
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(4).await.map_err(|e| remote_err(&what, e))?;
                writer.write(&buf[..n]);
            }
            writer.finish().await.map_err(|e| remote_err(&what, e))?;
            Ok(())
        })
    }

    /// Every byte of the object mirrored by `path`.
    pub fn get(&self, path: &Path) -> Result<Bytes, StoreError> {
        let key = self.key(path)?;
        let store = Arc::clone(&self.store);
        self.block(async move {
            let what = format!("reading {key}");
            store.get(&key).await.map_err(|e| remote_err(&what, e))?.bytes().await.map_err(|e| remote_err(&what, e))
        })
    }

    /// The rows in the Parquet object mirrored by `path` (`bytes` long), from
    /// its footer alone.
    pub fn rows(&self, path: &Path, bytes: u64) -> Result<u64, StoreError> {
        let key = self.key(path)?;
        let store = Arc::clone(&self.store);
        let shown = key.to_string();
        let footer = self.block(async move {
            let what = format!("reading the footer of {key}");
            let tail = store.get_range(&key, bytes.saturating_sub(8)..bytes).await.map_err(|e| remote_err(&what, e))?;
            if tail.len() != 8 || &tail[4..] != b"PAR1" {
                return Err(StoreError::Corrupt(format!("{key} is not a Parquet file")));
            }
            let len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
            let start = bytes.checked_sub(8 + len).ok_or_else(|| StoreError::Corrupt(format!("{key}: footer")))?;
            store.get_range(&key, start..bytes - 8).await.map_err(|e| remote_err(&what, e))
        })?;
        let meta = parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&footer)
            .map_err(|e| StoreError::Corrupt(format!("{shown}: {e}")))?;
        Ok(meta.file_metadata().num_rows().max(0) as u64)
    }

    /// Deletes the object mirrored by `path`; one already gone is not an error.
    pub fn delete(&self, path: &Path) -> Result<(), StoreError> {
        let key = self.key(path)?;
        let store = Arc::clone(&self.store);
        self.block(async move {
            match store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(remote_err(&format!("deleting {key}"), e)),
            }
        })
    }

    /// Deletes the object mirrored by `path`, which no flush or compaction
    /// commits; if that fails, it is tried again by [`Self::delete_orphans`].
    pub fn abandon(&self, path: &Path) {
        self.forget(path);
        if let Err(e) = self.delete(path) {
            tracing::warn!(path = %path.display(), error = %e, "could not delete an uncommitted upload; will retry");
            self.orphans.lock().push(path.to_path_buf());
        }
    }

    /// Deletes the uploads [`Self::abandon`] could not; an error while any
    /// is left.
    pub fn delete_orphans(&self) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut *self.orphans.lock());
        let mut left = Vec::new();
        let mut first_err = None;
        for p in pending {
            if let Err(e) = self.delete(&p) {
                first_err.get_or_insert(e);
                left.push(p);
            }
        }
        self.orphans.lock().extend(left);
        first_err.map_or(Ok(()), Err)
    }

    /// Every object under `<prefix>/<dir>`, by the local path it mirrors.
    pub fn list(&self, dir: &str) -> Result<Vec<Listed>, StoreError> {
        let under = Key::from_iter(self.prefix.parts().map(|p| p.as_ref().to_owned()).chain([dir.to_owned()]));
        let store = Arc::clone(&self.store);
        let metas: Vec<object_store::ObjectMeta> = self.block(async move {
            store.list(Some(&under)).try_collect().await.map_err(|e| remote_err(&format!("listing {under}"), e))
        })?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                Some(Listed { path: self.local(&m.location)?, bytes: m.size, modified: m.last_modified.into() })
            })
            .collect())
    }

    /// Downloads every object under `<prefix>/<dir>` that has no local file
    /// (a start on an empty data directory). Returns how many, and the
    /// listing, for [`Self::reconcile_listed`] once the local files are settled.
    pub fn restore(&self, dir: &str) -> Result<(usize, Vec<Listed>), StoreError> {
        let mut restored = 0;
        let listed = self.list(dir)?;
        for o in &listed {
            if o.path.exists() {
                continue;
            }
            let data = self.get(&o.path)?;
            let parent =
                o.path.parent().ok_or_else(|| StoreError::Corrupt(format!("{} has no directory", o.path.display())))?;
            fs::create_dir_all(parent)?;
            let mut tmp = o.path.clone().into_os_string();
            tmp.push(".restoring");
            let tmp = PathBuf::from(tmp);
            fs::write(&tmp, &data)?;
            fs::rename(&tmp, &o.path)?;
            restored += 1;
        }
        Ok((restored, listed))
    }

    /// Makes the objects under `<prefix>/<dir>` mirror the local files under
    /// `dir`: uploads the files the bucket lacks (or holds at another size)
    /// and deletes the objects whose file is gone. Returns (uploaded, deleted).
    pub fn reconcile(&self, dir: &str) -> Result<(usize, usize), StoreError> {
        self.reconcile_listed(dir, self.list(dir)?)
    }

    /// [`Self::reconcile`] against a listing of `<prefix>/<dir>` already made
    /// (by [`Self::restore`]; nothing has written to the bucket since).
    pub fn reconcile_listed(&self, dir: &str, listed: Vec<Listed>) -> Result<(usize, usize), StoreError> {
        let mut listed: HashMap<PathBuf, u64> = listed.into_iter().map(|o| (o.path, o.bytes)).collect();
        let (mut uploaded, mut deleted) = (0, 0);
        for (path, bytes) in local_files(&self.data_dir.join(dir))? {
            if listed.remove(&path) != Some(bytes) {
                self.upload(&path)?;
                uploaded += 1;
            }
        }
        for path in listed.into_keys() {
            self.delete(&path)?;
            deleted += 1;
        }
        Ok((uploaded, deleted))
    }

    /// Deletes the object mirroring `path`, whose local file went. A failure
    /// is logged: the next start's [`Self::reconcile`] deletes it.
    pub fn unmirror(&self, path: &Path) {
        if let Err(e) = self.delete(path) {
            tracing::warn!(path = %path.display(), error = %e, "could not delete a mirrored object; the next start will");
        }
    }

    /// Makes the bucket readable by queries planned in `env`.
    pub fn register(&self, env: &RuntimeEnv) {
        env.register_object_store(self.url.as_ref(), Arc::clone(&self.store));
    }

    pub fn url(&self) -> &ObjectStoreUrl {
        &self.url
    }

    /// Whether a local copy of the segment at `path` is at hand; marks it used.
    pub fn cached(&self, path: &Path) -> bool {
        let mut c = self.cache.lock();
        match c.files.get_mut(path) {
            Some(entry) => {
                entry.1 = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Takes the local copy at `path` into the cache, and deletes the least
    /// recently used copies past the budget (never one used within the grace).
    pub fn admit(&self, path: &Path, bytes: u64) {
        let evict: Vec<PathBuf> = {
            let mut c = self.cache.lock();
            if let Some((old, _)) = c.files.insert(path.to_path_buf(), (bytes, Instant::now())) {
                c.total -= old;
            }
            c.total += bytes;
            let mut by_use: Vec<(Instant, PathBuf, u64)> =
                c.files.iter().map(|(p, (b, t))| (*t, p.clone(), *b)).collect();
            by_use.sort();
            let mut out = Vec::new();
            for (used, p, b) in by_use {
                if c.total <= self.cache_bytes {
                    break;
                }
                if used.elapsed() < CACHE_GRACE {
                    continue;
                }
                c.files.remove(&p);
                c.total -= b;
                out.push(p);
            }
            out
        };
        for p in evict {
            if let Err(e) = fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %p.display(), error = %e, "could not drop a cached segment");
            }
        }
    }

    /// Drops the local copy of `path`, if any.
    pub fn forget(&self, path: &Path) {
        let mut c = self.cache.lock();
        if let Some((b, _)) = c.files.remove(path) {
            c.total -= b;
        }
        drop(c);
        let _ = fs::remove_file(path);
    }

    /// Bytes of segments cached locally.
    pub fn cached_bytes(&self) -> u64 {
        self.cache.lock().total
    }
}

/// Every finished file under `dir` (not the temporary ones a write or a
/// restore leaves behind), with its size.
fn local_files(dir: &Path) -> Result<Vec<(PathBuf, u64)>, StoreError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        for e in entries {
            let e = e?;
            let path = e.path();
            let meta = e.metadata()?;
            if meta.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "parquet" || x == "json") {
                out.push((path, meta.len()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_give_bucket_and_prefix() {
        assert_eq!(parse_s3_url("s3://spans").unwrap(), ("spans".into(), String::new()));
        assert_eq!(parse_s3_url("s3://spans/prod/eu/").unwrap(), ("spans".into(), "prod/eu".into()));
        assert!(parse_s3_url("gs://spans").is_err());
        assert!(parse_s3_url("s3://Spans").is_err());
        assert!(parse_s3_url("s3://ab").is_err());
        assert!(parse_s3_url("s3://spans/a//b").is_err());
        assert!(parse_s3_url("s3://spans/a/../b").is_err());
    }

    #[test]
    fn keys_mirror_local_paths_under_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let r = Remote::open("s3://spans/prod", dir.path(), 0).unwrap();
        let local = dir.path().join("segments/acme/2026-12-03T09/00000000000000000042-0000.parquet");
        let key = r.key(&local).unwrap();
        assert_eq!(key.as_ref(), "prod/segments/acme/2026-12-03T09/00000000000000000042-0000.parquet");
        assert_eq!(r.local(&key).unwrap(), local);
        assert!(r.key(Path::new("/elsewhere/x.parquet")).is_err());
        assert!(r.local(&Key::from("other/segments/x.parquet")).is_none());
    }
}
