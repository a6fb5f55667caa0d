// Causal GQA attention forward, flash style (online softmax over key tiles).
//
// A workgroup of 64 threads owns R query rows that share one kv head: row
// `f` of the dispatch is token `f / group`, query head `kv * group + f % group`
// (`group`: query heads per kv head inside the window; decode with a GQA
// group fills the rows with heads, prefill with tokens). It walks its key
// range in tiles of BK keys staged in workgroup memory (rows as vec4, padded
// by one vec4 against bank conflicts; head_dim padded to a multiple of 4 with
// zeros). Per tile:
//   K tile -> scores S = (q * scale) . k (micro-tiles of SR x SK per thread;
//   when there are fewer scores than threads, DS threads share a micro-tile
//   over strided dims and their partial sums are added)
//   -> V tile replaces K; new row maxima (one thread per row)
//   -> P = exp(S - max) (all threads)
//   -> O = O * alpha + P V (micro-tiles of TR rows x TD vec4 dims per
//   thread); row sums (one thread per row).
// The micro-tile code is unrolled by the host ({{...}} slots) so that the
// accumulators live in registers.
//
// Key range of a workgroup: [j0 + c * chunk, min(j1, j0 + (c+1) * chunk)),
// cut causally; `c = wg.z % splits`. Results:
// - splits > 1: partial (normalized out, lse) per split at offsets c * psb /
//   c * plb of the scratch bound as out / lse (lse = NEG for an empty range),
//   merged by attention_combine.wgsl;
// - first = 1: out and lse written;
// - first = 0: merged with the out / lse a previous key window wrote (the
//   path for tensors larger than one binding).
// Windows: q/out/k/v/lse elements are addressed relative to the window
// (shift + batch * *sb + (t - t0) * *st + local head * HD + d). With GV4,
// q/k/v are read as vec4 (head_dim and every offset a multiple of 4).
struct P {
    n_new: u32,
    n_past: u32,
    t0: u32,
    nt: u32,
    group: u32,
    j0: u32,
    j1: u32,
    chunk: u32,
    splits: u32,
    sq: u32,
    sk: u32,
    sv: u32,
    so: u32,
    sl: u32,
    qsb: u32,
    qst: u32,
    ksb: u32,
    kst: u32,
    lsb: u32,
    first: u32,
    scale: f32,
    psb: u32,
    plb: u32,
}
@group(0) @binding(0) var<uniform> p: P;
#ifdef GV4
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
#endif
#ifndef GV4
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
#endif
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;

//#include attention_common
const NEG: f32 = -3.0e38;

var<workgroup> qs: array<vec4<f32>, {{QSZ}}>;
var<workgroup> kv: array<vec4<f32>, {{KSZ}}>;
var<workgroup> ss: array<f32, {{SSZ}}>;
#ifdef DSPLIT
var<workgroup> sp: array<f32, {{SPSZ}}>;
#endif
var<workgroup> rm: array<f32, R>;
var<workgroup> rl: array<f32, R>;
var<workgroup> ra: array<f32, R>;
var<workgroup> rlim: array<u32, R>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let b = wg.z / p.splits;
    let c = wg.z % p.splits;
    let kvl = wg.y;
    let nrows = p.nt * p.group;
    let row0 = wg.x * R;
    let last = min(row0 + R, nrows) - 1u;
    let kstart = p.j0 + c * p.chunk;
    let kend = min(min(p.j1, kstart + p.chunk), p.n_past + p.t0 + last / p.group + 1u);
    let qb = p.sq + b * p.qsb;
    let kb = b * p.ksb + kvl * HD;

    if (tid < R) {
        let f = row0 + tid;
        var lim = 0u;
        if (f < nrows) {
            lim = min(p.n_past + p.t0 + f / p.group + 1u, kend);
        }
        rlim[tid] = lim;
        rm[tid] = NEG;
        rl[tid] = 0.0;
    }
    for (var e = tid; e < R * HD4; e += NT) {
        let r = e / HD4;
        let d4 = e % HD4;
        let f = row0 + r;
        var x = vec4<f32>(0.0);
        if (f < nrows) {
            let o = qb + (f / p.group) * p.qst + (kvl * p.group + f % p.group) * HD + 4u * d4;
            x = ldq(o, min(4u, HD - 4u * d4)) * p.scale;
        }
        qs[r * HP4 + d4] = x;
    }

    {{ACC_DECL}}
    let rg = tid / DL;
    let dl = tid % DL;
    let slot = tid / DS;
    let part = tid % DS;
    let sr = slot / SCOLS;
    let sc = slot % SCOLS;
    // K and V tiles go through registers, loaded one phase ahead of use
    // (the next K tile while this one's probabilities and P V are computed,
    // the V tile while the scores are), so global latency overlaps work.
    {{PK_DECL}}
    {
        let kq = kstart;
        {{PK_LOAD}}
    }
    for (var kt = kstart; kt < kend; kt += BK) {
        {{PK_STORE}}
        {{PV_LOAD}}
        workgroupBarrier();
        // scores
        if (slot < SROWS * SCOLS) {
            {{S_DECL}}
            for (var d = part; d < HD4; d += DS) {
                {{S_BODY}}
            }
            {{S_STORE}}
        }
#ifdef DSPLIT
        workgroupBarrier();
        for (var e = tid; e < R * BK; e += NT) {
            var x = 0.0;
            for (var pp = 0u; pp < DS; pp++) {
                x += sp[pp * R * BK + e];
            }
            ss[e] = select(NEG, x, kt + e % BK < rlim[e / BK]);
        }
#endif
        workgroupBarrier();
        // V tile; new row maxima; next K tile into registers
        {{PV_STORE}}
        {
            let kq = kt + BK;
            {{PK_LOAD}}
        }
        if (tid < R) {
            let o = tid * BK;
            let mo = rm[tid];
            {{ROW_MAX}}
            ra[tid] = exp(mo - mx);
            rm[tid] = mx;
        }
        workgroupBarrier();
        // probabilities
        for (var e = tid; e < R * BK; e += NT) {
            let r = e / BK;
            var pr = 0.0;
            if (kt + e % BK < rlim[r]) {
                pr = exp(ss[e] - rm[r]);
            }
            ss[e] = pr;
        }
        workgroupBarrier();
        // O = O * alpha + P V; row sums
        if (tid < R) {
            let o = tid * BK;
            {{ROW_SUM}}
            rl[tid] = rl[tid] * ra[tid] + sum;
        }
        {{ACC_SCALE}}
        for (var j = 0u; j < BK; j++) {
            {{ACC_BODY}}
        }
        workgroupBarrier();
    }

    // per-row results: lse, and the weights of this range and of what the
    // output held before (merge)
    let pl = c * p.plb;
    let po = c * p.psb;
    if (tid < R) {
        let f = row0 + tid;
        if (f < nrows) {
            let li = p.sl + pl + b * p.lsb + (kvl * p.group + f % p.group) * p.n_new + f / p.group;
            let l = rl[tid];
            var wn = 0.0;
            var wo = 0.0;
            var ln = NEG;
            if (l > 0.0) {
                ln = rm[tid] + log(l);
                wn = 1.0 / l;
            }
            if (p.first == 0u) {
                let lo = lse[li];
                if (l > 0.0) {
                    let mx = max(lo, ln);
                    let eo = exp(lo - mx);
                    let en = exp(ln - mx);
                    let z = eo + en;
                    wo = eo / z;
                    wn = en / (z * l);
                    ln = mx + log(z);
                } else {
                    wo = 1.0;
                    ln = lo;
                }
            }
            lse[li] = ln;
            ra[tid] = wo;
            rl[tid] = wn;
        }
    }
    workgroupBarrier();
    {{OUT_STORE}}
}
