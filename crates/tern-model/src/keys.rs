//! Typed names of a model's parameters, and the one place that spells them.
//!
//! [`Proj`] names one of a block's seven BitLinear projections, [`Norm`] one
//! of its four RMSNorms, [`Param`] any tensor of the model. Weight sources,
//! the GGUF exporter, the converter, the trainers and the checkpoint
//! generator all go through these keys; the strings of the three naming
//! schemes (tern's canonical names, Hugging Face's, llama.cpp's GGUF) are
//! written only here.

use crate::config::BitNetConfig;

/// The seven BitLinear projections of a block, in checkpoint order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// Position in [`Proj::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// `(out_features, in_features)` under `cfg`.
    pub fn shape(self, cfg: &BitNetConfig) -> (usize, usize) {
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        match self {
            Proj::Q => (cfg.q_dim(), h),
            Proj::K | Proj::V => (cfg.kv_dim(), h),
            Proj::O => (h, cfg.q_dim()),
            Proj::Gate | Proj::Up => (f, h),
            Proj::Down => (h, f),
        }
    }

    /// transformers' module path inside a layer (`self_attn.q_proj`).
    pub fn hf_name(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }

    /// The module's own name (`q_proj`), as PEFT's `target_modules` lists it.
    pub fn module_name(self) -> &'static str {
        let path = self.hf_name();
        &path[path.rfind('.').map_or(0, |i| i + 1)..]
    }

    /// llama.cpp's tensor stem inside `blk.N` (`attn_q`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        }
    }

    /// A projection by a short or module name: `q` or `q_proj`, ... `down`
    /// or `down_proj`.
    pub fn parse(name: &str) -> Option<Proj> {
        let short = name.strip_suffix("_proj").unwrap_or(name);
        Proj::ALL
            .into_iter()
            .find(|p| p.module_name().strip_suffix("_proj") == Some(short))
    }
}

/// The four RMSNorms of a block, in checkpoint order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Norm {
    /// Before attention (`input_layernorm`).
    Attn,
    /// On the attention output, before `o_proj` (`attn_sub_norm`).
    AttnSub,
    /// Before the feed-forward (`post_attention_layernorm`).
    Ffn,
    /// On the gated activation, before `down_proj` (`ffn_sub_norm`).
    FfnSub,
}

impl Norm {
    pub const ALL: [Norm; 4] = [Norm::Attn, Norm::AttnSub, Norm::Ffn, Norm::FfnSub];

    /// Position in [`Norm::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Length of the weight under `cfg`.
    pub fn dim(self, cfg: &BitNetConfig) -> usize {
        match self {
            Norm::Attn | Norm::Ffn => cfg.hidden_size,
            Norm::AttnSub => cfg.q_dim(),
            Norm::FfnSub => cfg.intermediate_size,
        }
    }

    /// tern's canonical name inside a layer (`attn_sub_norm`).
    pub fn name(self) -> &'static str {
        match self {
            Norm::Attn => "input_layernorm",
            Norm::AttnSub => "attn_sub_norm",
            Norm::Ffn => "post_attention_layernorm",
            Norm::FfnSub => "ffn_sub_norm",
        }
    }

    /// transformers' module paths inside a layer: the BitNet name first,
    /// then the 1bitLLM checkpoints' older one where it differs.
    pub fn hf_names(self) -> &'static [&'static str] {
        match self {
            Norm::Attn => &["input_layernorm"],
            Norm::AttnSub => &["self_attn.attn_sub_norm", "self_attn.inner_attn_ln"],
            Norm::Ffn => &["post_attention_layernorm"],
            Norm::FfnSub => &["mlp.ffn_sub_norm", "mlp.ffn_layernorm"],
        }
    }

    /// llama.cpp's tensor stem inside `blk.N` (`attn_norm`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Norm::Attn => "attn_norm",
            Norm::AttnSub => "attn_sub_norm",
            Norm::Ffn => "ffn_norm",
            Norm::FfnSub => "ffn_sub_norm",
        }
    }
}

/// A tensor of a layer, without the layer number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerTensor {
    Norm(Norm),
    Proj(Proj),
}

impl LayerTensor {
    /// The order transformers' modules and llama.cpp's converter store a
    /// layer's tensors in (what loaders read and the exporter writes).
    pub const FILE_ORDER: [LayerTensor; 11] = [
        LayerTensor::Norm(Norm::Attn),
        LayerTensor::Proj(Proj::Q),
        LayerTensor::Proj(Proj::K),
        LayerTensor::Proj(Proj::V),
        LayerTensor::Proj(Proj::O),
        LayerTensor::Norm(Norm::AttnSub),
        LayerTensor::Norm(Norm::Ffn),
        LayerTensor::Proj(Proj::Gate),
        LayerTensor::Proj(Proj::Up),
        LayerTensor::Proj(Proj::Down),
        LayerTensor::Norm(Norm::FfnSub),
    ];

    /// The tensor in layer `l`.
    pub fn at(self, l: usize) -> Param {
        match self {
            LayerTensor::Norm(n) => Param::Norm(l, n),
            LayerTensor::Proj(p) => Param::Proj(l, p),
        }
    }
}

/// Any tensor of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Param {
    /// Token embedding `[vocab, hidden]`.
    Embed,
    /// The norm before the head `[hidden]`.
    FinalNorm,
    /// The untied output head `[vocab, hidden]`.
    Head,
    /// A norm of a layer.
    Norm(usize, Norm),
    /// A projection of a layer.
    Proj(usize, Proj),
}

impl Param {
    /// Every tensor of a `cfg` model in checkpoint order: embedding, final
    /// norm, head (when untied), then per layer its four norms and seven
    /// projections.
    pub fn all(cfg: &BitNetConfig) -> impl Iterator<Item = Param> + '_ {
        let head = (!cfg.tie_word_embeddings).then_some(Param::Head);
        [Param::Embed, Param::FinalNorm]
            .into_iter()
            .chain(head)
            .chain((0..cfg.num_hidden_layers).flat_map(Param::layer))
    }

    /// The eleven tensors of layer `l`: its norms, then its projections.
    pub fn layer(l: usize) -> impl Iterator<Item = Param> {
        let norms = Norm::ALL.into_iter().map(move |n| Param::Norm(l, n));
        norms.chain(Proj::ALL.into_iter().map(move |p| Param::Proj(l, p)))
    }

    /// Shape under `cfg`, outermost first.
    pub fn shape(self, cfg: &BitNetConfig) -> Vec<usize> {
        match self {
            Param::Embed | Param::Head => vec![cfg.vocab_size, cfg.hidden_size],
            Param::FinalNorm => vec![cfg.hidden_size],
            Param::Norm(_, n) => vec![n.dim(cfg)],
            Param::Proj(_, p) => {
                let (o, i) = p.shape(cfg);
                vec![o, i]
            }
        }
    }

    /// tern's canonical name (`embed_tokens`, `layers.3.attn_sub_norm`,
    /// `layers.3.self_attn.q_proj`): what errors report and what seeds
    /// `random:` weights.
    pub fn name(self) -> String {
        match self {
            Param::Embed => "embed_tokens".into(),
            Param::FinalNorm => "norm".into(),
            Param::Head => "lm_head".into(),
            Param::Norm(l, n) => format!("layers.{l}.{}", n.name()),
            Param::Proj(l, p) => format!("layers.{l}.{}", p.hf_name()),
        }
    }

    /// The key of a canonical name ([`Param::name`]).
    pub fn parse(name: &str) -> Option<Param> {
        match name {
            "embed_tokens" => return Some(Param::Embed),
            "norm" => return Some(Param::FinalNorm),
            "lm_head" => return Some(Param::Head),
            _ => {}
        }
        let (l, rest) = name.strip_prefix("layers.")?.split_once('.')?;
        Param::in_layer(l, rest, Norm::name, Proj::hf_name)
    }

    /// Hugging Face tensor names: the one transformers writes first, then
    /// older aliases a loader should also accept.
    pub fn hf_names(self) -> Vec<String> {
        match self {
            Param::Embed => vec!["model.embed_tokens.weight".into()],
            Param::FinalNorm => vec!["model.norm.weight".into()],
            Param::Head => vec!["lm_head.weight".into()],
            Param::Norm(l, n) => n
                .hf_names()
                .iter()
                .map(|m| format!("model.layers.{l}.{m}.weight"))
                .collect(),
            Param::Proj(l, p) => vec![format!("model.layers.{l}.{}.weight", p.hf_name())],
        }
    }

    /// The Hugging Face tensor name transformers writes.
    pub fn hf_name(self) -> String {
        self.hf_names().swap_remove(0)
    }

    /// llama.cpp's GGUF tensor name (`token_embd.weight`, `blk.3.attn_q.weight`).
    pub fn gguf_name(self) -> String {
        match self {
            Param::Embed => "token_embd.weight".into(),
            Param::FinalNorm => "output_norm.weight".into(),
            Param::Head => "output.weight".into(),
            Param::Norm(l, n) => format!("blk.{l}.{}.weight", n.gguf_name()),
            Param::Proj(l, p) => format!("blk.{l}.{}.weight", p.gguf_name()),
        }
    }

    /// The GGUF tensor holding a projection's f32 per-tensor scale
    /// (`blk.3.attn_q.scale`); `None` for other tensors.
    pub fn gguf_scale_name(self) -> Option<String> {
        match self {
            Param::Proj(l, p) => Some(format!("blk.{l}.{}.scale", p.gguf_name())),
            _ => None,
        }
    }

    /// The key of a GGUF tensor name ([`Param::gguf_name`]).
    pub fn from_gguf_name(name: &str) -> Option<Param> {
        match name {
            "token_embd.weight" => return Some(Param::Embed),
            "output_norm.weight" => return Some(Param::FinalNorm),
            "output.weight" => return Some(Param::Head),
            _ => {}
        }
        let (l, rest) = name.strip_prefix("blk.")?.split_once('.')?;
        Param::in_layer(
            l,
            rest.strip_suffix(".weight")?,
            Norm::gguf_name,
            Proj::gguf_name,
        )
    }

    /// The tensor of layer `l` (a number) whose name in one scheme is `stem`.
    fn in_layer(
        l: &str,
        stem: &str,
        norm: fn(Norm) -> &'static str,
        proj: fn(Proj) -> &'static str,
    ) -> Option<Param> {
        let l = l.parse::<usize>().ok()?;
        let norm = Norm::ALL.into_iter().find(|&n| norm(n) == stem);
        let proj = Proj::ALL.into_iter().find(|&p| proj(p) == stem);
        norm.map(|n| Param::Norm(l, n))
            .or(proj.map(|p| Param::Proj(l, p)))
    }

    /// Does AdamW's weight decay apply (projections and an untied head; not
    /// the embedding or the norms)?
    pub fn decays(self) -> bool {
        matches!(self, Param::Proj(..) | Param::Head)
    }
}

impl std::fmt::Display for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tied: bool) -> BitNetConfig {
        BitNetConfig::from_json_str(
            "keys",
            &format!(
                r#"{{"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50,
                    "hidden_act": "silu", "tie_word_embeddings": {tied},
                    "max_position_embeddings": 32}}"#
            ),
        )
        .unwrap()
    }

    #[test]
    fn names_parse_back_to_their_keys() {
        for tied in [true, false] {
            let c = cfg(tied);
            let all: Vec<Param> = Param::all(&c).collect();
            assert_eq!(all.len(), 2 + usize::from(!tied) + 2 * 11);
            let mut seen = std::collections::HashSet::new();
            for k in all {
                assert!(seen.insert(k), "{k} listed twice");
                assert_eq!(Param::parse(&k.name()), Some(k), "{}", k.name());
                assert_eq!(Param::from_gguf_name(&k.gguf_name()), Some(k));
                assert_eq!(k.hf_names()[0], k.hf_name());
            }
        }
        assert_eq!(Param::parse("layers.x.attn_sub_norm"), None);
        assert_eq!(Param::from_gguf_name("blk.0.attn_q.scale"), None);
        // The spellings the checkpoints use.
        assert_eq!(
            Param::Norm(3, Norm::AttnSub).hf_names(),
            [
                "model.layers.3.self_attn.attn_sub_norm.weight",
                "model.layers.3.self_attn.inner_attn_ln.weight"
            ]
        );
        assert_eq!(
            Param::Norm(0, Norm::Ffn).gguf_name(),
            "blk.0.ffn_norm.weight"
        );
        assert_eq!(
            Param::Proj(1, Proj::O).gguf_scale_name().as_deref(),
            Some("blk.1.attn_output.scale")
        );
    }

    #[test]
    fn indices_follow_all_and_short_names_parse() {
        for (i, p) in Proj::ALL.into_iter().enumerate() {
            assert_eq!(p.index(), i);
            assert_eq!(Proj::parse(p.module_name()), Some(p));
        }
        for (i, n) in Norm::ALL.into_iter().enumerate() {
            assert_eq!(n.index(), i);
        }
        let mut file: Vec<Param> = LayerTensor::FILE_ORDER.map(|t| t.at(1)).to_vec();
        let mut all: Vec<Param> = Param::layer(1).collect();
        file.sort();
        all.sort();
        assert_eq!(
            file, all,
            "the file order lists every tensor of a layer once"
        );
        assert_eq!(Proj::parse("gate"), Some(Proj::Gate));
        assert_eq!(Proj::parse("down_proj"), Some(Proj::Down));
        assert_eq!(Proj::parse("attn"), None);
        let c = cfg(false);
        assert_eq!(Param::Norm(0, Norm::AttnSub).shape(&c), [c.q_dim()]);
        assert_eq!(Param::Proj(0, Proj::Down).shape(&c), [64, 96]);
    }
}
