//! The BitNet b1.58 forward pass over any [`Backend`], with a KV cache.
//!
//! Block (pre-norm, Llama-shaped, with BitNet's two extra sub-norms):
//! ```text
//! h   = x + o_proj(attn_sub_norm(attn(rope(q(n1)), rope(k(n1)), v(n1))))   n1 = input_layernorm(x)
//! out = h + down(ffn_sub_norm(act(gate(n2)) * up(n2)))                     n2 = post_attention_layernorm(h)
//! ```
//! Every projection is a BitLinear (ternary weights, per-token int8
//! activations); the embedding, the norms and the LM head stay in f32.
//! [`ActQuant::None`] switches the projections to float activations, a
//! diagnostic mode for comparing with runtimes that do not quantize them.

use crate::config::{BitNetConfig, HiddenAct};
use crate::weights::{Proj, WeightError, WeightSource};
use tern_backend::{Activation, AttnDims, Backend, BackendError, Gemm};

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

/// One transformer block on the device.
pub struct Layer<B: Backend> {
    pub attn_norm: B::Buf,
    pub q: B::Ternary,
    pub k: B::Ternary,
    pub v: B::Ternary,
    pub o: B::Ternary,
    pub attn_sub_norm: B::Buf,
    pub ffn_norm: B::Buf,
    pub gate: B::Ternary,
    pub up: B::Ternary,
    pub down: B::Ternary,
    pub ffn_sub_norm: B::Buf,
}

/// A loaded model: weights on the device plus its KV cache.
pub struct Model<B: Backend> {
    pub cfg: BitNetConfig,
    pub backend: B,
    /// `[vocab, hidden]`.
    pub embed: B::Buf,
    pub layers: Vec<Layer<B>>,
    pub norm: B::Buf,
    /// `[vocab, hidden]`; `None` when tied to the embedding.
    pub lm_head: Option<B::Buf>,
    cache: Option<KvCache<B>>,
    /// Activation buffers of the last forward, reused while the token count
    /// stays the same (every decode step), so decoding allocates nothing.
    work: Option<Work<B>>,
    act_quant: ActQuant,
    /// Low-rank deltas (LoRA) per projection, applied in the order added.
    lora: std::collections::HashMap<(usize, Proj), Vec<LowRank<B>>>,
}

/// A low-rank delta on one projection: `y += scale · B (A x)` with
/// `A [rank, in]` and `B [out, rank]`, on the full-precision input `x`.
pub struct LowRank<B: Backend> {
    pub a: B::Buf,
    pub b: B::Buf,
    pub rank: usize,
    pub scale: f32,
}

/// Keys and values of every layer, `[ctx, n_kv_heads, head_dim]` each.
/// Per-forward activation buffers for `n` tokens.
struct Work<B: Backend> {
    n: usize,
    all_logits: bool,
    /// The distinct LoRA ranks on the model, ascending.
    lora_ranks: Vec<usize>,
    ids: B::Ids,
    pos: B::Ids,
    x: B::Buf,
    xn: B::Buf,
    rstd: B::Buf,
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    att: B::Buf,
    att_n: B::Buf,
    lse: B::Buf,
    proj: B::Buf,
    g: B::Buf,
    u: B::Buf,
    a: B::Buf,
    a_n: B::Buf,
    /// `[n, rank]` per entry of `lora_ranks` (LoRA's intermediate product).
    t: Vec<B::Buf>,
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
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
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
            xn: b.zeros(n * h)?,
            rstd: b.zeros(n)?,
            q: b.zeros(n * qd)?,
            k: b.zeros(n * kvd)?,
            v: b.zeros(n * kvd)?,
            att: b.zeros(n * qd)?,
            att_n: b.zeros(n * qd)?,
            lse: b.zeros(cfg.num_attention_heads * n)?,
            proj: b.zeros(n * h)?,
            g: b.zeros(n * f)?,
            u: b.zeros(n * f)?,
            a: b.zeros(n * f)?,
            a_n: b.zeros(n * f)?,
            last: b.zeros(h)?,
            logits: b.zeros(rows * cfg.vocab_size)?,
        })
    }
}

struct KvCache<B: Backend> {
    k: Vec<B::Buf>,
    v: Vec<B::Buf>,
    ctx: usize,
    len: usize,
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
    /// Upload every weight from `src` (one tensor at a time) onto `backend`.
    pub fn load(backend: B, src: &dyn WeightSource) -> Result<Self, ModelError> {
        let cfg = src.config().clone();
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        let norm = |name: &str, len: usize| -> Result<B::Buf, ModelError> {
            let v = src.f32_tensor(name, &[len])?;
            Ok(backend.upload(&v)?)
        };
        let ternary = |layer: usize, p: Proj| -> Result<B::Ternary, ModelError> {
            let t = src.ternary(layer, p)?;
            Ok(backend.upload_ternary(t.as_ref())?)
        };
        let embed = {
            let v = src.f32_tensor(crate::weights::EMBED, &[cfg.vocab_size, h])?;
            backend.upload(&v)?
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let n = |suffix: &str| format!("layers.{l}.{suffix}");
            layers.push(Layer {
                attn_norm: norm(&n("input_layernorm"), h)?,
                q: ternary(l, Proj::Q)?,
                k: ternary(l, Proj::K)?,
                v: ternary(l, Proj::V)?,
                o: ternary(l, Proj::O)?,
                attn_sub_norm: norm(&n("attn_sub_norm"), cfg.q_dim())?,
                ffn_norm: norm(&n("post_attention_layernorm"), h)?,
                gate: ternary(l, Proj::Gate)?,
                up: ternary(l, Proj::Up)?,
                down: ternary(l, Proj::Down)?,
                ffn_sub_norm: norm(&n("ffn_sub_norm"), f)?,
            });
        }
        let final_norm = norm(crate::weights::NORM, h)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            let v = src.f32_tensor(crate::weights::LM_HEAD, &[cfg.vocab_size, h])?;
            Some(backend.upload(&v)?)
        };
        Ok(Model {
            cfg,
            backend,
            embed,
            layers,
            norm: final_norm,
            lm_head,
            cache: None,
            work: None,
            act_quant: ActQuant::default(),
            lora: std::collections::HashMap::new(),
        })
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
        if tokens.is_empty() {
            return Err(ModelError::Empty);
        }
        if self.cache.is_none() {
            self.set_context(self.cfg.max_position_embeddings)?;
        }
        let cfg = &self.cfg;
        for (pos, &id) in tokens.iter().enumerate() {
            if id as usize >= cfg.vocab_size {
                return Err(ModelError::TokenOutOfRange {
                    id,
                    pos,
                    vocab: cfg.vocab_size,
                });
            }
        }
        let cache = self.cache.as_mut().expect("allocated above");
        let n = tokens.len();
        let n_past = cache.len;
        if n_past + n > cache.ctx {
            return Err(ModelError::ContextFull {
                needed: n,
                cached: n_past,
                ctx: cache.ctx,
                max_pos: cfg.max_position_embeddings,
            });
        }
        let b = &self.backend;
        let mut lora_ranks: Vec<usize> = self.lora.values().flatten().map(|d| d.rank).collect();
        lora_ranks.sort_unstable();
        lora_ranks.dedup();
        let mut work = match self.work.take() {
            Some(w) if w.n == n && w.all_logits == all_logits && w.lora_ranks == lora_ranks => w,
            // the old buffers are dropped before the new ones are allocated
            _ => Work::new(b, cfg, n, all_logits, lora_ranks)?,
        };
        let w = &mut work;
        let h = cfg.hidden_size;
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.n_kv_heads(), cfg.head_dim());
        let (eps, f) = (cfg.rms_norm_eps, cfg.intermediate_size);
        let act = cfg.hidden_act.activation();
        let act_quant = self.act_quant;
        let lora = &self.lora;
        let linear = |l: usize,
                      p: Proj,
                      wt: &B::Ternary,
                      x: &B::Buf,
                      y: &mut B::Buf,
                      ts: &mut Vec<B::Buf>,
                      ranks: &[usize]| {
            match act_quant {
                ActQuant::PerTokenInt8 => b.ternary_matmul(wt, x, y, n),
                ActQuant::None => b.ternary_matmul_float(wt, x, y, n),
            }
            let (out, inp) = p.shape(cfg);
            for d in lora.get(&(l, p)).map_or(&[][..], Vec::as_slice) {
                let t = &mut ts[ranks.binary_search(&d.rank).expect("rank has a buffer")];
                b.matmul(x, &d.a, t, gemm(n, inp, d.rank, true, 1.0, 0.0));
                b.matmul(t, &d.b, y, gemm(n, d.rank, out, true, d.scale, 1.0));
            }
        };

        b.write_ids(&mut w.ids, tokens);
        let positions: Vec<u32> = (n_past..n_past + n).map(|p| p as u32).collect();
        b.write_ids(&mut w.pos, &positions);
        b.embedding(&self.embed, &w.ids, &mut w.x, h);
        let dims = AttnDims {
            batch: 1,
            n_new: n,
            n_past,
            kv_len: cache.ctx,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
        };
        for (l, layer) in self.layers.iter().enumerate() {
            b.rmsnorm(&w.x, &layer.attn_norm, &mut w.xn, &mut w.rstd, n, h, eps);
            linear(
                l,
                Proj::Q,
                &layer.q,
                &w.xn,
                &mut w.q,
                &mut w.t,
                &w.lora_ranks,
            );
            linear(
                l,
                Proj::K,
                &layer.k,
                &w.xn,
                &mut w.k,
                &mut w.t,
                &w.lora_ranks,
            );
            linear(
                l,
                Proj::V,
                &layer.v,
                &w.xn,
                &mut w.v,
                &mut w.t,
                &w.lora_ranks,
            );
            b.rope(&mut w.q, &w.pos, n, nh, hd, cfg.rope_theta, false);
            b.rope(&mut w.k, &w.pos, n, nkv, hd, cfg.rope_theta, false);
            b.copy_range(&w.k, 0, &mut cache.k[l], n_past * kvd, n * kvd);
            b.copy_range(&w.v, 0, &mut cache.v[l], n_past * kvd, n * kvd);
            b.attention(&w.q, &cache.k[l], &cache.v[l], &mut w.att, &mut w.lse, dims);
            b.rmsnorm(
                &w.att,
                &layer.attn_sub_norm,
                &mut w.att_n,
                &mut w.rstd,
                n,
                qd,
                eps,
            );
            linear(
                l,
                Proj::O,
                &layer.o,
                &w.att_n,
                &mut w.proj,
                &mut w.t,
                &w.lora_ranks,
            );
            b.axpy(1.0, &w.proj, &mut w.x);

            b.rmsnorm(&w.x, &layer.ffn_norm, &mut w.xn, &mut w.rstd, n, h, eps);
            linear(
                l,
                Proj::Gate,
                &layer.gate,
                &w.xn,
                &mut w.g,
                &mut w.t,
                &w.lora_ranks,
            );
            linear(
                l,
                Proj::Up,
                &layer.up,
                &w.xn,
                &mut w.u,
                &mut w.t,
                &w.lora_ranks,
            );
            b.gate(&w.g, &w.u, &mut w.a, act);
            b.rmsnorm(
                &w.a,
                &layer.ffn_sub_norm,
                &mut w.a_n,
                &mut w.rstd,
                n,
                f,
                eps,
            );
            linear(
                l,
                Proj::Down,
                &layer.down,
                &w.a_n,
                &mut w.proj,
                &mut w.t,
                &w.lora_ranks,
            );
            b.axpy(1.0, &w.proj, &mut w.x);
        }
        cache.len += n;
        b.rmsnorm(&w.x, &self.norm, &mut w.xn, &mut w.rstd, n, h, eps);
        let rows = if all_logits { n } else { 1 };
        let last = if all_logits {
            &w.xn
        } else {
            b.copy_range(&w.xn, (n - 1) * h, &mut w.last, 0, h);
            &w.last
        };
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        b.matmul(
            last,
            head,
            &mut w.logits,
            Gemm {
                m: rows,
                k: h,
                n: cfg.vocab_size,
                trans_a: false,
                trans_b: true,
                alpha: 1.0,
                beta: 0.0,
            },
        );
        let out = b.download(&w.logits);
        self.work = Some(work);
        Ok(out?)
    }
}

/// `C = alpha · A · op(B) + beta · C` with `A [m, k]`.
fn gemm(m: usize, k: usize, n: usize, trans_b: bool, alpha: f32, beta: f32) -> Gemm {
    Gemm {
        m,
        k,
        n,
        trans_a: false,
        trans_b,
        alpha,
        beta,
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
