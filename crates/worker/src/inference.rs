//! The inference threads: dedicated OS threads, each owning one classifier (one ONNX Runtime
//! session), that classify the images the workers send them, so that decoding and inference
//! never run on the async runtime.
//!
//! The threads form one pool per process, fed by one queue. A process may run more workers
//! than threads (`serve`'s default with the built-in model runs two workers per core): then a
//! worker whose job has finished stores the outcome, is handed its next job and reads its image
//! while the threads classify the other workers' images, and each thread has an image waiting
//! in the queue by the time it is free, even when all of them finish at once. The cores never
//! idle between two images for the queue's part of the work, and there are no more sessions
//! than cores.

use crate::ClassifierFactory;
use bytes::Bytes;
use imgclass_classifier::{Cancel, Classification, ClassifyError};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<Classification, ClassifyError>>;

/// Where a task is: waiting in the queue, on a thread, done, or given up by its worker.
const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
const ABANDONED: u8 = 3;

struct Task {
    bytes: Bytes,
    cancel: Cancel,
    reply: Reply,
    state: Arc<AtomicU8>,
}

/// Why a classification gave no result.
pub(super) enum InferenceError {
    /// The classifier's own error.
    Classify(ClassifyError),
    /// The timeout passed first; the attempt was abandoned.
    TimedOut,
}

pub(super) struct InferencePool {
    tx: std_mpsc::Sender<Task>,
    rx: Arc<Mutex<std_mpsc::Receiver<Task>>>,
    factory: ClassifierFactory,
    /// The threads' name prefix and the number of threads started so far (for their names).
    name: String,
    started: AtomicUsize,
    /// The threads the pool keeps, and the classifications asked for and not answered yet
    /// (queued or on a thread).
    threads: usize,
    outstanding: Arc<AtomicUsize>,
    pub(super) info: imgclass_core::ModelInfo,
}

/// How busy a pool's threads are (`InferencePool::load`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    /// A thread is free.
    Idle,
    /// Every thread has an image, and none waits.
    Busy,
    /// Every thread has an image, and at least one more waits for a thread.
    Waiting,
}

/// Counts a classification as outstanding until it is dropped (answered, timed out or given up).
struct Outstanding(Arc<AtomicUsize>);

impl Outstanding {
    fn new(count: &Arc<AtomicUsize>) -> Outstanding {
        count.fetch_add(1, Ordering::AcqRel);
        Outstanding(count.clone())
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InferencePool {
    /// Starts `threads` threads named `{name}-{i}` and waits until every classifier is ready.
    pub(super) async fn start(
        name: String,
        threads: usize,
        factory: ClassifierFactory,
    ) -> anyhow::Result<Self> {
        let (tx, rx) = std_mpsc::channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        let mut info = None;
        for i in 0..threads.max(1) {
            let (ready_tx, ready_rx) = oneshot::channel();
            spawn(
                format!("{name}-{i}"),
                factory.clone(),
                rx.clone(),
                Some(ready_tx),
            )?;
            info =
                Some(ready_rx.await.map_err(|_| {
                    anyhow::anyhow!("an inference thread stopped while starting")
                })??);
        }
        Ok(InferencePool {
            tx,
            rx,
            factory,
            name,
            started: AtomicUsize::new(threads.max(1)),
            threads: threads.max(1),
            outstanding: Arc::default(),
            info: info.expect("at least one thread"),
        })
    }

    /// How busy the threads are now. A classification counts until its caller has its answer,
    /// so a worker that reports its job done has already left the count.
    pub(crate) fn load(&self) -> Load {
        let outstanding = self.outstanding.load(Ordering::Acquire);
        match outstanding.cmp(&self.threads) {
            std::cmp::Ordering::Less => Load::Idle,
            std::cmp::Ordering::Equal => Load::Busy,
            std::cmp::Ordering::Greater => Load::Waiting,
        }
    }

    /// Classifies on the first free thread. A classification that is not over after `timeout`
    /// (counted from now) is abandoned: the classifier gives up by itself at its next check,
    /// and if a thread was already running it, that thread ends once it is done and a fresh
    /// one takes its place, so a stuck classification never costs the pool a thread for good.
    pub(super) async fn classify(
        &self,
        bytes: Bytes,
        timeout: Duration,
    ) -> Result<Classification, InferenceError> {
        let gone = || {
            InferenceError::Classify(ClassifyError::Model(
                "the inference threads are gone".into(),
            ))
        };
        let (reply, rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let _outstanding = Outstanding::new(&self.outstanding);
        self.tx
            .send(Task {
                bytes,
                cancel: Cancel::after(timeout),
                reply,
                state: state.clone(),
            })
            .map_err(|_| gone())?;
        // A caller that stops waiting (its job given back at shutdown) takes its task out of
        // the queue, if no thread has started it yet.
        let _forget = Forget(state.clone());
        match tokio::time::timeout(timeout, rx).await {
            Ok(r) => r.map_err(|_| gone())?.map_err(InferenceError::Classify),
            Err(_) => {
                if state.swap(ABANDONED, Ordering::AcqRel) == RUNNING {
                    self.replace();
                }
                Err(InferenceError::TimedOut)
            }
        }
    }

    /// Starts a thread in place of one that will end after its abandoned task.
    fn replace(&self) {
        let i = self.started.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{i}", self.name);
        if let Err(e) = spawn(name, self.factory.clone(), self.rx.clone(), None) {
            tracing::error!(error = %e, "cannot start an inference thread in place of a stuck one");
        }
    }
}

/// Abandons a task that is still queued when its caller goes away.
struct Forget(Arc<AtomicU8>);

impl Drop for Forget {
    fn drop(&mut self) {
        let _ = self
            .0
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// One thread: builds its classifier, reports readiness to `ready` (a replacement thread has no
/// one waiting: it logs a failure itself), then takes tasks from the shared queue until the pool
/// is dropped or a task it ran was abandoned (a replacement was started).
fn spawn(
    name: String,
    factory: ClassifierFactory,
    rx: Arc<Mutex<std_mpsc::Receiver<Task>>>,
    ready: Option<oneshot::Sender<anyhow::Result<imgclass_core::ModelInfo>>>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name(name).spawn(move || {
        let mut classifier = match (factory(), ready) {
            (Ok(c), ready) => {
                if let Some(ready) = ready {
                    let _ = ready.send(Ok(c.info().clone()));
                }
                c
            }
            (Err(e), Some(ready)) => {
                let _ = ready.send(Err(e));
                return;
            }
            (Err(e), None) => {
                tracing::error!(error = %e, "cannot start an inference thread in place of a stuck one");
                return;
            }
        };
        loop {
            // The lock is held only while waiting for the next task, never while classifying.
            let task = match rx.lock() {
                Ok(rx) => rx.recv(),
                Err(_) => return,
            };
            let Ok(task) = task else { return };
            if task
                .state
                .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // Given up while it waited: not worth a classification.
                continue;
            }
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                classifier.classify_with(&task.bytes, &task.cancel)
            }))
            .unwrap_or_else(|_| Err(ClassifyError::Model("the classifier panicked".into())));
            let _ = task.reply.send(result);
            if task.state.swap(DONE, Ordering::AcqRel) == ABANDONED {
                // Its worker gave up on it and started a thread in this one's place.
                return;
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgclass_classifier::{Classifier, NoopClassifier};
    use std::sync::atomic::AtomicUsize;

    /// Sleeps `image[0]` × 10 ms, then answers like the no-op classifier; counts its calls.
    struct Sleepy {
        inner: NoopClassifier,
        calls: Arc<AtomicUsize>,
    }

    impl Classifier for Sleepy {
        fn classify(&mut self, image: &[u8]) -> Result<Classification, ClassifyError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(10 * u64::from(image[0])));
            self.inner.classify(image)
        }

        fn info(&self) -> &imgclass_core::ModelInfo {
            self.inner.info()
        }
    }

    fn sleepy() -> (ClassifierFactory, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let (calls, sessions) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c, s) = (calls.clone(), sessions.clone());
        let factory: ClassifierFactory = Arc::new(move || {
            s.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Sleepy {
                inner: NoopClassifier::default(),
                calls: c.clone(),
            }) as Box<dyn Classifier>)
        });
        (factory, calls, sessions)
    }

    /// `n` callers at once, each asking for a classification that sleeps `tens` × 10 ms.
    fn callers(
        pool: &Arc<InferencePool>,
        n: usize,
        tens: u8,
    ) -> Vec<tokio::task::JoinHandle<Result<Classification, InferenceError>>> {
        (0..n)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    pool.classify(Bytes::from(vec![tens]), Duration::from_secs(5))
                        .await
                })
            })
            .collect()
    }

    /// The live threads of this process whose name starts with `prefix`.
    fn threads_named(prefix: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with(prefix))
            .count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_thread_is_replaced_and_ends_once_its_task_is_over() {
        let (factory, calls, sessions) = sleepy();
        let pool = InferencePool::start("tpool-stuck".into(), 1, factory)
            .await
            .unwrap();
        assert_eq!(threads_named("tpool-stuck"), 1);
        let stuck = pool
            .classify(Bytes::from(vec![40]), Duration::from_millis(50))
            .await;
        assert!(matches!(stuck, Err(InferenceError::TimedOut)));
        // A fresh thread answers while the stuck one still sleeps.
        let quick = pool
            .classify(Bytes::from(vec![0]), Duration::from_secs(5))
            .await;
        assert!(quick.is_ok(), "the replacement thread classifies");
        assert_eq!(sessions.load(Ordering::SeqCst), 2);
        // Once its task is over, the stuck thread ends: one thread again.
        for _ in 0..100 {
            if threads_named("tpool-stuck") == 1 && calls.load(Ordering::SeqCst) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(threads_named("tpool-stuck"), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_callers_than_threads_share_them_and_a_task_given_up_or_left_while_queued_never_runs(
    ) {
        let (factory, calls, sessions) = sleepy();
        let pool = Arc::new(
            InferencePool::start("tpool-share".into(), 2, factory)
                .await
                .unwrap(),
        );
        assert_eq!(threads_named("tpool-share"), 2);
        // Two long tasks hold both threads; a third, given up while it waits, is skipped.
        let long = callers(&pool, 2, 20);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waited = pool
            .classify(Bytes::from(vec![0]), Duration::from_millis(20))
            .await;
        assert!(matches!(waited, Err(InferenceError::TimedOut)));
        for t in long {
            assert!(t.await.unwrap().is_ok());
        }
        // Six callers on two threads: all answered, by the same two sessions.
        let many = callers(&pool, 6, 1);
        for t in many {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            8,
            "the abandoned task was not classified"
        );
        // A caller that goes away while its task waits takes the task with it.
        let long = callers(&pool, 2, 20);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let gone = callers(&pool, 1, 0).remove(0);
        tokio::time::sleep(Duration::from_millis(20)).await;
        gone.abort();
        assert!(matches!(gone.await, Err(e) if e.is_cancelled()));
        for t in long {
            assert!(t.await.unwrap().is_ok());
        }
        assert!(pool
            .classify(Bytes::from(vec![0]), Duration::from_secs(5))
            .await
            .is_ok());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            11,
            "the task of the caller that went away was not classified"
        );
        assert_eq!(sessions.load(Ordering::SeqCst), 2);
        assert_eq!(threads_named("tpool-share"), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_load_counts_classifications_until_their_callers_have_the_answer() {
        let (factory, _, _) = sleepy();
        let pool = Arc::new(
            InferencePool::start("tpool-load".into(), 2, factory)
                .await
                .unwrap(),
        );
        assert_eq!(pool.load(), Load::Idle);
        let one = callers(&pool, 1, 20);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.load(), Load::Idle, "one of two threads is free");
        let two = callers(&pool, 1, 20);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.load(), Load::Busy);
        let three = callers(&pool, 1, 0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.load(), Load::Waiting, "the third waits for a thread");
        for t in one.into_iter().chain(two).chain(three) {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(
            pool.load(),
            Load::Idle,
            "callers that have their answer no longer count"
        );
        let gone = callers(&pool, 3, 20);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.load(), Load::Waiting);
        for t in gone {
            t.abort();
            let _ = t.await;
        }
        assert_eq!(
            pool.load(),
            Load::Idle,
            "callers that went away no longer count"
        );
    }
}
