//! OPT on Burn: re-exports the model, data, evaluation, training and serving libraries, and selects a backend.

pub mod backend;

pub use opt_data as data;
pub use opt_eval as eval;
pub use opt_model as model;
pub use opt_serve as serve;
pub use opt_train as train;

pub use backend::{worker_devices, BackendError, BackendKind, BackendTask, DeviceSpec};
