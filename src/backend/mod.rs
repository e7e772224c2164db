//! The backend seam: what model code asks of a compute backend, and the CPU backend that answers it.
//!
//! Model code (`ranking/`, `slm/`) reads and validates model files into host tensors, featurizes
//! requests and builds responses; a backend builds its own weight layout from those tensors and runs
//! the compute. Model code holds an `Arc<dyn RankerBackend>` / `Box<dyn SlmBackend>` and the opaque
//! handles a backend hands out (encoded histories, KV storage, per-thread workspaces), so a new backend
//! (a GPU, another weight format) plugs in here without touching model or scheduler code.
//! `cpu` is the backend today; it runs on `kernels::cpu`. `device` places each model at start (its
//! config's `device` key); `cuda` (feature `cuda`) holds the GPU probe, and no CUDA backend yet.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod ranker;
pub mod slm;

pub use ranker::{CandidateBlock, EncodedHistory, HistoryState, RankerBackend};
pub use slm::{KvState, SlmBackend};

use std::any::Any;

/// One thread's reusable buffers for whichever backend uses it: empty until a backend's first call,
/// which stores its own buffer type here (grown on demand, kept across calls), so warm calls allocate
/// nothing. A workspace handed to a different backend is reset to that backend's type.
#[derive(Default)]
pub struct Workspace(Option<Box<dyn Any + Send + Sync>>);

impl Workspace {
    pub fn new() -> Self {
        Self::default()
    }

    /// The buffers of type `T`, created on first use (or when the workspace held another type).
    pub fn get<T: Any + Send + Sync + Default>(&mut self) -> &mut T {
        if !self.0.as_ref().is_some_and(|b| b.is::<T>()) {
            self.0 = Some(Box::new(T::default()));
        }
        self.0.as_mut().and_then(|b| b.downcast_mut()).expect("the workspace holds a T: set just above")
    }
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace").field("initialized", &self.0.is_some()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::Workspace;

    #[test]
    fn workspace_keeps_its_buffers_and_resets_on_another_type() {
        let mut ws = Workspace::new();
        ws.get::<Vec<f32>>().extend([1.0, 2.0]);
        assert_eq!(ws.get::<Vec<f32>>(), &[1.0, 2.0]);
        assert!(ws.get::<Vec<u8>>().is_empty());
        assert!(ws.get::<Vec<f32>>().is_empty(), "switching types starts fresh buffers");
    }
}
