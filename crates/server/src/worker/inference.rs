//! A worker's inference thread: a dedicated OS thread that owns one classifier (one ONNX
//! Runtime session) and classifies the images sent to it, so that decoding and inference never
//! run on the async runtime.

use super::ClassifierFactory;
use imgclass_classifier::{Cancel, Classification, ClassifyError};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<Classification, ClassifyError>>;

pub(super) struct InferenceThread {
    tx: std_mpsc::Sender<(Vec<u8>, Cancel, Reply)>,
    pub(super) info: imgclass_core::ModelInfo,
}

impl InferenceThread {
    /// Starts the thread and waits until its classifier is ready.
    pub(super) async fn start(name: String, factory: ClassifierFactory) -> anyhow::Result<Self> {
        let (tx, rx) = std_mpsc::channel::<(Vec<u8>, Cancel, Reply)>();
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::Builder::new().name(name).spawn(move || {
            let mut classifier = match factory() {
                Ok(c) => {
                    let _ = ready_tx.send(Ok(c.info().clone()));
                    c
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while let Ok((bytes, cancel, reply)) = rx.recv() {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    classifier.classify_with(&bytes, &cancel)
                }))
                .unwrap_or_else(|_| Err(ClassifyError::Model("the classifier panicked".into())));
                let _ = reply.send(result);
            }
        })?;
        let info = ready_rx
            .await
            .map_err(|_| anyhow::anyhow!("the inference thread stopped while starting"))??;
        Ok(InferenceThread { tx, info })
    }

    /// Classifies on the thread; the thread gives up by itself once `timeout` has passed.
    pub(super) async fn classify(
        &self,
        bytes: Vec<u8>,
        timeout: Duration,
    ) -> Result<Classification, ClassifyError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((bytes, Cancel::after(timeout), reply))
            .map_err(|_| ClassifyError::Model("the inference thread is gone".into()))?;
        rx.await
            .map_err(|_| ClassifyError::Model("the inference thread is gone".into()))?
    }
}
