//! What every model family's serving path shares: priority classes, admission (bounded request
//! slots, work tokens and estimated wait, with the standing-queue bound and the measured cost per
//! token behind it) and request deadlines. `ranking/` and `slm/` both build on it and never on each
//! other.

pub mod admission;
pub mod deadline;
pub mod fault;
pub mod priority;

pub use admission::{Admission, AdmissionPolicy, CostEstimate, OverloadPolicy, Refusal, Slots};
pub use deadline::DeadlinePolicy;
pub use fault::Faults;
pub use priority::PriorityClasses;
