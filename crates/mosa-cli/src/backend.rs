//! The one place a concrete backend is chosen, by cargo feature. If several backend features are
//! enabled, the first of cuda, wgpu, ndarray, flex wins.

#[cfg(feature = "cuda")]
mod chosen {
    pub type Backend = burn::backend::Cuda;
    pub const NAME: &str = "cuda";
}

#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
mod chosen {
    pub type Backend = burn::backend::Wgpu;
    pub const NAME: &str = "wgpu";
}

#[cfg(all(feature = "ndarray", not(any(feature = "cuda", feature = "wgpu"))))]
mod chosen {
    pub type Backend = burn::backend::NdArray;
    pub const NAME: &str = "ndarray (CPU)";
}

#[cfg(all(feature = "flex", not(any(feature = "cuda", feature = "wgpu", feature = "ndarray"))))]
mod chosen {
    pub type Backend = burn::backend::Flex;
    pub const NAME: &str = "flex (CPU)";
}

#[cfg(not(any(feature = "cuda", feature = "wgpu", feature = "ndarray", feature = "flex")))]
compile_error!("enable one backend feature of mosa-cli: flex (default), ndarray, wgpu or cuda");

/// The inference backend.
pub use chosen::Backend;
/// The backend's name as shown by `mosa info`.
pub use chosen::NAME;

/// The training backend (autodiff over [`Backend`]); used by the training commands.
#[allow(dead_code)]
pub type TrainBackend = burn::backend::Autodiff<Backend>;

/// The default device of the chosen backend.
pub fn device() -> burn::tensor::Device<Backend> {
    Default::default()
}
