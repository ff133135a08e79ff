//! Fault injection (`--inject-failure-rate`): a classifier wrapper that makes a share of the
//! attempts fail on purpose, to exercise retries and failures. The worker loop knows nothing of
//! it: an injected failure is an ordinary classification error.

use crate::ClassifierFactory;
use imgclass_classifier::{Cancel, Classification, Classifier, ClassifyError};
use imgclass_core::ModelInfo;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Mutex};

/// Decides which attempts fail; one per process, so that a seed gives a reproducible run.
struct Injector {
    rate: f64,
    rng: Mutex<rand::rngs::StdRng>,
}

impl Injector {
    fn strikes(&self) -> bool {
        let draw: f64 = self.rng.lock().unwrap_or_else(|p| p.into_inner()).random();
        draw < self.rate
    }
}

struct Faulty {
    inner: Box<dyn Classifier>,
    injector: Arc<Injector>,
}

impl Classifier for Faulty {
    fn classify(&mut self, image: &[u8]) -> Result<Classification, ClassifyError> {
        if self.injector.strikes() {
            return Err(ClassifyError::Injected(format!(
                "injected failure: this attempt failed on purpose (--inject-failure-rate {})",
                self.injector.rate
            )));
        }
        self.inner.classify(image)
    }

    fn classify_with(
        &mut self,
        image: &[u8],
        cancel: &Cancel,
    ) -> Result<Classification, ClassifyError> {
        if self.injector.strikes() {
            return Err(ClassifyError::Injected(format!(
                "injected failure: this attempt failed on purpose (--inject-failure-rate {})",
                self.injector.rate
            )));
        }
        self.inner.classify_with(image, cancel)
    }

    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }
}

/// Wraps every classifier `factory` makes so that `rate` (0.0–1.0) of the attempts fail;
/// returns `factory` itself when the rate is 0.
pub(super) fn wrap(factory: ClassifierFactory, rate: f64, seed: Option<u64>) -> ClassifierFactory {
    let rate = rate.clamp(0.0, 1.0);
    if rate <= 0.0 {
        return factory;
    }
    let rng = match seed {
        Some(s) => rand::rngs::StdRng::seed_from_u64(s),
        None => rand::rngs::StdRng::from_os_rng(),
    };
    let injector = Arc::new(Injector {
        rate,
        rng: Mutex::new(rng),
    });
    Arc::new(move || {
        Ok(Box::new(Faulty {
            inner: factory()?,
            injector: injector.clone(),
        }) as Box<dyn Classifier>)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgclass_classifier::NoopClassifier;
    use imgclass_core::ErrorCode;

    fn noop() -> ClassifierFactory {
        Arc::new(|| Ok(Box::new(NoopClassifier::default()) as Box<dyn Classifier>))
    }

    #[test]
    fn the_rate_is_the_share_of_failed_attempts() {
        let mut c = wrap(noop(), 0.4, Some(7))().unwrap();
        let failed = (0..1000)
            .filter(|_| match c.classify(b"x") {
                Err(e) => {
                    assert_eq!(e.code(), ErrorCode::InjectedFailure);
                    true
                }
                Ok(_) => false,
            })
            .count();
        assert!((330..470).contains(&failed), "{failed} of 1000 failed");
    }

    #[test]
    fn rate_zero_and_one() {
        let mut never = wrap(noop(), 0.0, None)().unwrap();
        assert!((0..100).all(|_| never.classify(b"x").is_ok()));
        let mut always = wrap(noop(), 1.0, None)().unwrap();
        assert!((0..100).all(|_| always.classify(b"x").is_err()));
    }
}
