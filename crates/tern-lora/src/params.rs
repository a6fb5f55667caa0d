//! The trainable tensors of a run on the device, by typed key: value,
//! gradient and AdamW moments. Both trainers keep theirs here (the LoRA
//! trainer keyed by adapter tensor, the pretrainer by model [`Param`]), and
//! the optimizer step, gradient norm and clipping are written once, here.

use std::collections::BTreeMap;
use tern_backend::multi::AdamWTensor;
use tern_backend::{AdamW, Backend, BackendError};
use tern_model::Param;

/// A parameter's key: ordered, and knowing whether weight decay applies.
pub(crate) trait ParamKey: Copy + Ord + std::fmt::Debug {
    fn decays(&self) -> bool;
}

impl ParamKey for Param {
    fn decays(&self) -> bool {
        Param::decays(*self)
    }
}

/// When gradients are set back to zero after an optimizer step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Clearing {
    /// Right after the step (one dispatch per tensor).
    Eager,
    /// Not at all: the next backward overwrites instead of accumulating
    /// ([`ParamSet::grad_beta`] is 0 until [`ParamSet::mark_written`]), and
    /// readers see zeros meanwhile. Needs every gradient to be written by
    /// every backward.
    Lazy,
}

/// Which buffer of a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    Value,
    Grad,
    M,
    V,
}

/// Values to read and gradients to write, borrowed from one [`ParamSet`].
pub(crate) type ValuesGrads<'a, B> = (
    Vec<&'a <B as Backend>::Buf>,
    Vec<&'a mut <B as Backend>::Buf>,
);

pub(crate) struct ParamSet<B: Backend, K> {
    keys: Vec<K>,
    index: BTreeMap<K, usize>,
    /// `None`: the value lives elsewhere (QAT: in the model).
    value: Vec<Option<B::Buf>>,
    grad: Vec<B::Buf>,
    m: Vec<B::Buf>,
    v: Vec<B::Buf>,
    /// Optimizer steps taken.
    pub(crate) step: u32,
    clearing: Clearing,
    /// The gradients still hold the last step's values (lazy clearing).
    stale: bool,
}

impl<B: Backend, K: ParamKey> ParamSet<B, K> {
    pub(crate) fn new(clearing: Clearing) -> Self {
        ParamSet {
            keys: Vec::new(),
            index: BTreeMap::new(),
            value: Vec::new(),
            grad: Vec::new(),
            m: Vec::new(),
            v: Vec::new(),
            step: 0,
            clearing,
            stale: false,
        }
    }

    /// Add parameter `key` of `len` values with zero gradient and moments;
    /// `value` is `None` when it lives elsewhere.
    pub(crate) fn push(
        &mut self,
        be: &B,
        key: K,
        len: usize,
        value: Option<B::Buf>,
    ) -> Result<(), BackendError> {
        debug_assert!(!self.index.contains_key(&key), "{key:?} added twice");
        self.index.insert(key, self.keys.len());
        self.keys.push(key);
        self.value.push(value);
        self.grad.push(be.zeros(len)?);
        self.m.push(be.zeros(len)?);
        self.v.push(be.zeros(len)?);
        Ok(())
    }

    /// The keys in the order they were added.
    pub(crate) fn keys(&self) -> &[K] {
        &self.keys
    }

    pub(crate) fn contains(&self, key: K) -> bool {
        self.index.contains_key(&key)
    }

    /// The value of `key` when the set holds it.
    pub(crate) fn value(&self, key: K) -> Option<&B::Buf> {
        self.value[*self.index.get(&key)?].as_ref()
    }

    /// Buffer `field` of `key` (for a value: when the set holds it).
    pub(crate) fn buf(&self, key: K, field: Field) -> Option<&B::Buf> {
        let i = *self.index.get(&key)?;
        match field {
            Field::Value => self.value[i].as_ref(),
            Field::Grad => Some(&self.grad[i]),
            Field::M => Some(&self.m[i]),
            Field::V => Some(&self.v[i]),
        }
    }

    /// [`Self::buf`], mutable.
    pub(crate) fn buf_mut(&mut self, key: K, field: Field) -> Option<&mut B::Buf> {
        let i = *self.index.get(&key)?;
        match field {
            Field::Value => self.value[i].as_mut(),
            Field::Grad => Some(&mut self.grad[i]),
            Field::M => Some(&mut self.m[i]),
            Field::V => Some(&mut self.v[i]),
        }
    }

    /// The gradient of `key`, to accumulate into.
    pub(crate) fn grad_mut(&mut self, key: K) -> Option<&mut B::Buf> {
        self.buf_mut(key, Field::Grad)
    }

    /// The values of `values` and the gradients of `grads` at once (the
    /// gradients to accumulate into, in the order of `grads`, which holds
    /// no key twice); `None` if a key is missing or a value not held here.
    pub(crate) fn values_and_grads(
        &mut self,
        values: &[K],
        grads: &[K],
    ) -> Option<ValuesGrads<'_, B>> {
        let vals = values
            .iter()
            .map(|k| self.value[*self.index.get(k)?].as_ref())
            .collect::<Option<Vec<_>>>()?;
        let want = grads
            .iter()
            .map(|k| self.index.get(k).copied())
            .collect::<Option<Vec<usize>>>()?;
        let mut slots: Vec<Option<&mut B::Buf>> = self.grad.iter_mut().map(Some).collect();
        let gs = want
            .iter()
            .map(|&i| slots[i].take())
            .collect::<Option<Vec<_>>>()?;
        Some((vals, gs))
    }

    /// `beta` for a gradient writer: 0 while the gradients are stale
    /// (overwrite), 1 otherwise (accumulate).
    pub(crate) fn grad_beta(&self) -> f32 {
        if self.stale {
            0.0
        } else {
            1.0
        }
    }

    /// Every gradient was written by a backward: no longer stale.
    pub(crate) fn mark_written(&mut self) {
        self.stale = false;
    }

    /// Global L2 norm of the gradients (one download), summed in key order.
    pub(crate) fn grad_norm(&self, be: &B) -> Result<f32, BackendError> {
        if self.stale || self.grad.is_empty() {
            return Ok(0.0);
        }
        let mut sums = be.zeros(self.grad.len())?;
        for (i, g) in self.grad.iter().enumerate() {
            be.sum_squares(g, &mut sums, i);
        }
        let total: f64 = be.download(&sums)?.iter().map(|&v| v as f64).sum();
        Ok(total.sqrt() as f32)
    }

    /// Scale the gradients so their global norm is at most `max_norm`
    /// (`clip_grad_norm_`: factor `max_norm / (norm + 1e-6)`, capped at 1).
    /// Returns the norm before clipping.
    pub(crate) fn clip_grad_norm(&mut self, be: &B, max_norm: f32) -> Result<f32, BackendError> {
        let norm = self.grad_norm(be)?;
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in &mut self.grad {
                be.scale(coef, g);
            }
        }
        Ok(norm)
    }

    /// Set every gradient to zero.
    pub(crate) fn zero_grads(&mut self, be: &B) {
        for g in &mut self.grad {
            be.scale(0.0, g);
        }
        self.stale = false;
    }

    /// One AdamW update of every parameter (`hp.step` is ignored: the set
    /// counts its steps; weight decay only where the key decays), then clear
    /// the gradients as the set's [`Clearing`] says. `update` runs the
    /// update: `(key, value, grad, m, v, hp)`, the value `None` when the set
    /// does not hold it.
    pub(crate) fn adamw(
        &mut self,
        be: &B,
        hp: AdamW,
        mut update: impl FnMut(K, Option<&mut B::Buf>, &B::Buf, &mut B::Buf, &mut B::Buf, AdamW),
    ) {
        self.step += 1;
        let hp = AdamW {
            step: self.step,
            ..hp
        };
        let no_decay = AdamW {
            weight_decay: 0.0,
            ..hp
        };
        for (i, &key) in self.keys.iter().enumerate() {
            if self.stale {
                // a second step without a backward in between: zero gradients
                be.scale(0.0, &mut self.grad[i]);
            }
            let h = if key.decays() { hp } else { no_decay };
            let value = self.value[i].as_mut();
            update(key, value, &self.grad[i], &mut self.m[i], &mut self.v[i], h);
            if self.clearing == Clearing::Eager {
                be.scale(0.0, &mut self.grad[i]);
            }
        }
        // cleared lazily: see `Clearing::Lazy`
        self.stale = self.clearing == Clearing::Lazy;
    }

    /// [`Self::adamw`] for a set that holds every value, through the
    /// backend's multi-tensor update ([`Backend::adamw_multi`]: one call per
    /// hyper-parameter set, so one GPU dispatch for all the tensors that
    /// decay alike instead of one each). Bit-identical to [`Self::adamw`]
    /// with [`Backend::adamw`] as the update.
    pub(crate) fn adamw_all(&mut self, be: &B, hp: AdamW) {
        self.step += 1;
        let hp = AdamW {
            step: self.step,
            ..hp
        };
        let no_decay = AdamW {
            weight_decay: 0.0,
            ..hp
        };
        if self.stale {
            // a second step without a backward in between: zero gradients
            for g in &mut self.grad {
                be.scale(0.0, g);
            }
        }
        let mut decay: Vec<AdamWTensor<'_, B>> = Vec::with_capacity(self.keys.len());
        let mut plain: Vec<AdamWTensor<'_, B>> = Vec::new();
        let parts = self
            .keys
            .iter()
            .zip(&mut self.value)
            .zip(&self.grad)
            .zip(self.m.iter_mut().zip(&mut self.v));
        for (((key, value), g), (m, v)) in parts {
            let p = value
                .as_mut()
                .unwrap_or_else(|| unreachable!("{key:?}: adamw_all needs every value held"));
            let t = AdamWTensor { p, g, m, v };
            if key.decays() {
                decay.push(t);
            } else {
                plain.push(t);
            }
        }
        be.adamw_multi(&mut decay, hp);
        be.adamw_multi(&mut plain, no_decay);
        if self.clearing == Clearing::Eager {
            for g in &mut self.grad {
                be.scale(0.0, g);
            }
        }
        // cleared lazily: see `Clearing::Lazy`
        self.stale = self.clearing == Clearing::Lazy;
    }

    /// Copy buffer `field` of every parameter to the host, in key order
    /// (stale gradients read as zeros). A value the set does not hold comes
    /// from `home`.
    pub(crate) fn download<'h>(
        &'h self,
        be: &B,
        field: Field,
        home: impl Fn(K) -> Option<&'h B::Buf>,
    ) -> Result<Vec<(K, Vec<f32>)>, BackendError> {
        let mut out = Vec::with_capacity(self.keys.len());
        for &key in &self.keys {
            let buf = self.buf(key, field).or_else(|| home(key));
            let buf = buf.unwrap_or_else(|| unreachable!("{key:?} has no value to download"));
            let v = if field == Field::Grad && self.stale {
                vec![0.0; be.len(buf)]
            } else {
                be.download(buf)?
            };
            out.push((key, v));
        }
        Ok(out)
    }
}
