//! The models a node's workers serve and the inference pool of each: a job goes to the pool of
//! the model it names. A node serves either named models (the built-in one, a repository's, a
//! remote provider's), and then claims only their jobs and announces them to the other nodes,
//! or — the no-op provider of benchmarks and tests — any job, whatever its model.

use crate::inference::{InferencePool, Load};
use crate::ClassifierFactory;
use imgclass_store::ModelEntry;
use std::collections::HashMap;
use std::sync::Arc;

/// One model a node serves: what it announces, and how each inference thread builds its
/// classifier.
#[derive(Clone)]
pub struct ServedModel {
    pub entry: ModelEntry,
    pub factory: ClassifierFactory,
}

/// What a node's workers serve.
#[derive(Clone)]
pub enum Served {
    /// Jobs of any model, all through this classifier.
    Any(ClassifierFactory),
    /// Jobs of these models only, each through its own classifier.
    Models(Vec<ServedModel>),
}

impl Served {
    /// The model names to claim (`None`: any).
    pub fn names(&self) -> Option<Vec<String>> {
        match self {
            Served::Any(_) => None,
            Served::Models(models) => Some(models.iter().map(|m| m.entry.name.clone()).collect()),
        }
    }

    /// What the node announces.
    pub fn entries(&self) -> Vec<ModelEntry> {
        match self {
            Served::Any(_) => Vec::new(),
            Served::Models(models) => models.iter().map(|m| m.entry.clone()).collect(),
        }
    }
}

/// The inference pools of a node, one per model it serves, and what it announces.
pub(crate) struct Pools {
    any: Option<Arc<InferencePool>>,
    /// Per model name: the version its pool runs, and the pool.
    by_model: HashMap<String, (String, Arc<InferencePool>)>,
    /// The model names to claim (`None`: any).
    pub(crate) names: Option<Vec<String>>,
    pub(crate) entries: Vec<ModelEntry>,
}

impl Pools {
    /// Starts `threads` inference threads per model, each factory wrapped by `wrap` (fault
    /// injection). The pool of a model whose name and version `previous` already runs is taken
    /// over as it is (a reload loads only what changed).
    pub(crate) async fn start(
        served: Served,
        threads: usize,
        wrap: impl Fn(ClassifierFactory) -> ClassifierFactory,
        previous: Option<&Pools>,
    ) -> anyhow::Result<Pools> {
        let (names, entries) = (served.names(), served.entries());
        match served {
            Served::Any(factory) => Ok(Pools {
                any: Some(Arc::new(
                    InferencePool::start("imgclass-infer".into(), threads, wrap(factory)).await?,
                )),
                by_model: HashMap::new(),
                names,
                entries,
            }),
            Served::Models(models) => {
                let mut by_model = HashMap::with_capacity(models.len());
                let many = models.len() > 1;
                for (i, m) in models.into_iter().enumerate() {
                    let kept = previous
                        .and_then(|p| p.by_model.get(&m.entry.name))
                        .filter(|(version, _)| *version == m.entry.version);
                    let pool = match kept {
                        Some((_, pool)) => pool.clone(),
                        None => {
                            let name = if many {
                                format!("imgclass-m{i}")
                            } else {
                                "imgclass-infer".into()
                            };
                            Arc::new(InferencePool::start(name, threads, wrap(m.factory)).await?)
                        }
                    };
                    by_model.insert(m.entry.name, (m.entry.version, pool));
                }
                Ok(Pools {
                    any: None,
                    by_model,
                    names,
                    entries,
                })
            }
        }
    }

    /// Whether every inference thread of the node is busy and at least one image waits for a
    /// thread: then the next thread to finish has an image to take, and a round may wait for
    /// it. False with a thread free, or with no inference threads.
    pub(crate) fn saturated(&self) -> bool {
        let pools = self
            .any
            .iter()
            .chain(self.by_model.values().map(|(_, p)| p));
        let mut waiting = false;
        for pool in pools {
            match pool.load() {
                Load::Idle => return false,
                Load::Busy => {}
                Load::Waiting => waiting = true,
            }
        }
        waiting
    }

    /// The pool that classifies jobs of `model`, if this node serves it.
    pub(crate) fn of(&self, model: &str) -> Option<&Arc<InferencePool>> {
        self.any
            .as_ref()
            .or_else(|| self.by_model.get(model).map(|(_, pool)| pool))
    }
}

/// What a node serves now; a reload replaces it whole, and an attempt keeps the pool it
/// started on until it ends.
#[derive(Clone)]
pub(crate) struct Serving(Arc<std::sync::RwLock<Arc<Pools>>>);

impl Serving {
    pub(crate) fn new(pools: Pools) -> Serving {
        Serving(Arc::new(std::sync::RwLock::new(Arc::new(pools))))
    }

    /// The pools as they are now.
    pub(crate) fn now(&self) -> Arc<Pools> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn replace(&self, pools: Pools) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pools);
    }
}
