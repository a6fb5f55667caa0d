//! The BitNet b1.58 model over any [`Backend`]: weights on the device, a KV
//! cache, and the forward pass (embedding, the [`crate::block`] of every
//! layer, final norm and head).
//!
//! Every projection is a BitLinear (ternary weights, per-token int8
//! activations); the norms stay in f32, the embedding and the LM head in f32
//! or f16 ([`HeadPrecision`], chosen at load: f16 by default on a GPU).
//! [`ActQuant::None`] switches the projections to float activations, a
//! diagnostic mode for comparing with runtimes that do not quantize them.

use crate::block::{self, Attend, BlockActs, BlockHooks, Site};
use crate::config::{BitNetConfig, HiddenAct};
use crate::keys::{LayerTensor, Norm, Param, Proj};
pub use crate::table::{HeadPrecision, Table};
use crate::weights::{WeightError, WeightSource};
use std::collections::HashMap;
use tern_backend::{Activation, Backend, BackendError, Gemm};

/// How the projections treat their input activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ActQuant {
    /// BitNet b1.58's W1.58A8: each token row is quantized to int8
    /// (`127 / max|x|`) before the exact ternary product. The faithful
    /// forward, and the default.
    #[default]
    PerTokenInt8,
    /// Float activations times the dequantized ternary weights
    /// (`x · (W_t * scale)ᵀ` in f32). Not how BitNet was trained: a
    /// diagnostic mode for comparing logits with runtimes that skip
    /// activation quantization (llama.cpp with F32 projection weights).
    None,
}

/// One transformer block on the device: four norm weights and seven packed
/// projections, reached by key.
pub struct Layer<B: Backend> {
    norms: [B::Buf; 4],
    projs: [B::Ternary; 7],
}

impl<B: Backend> Layer<B> {
    /// Upload layer `l` of `src` onto `be`.
    /// Tensors are read in file order ([`LayerTensor::FILE_ORDER`]).
    pub fn load(be: &B, src: &dyn WeightSource, l: usize) -> Result<Self, ModelError> {
        let mut norms: [Option<B::Buf>; 4] = Default::default();
        let mut projs: [Option<B::Ternary>; 7] = Default::default();
        for t in LayerTensor::FILE_ORDER {
            match t {
                LayerTensor::Norm(n) => {
                    let v = src.f32_tensor(Param::Norm(l, n))?;
                    norms[n.index()] = Some(be.upload(&v)?);
                }
                LayerTensor::Proj(p) => {
                    let w = src.ternary(l, p)?;
                    projs[p.index()] = Some(be.upload_ternary(w.as_ref())?);
                }
            }
        }
        Ok(Layer {
            norms: norms.map(|n| n.expect("the file order lists every norm")),
            projs: projs.map(|p| p.expect("the file order lists every projection")),
        })
    }

    /// The packed weight of projection `p`.
    pub fn proj(&self, p: Proj) -> &B::Ternary {
        &self.projs[p.index()]
    }

    pub fn proj_mut(&mut self, p: Proj) -> &mut B::Ternary {
        &mut self.projs[p.index()]
    }

    /// The weight of norm `n`.
    pub fn norm(&self, n: Norm) -> &B::Buf {
        &self.norms[n.index()]
    }

    pub fn norm_mut(&mut self, n: Norm) -> &mut B::Buf {
        &mut self.norms[n.index()]
    }
}

/// A loaded model: weights on the device plus its KV cache.
pub struct Model<B: Backend> {
    pub cfg: BitNetConfig,
    pub backend: B,
    /// `[vocab, hidden]`; also the head when tied.
    pub embed: Table<B>,
    pub layers: Vec<Layer<B>>,
    pub norm: B::Buf,
    /// `[vocab, hidden]`; `None` when tied to the embedding.
    pub lm_head: Option<Table<B>>,
    cache: Option<KvCache<B>>,
    /// Activation buffers of the last forward, reused while the token count
    /// stays the same (every decode step), so decoding allocates nothing.
    work: Option<Work<B>>,
    act_quant: ActQuant,
    /// Whether inference runs the backend's fused block ops where it can.
    fused: bool,
    /// Low-rank deltas (LoRA) per projection, applied in the order added.
    lora: HashMap<(usize, Proj), Vec<LowRank<B>>>,
}

/// A model's dense (f32) parameters, mutable, by key
/// ([`Model::backend_and_params_mut`]).
pub struct DenseParamsMut<'a, B: Backend> {
    embed: &'a mut Table<B>,
    norm: &'a mut B::Buf,
    lm_head: Option<&'a mut Table<B>>,
    layers: &'a mut [Layer<B>],
}

impl<'a, B: Backend> DenseParamsMut<'a, B> {
    /// The parameter of `key`; `None` for a projection, a tied head or a
    /// table stored in f16.
    pub fn get(&mut self, key: Param) -> Option<&mut B::Buf> {
        DenseParamsMut {
            embed: &mut *self.embed,
            norm: &mut *self.norm,
            lm_head: self.lm_head.as_deref_mut(),
            layers: &mut *self.layers,
        }
        .into_param(key)
    }

    /// [`Self::get`], keeping the borrow.
    pub fn into_param(self, key: Param) -> Option<&'a mut B::Buf> {
        match key {
            Param::Embed => self.embed.as_f32_mut(),
            Param::FinalNorm => Some(self.norm),
            Param::Head => self.lm_head.and_then(Table::as_f32_mut),
            Param::Norm(l, n) => self.layers.get_mut(l).map(|layer| layer.norm_mut(n)),
            Param::Proj(..) => None,
        }
    }
}

/// A low-rank delta on one projection: `y += scale · B (A x)` with
/// `A [rank, in]` and `B [out, rank]`, on the full-precision input `x`.
pub struct LowRank<B: Backend> {
    pub a: B::Buf,
    pub b: B::Buf,
    pub rank: usize,
    pub scale: f32,
}

/// Per-forward buffers for `n` tokens.
struct Work<B: Backend> {
    n: usize,
    all_logits: bool,
    /// The distinct LoRA ranks on the model, ascending.
    lora_ranks: Vec<usize>,
    ids: B::Ids,
    pos: B::Ids,
    /// The current block's input (the embedding, then each block's output).
    x: B::Buf,
    /// One block's activations, reused by every layer.
    acts: BlockActs<B>,
    /// `[n, rank]` per entry of `lora_ranks` (LoRA's intermediate product).
    t: Vec<B::Buf>,
    /// The final norm's output and inverse RMS.
    xn: B::Buf,
    rstd: B::Buf,
    last: B::Buf,
    logits: B::Buf,
}

impl<B: Backend> Work<B> {
    fn new(
        b: &B,
        cfg: &BitNetConfig,
        n: usize,
        all_logits: bool,
        lora_ranks: Vec<usize>,
    ) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        let rows = if all_logits { n } else { 1 };
        Ok(Work {
            n,
            all_logits,
            t: lora_ranks
                .iter()
                .map(|&r| b.zeros(n * r))
                .collect::<Result<_, _>>()?,
            lora_ranks,
            ids: b.upload_ids(&vec![0; n])?,
            pos: b.upload_ids(&vec![0; n])?,
            x: b.zeros(n * h)?,
            acts: BlockActs::new(b, cfg, n)?,
            xn: b.zeros(n * h)?,
            rstd: b.zeros(n)?,
            last: b.zeros(h)?,
            logits: b.zeros(rows * cfg.vocab_size)?,
        })
    }
}

/// Where a step's input tokens come from.
#[derive(Clone, Copy)]
enum Feed<'a> {
    Host(&'a [u32]),
    /// The work buffers' ids, written on the device by the previous step's
    /// argmax (one token).
    Device,
}

/// Keys and values of every layer, `[ctx, n_kv_heads, head_dim]` each.
struct KvCache<B: Backend> {
    k: Vec<B::Buf>,
    v: Vec<B::Buf>,
    ctx: usize,
    len: usize,
}

/// The inference projection: BitLinear plus every low-rank delta on it.
struct Infer<'a, B: Backend> {
    cfg: &'a BitNetConfig,
    mode: ActQuant,
    lora: &'a HashMap<(usize, Proj), Vec<LowRank<B>>>,
    /// `[n, rank]` scratch per distinct rank, ascending by `ranks`.
    t: &'a mut [B::Buf],
    ranks: &'a [usize],
    fused: bool,
}

impl<B: Backend> BlockHooks<B> for Infer<'_, B> {
    type Error = BackendError;
    fn project(
        &mut self,
        be: &B,
        at: Site<'_, B>,
        x: &B::Buf,
        y: &mut B::Buf,
    ) -> Result<(), BackendError> {
        block::bitlinear(be, self.mode, at.weight, x, y, at.rows);
        let (out, inp) = at.proj.shape(self.cfg);
        let deltas = self.lora.get(&(at.layer, at.proj));
        for d in deltas.map_or(&[][..], Vec::as_slice) {
            let i = self
                .ranks
                .binary_search(&d.rank)
                .expect("rank has a buffer");
            let t = &mut self.t[i];
            be.matmul(x, &d.a, t, Gemm::new(at.rows, inp, d.rank).trans_b());
            let up = Gemm::new(at.rows, d.rank, out).trans_b().alpha(d.scale);
            be.matmul(t, &d.b, y, up.accumulate());
        }
        Ok(())
    }

    fn fusable(&self, layer: usize) -> bool {
        self.fused
            && self.mode == ActQuant::PerTokenInt8
            && !self.lora.keys().any(|&(l, _)| l == layer)
    }
}

/// What can go wrong running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Weights(Box<WeightError>),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("token id {id} at position {pos} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange { id: u32, pos: usize, vocab: usize },
    #[error(
        "{needed} tokens do not fit the context of {ctx} ({cached} already cached); \
         shorten the prompt or raise --ctx (max_position_embeddings is {max_pos})"
    )]
    ContextFull {
        needed: usize,
        cached: usize,
        ctx: usize,
        max_pos: usize,
    },
    #[error("LoRA: {0}")]
    Lora(String),
    #[error(
        "tensor {tensor}: element {index} is {value}, beyond the f16 range (|x| < 65520); \
         keep the embedding and head in f32 (--head f32, HeadPrecision::F32)"
    )]
    HalfRange {
        tensor: String,
        index: usize,
        value: f32,
    },
    #[error("empty input: at least one token is needed")]
    Empty,
}

impl From<WeightError> for ModelError {
    fn from(e: WeightError) -> Self {
        ModelError::Weights(Box::new(e))
    }
}

impl HiddenAct {
    pub fn activation(self) -> Activation {
        match self {
            HiddenAct::Relu2 => Activation::Relu2,
            HiddenAct::Silu => Activation::Silu,
        }
    }
}

impl<B: Backend> Model<B> {
    /// Upload every weight from `src` (one tensor at a time) onto `backend`,
    /// the embedding and head in the backend's default precision
    /// ([`HeadPrecision::default_for`]: f16 on a GPU, f32 on the CPU).
    pub fn load(backend: B, src: &dyn WeightSource) -> Result<Self, ModelError> {
        let head = HeadPrecision::default_for(&backend);
        Self::load_with_head(backend, src, head)
    }

    /// [`Model::load`] with the embedding and head stored in `head`
    /// precision (one table when they are tied).
    pub fn load_with_head(
        backend: B,
        src: &dyn WeightSource,
        head: HeadPrecision,
    ) -> Result<Self, ModelError> {
        let cfg = src.config().clone();
        let dense = |key: Param| -> Result<B::Buf, ModelError> {
            Ok(backend.upload(&src.f32_tensor(key)?)?)
        };
        let table = |key: Param| -> Result<Table<B>, ModelError> {
            Table::upload(&backend, key, &src.f32_tensor(key)?, head)
        };
        let embed = table(Param::Embed)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| Layer::load(&backend, src, l))
            .collect::<Result<Vec<_>, _>>()?;
        let norm = dense(Param::FinalNorm)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(table(Param::Head)?)
        };
        Ok(Model {
            cfg,
            backend,
            embed,
            layers,
            norm,
            lm_head,
            cache: None,
            work: None,
            act_quant: ActQuant::default(),
            fused: true,
            lora: HashMap::new(),
        })
    }

    /// A dense (f32) parameter on the device: the embedding, the final norm,
    /// the untied head or a layer's norm; `None` for a projection (packed
    /// ternary: [`Layer::proj`]), a head the model ties to the embedding, or
    /// an embedding or head stored in f16 ([`Model::embed`] holds it).
    pub fn param(&self, key: Param) -> Option<&B::Buf> {
        match key {
            Param::Embed => self.embed.as_f32(),
            Param::FinalNorm => Some(&self.norm),
            Param::Head => self.lm_head.as_ref().and_then(Table::as_f32),
            Param::Norm(l, n) => self.layers.get(l).map(|layer| layer.norm(n)),
            Param::Proj(..) => None,
        }
    }

    /// [`Model::param`], mutable (trainers update these in place).
    pub fn param_mut(&mut self, key: Param) -> Option<&mut B::Buf> {
        self.backend_and_params_mut().1.into_param(key)
    }

    /// The backend and the dense parameters, borrowed apart: for an
    /// optimizer that updates parameters on the device.
    pub fn backend_and_params_mut(&mut self) -> (&B, DenseParamsMut<'_, B>) {
        let params = DenseParamsMut {
            embed: &mut self.embed,
            norm: &mut self.norm,
            lm_head: self.lm_head.as_mut(),
            layers: &mut self.layers,
        };
        (&self.backend, params)
    }

    /// The output head: the untied `lm_head`, or the embedding.
    pub fn head(&self) -> &Table<B> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// How the embedding and the head are stored.
    pub fn head_precision(&self) -> HeadPrecision {
        self.embed.precision()
    }

    /// Add a low-rank delta `scale · B A` to projection `p` of layer `layer`
    /// (`a` is `[rank, in]`, `b` is `[out, rank]`, row-major). Deltas on the
    /// same projection add up. Drops the KV cache contents.
    pub fn add_lora(
        &mut self,
        layer: usize,
        p: Proj,
        a: &[f32],
        b: &[f32],
        rank: usize,
        scale: f32,
    ) -> Result<(), ModelError> {
        let (out, inp) = p.shape(&self.cfg);
        if layer >= self.layers.len() || rank == 0 || a.len() != rank * inp || b.len() != out * rank
        {
            return Err(ModelError::Lora(format!(
                "layer {layer} {}: A has {} values and B {} for rank {rank}; the model needs \
                 [{rank}, {inp}] and [{out}, {rank}]",
                p.hf_name(),
                a.len(),
                b.len()
            )));
        }
        let d = LowRank {
            a: self.backend.upload(a)?,
            b: self.backend.upload(b)?,
            rank,
            scale,
        };
        self.lora.entry((layer, p)).or_default().push(d);
        self.reset();
        Ok(())
    }

    /// Remove every low-rank delta. Drops the KV cache contents.
    pub fn clear_lora(&mut self) {
        self.lora.clear();
        self.reset();
    }

    /// Choose how the projections treat activations (default
    /// [`ActQuant::PerTokenInt8`]). Takes effect from the next `forward`; the
    /// KV cache is kept, so reset it when switching mid-sequence.
    pub fn set_activation_quant(&mut self, q: ActQuant) {
        self.act_quant = q;
    }

    /// Run inference steps through the backend's fused block ops
    /// ([`tern_backend::fused`]; the default) or through the plain op
    /// sequence. Both give the same values; the plain sequence is what
    /// layers with LoRA deltas or float activations always run.
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
    }

    /// The current activation mode.
    pub fn activation_quant(&self) -> ActQuant {
        self.act_quant
    }

    /// Tokens currently held in the KV cache.
    pub fn cached_tokens(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.len)
    }

    /// Drop the cache contents (the next call starts at position 0).
    pub fn reset(&mut self) {
        if let Some(c) = &mut self.cache {
            c.len = 0;
        }
    }

    /// Allocate a KV cache for `ctx` positions (clamped to the config's
    /// `max_position_embeddings`). Drops any cached tokens.
    pub fn set_context(&mut self, ctx: usize) -> Result<(), ModelError> {
        let ctx = ctx.clamp(1, self.cfg.max_position_embeddings);
        let n = ctx * self.cfg.kv_dim();
        let mut k = Vec::with_capacity(self.layers.len());
        let mut v = Vec::with_capacity(self.layers.len());
        for _ in 0..self.layers.len() {
            k.push(self.backend.zeros(n)?);
            v.push(self.backend.zeros(n)?);
        }
        self.cache = Some(KvCache { k, v, ctx, len: 0 });
        Ok(())
    }

    /// Run `tokens` after the cached ones; return logits `[rows, vocab]` for
    /// every new position (`all_logits`) or only for the last one.
    pub fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>, ModelError> {
        self.step(Feed::Host(tokens), all_logits)?;
        let work = self.work.as_ref().expect("left by step");
        Ok(self.backend.download(&work.logits)?)
    }

    /// Greedy decoding kept on the device: feed `first` after the cached
    /// tokens, then each step's most likely token, `n` steps in all, with no
    /// host round trip per token (the choice is [`Backend::argmax`] of each
    /// step's logits, the same as [`crate::sample::argmax`] on downloaded
    /// ones). Returns the chosen tokens, ending at the first one in `stop`
    /// (included; the host looks every few steps, so a few tokens past it
    /// may have been computed, and are dropped from the cache). The last
    /// token returned is not in the cache yet: the next call feeds it.
    pub fn decode_greedy(
        &mut self,
        first: u32,
        n: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>, ModelError> {
        /// Steps between looks for a stop token.
        const LOOK: usize = 16;
        if n == 0 {
            return Ok(Vec::new());
        }
        let start = self.cached_tokens();
        self.check_room(n)?;
        let vocab = self.cfg.vocab_size;
        let mut hist = self.backend.upload_ids(&vec![0; n])?;
        self.step(Feed::Host(&[first]), false)?;
        let mut done = n;
        for t in 0..n {
            let w = self.work.as_mut().expect("left by step");
            self.backend
                .argmax(&w.logits, 1, vocab, &mut w.ids, Some((&mut hist, t)));
            if t + 1 == n {
                break;
            }
            if !stop.is_empty() && (t + 1) % LOOK == 0 {
                let ids = self.backend.download_ids(&hist)?;
                if let Some(s) = ids[..=t].iter().position(|i| stop.contains(i)) {
                    done = s + 1;
                    break;
                }
            }
            self.step(Feed::Device, false)?;
        }
        let mut ids = self.backend.download_ids(&hist)?;
        if let Some(s) = ids[..done].iter().position(|i| stop.contains(i)) {
            done = s + 1;
        }
        ids.truncate(done);
        // the cache holds `first` and every returned token but the last
        if let Some(c) = &mut self.cache {
            c.len = start + done;
        }
        Ok(ids)
    }

    /// An error unless `n` more tokens fit the context.
    fn check_room(&mut self, n: usize) -> Result<(), ModelError> {
        if self.cache.is_none() {
            self.set_context(self.cfg.max_position_embeddings)?;
        }
        let cache = self.cache.as_ref().expect("allocated above");
        if cache.len + n > cache.ctx {
            return Err(ModelError::ContextFull {
                needed: n,
                cached: cache.len,
                ctx: cache.ctx,
                max_pos: self.cfg.max_position_embeddings,
            });
        }
        Ok(())
    }

    /// One forward step after the cached tokens, leaving the logits in the
    /// work buffers: of `tokens` from the host, or of the one token the
    /// previous step's argmax left in them ([`Feed::Device`]).
    fn step(&mut self, feed: Feed<'_>, all_logits: bool) -> Result<(), ModelError> {
        let n = match feed {
            Feed::Host(tokens) => tokens.len(),
            Feed::Device => 1,
        };
        if n == 0 {
            return Err(ModelError::Empty);
        }
        if let Feed::Host(tokens) = feed {
            let vocab = self.cfg.vocab_size;
            if let Some((pos, &id)) = tokens
                .iter()
                .enumerate()
                .find(|(_, &id)| id as usize >= vocab)
            {
                return Err(ModelError::TokenOutOfRange { id, pos, vocab });
            }
        }
        self.check_room(n)?;
        let cfg = &self.cfg;
        let cache = self.cache.as_mut().expect("allocated by check_room");
        let n_past = cache.len;
        let b = &self.backend;
        let mut lora_ranks: Vec<usize> = self.lora.values().flatten().map(|d| d.rank).collect();
        lora_ranks.sort_unstable();
        lora_ranks.dedup();
        let mut work = match self.work.take() {
            Some(w) if w.n == n && w.all_logits == all_logits && w.lora_ranks == lora_ranks => w,
            _ if matches!(feed, Feed::Device) => {
                unreachable!("a device-fed step follows a one-token step")
            }
            // the old buffers are dropped before the new ones are allocated
            _ => Work::new(b, cfg, n, all_logits, lora_ranks)?,
        };
        let w = &mut work;
        let h = cfg.hidden_size;
        if let Feed::Host(tokens) = feed {
            b.write_ids(&mut w.ids, tokens);
        }
        let positions: Vec<u32> = (n_past..n_past + n).map(|p| p as u32).collect();
        b.write_ids(&mut w.pos, &positions);
        self.embed.gather(b, &w.ids, &mut w.x, h);
        let mut hooks = Infer {
            cfg,
            mode: self.act_quant,
            lora: &self.lora,
            t: &mut w.t,
            ranks: &w.lora_ranks,
            fused: self.fused,
        };
        for (l, layer) in self.layers.iter().enumerate() {
            let attend = Attend::Cache {
                k: &mut cache.k[l],
                v: &mut cache.v[l],
                n_past,
                ctx: cache.ctx,
            };
            block::forward(
                b,
                cfg,
                l,
                layer,
                &mut hooks,
                &w.x,
                &w.pos,
                attend,
                &mut w.acts,
            )?;
            // the block's output is the next block's input
            std::mem::swap(&mut w.x, &mut w.acts.out);
        }
        cache.len += n;
        b.rmsnorm(
            &w.x,
            &self.norm,
            &mut w.xn,
            &mut w.rstd,
            n,
            h,
            cfg.rms_norm_eps,
        );
        let rows = if all_logits { n } else { 1 };
        let last = if all_logits {
            &w.xn
        } else {
            b.copy_range(&w.xn, (n - 1) * h, &mut w.last, 0, h);
            &w.last
        };
        block::logits(b, cfg, self.head(), last, &mut w.logits, rows);
        self.work = Some(work);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::RandomWeights;
    use tern_backend::Cpu;

    fn tiny() -> Model<Cpu> {
        let cfg = BitNetConfig::from_json_str(
            "tiny",
            r#"{"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50,
                "hidden_act": "silu", "tie_word_embeddings": true,
                "max_position_embeddings": 32}"#,
        )
        .unwrap();
        Model::load(Cpu::with_threads(2), &RandomWeights::new(cfg, 3)).unwrap()
    }

    /// `src` with the embedding and head rounded to f16 values (held in f32).
    struct Rounded<'a>(&'a dyn WeightSource);

    impl WeightSource for Rounded<'_> {
        fn config(&self) -> &BitNetConfig {
            self.0.config()
        }
        fn f32_tensor(&self, key: Param) -> Result<Vec<f32>, WeightError> {
            let v = self.0.f32_tensor(key)?;
            Ok(match key {
                Param::Embed | Param::Head => {
                    let h = Cpu::with_threads(1).upload_half(&v).unwrap();
                    h.values().iter().map(|h| h.to_f32()).collect()
                }
                _ => v,
            })
        }
        fn ternary(
            &self,
            layer: usize,
            p: Proj,
        ) -> Result<Box<dyn tern_backend::TernarySource + '_>, WeightError> {
            self.0.ternary(layer, p)
        }
    }

    /// BIT-IDENTICAL on the CPU: a model with an f16 embedding and head
    /// gives exactly the logits of the f32 model whose tables hold the
    /// f16-rounded values (prefill and cached decode), tied or untied; one
    /// table when tied.
    #[test]
    fn an_f16_head_is_the_f32_head_of_the_rounded_tables() {
        for tied in [true, false] {
            let cfg = BitNetConfig::from_json_str(
                "tiny",
                &format!(
                    r#"{{"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50,
                    "hidden_act": "relu2", "tie_word_embeddings": {tied},
                    "max_position_embeddings": 32}}"#
                ),
            )
            .unwrap();
            let src = RandomWeights::new(cfg, 4);
            let cpu = || Cpu::with_threads(2);
            let mut half = Model::load_with_head(cpu(), &src, HeadPrecision::F16).unwrap();
            let mut exact =
                Model::load_with_head(cpu(), &Rounded(&src), HeadPrecision::F32).unwrap();
            let mut plain = Model::load(cpu(), &src).unwrap();
            assert_eq!(half.head_precision(), HeadPrecision::F16);
            assert_eq!(
                plain.head_precision(),
                HeadPrecision::F32,
                "the CPU default"
            );
            assert_eq!(half.lm_head.is_none(), tied);
            assert!(
                half.param(Param::Embed).is_none(),
                "an f16 table is no f32 param"
            );
            let toks = [1u32, 7, 3, 44, 9];
            let a = half.forward(&toks, true).unwrap();
            let b = exact.forward(&toks, true).unwrap();
            assert_eq!(a, b, "tied {tied}: prefill");
            let (d1, d2) = (half.forward(&[12], false), exact.forward(&[12], false));
            assert_eq!(d1.unwrap(), d2.unwrap(), "tied {tied}: decode");
            // the f32 model differs from both, by the rounding of the tables
            let c = plain.forward(&toks, true).unwrap();
            let diff = a
                .iter()
                .zip(&c)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(diff > 0.0, "tied {tied}: f16 rounding changed nothing");
        }
    }

    #[test]
    fn float_activations_are_a_separate_mode() {
        let toks = [1u32, 7, 3, 44, 9, 0, 12, 5];
        let mut m = tiny();
        assert_eq!(m.activation_quant(), ActQuant::PerTokenInt8);
        let int8 = m.forward(&toks, true).unwrap();
        m.set_activation_quant(ActQuant::None);
        assert_eq!(m.activation_quant(), ActQuant::None);
        m.reset();
        let float = m.forward(&toks, true).unwrap();
        let diff = int8
            .iter()
            .zip(&float)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let scale = float.iter().map(|v| v.abs()).fold(0f32, f32::max);
        // Different arithmetic (int8 rounding is gone) but the same model:
        // the logits move by the quantization noise, not by their own size.
        assert!(diff > 0.0, "float mode reproduced the int8 logits exactly");
        assert!(
            diff < 0.1 * scale,
            "float mode moved the logits by {diff} (max |logit| {scale})"
        );
        // Decoding one token at a time through the cache gives the same rows.
        m.reset();
        let mut rows = Vec::new();
        for &t in &toks {
            rows.extend(m.forward(&[t], true).unwrap());
        }
        let drift = rows
            .iter()
            .zip(&float)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            drift < 1e-5,
            "cached decode drifted by {drift} in float mode"
        );
    }
}
