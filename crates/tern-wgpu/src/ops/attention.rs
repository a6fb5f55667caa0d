//! RoPE and attention on the device.
//!
//! - `rope`: one thread per (row, rotation pair); the phase is computed in
//!   fixed-point turns with integer arithmetic (exact range reduction at any
//!   position), sin/cos by short series on +-pi/4 (`shaders/rope.wgsl`).
//! - `attention`: flash-style forward (`shaders/attention.wgsl`): a workgroup
//!   of 64 threads owns a block of query rows sharing one kv head (16
//!   tokens, or the query heads of a GQA group when decoding) and walks key
//!   tiles staged in workgroup memory with an online softmax. When there are
//!   few workgroups (decode), the keys are split across workgroups and the
//!   partial results merged (`shaders/attention_combine.wgsl`).
//! - `attention_backward`: D = rowsum(dout * out)
//!   (`shaders/attention_delta.wgsl`), then one kernel per key block
//!   accumulating dK/dV over the query tiles, one per query block
//!   accumulating dQ over the key tiles (`shaders/attention_bwd.wgsl`); no
//!   atomics.
//!
//! Tile sizes follow head_dim so that every kernel stays within 16 KiB of
//! workgroup memory ([`choose`]); the per-thread micro-tiles are unrolled
//! here ([`Tile::subs`]) so that their accumulators stay in registers (a
//! loop over a private array would put them in local memory on NVIDIA).
//!
//! Tensors larger than one storage binding are processed in windows: chunks
//! of (batch element, kv-head range, token range) for the queries and of key
//! rows for the keys, the forward merging each key window into the output
//! (log-sum-exp rescaling), the backward accumulating.

use super::basic::preprocess;
use super::f;
use crate::ctx::View;
use crate::{WBuf, WIds, Wgpu};
use std::sync::Arc;
use tern_backend::AttnDims;

const ROPE: &str = include_str!("../shaders/rope.wgsl");
const ATTN: &str = include_str!("../shaders/attention.wgsl");
const COMBINE: &str = include_str!("../shaders/attention_combine.wgsl");
const DELTA: &str = include_str!("../shaders/attention_delta.wgsl");
const BWD: &str = include_str!("../shaders/attention_bwd.wgsl");

/// Threads per workgroup of the attention kernels.
const NT: usize = 64;
/// Fewer workgroups than this and the forward splits the keys (decode).
const SPLIT_TARGET: usize = 1024;
/// Keys per split at least.
const SPLIT_MIN_KEYS: usize = 128;
/// Powers `theta^(-2^(k+1)/head_dim)` passed to the rope kernel (pairs up to 4096).
const ROPE_POWERS: usize = 12;

/// A 0.64 fixed-point fraction (`0 <= x < 1`) as (lo, hi) words.
fn fixed64(x: f64) -> [u32; 2] {
    let v = (x * 18_446_744_073_709_551_616.0) as u64; // saturating
    [v as u32, (v >> 32) as u32]
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn rope(
    b: &Wgpu,
    x: &mut WBuf,
    pos: &WIds,
    rows: usize,
    n_heads: usize,
    head_dim: usize,
    theta: f32,
    inverse: bool,
) {
    assert_eq!(x.len, rows * n_heads * head_dim, "wgpu rope: x length");
    assert_eq!(pos.len, rows, "wgpu rope: pos length");
    assert!(
        head_dim % 2 == 0,
        "wgpu rope: head_dim {head_dim} must be even"
    );
    if rows == 0 || n_heads == 0 || head_dim == 0 {
        return;
    }
    assert!(
        theta > 1.0 && theta.is_finite(),
        "wgpu rope: theta {theta} must be a finite number above 1"
    );
    let half = head_dim / 2;
    assert!(
        half <= 1 << ROPE_POWERS,
        "wgpu rope: head_dim {head_dim} too large"
    );
    let mut words = vec![0u32; 28];
    words[..2].copy_from_slice(&fixed64(1.0 / (2.0 * std::f64::consts::PI)));
    for kk in 0..ROPE_POWERS {
        let e = -2.0 * (1u64 << kk) as f64 / head_dim as f64;
        words[2 + 2 * kk..4 + 2 * kk].copy_from_slice(&fixed64((theta as f64).powf(e)));
    }
    let pipe = b.ctx.pipeline("attn/rope", || ROPE.to_string());
    let w = b.ctx.window_elems();
    let hr_total = rows * n_heads;
    let per = if x.len <= w && rows <= w {
        hr_total
    } else {
        assert!(
            head_dim <= w,
            "wgpu rope: one head row exceeds a binding window"
        );
        w / head_dim
    };
    let mut hr0 = 0;
    while hr0 < hr_total {
        let hr1 = (hr0 + per).min(hr_total);
        let row0 = hr0 / n_heads;
        let nrows = (hr1 - 1) / n_heads + 1 - row0;
        let (vx, sx) = b.ctx.view(&x.buf, hr0 * head_dim, (hr1 - hr0) * head_dim);
        let (vp, sp) = b.ctx.view(&pos.buf, row0, nrows);
        let mut params = words.clone();
        params.extend_from_slice(&[
            nrows as u32,
            half as u32,
            head_dim as u32,
            n_heads as u32,
            hr0 as u32,
            hr1 as u32,
            row0 as u32,
            sx,
            sp,
            inverse as u32,
        ]);
        let groups = b.ctx.grid(((nrows * half) as u32).div_ceil(64));
        b.ctx.dispatch(&pipe, &params, &[vx, vp], groups);
        hr0 = hr1;
    }
}

// ---- tiling -----------------------------------------------------------------

/// Floats of workgroup memory the tiles of a kernel may use (16 KiB at most,
/// less room for the partial sums of split dot products).
fn wg_floats(b: &Wgpu) -> usize {
    (b.ctx.limits.max_compute_workgroup_storage_size.min(16384) / 4) as usize - 2 * NT
}

/// Which kernel a [`Tile`] generates code for.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Fwd,
    BwdKv,
    BwdQ,
}

/// Shapes of one attention kernel: `rows` query rows and `keys` keys per
/// tile (the gradient tile of [`Kind::BwdKv`] runs over the keys, the others
/// over the rows).
struct Tile {
    kind: Kind,
    hd: usize,
    rows: usize,
    keys: usize,
}

impl Tile {
    /// Defines for the preprocessor.
    fn defs(&self) -> Vec<&'static str> {
        let mut d = vec![match self.kind {
            Kind::Fwd => "FWD",
            Kind::BwdKv => "KV",
            Kind::BwdQ => "DQ",
        }];
        if self.micro().2 > 1 {
            d.push("DSPLIT");
        }
        d
    }

    /// Score micro-tile `(sr, sk, ds)`: `sr` rows x `sk` keys per thread, `ds`
    /// threads per micro-tile (when the tile has fewer scores than threads).
    fn micro(&self) -> (usize, usize, usize) {
        let (rows, keys) = (self.rows, self.keys);
        let (mut sr, mut sk) = (1, 1);
        while (rows / sr) * (keys / sk) > NT {
            if sk < keys && (sk <= sr || sr >= rows) {
                sk *= 2;
            } else {
                sr *= 2;
            }
        }
        let slots = (rows / sr) * (keys / sk);
        (sr, sk, (NT / slots).max(1))
    }

    /// The pipeline of this tile; q/k/v (and dout) are read as vec4 when
    /// head_dim and every window shift are multiples of 4.
    fn pipeline(&self, b: &Wgpu, src: &str, shifts: &[u32]) -> Arc<crate::ctx::Kernel> {
        let gv4 = self.hd % 4 == 0 && shifts.iter().all(|&s| s % 4 == 0);
        let mut defs = self.defs();
        if gv4 {
            defs.push("GV4");
        }
        let key = format!(
            "attn/{}/{}/{}/{}/{gv4}",
            defs[0], self.hd, self.rows, self.keys
        );
        b.ctx
            .pipeline(&key, || preprocess(src, &defs, &self.subs()))
    }

    /// Floats of workgroup memory of a kernel of `kind` with these tiles
    /// (without the partial sums of split dot products).
    fn floats(kind: Kind, hd: usize, rows: usize, keys: usize) -> usize {
        let row = (hd.div_ceil(4) + 1) * 4;
        match kind {
            Kind::Fwd => rows * row + keys * row + rows * keys + 4 * rows,
            Kind::BwdKv => 2 * keys * row + 2 * rows * row + 2 * rows * keys + 3 * rows,
            Kind::BwdQ => 2 * rows * row + 2 * keys * row + rows * keys + 3 * rows,
        }
    }

    /// Substitutions: sizes and the unrolled micro-tile code.
    fn subs(&self) -> Vec<(&'static str, String)> {
        let (rows, keys, hd) = (self.rows, self.keys, self.hd);
        let hd4 = hd.div_ceil(4);
        let hp4 = hd4 + 1;
        let (sr, sk, ds) = self.micro();
        let (srows, scols) = (rows / sr, keys / sk);
        let out_rows = if self.kind == Kind::BwdKv { keys } else { rows };
        let rg = out_rows.min(4);
        let tr = out_rows / rg;
        let dl = NT / rg;
        let td = hd4.div_ceil(dl);
        let bwd = self.kind != Kind::Fwd;
        // a vec4 index of the output micro-tile, clamped into the row when
        // the lanes overrun it (those values are never stored)
        let dim = |c: usize| {
            if dl * (c + 1) > hd4 {
                format!("min(dl + {}u, HD4 - 1u)", dl * c)
            } else {
                format!("dl + {}u", dl * c)
            }
        };
        let mut s_decl = String::new();
        let mut s_body = String::new();
        let mut s_store = String::new();
        let ka = if bwd { "ks" } else { "kv" };
        for a in 0..sr {
            s_body += &format!("let xq{a} = qs[(sr + {}u) * HP4 + d];\n", srows * a);
            if bwd {
                s_body += &format!("let xo{a} = dos[(sr + {}u) * HP4 + d];\n", srows * a);
            }
        }
        for bb in 0..sk {
            s_body += &format!("let xk{bb} = {ka}[(sc + {}u) * HP4 + d];\n", scols * bb);
            if bwd {
                s_body += &format!("let xv{bb} = vs[(sc + {}u) * HP4 + d];\n", scols * bb);
            }
        }
        for a in 0..sr {
            for bb in 0..sk {
                s_decl += &format!("var sa{a}_{bb} = 0.0;\n");
                s_body += &format!("sa{a}_{bb} += dot(xq{a}, xk{bb});\n");
                if bwd {
                    s_decl += &format!("var ga{a}_{bb} = 0.0;\n");
                    s_body += &format!("ga{a}_{bb} += dot(xo{a}, xv{bb});\n");
                }
                let (r, j) = (
                    format!("sr + {}u", srows * a),
                    format!("sc + {}u", scols * bb),
                );
                s_store += &match (bwd, ds > 1) {
                    (false, false) => format!(
                        "ss[({r}) * BK + {j}] = select(NEG, sa{a}_{bb}, kt + {j} < rlim[{r}]);\n"
                    ),
                    (false, true) => {
                        format!(
                            "sp[part * {}u + ({r}) * BK + {j}] = sa{a}_{bb};\n",
                            rows * keys
                        )
                    }
                    (true, false) => format!("put({r}, {j}, sa{a}_{bb}, ga{a}_{bb}, kt, kend);\n"),
                    (true, true) => format!(
                        "sp[part * {n}u + ({r}) * BK + {j}] = sa{a}_{bb};\n\
                         gp[part * {n}u + ({r}) * BK + {j}] = ga{a}_{bb};\n",
                        n = rows * keys
                    ),
                };
            }
        }
        // row maxima and sums (forward): loads, then a tree
        let tree = |op: &str, name: &str, init: Option<&str>| {
            let mut code = String::new();
            let mut terms: Vec<String> = (0..keys)
                .map(|j| {
                    code += &format!("let {name}{j} = ss[o + {j}u];\n");
                    format!("{name}{j}")
                })
                .collect();
            if let Some(i) = init {
                terms.push(i.to_string());
            }
            while terms.len() > 1 {
                let mut next = Vec::new();
                for pair in terms.chunks(2) {
                    next.push(if pair.len() == 2 {
                        match op {
                            "max" => format!("max({}, {})", pair[0], pair[1]),
                            _ => format!("({} + {})", pair[0], pair[1]),
                        }
                    } else {
                        pair[0].clone()
                    });
                }
                terms = next;
            }
            (code, terms[0].clone())
        };
        let (mcode, mexpr) = tree("max", "m", Some("mo"));
        let row_max = format!("{mcode}let mx = {mexpr};\n");
        let (scode, sexpr) = tree("+", "u", None);
        let row_sum = format!("{scode}let sum = {sexpr};\n");
        // gradient / output micro-tile: TR x TD vec4 accumulators
        let mut acc_decl = String::new();
        let mut acc_scale = String::new();
        let mut acc_body = String::new();
        let mut out_store = String::new();
        let accs: &[&str] = if self.kind == Kind::BwdKv {
            &["gk", "gv"]
        } else {
            &["o"]
        };
        for a in 0..tr {
            for c in 0..td {
                for n in accs {
                    acc_decl += &format!("var {n}{a}_{c} = vec4<f32>(0.0);\n");
                }
            }
        }
        match self.kind {
            Kind::Fwd => {
                for a in 0..tr {
                    acc_scale += &format!("let al{a} = ra[rg + {}u];\n", rg * a);
                    acc_body += &format!("let p{a} = ss[(rg + {}u) * BK + j];\n", rg * a);
                    for c in 0..td {
                        acc_scale += &format!("o{a}_{c} *= al{a};\n");
                    }
                }
                for c in 0..td {
                    acc_body += &format!("let v{c} = kv[j * HP4 + {}];\n", dim(c));
                }
            }
            Kind::BwdKv => {
                for a in 0..tr {
                    acc_body += &format!("let p{a} = ps[r * BK + rg + {}u];\n", rg * a);
                    acc_body += &format!("let e{a} = dss[r * BK + rg + {}u];\n", rg * a);
                }
                for c in 0..td {
                    acc_body += &format!("let v{c} = dos[r * HP4 + {}];\n", dim(c));
                    acc_body += &format!("let w{c} = qs[r * HP4 + {}];\n", dim(c));
                }
            }
            Kind::BwdQ => {
                for a in 0..tr {
                    acc_body += &format!("let p{a} = dss[(rg + {}u) * BK + j];\n", rg * a);
                }
                for c in 0..td {
                    acc_body += &format!("let v{c} = ks[j * HP4 + {}];\n", dim(c));
                }
            }
        }
        for a in 0..tr {
            for c in 0..td {
                if self.kind == Kind::BwdKv {
                    acc_body += &format!("gv{a}_{c} += p{a} * v{c};\ngk{a}_{c} += e{a} * w{c};\n");
                } else {
                    acc_body += &format!("o{a}_{c} += p{a} * v{c};\n");
                }
            }
        }
        // stores, one block per accumulator row, one statement per element
        for a in 0..tr {
            let mut inner = String::new();
            for c in 0..td {
                let mut comps = String::new();
                for (i, x) in ["x", "y", "z", "w"].iter().enumerate() {
                    let e = format!("d + {i}u");
                    let body = match self.kind {
                        Kind::Fwd => format!(
                            "var y = o{a}_{c}.{x} * wn;\n\
                             if (p.first == 0u) {{ y += out[ob + {e}] * wo; }}\n\
                             out[ob + {e}] = y;\n"
                        ),
                        Kind::BwdKv => format!(
                            "var x = gk{a}_{c}.{x};\nvar y = gv{a}_{c}.{x};\n\
                             if (p.first == 0u) {{ x += dk[p.sg1 + o + {e}]; y += dv[p.sg2 + o + {e}]; }}\n\
                             dk[p.sg1 + o + {e}] = x;\ndv[p.sg2 + o + {e}] = y;\n"
                        ),
                        Kind::BwdQ => format!(
                            "var x = o{a}_{c}.{x} * p.scale;\n\
                             if (p.first == 0u) {{ x += dq[o + {e}]; }}\n\
                             dq[o + {e}] = x;\n"
                        ),
                    };
                    if i > 0 && hd % 4 != 0 {
                        comps += &format!("if ({e} < HD) {{\n{body}}}\n");
                    } else {
                        comps += &format!("{{\n{body}}}\n");
                    }
                }
                let d4 = format!("dl + {}u", dl * c);
                if dl * (c + 1) > hd4 {
                    inner += &format!("if ({d4} < HD4) {{\nlet d = 4u * ({d4});\n{comps}}}\n");
                } else {
                    inner += &format!("{{\nlet d = 4u * ({d4});\n{comps}}}\n");
                }
            }
            let r = format!("rg + {}u", rg * a);
            out_store += &match self.kind {
                Kind::Fwd => format!(
                    "{{\nlet r = {r};\nlet f = row0 + r;\nif (f < nrows) {{\n\
                     let ob = p.so + po + b * p.qsb + (f / p.group) * p.qst + (kvl * p.group + f % p.group) * HD;\n\
                     let wn = rl[r];\nlet wo = ra[r];\n{inner}}}\n}}\n"
                ),
                Kind::BwdKv => format!(
                    "{{\nlet j = {r};\nif (kb0 + j < kbe) {{\n\
                     let o = b * p.ksb + (kb0 + j - p.k0) * p.kst + kvl * HD;\n{inner}}}\n}}\n"
                ),
                Kind::BwdQ => format!(
                    "{{\nlet f = row0 + {r};\nif (f < nrows) {{\n\
                     let o = p.sg1 + b * p.qsb + (f / p.group) * p.qst + (kvl * p.group + f % p.group) * HD;\n{inner}}}\n}}\n"
                ),
            };
        }
        // register staging of the tiles loaded one step ahead: K / V tiles
        // (forward: K, and V one phase later; dQ: both), query rows (dK/dV)
        let staged = if self.kind == Kind::BwdKv { rows } else { keys };
        let nv = (staged * hd4).div_ceil(NT);
        let lim = if self.kind == Kind::BwdKv {
            "R * HD4"
        } else {
            "BK * HD4"
        };
        let mut pk_decl = String::new();
        let mut pk_load = String::new();
        let mut pk_store = String::new();
        let mut pv_load = String::new();
        let mut pv_store = String::new();
        for i in 0..nv {
            let guard = (i + 1) * NT > staged * hd4;
            let wrap = |body: String| {
                if guard {
                    format!(
                        "{{\nlet e = tid + {}u;\nif (e < {lim}) {{\n{body}}}\n}}\n",
                        i * NT
                    )
                } else {
                    format!("{{\nlet e = tid + {}u;\n{body}}}\n", i * NT)
                }
            };
            let at = "(e / HD4) * HP4 + e % HD4";
            match self.kind {
                Kind::Fwd => {
                    let load = |reg: &str, kvar: &str, f: &str, sh: &str| {
                        wrap(format!(
                            "{reg}{i} = vec4<f32>(0.0);\nlet j = e / HD4;\nlet d4 = e % HD4;\n\
                             if ({kvar} + j < kend) {{\n\
                             {reg}{i} = {f}(p.{sh} + kb + ({kvar} + j - p.j0) * p.kst + 4u * d4, min(4u, HD - 4u * d4));\n}}\n"
                        ))
                    };
                    pk_decl += &format!("var pk{i} = vec4<f32>(0.0);\n");
                    pk_load += &load("pk", "kq", "ldk", "sk");
                    pk_store += &wrap(format!("kv[{at}] = pk{i};\n"));
                    pv_load += &format!("var pv{i} = vec4<f32>(0.0);\n");
                    pv_load += &load("pv", "kt", "ldv", "sv");
                    pv_store += &wrap(format!("kv[{at}] = pv{i};\n"));
                }
                Kind::BwdQ => {
                    pk_decl +=
                        &format!("var pk{i} = vec4<f32>(0.0);\nvar pw{i} = vec4<f32>(0.0);\n");
                    pk_load += &wrap(format!(
                        "pk{i} = vec4<f32>(0.0);\npw{i} = vec4<f32>(0.0);\n\
                         let j = e / HD4;\nlet d4 = e % HD4;\n\
                         if (kq + j < kend) {{\n\
                         let o = b * p.ksb + (kq + j - p.k0) * p.kst + kvl * HD + 4u * d4;\n\
                         let n = min(4u, HD - 4u * d4);\n\
                         pk{i} = ldk(p.sk + o, n);\npw{i} = ldv(p.sv + o, n);\n}}\n"
                    ));
                    pk_store += &wrap(format!("ks[{at}] = pk{i};\nvs[{at}] = pw{i};\n"));
                }
                Kind::BwdKv => {
                    pk_decl +=
                        &format!("var pq{i} = vec4<f32>(0.0);\nvar pd{i} = vec4<f32>(0.0);\n");
                    pk_load += &wrap(format!(
                        "pq{i} = vec4<f32>(0.0);\npd{i} = vec4<f32>(0.0);\n\
                         let d4 = e % HD4;\nlet f = fq + e / HD4;\n\
                         if (f < nrows) {{\n\
                         let o = b * p.qsb + (f / p.group) * p.qst + (kvl * p.group + f % p.group) * HD + 4u * d4;\n\
                         let n = min(4u, HD - 4u * d4);\n\
                         pq{i} = ldq(p.sq + o, n) * p.scale;\npd{i} = lddo(p.sdo + o, n);\n}}\n"
                    ));
                    pk_store += &wrap(format!("qs[{at}] = pq{i};\ndos[{at}] = pd{i};\n"));
                }
            }
        }
        if self.kind == Kind::BwdKv {
            pk_decl += "var prm = 0u;\nvar prl = 0.0;\nvar prd = 0.0;\n";
            pk_load += "if (tid < R) {\nlet f = fq + tid;\nprm = 0u;\nprl = 0.0;\nprd = 0.0;\n\
                        if (f < nrows) {\nprm = p.t0 + f / p.group + 1u;\n\
                        let li = b * p.lsb + (kvl * p.group + f % p.group) * p.n_new + f / p.group;\n\
                        prl = lse[p.sl + li];\nprd = dd[p.sd + li];\n}\n}\n";
            pk_store += "if (tid < R) {\nrlim[tid] = prm;\nrls[tid] = prl;\nrdd[tid] = prd;\n}\n";
        }
        let (pr_decl, pr_load, pr_store) = if self.kind == Kind::BwdKv {
            (pk_decl.clone(), pk_load.clone(), pk_store.clone())
        } else {
            Default::default()
        };
        vec![
            ("PR_DECL", pr_decl),
            ("PR_LOAD", pr_load),
            ("PR_STORE", pr_store),
            ("PK_DECL", pk_decl),
            ("PK_LOAD", pk_load),
            ("PK_STORE", pk_store),
            ("PV_LOAD", pv_load),
            ("PV_STORE", pv_store),
            ("HD4", hd4.to_string()),
            ("HD", hd.to_string()),
            ("HP4", hp4.to_string()),
            ("R", rows.to_string()),
            ("BK", keys.to_string()),
            ("DS", ds.to_string()),
            ("SROWS", srows.to_string()),
            ("SCOLS", scols.to_string()),
            ("RG", rg.to_string()),
            ("DL", dl.to_string()),
            ("QSZ", (rows * hp4).to_string()),
            ("KSZ", (keys * hp4).to_string()),
            ("SSZ", (rows * keys).to_string()),
            ("SPSZ", (ds * rows * keys).to_string()),
            ("S_DECL", s_decl),
            ("S_BODY", s_body),
            ("S_STORE", s_store),
            ("ROW_MAX", row_max),
            ("ROW_SUM", row_sum),
            ("ACC_DECL", acc_decl),
            ("ACC_SCALE", acc_scale),
            ("ACC_BODY", acc_body),
            ("OUT_STORE", out_store),
        ]
    }
}

/// Power-of-two tile sizes `(rows, keys)` (rows at most `max_rows`, keys at
/// most 64) whose workgroup memory `fp(rows, keys)` fits in `budget` floats,
/// with the most rows x keys (ties: more rows, or more keys).
fn choose(
    budget: usize,
    max_rows: usize,
    prefer_rows: bool,
    fp: impl Fn(usize, usize) -> usize,
) -> (usize, usize) {
    let mut best = (0, 0);
    let mut rows = max_rows;
    while rows >= 1 {
        let mut keys = 64;
        while keys > 1 && fp(rows, keys) > budget {
            keys /= 2;
        }
        if fp(rows, keys) <= budget {
            let (a, b) = (rows * keys, best.0 * best.1);
            let better = if prefer_rows {
                rows > best.0
            } else {
                keys > best.1
            };
            if a > b || (a == b && better) {
                best = (rows, keys);
            }
        }
        rows /= 2;
    }
    assert!(
        best.0 > 0,
        "wgpu attention: head_dim too large for workgroup memory"
    );
    best
}

/// Chunks of a windowed pass over one batch element: head blocks of `ch`
/// kv heads with all their query heads (`gn` = group), or, when one group
/// does not fit, of `gn` query heads of one kv head (`ch` = 1); `tq` query
/// tokens and `tk` key rows per window.
struct Plan {
    ch: usize,
    gn: usize,
    tq: usize,
    tk: usize,
}

impl Plan {
    fn new(w: usize, n_new: usize, keys: usize, nh: usize, nkv: usize, hd: usize) -> Plan {
        let g = nh / nkv;
        // spans of one window: q-like [tq tokens, ch*gn heads], lse-like
        // [ch*gn heads, tq tokens], k-like [tk rows, ch kv heads]
        let fits = |ch: usize, gn: usize, tq: usize, tk: usize| {
            (tq - 1) * nh * hd + ch * gn * hd <= w
                && (ch * gn - 1) * n_new + tq <= w
                && (tk - 1) * nkv * hd + ch * hd <= w
        };
        let (mut ch, mut gn) = (nkv, g);
        while ch > 1 && !fits(ch, gn, 1, 1) {
            ch -= 1;
        }
        while gn > 1 && !fits(ch, gn, 1, 1) {
            gn -= 1;
        }
        assert!(
            fits(ch, gn, 1, 1),
            "wgpu attention: one head ({hd} dims, {n_new} tokens) exceeds a binding window of \
             {w} elements"
        );
        let grow = |ok: &dyn Fn(usize) -> bool, max: usize| {
            let mut n = 1;
            while n < max && ok(n + 1) {
                let next = (n * 2).min(max);
                n = if ok(next) { next } else { n + 1 };
            }
            n
        };
        let tq = grow(&|t| fits(ch, gn, t, 1), n_new);
        let tk = grow(&|t| fits(ch, gn, 1, t), keys);
        Plan { ch, gn, tq, tk }
    }

    /// Head blocks `(first kv head, kv heads, first query head of the group, heads per kv head)`.
    fn blocks(&self, nkv: usize, g: usize) -> Vec<(usize, usize, usize, usize)> {
        let mut v = Vec::new();
        for c0 in (0..nkv).step_by(self.ch) {
            for gi0 in (0..g).step_by(self.gn) {
                v.push((c0, self.ch.min(nkv - c0), gi0, self.gn.min(g - gi0)));
            }
        }
        v
    }
}

fn check(d: &AttnDims, q: usize, k: usize, v: usize, out: usize, lse: usize) {
    assert!(
        d.n_kv_heads > 0 && d.n_heads % d.n_kv_heads == 0,
        "wgpu attention: n_heads {} is not a multiple of n_kv_heads {}",
        d.n_heads,
        d.n_kv_heads
    );
    assert!(
        d.n_past + d.n_new <= d.kv_len,
        "wgpu attention: n_past {} + n_new {} exceeds kv_len {}",
        d.n_past,
        d.n_new,
        d.kv_len
    );
    let nq = d.batch * d.n_new * d.n_heads * d.head_dim;
    let nk = d.batch * d.kv_len * d.n_kv_heads * d.head_dim;
    assert_eq!(q, nq, "wgpu attention: q length");
    assert_eq!(k, nk, "wgpu attention: k length");
    assert_eq!(v, nk, "wgpu attention: v length");
    assert_eq!(out, nq, "wgpu attention: out length");
    assert_eq!(
        lse,
        d.batch * d.n_heads * d.n_new,
        "wgpu attention: lse length"
    );
}

// ---- forward ------------------------------------------------------------------

pub(crate) fn attention(
    b: &Wgpu,
    q: &WBuf,
    k: &WBuf,
    v: &WBuf,
    out: &mut WBuf,
    lse: &mut WBuf,
    d: AttnDims,
) {
    check(&d, q.len, k.len, v.len, out.len, lse.len);
    let AttnDims {
        batch,
        n_new,
        n_past,
        kv_len,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
    } = d;
    if batch * n_new * nh == 0 {
        return;
    }
    if hd == 0 {
        // every score is 0: the log-sum-exp is ln(number of keys)
        let mut l = Vec::with_capacity(lse.len);
        for _ in 0..batch * nh {
            l.extend((0..n_new).map(|t| ((n_past + t + 1) as f32).ln()));
        }
        b.ctx.write_bytes(&lse.buf, 0, bytemuck::cast_slice(&l));
        return;
    }
    let g = nh / nkv;
    let rows_needed = n_new * g;
    let max_rows = if rows_needed <= 8 {
        rows_needed.next_power_of_two()
    } else {
        16
    };
    let (rows, keys) = choose(wg_floats(b), max_rows, true, |r, bk| {
        Tile::floats(Kind::Fwd, hd, r, bk)
    });
    let tile = Tile {
        kind: Kind::Fwd,
        hd,
        rows,
        keys,
    };
    // vec4 reads of q/k/v where head_dim and the window shifts allow
    let pipe = |shifts: &[u32]| tile.pipeline(b, ATTN, shifts);
    let w = b.ctx.window_elems();
    let scale = 1.0 / (hd as f32).sqrt();
    let (qrow, krow) = (nh * hd, nkv * hd);
    let n_keys = n_past + n_new;
    #[allow(clippy::too_many_arguments)]
    let params = |t0: usize,
                  nt: usize,
                  j0: usize,
                  j1: usize,
                  chunk: usize,
                  splits: usize,
                  sh: [u32; 5],
                  sb: [usize; 3],
                  first: bool,
                  part: [usize; 2]| {
        vec![
            n_new as u32,
            n_past as u32,
            t0 as u32,
            nt as u32,
            g as u32,
            j0 as u32,
            j1 as u32,
            chunk as u32,
            splits as u32,
            sh[0],
            sh[1],
            sh[2],
            sh[3],
            sh[4],
            sb[0] as u32,
            qrow as u32,
            sb[1] as u32,
            krow as u32,
            sb[2] as u32,
            first as u32,
            f(scale),
            part[0] as u32,
            part[1] as u32,
        ]
    };
    let qblocks = rows_needed.div_ceil(rows);
    if q.len <= w && k.len <= w && lse.len <= w {
        // everything in one binding each: one dispatch, keys split when the
        // grid is small (decode)
        let wgs = qblocks * nkv * batch;
        let mut splits = 1;
        if wgs < SPLIT_TARGET {
            splits = (SPLIT_TARGET / wgs).min(n_keys / SPLIT_MIN_KEYS).max(1);
        }
        let chunk = n_keys.div_ceil(splits).next_multiple_of(keys);
        splits = n_keys.div_ceil(chunk);
        let sb = [n_new * qrow, kv_len * krow, nh * n_new];
        let (vq, _) = b.ctx.view(&q.buf, 0, q.len);
        let (vk, _) = b.ctx.view(&k.buf, 0, k.len);
        let (vv, _) = b.ctx.view(&v.buf, 0, v.len);
        let grid = [qblocks as u32, nkv as u32, (batch * splits) as u32];
        // partial results of the splits (when they fit; else one pass)
        let part = if splits > 1 && splits * q.len <= w && splits * lse.len <= w {
            match (
                b.ctx.scratch("attn/po", (splits * q.len * 4) as u64),
                b.ctx.scratch("attn/pl", (splits * lse.len * 4) as u64),
            ) {
                (Ok(po), Ok(pl)) => Some((po, pl)),
                _ => None,
            }
        } else {
            None
        };
        if let Some((po, pl)) = part {
            let (vpo, _) = b.ctx.view(&po, 0, splits * q.len);
            let (vpl, _) = b.ctx.view(&pl, 0, splits * lse.len);
            let pr = params(
                0,
                n_new,
                0,
                kv_len,
                chunk,
                splits,
                [0; 5],
                sb,
                true,
                [q.len, lse.len],
            );
            b.ctx
                .dispatch(&pipe(&[0]), &pr, &[vq, vk, vv, vpo, vpl], grid);
            let comb = b.ctx.pipeline("attn/combine", || COMBINE.to_string());
            let (vo, _) = b.ctx.view(&out.buf, 0, out.len);
            let (vl, _) = b.ctx.view(&lse.buf, 0, lse.len);
            let cp = [
                q.len as u32,
                hd as u32,
                nh as u32,
                n_new as u32,
                splits as u32,
                q.len as u32,
                lse.len as u32,
            ];
            let groups = b.ctx.grid((q.len as u32).div_ceil(256));
            b.ctx.dispatch(&comb, &cp, &[vpo, vpl, vo, vl], groups);
        } else {
            let (vo, _) = b.ctx.view(&out.buf, 0, out.len);
            let (vl, _) = b.ctx.view(&lse.buf, 0, lse.len);
            let pr = params(0, n_new, 0, kv_len, kv_len, 1, [0; 5], sb, true, [0, 0]);
            let grid = [qblocks as u32, nkv as u32, batch as u32];
            b.ctx
                .dispatch(&pipe(&[0]), &pr, &[vq, vk, vv, vo, vl], grid);
        }
        return;
    }
    // windows: per batch element, head block and token range; key rows in
    // windows merged one after the other
    let plan = Plan::new(w, n_new, n_keys, nh, nkv, hd);
    for bb in 0..batch {
        for (c0, cn, gi0, gn) in plan.blocks(nkv, g) {
            let h0 = c0 * g + gi0;
            for t0 in (0..n_new).step_by(plan.tq) {
                let tn = plan.tq.min(n_new - t0);
                let qs = (bb * n_new + t0) * qrow + h0 * hd;
                let qn = (tn - 1) * qrow + ((cn - 1) * g + gn) * hd;
                let ls = (bb * nh + h0) * n_new + t0;
                let ln = ((cn - 1) * g + gn - 1) * n_new + tn;
                let (vq, sq) = b.ctx.view(&q.buf, qs, qn);
                let (vo, so) = b.ctx.view(&out.buf, qs, qn);
                let (vl, sl) = b.ctx.view(&lse.buf, ls, ln);
                let key_end = n_past + t0 + tn;
                for j0 in (0..key_end).step_by(plan.tk) {
                    let jn = plan.tk.min(key_end - j0);
                    let ks = (bb * kv_len + j0) * krow + c0 * hd;
                    let kn = (jn - 1) * krow + cn * hd;
                    let (vk, sk) = b.ctx.view(&k.buf, ks, kn);
                    let (vv, sv) = b.ctx.view(&v.buf, ks, kn);
                    let mut pr = params(
                        t0,
                        tn,
                        j0,
                        j0 + jn,
                        jn,
                        1,
                        [sq, sk, sv, so, sl],
                        [0, 0, 0],
                        j0 == 0,
                        [0, 0],
                    );
                    pr[4] = gn as u32;
                    let grid = [(tn * gn).div_ceil(rows) as u32, cn as u32, 1];
                    let pipe = pipe(&[sq, sk, sv]);
                    b.ctx.dispatch(&pipe, &pr, &[vq, vk, vv, vo, vl], grid);
                }
            }
        }
    }
}

/// A binding over the first `n` elements of `x` (`n` fits a window).
fn whole<'a>(b: &Wgpu, x: &'a wgpu::Buffer, n: usize) -> View<'a> {
    b.ctx.view(x, 0, n).0
}

// ---- backward -----------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward(
    b: &Wgpu,
    q: &WBuf,
    k: &WBuf,
    v: &WBuf,
    out: &WBuf,
    lse: &WBuf,
    dout: &WBuf,
    dq: &mut WBuf,
    dk: &mut WBuf,
    dv: &mut WBuf,
    d: AttnDims,
) {
    check(&d, q.len, k.len, v.len, out.len, lse.len);
    assert!(
        d.n_past == 0 && d.kv_len == d.n_new,
        "wgpu attention_backward: needs n_past = 0 and kv_len = n_new (got {} and {} vs {})",
        d.n_past,
        d.kv_len,
        d.n_new
    );
    assert_eq!(dout.len, q.len, "wgpu attention_backward: dout length");
    assert_eq!(dq.len, q.len, "wgpu attention_backward: dq length");
    assert_eq!(dk.len, k.len, "wgpu attention_backward: dk length");
    assert_eq!(dv.len, v.len, "wgpu attention_backward: dv length");
    let AttnDims {
        batch,
        n_new: tn_all,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        ..
    } = d;
    if q.len == 0 || k.len == 0 {
        return;
    }
    let g = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let (qrow, krow) = (nh * hd, nkv * hd);
    let budget = wg_floats(b);
    // dK/dV: `kk` keys per block, `rk` query rows per tile
    let (rk, kk) = choose(budget, 16, false, |r, bk| {
        Tile::floats(Kind::BwdKv, hd, r, bk)
    });
    let tile_kv = Tile {
        kind: Kind::BwdKv,
        hd,
        rows: rk,
        keys: kk,
    };
    // dQ: `rq` query rows per block, `kq` keys per tile
    let max_rows = if tn_all * g <= 8 {
        (tn_all * g).next_power_of_two()
    } else {
        16
    };
    let (rq, kq) = choose(budget, max_rows, true, |r, bk| {
        Tile::floats(Kind::BwdQ, hd, r, bk)
    });
    let tile_q = Tile {
        kind: Kind::BwdQ,
        hd,
        rows: rq,
        keys: kq,
    };
    let p_delta = b.ctx.pipeline("attn/delta", || DELTA.to_string());
    let p_kv = |shifts: &[u32]| tile_kv.pipeline(b, BWD, shifts);
    let p_q = |shifts: &[u32]| tile_q.pipeline(b, BWD, shifts);
    let dbuf = b.ctx.scratch_or_defer("attn/delta", (lse.len * 4) as u64);
    let w = b.ctx.window_elems();
    #[allow(clippy::too_many_arguments)]
    let params =
        |t0: usize, nt: usize, k0: usize, kn: usize, sh: [u32; 8], sb: [usize; 3], first: bool| {
            vec![
                tn_all as u32,
                g as u32,
                t0 as u32,
                nt as u32,
                k0 as u32,
                kn as u32,
                sh[0],
                sh[1],
                sh[2],
                sh[3],
                sh[4],
                sh[5],
                sh[6],
                sh[7],
                sb[0] as u32,
                qrow as u32,
                sb[1] as u32,
                krow as u32,
                sb[2] as u32,
                first as u32,
                f(scale),
            ]
        };
    let delta = |vdo,
                 sdo: u32,
                 vo,
                 so: u32,
                 vd,
                 sd: u32,
                 nb: usize,
                 nt: usize,
                 nhw: usize,
                 sb: [usize; 3]| {
        let n = nb * nt * nhw;
        let pr = [
            n as u32,
            nt as u32,
            nhw as u32,
            tn_all as u32,
            hd as u32,
            sdo,
            so,
            sd,
            sb[0] as u32,
            qrow as u32,
            sb[2] as u32,
        ];
        b.ctx.dispatch(
            &p_delta,
            &pr,
            &[vdo, vo, vd],
            b.ctx.grid((n as u32).div_ceil(64)),
        );
    };
    if q.len <= w && k.len <= w && lse.len <= w {
        let sb = [tn_all * qrow, tn_all * krow, nh * tn_all];
        let view = |x, n| whole(b, x, n);
        let (vq, vdo, vo) = (
            view(&q.buf, q.len),
            view(&dout.buf, q.len),
            view(&out.buf, q.len),
        );
        let (vk, vv) = (view(&k.buf, k.len), view(&v.buf, k.len));
        let (vl, vd) = (view(&lse.buf, lse.len), view(&dbuf, lse.len));
        delta(vdo, 0, vo, 0, vd, 0, batch, tn_all, nh, sb);
        let pr = params(0, tn_all, 0, tn_all, [0; 8], sb, true);
        let grid = [tn_all.div_ceil(kk) as u32, nkv as u32, batch as u32];
        let (vdk, vdv) = (view(&dk.buf, k.len), view(&dv.buf, k.len));
        b.ctx
            .dispatch(&p_kv(&[0]), &pr, &[vq, vdo, vl, vd, vk, vv, vdk, vdv], grid);
        let grid = [(tn_all * g).div_ceil(rq) as u32, nkv as u32, batch as u32];
        let vdq = view(&dq.buf, q.len);
        b.ctx
            .dispatch(&p_q(&[0]), &pr, &[vq, vdo, vl, vd, vk, vv, vdq], grid);
        return;
    }
    // windows: per batch element and head block, query chunks x key chunks;
    // dK/dV accumulate over the query chunks (and the sub-group head blocks
    // of one kv head), dQ over the key chunks
    let plan = Plan::new(w, tn_all, tn_all, nh, nkv, hd);
    let (tq, tk) = (plan.tq, plan.tk);
    for bb in 0..batch {
        for (c0, cn, gi0, gn) in plan.blocks(nkv, g) {
            let h0 = c0 * g + gi0;
            let nhw = (cn - 1) * g + gn;
            let qwin = |t0: usize| {
                let tn = tq.min(tn_all - t0);
                let s = (bb * tn_all + t0) * qrow + h0 * hd;
                let ls = (bb * nh + h0) * tn_all + t0;
                (
                    tn,
                    s,
                    (tn - 1) * qrow + nhw * hd,
                    ls,
                    (nhw - 1) * tn_all + tn,
                )
            };
            let kwin = |k0: usize| {
                let kn = tk.min(tn_all - k0);
                let s = (bb * tn_all + k0) * krow + c0 * hd;
                (kn, s, (kn - 1) * krow + cn * hd)
            };
            for t0 in (0..tn_all).step_by(tq) {
                let (tn, qs, qn, ls, ln) = qwin(t0);
                let (vdo, sdo) = b.ctx.view(&dout.buf, qs, qn);
                let (vo, so) = b.ctx.view(&out.buf, qs, qn);
                let (vd, sd) = b.ctx.view(&dbuf, ls, ln);
                // rows of the window: [tn tokens, nhw heads]; D at h * n_new + t
                delta(vdo, sdo, vo, so, vd, sd, 1, tn, nhw, [0, 0, 0]);
            }
            // dK, dV: each key chunk over the query chunks that see it
            for k0 in (0..tn_all).step_by(tk) {
                let (kn, ks, kl) = kwin(k0);
                let (vk, sk) = b.ctx.view(&k.buf, ks, kl);
                let (vv, sv) = b.ctx.view(&v.buf, ks, kl);
                let (vdk, sdk) = b.ctx.view(&dk.buf, ks, kl);
                let (vdv, sdv) = b.ctx.view(&dv.buf, ks, kl);
                let first_t = (k0 / tq) * tq;
                for t0 in (first_t..tn_all).step_by(tq) {
                    let (tn, qs, qn, ls, ln) = qwin(t0);
                    let (vq, sq) = b.ctx.view(&q.buf, qs, qn);
                    let (vdo, sdo) = b.ctx.view(&dout.buf, qs, qn);
                    let (vl, sl) = b.ctx.view(&lse.buf, ls, ln);
                    let (vd, sd) = b.ctx.view(&dbuf, ls, ln);
                    let mut pr = params(
                        t0,
                        tn,
                        k0,
                        kn,
                        [sq, sdo, sl, sd, sk, sv, sdk, sdv],
                        [0, 0, 0],
                        t0 == first_t && gi0 == 0,
                    );
                    pr[1] = gn as u32;
                    let grid = [kn.div_ceil(kk) as u32, cn as u32, 1];
                    let pipe = p_kv(&[sq, sdo, sk, sv]);
                    b.ctx
                        .dispatch(&pipe, &pr, &[vq, vdo, vl, vd, vk, vv, vdk, vdv], grid);
                }
            }
            // dQ: each query chunk over the key chunks it sees
            for t0 in (0..tn_all).step_by(tq) {
                let (tn, qs, qn, ls, ln) = qwin(t0);
                let (vq, sq) = b.ctx.view(&q.buf, qs, qn);
                let (vdo, sdo) = b.ctx.view(&dout.buf, qs, qn);
                let (vl, sl) = b.ctx.view(&lse.buf, ls, ln);
                let (vd, sd) = b.ctx.view(&dbuf, ls, ln);
                let (vdq, sdq) = b.ctx.view(&dq.buf, qs, qn);
                for k0 in (0..t0 + tn).step_by(tk) {
                    let (kn, ks, kl) = kwin(k0);
                    let (vk, sk) = b.ctx.view(&k.buf, ks, kl);
                    let (vv, sv) = b.ctx.view(&v.buf, ks, kl);
                    let mut pr = params(
                        t0,
                        tn,
                        k0,
                        kn,
                        [sq, sdo, sl, sd, sk, sv, sdq, 0],
                        [0, 0, 0],
                        k0 == 0,
                    );
                    pr[1] = gn as u32;
                    let grid = [(tn * gn).div_ceil(rq) as u32, cn as u32, 1];
                    let pipe = p_q(&[sq, sdo, sk, sv]);
                    b.ctx
                        .dispatch(&pipe, &pr, &[vq, vdo, vl, vd, vk, vv, vdq], grid);
                }
            }
        }
    }
}
