//! CPU kernels that replace slower ones of Burn's flex backend, written as Burn backend
//! extensions with their own backward pass. Each is tested against Burn's own result and
//! used only on the CPU backend; other backends keep Burn's operation.

pub mod conv;
pub mod max_pool;

pub use conv::conv2d;
pub use max_pool::max_pool_2x2;
