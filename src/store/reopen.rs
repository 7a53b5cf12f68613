//! A store that can be closed and opened again while the broker runs (issue 14.8). fjall
//! refuses every write once a persist failed (a full disk), until the database is opened
//! again; the shard's shell then re-applies the writes that were not durable yet.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use super::StoreError;

type Opener<T> = Box<dyn Fn() -> Result<T, StoreError> + Send + Sync>;

/// A database handle that [`Reopenable::reopen`] replaces; every use goes through
/// [`Reopenable::with`].
pub struct Reopenable<T> {
    inner: RwLock<Option<T>>,
    generation: AtomicU64,
    open: Opener<T>,
}

impl<T> std::fmt::Debug for Reopenable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reopenable").field("generation", &self.generation()).finish_non_exhaustive()
    }
}

impl<T> Reopenable<T> {
    /// Wraps an open store; `open` opens it again.
    pub fn new(store: T, open: impl Fn() -> Result<T, StoreError> + Send + Sync + 'static) -> Self {
        Reopenable { inner: RwLock::new(Some(store)), generation: AtomicU64::new(0), open: Box::new(open) }
    }

    /// How many times it was opened again.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Runs `f` on the open store (an error while it is closed: a reopen failed).
    pub fn with<R>(&self, f: impl FnOnce(&T) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        f(g.as_ref().ok_or_else(|| StoreError("store closed after a failure; reopening".into()))?)
    }

    /// [`Reopenable::with`], refused when the store was opened again since `generation`
    /// (writes made before may be missing from it).
    pub fn with_at<R>(
        &self,
        generation: u64,
        f: impl FnOnce(&T) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if self.generation() != generation {
            return Err(StoreError("store was reopened; writes are applied again".into()));
        }
        f(g.as_ref().ok_or_else(|| StoreError("store closed after a failure; reopening".into()))?)
    }

    /// Closes the store (every handle: fjall holds a lock file) and opens it again.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        drop(g.take());
        self.generation.fetch_add(1, Ordering::AcqRel);
        *g = Some((self.open)()?);
        Ok(())
    }
}
