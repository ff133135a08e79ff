//! Images uploaded through this store handle and not claimed yet, kept in memory so that a
//! worker of the same process classifies them without reading them back from their object
//! store (a file open and read, two hand-offs to the blocking pool and a copy per image).
//!
//! Only an optimisation: an image that is not here is read from its store as before, so what
//! is kept can be bounded freely. Images are kept only once this process has claimed jobs
//! (a node without workers keeps none), at most [`MAX_BYTES`] in all (an image that does not
//! fit is not kept: the oldest, claimed first, stay), and each at most [`MAX_AGE`] after its
//! last upload (a job claimed by another node, canceled or deleted leaves its image here until
//! then). An image is keyed by its SHA-256, which the upload computed from these very bytes,
//! and counted once per queued job that uses it; each claim of one of those jobs takes it
//! once, and the last claim (or a failed upload's release) removes it.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The image bytes kept at most.
pub(crate) const MAX_BYTES: usize = 64 << 20;
/// How long an image is kept after its last upload at most.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(crate) struct RecentImages {
    /// Set at this process's first claim: until then nothing is kept.
    claiming: AtomicBool,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    images: HashMap<String, Kept>,
    bytes: usize,
    swept: Option<Instant>,
}

struct Kept {
    bytes: Bytes,
    /// The queued jobs that use it and have not been claimed here.
    jobs: usize,
    since: Instant,
}

impl RecentImages {
    /// This process claims jobs: uploads from now on are kept for its workers.
    pub(crate) fn claiming(&self) {
        if !self.claiming.load(Ordering::Relaxed) {
            self.claiming.store(true, Ordering::Relaxed);
        }
    }

    /// Keeps `bytes`, the image `sha256`, for one more queued job (when this process claims
    /// jobs and there is room); whether it did.
    pub(crate) fn hold(&self, sha256: &str, bytes: &Bytes) -> bool {
        if !self.claiming.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.sweep(now);
        if let Some(kept) = inner.images.get_mut(sha256) {
            kept.jobs += 1;
            kept.since = now;
            return true;
        }
        if inner.bytes + bytes.len() > MAX_BYTES {
            return false;
        }
        inner.bytes += bytes.len();
        let kept = Kept {
            bytes: bytes.clone(),
            jobs: 1,
            since: now,
        };
        inner.images.insert(sha256.to_string(), kept);
        true
    }

    /// A job that used the image will not be claimed (its upload failed).
    pub(crate) fn release(&self, sha256: &str) {
        self.take(sha256);
    }

    /// The image for a claimed job that uses it, if it is kept.
    pub(crate) fn take(&self, sha256: &str) -> Option<Bytes> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.sweep(Instant::now());
        let kept = inner.images.get_mut(sha256)?;
        kept.jobs -= 1;
        let bytes = kept.bytes.clone();
        if kept.jobs == 0 {
            inner.remove(sha256);
        }
        Some(bytes)
    }

    #[cfg(test)]
    fn kept_bytes(&self) -> usize {
        self.inner.lock().unwrap().bytes
    }
}

impl Inner {
    fn remove(&mut self, sha256: &str) {
        if let Some(kept) = self.images.remove(sha256) {
            self.bytes -= kept.bytes.len();
        }
    }

    /// Drops the images kept longer than `MAX_AGE` (looking at most once a second).
    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            return;
        }
        self.swept = Some(now);
        let old: Vec<String> = self
            .images
            .iter()
            .filter(|(_, k)| now.duration_since(k.since) > MAX_AGE)
            .map(|(sha, _)| sha.clone())
            .collect();
        for sha in old {
            self.remove(&sha);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_kept_before_the_process_claims() {
        let recent = RecentImages::default();
        assert!(!recent.hold("a", &Bytes::from_static(b"image")));
        assert_eq!(recent.take("a"), None);
        assert_eq!(recent.kept_bytes(), 0);
    }

    #[test]
    fn an_image_is_kept_once_for_each_job_that_uses_it() {
        let recent = RecentImages::default();
        recent.claiming();
        let image = Bytes::from_static(b"image");
        recent.hold("a", &image);
        recent.hold("a", &image);
        assert_eq!(recent.kept_bytes(), 5, "one copy for both jobs");
        assert_eq!(recent.take("a").as_deref(), Some(&b"image"[..]));
        assert_eq!(recent.take("a").as_deref(), Some(&b"image"[..]));
        assert_eq!(recent.take("a"), None, "the last claim removed it");
        assert_eq!(recent.kept_bytes(), 0);
        recent.hold("b", &image);
        recent.release("b");
        assert_eq!(recent.take("b"), None, "a failed upload's hold is released");
    }

    #[test]
    fn images_beyond_the_bound_are_not_kept_and_the_first_ones_stay() {
        let recent = RecentImages::default();
        recent.claiming();
        let half = Bytes::from(vec![0u8; MAX_BYTES / 2]);
        recent.hold("a", &half);
        recent.hold("b", &half);
        assert!(!recent.hold("c", &Bytes::from_static(b"x")));
        assert_eq!(recent.kept_bytes(), MAX_BYTES);
        assert!(recent.take("c").is_none());
        assert!(recent.take("a").is_some());
        recent.hold("c", &Bytes::from_static(b"x"));
        assert!(
            recent.take("c").is_some(),
            "room again once one was claimed"
        );
    }

    #[test]
    fn images_older_than_the_limit_are_dropped() {
        let recent = RecentImages::default();
        recent.claiming();
        recent.hold("old", &Bytes::from_static(b"old"));
        {
            let mut inner = recent.inner.lock().unwrap();
            inner.images.get_mut("old").unwrap().since -= MAX_AGE + Duration::from_secs(1);
            inner.swept = None;
        }
        recent.hold("new", &Bytes::from_static(b"new"));
        assert!(recent.take("old").is_none());
        assert!(recent.take("new").is_some());
        assert_eq!(recent.kept_bytes(), 0);
    }
}
