//! Domain types of imgclass, with no IO: job ids, statuses and the job state machine,
//! predictions and results, and the stable error codes that jobs and the API speak.

mod error_code;
mod event;
mod job;
pub mod policy;
mod result;
pub mod retry_after;
mod scope;

pub use error_code::ErrorCode;
pub use event::EventKind;
pub use job::{Action, JobId, JobStatus, ParseJobIdError, TransitionError};
pub use result::{JobResult, ModelInfo, Prediction, Provider, Timings, BUILTIN_MODEL};
pub use scope::Scope;
