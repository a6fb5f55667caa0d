//! The token embedding and the LM head: `[vocab, hidden]` matrices, the
//! largest dense tensors of a BitNet model (250 MiB in f32 at 1B), read in
//! full for every decoded token by the head. They are stored in f32 or in
//! IEEE f16 ([`HeadPrecision`]), chosen when the model is loaded; the ops
//! widen f16 to f32 and accumulate in f32. A tied model keeps one table,
//! used as the embedding and as the head.

use crate::keys::Param;
use crate::model::ModelError;
use tern_backend::{Backend, BackendError, Gemm};

/// How the embedding table and the LM head are stored on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeadPrecision {
    /// f32: the values as loaded. Exact parity with the reference runtimes
    /// (transformers, llama.cpp, PEFT), and the storage QAT pretraining
    /// trains.
    F32,
    /// IEEE f16, each value rounded to the nearest (ties to even): half the
    /// memory and half the bytes the head reads per token. Logits move by
    /// the rounding of the table (measured in docs/benchmarks/wgpu-h200.md).
    F16,
}

impl HeadPrecision {
    /// The default on `backend`: [`HeadPrecision::F16`] on a backend with
    /// device memory of its own (a GPU through wgpu, where the head's bytes
    /// bound decode and the table weighs on training memory),
    /// [`HeadPrecision::F32`] on the host CPU. The CPU default is to change
    /// to f16 as well in a later issue, once its head product is tuned.
    pub fn default_for<B: Backend>(backend: &B) -> Self {
        if backend.device_memory().is_some() {
            HeadPrecision::F16
        } else {
            HeadPrecision::F32
        }
    }

    /// `f32` or `f16`.
    pub fn name(self) -> &'static str {
        match self {
            HeadPrecision::F32 => "f32",
            HeadPrecision::F16 => "f16",
        }
    }
}

/// A `[vocab, hidden]` matrix on the device in its chosen precision.
pub enum Table<B: Backend> {
    F32(B::Buf),
    F16(B::Half),
}

impl<B: Backend> Table<B> {
    /// Upload `data` (the values of model parameter `key`) in `precision`.
    /// A value beyond the f16 range is [`ModelError::HalfRange`], naming
    /// the tensor.
    pub fn upload(
        be: &B,
        key: Param,
        data: &[f32],
        precision: HeadPrecision,
    ) -> Result<Self, ModelError> {
        Ok(match precision {
            HeadPrecision::F32 => Table::F32(be.upload(data)?),
            HeadPrecision::F16 => match be.upload_half(data) {
                Ok(h) => Table::F16(h),
                Err(BackendError::HalfRange { index, value, .. }) => {
                    return Err(ModelError::HalfRange {
                        tensor: format!("{} ({})", key.gguf_name(), key.hf_name()),
                        index,
                        value,
                    })
                }
                Err(e) => return Err(e.into()),
            },
        })
    }

    /// The storage of this table.
    pub fn precision(&self) -> HeadPrecision {
        match self {
            Table::F32(_) => HeadPrecision::F32,
            Table::F16(_) => HeadPrecision::F16,
        }
    }

    /// The f32 buffer, when stored in f32.
    pub fn as_f32(&self) -> Option<&B::Buf> {
        match self {
            Table::F32(b) => Some(b),
            Table::F16(_) => None,
        }
    }

    /// The f32 buffer, mutable, when stored in f32 (trainers update it).
    pub fn as_f32_mut(&mut self) -> Option<&mut B::Buf> {
        match self {
            Table::F32(b) => Some(b),
            Table::F16(_) => None,
        }
    }

    /// Bytes of the stored values.
    pub fn bytes(&self, be: &B) -> u64 {
        match self {
            Table::F32(b) => 4 * be.len(b) as u64,
            Table::F16(h) => 2 * be.half_len(h) as u64,
        }
    }

    /// The embedding lookup: `y[r] = table[ids[r]]` (`y [rows, dim]`).
    pub fn gather(&self, be: &B, ids: &B::Ids, y: &mut B::Buf, dim: usize) {
        match self {
            Table::F32(t) => be.embedding(t, ids, y, dim),
            Table::F16(t) => be.embedding_half(t, ids, y, dim),
        }
    }

    /// `C = alpha op(A) · op(table) + beta C` ([`Gemm`]; the table is B):
    /// the head's logits with `trans_b`, its input gradient without.
    pub fn matmul(&self, be: &B, a: &B::Buf, c: &mut B::Buf, g: Gemm) {
        match self {
            Table::F32(t) => be.matmul(a, t, c, g),
            Table::F16(t) => be.matmul_half(a, t, c, g),
        }
    }
}
