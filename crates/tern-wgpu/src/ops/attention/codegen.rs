//! The attention kernels' code generator: tile sizes that fit the workgroup
//! memory ([`choose`]), and the per-thread micro-tiles of scores and
//! outputs unrolled into named registers ([`Tile::subs`]; a loop over a
//! private array would put them in local memory on NVIDIA), substituted
//! into `shaders/attention.wgsl` and `shaders/attention_bwd.wgsl`, which
//! share `shaders/attention_common.wgsl`.

use crate::shader::preprocess;

pub(crate) const ATTN: &str = include_str!("../../shaders/attention.wgsl");
pub(crate) const BWD: &str = include_str!("../../shaders/attention_bwd.wgsl");

/// Threads per workgroup of the attention kernels.
pub(crate) const NT: usize = 64;

/// Which kernel a [`Tile`] generates code for.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Fwd,
    BwdKv,
    BwdQ,
}

/// Shapes of one attention kernel: `rows` query rows and `keys` keys per
/// tile (the gradient tile of [`Kind::BwdKv`] runs over the keys, the others
/// over the rows).
pub(crate) struct Tile {
    pub kind: Kind,
    pub hd: usize,
    pub rows: usize,
    pub keys: usize,
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

    /// The cache key of this tile's kernel.
    pub(crate) fn key(&self, gv4: bool) -> String {
        format!(
            "attn/{}/{}/{}/{}/{gv4}",
            self.defs()[0],
            self.hd,
            self.rows,
            self.keys
        )
    }

    /// The WGSL of this tile's kernel (`shaders/attention.wgsl` for the
    /// forward, `shaders/attention_bwd.wgsl` for the backward kinds); with
    /// `gv4`, q/k/v (and dout) are read as vec4 (head_dim and every window
    /// shift multiples of 4).
    pub(crate) fn source(&self, gv4: bool) -> String {
        let mut defs = self.defs();
        if gv4 {
            defs.push("GV4");
        }
        let src = if self.kind == Kind::Fwd { ATTN } else { BWD };
        preprocess(src, &defs, &self.subs())
    }

    /// Floats of workgroup memory of a kernel of `kind` with these tiles
    /// (without the partial sums of split dot products).
    pub(crate) fn floats(kind: Kind, hd: usize, rows: usize, keys: usize) -> usize {
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
pub(crate) fn choose(
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

/// Every tile the host picks for head dims 4, 6, 64 and 128 within 16 KiB of
/// workgroup memory (decode's 1..8 query rows, prefill's 16; see
/// `choose`'s callers in `super`), with and without vec4 loads (see
/// `crate::variants`).
#[cfg(test)]
pub(crate) fn variants(params: [usize; 2]) -> Vec<crate::variants::Variant> {
    use crate::variants::Variant;
    let budget = 16384 / 4 - 2 * NT;
    let mut tiles = Vec::new();
    for hd in [4, 6, 64, 128] {
        for max_rows in [1, 2, 4, 8, 16] {
            for kind in [Kind::Fwd, Kind::BwdQ] {
                let (rows, keys) = choose(budget, max_rows, true, |r, bk| {
                    Tile::floats(kind, hd, r, bk)
                });
                tiles.push(Tile {
                    kind,
                    hd,
                    rows,
                    keys,
                });
            }
        }
        let (rows, keys) = choose(budget, 16, false, |r, bk| {
            Tile::floats(Kind::BwdKv, hd, r, bk)
        });
        tiles.push(Tile {
            kind: Kind::BwdKv,
            hd,
            rows,
            keys,
        });
    }
    let mut v: Vec<Variant> = Vec::new();
    for t in &tiles {
        let p = match t.kind {
            Kind::Fwd => params[0],
            Kind::BwdKv | Kind::BwdQ => params[1],
        };
        for gv4 in [false, true] {
            if gv4 && t.hd % 4 != 0 {
                continue;
            }
            let key = t.key(gv4);
            if v.iter().all(|x| x.key != key) {
                v.push(Variant::new(&key, t.source(gv4), p));
            }
        }
    }
    v
}
