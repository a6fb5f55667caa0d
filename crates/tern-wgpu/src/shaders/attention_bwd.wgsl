// Attention backward (n_past = 0), tiled, without atomics. With S = (q * scale) . k,
// P = exp(S - lse), dP = dout . v, dS = P * (dP - D) (D from attention_delta.wgsl):
// - KV: a workgroup owns BK keys of one kv head (K and V tiles stay in
//   workgroup memory) and walks the query rows of its group (R rows per tile:
//   token f / group, head kv * group + f % group) from the first token that
//   sees its keys: dV += P^T dout, dK += dS^T (q * scale).
// - DQ: a workgroup owns R query rows and walks the key tiles they see:
//   dQ += dS K, times scale at the end.
// Tiles in workgroup memory as vec4 rows (padded as in attention.wgsl).
// Micro-tiles as in attention.wgsl (scores: SR x SK per thread, DS threads
// per micro-tile over strided dims; gradients: TR x TD vec4 per thread),
// unrolled by the host ({{...}} slots) so that the accumulators live in
// registers. Both write their gradient, or add to it when `first` is 0 (the
// windowed path for tensors larger than one binding splits the rows and keys
// into chunks: [t0, t0 + nt) queries, [k0, k0 + kn) keys).
struct P {
    n_new: u32,
    group: u32,
    t0: u32,
    nt: u32,
    k0: u32,
    kn: u32,
    sq: u32,
    sdo: u32,
    sl: u32,
    sd: u32,
    sk: u32,
    sv: u32,
    sg1: u32,
    sg2: u32,
    qsb: u32,
    qst: u32,
    ksb: u32,
    kst: u32,
    lsb: u32,
    first: u32,
    scale: f32,
}
@group(0) @binding(0) var<uniform> p: P;
#ifdef GV4
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dout: array<vec4<f32>>;
#endif
#ifndef GV4
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
#endif
@group(0) @binding(3) var<storage, read> lse: array<f32>;
@group(0) @binding(4) var<storage, read> dd: array<f32>;
#ifdef GV4
@group(0) @binding(5) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> v: array<vec4<f32>>;
#endif
#ifndef GV4
@group(0) @binding(5) var<storage, read> k: array<f32>;
@group(0) @binding(6) var<storage, read> v: array<f32>;
#endif
#ifdef KV
@group(0) @binding(7) var<storage, read_write> dk: array<f32>;
@group(0) @binding(8) var<storage, read_write> dv: array<f32>;
#endif
#ifdef DQ
@group(0) @binding(7) var<storage, read_write> dq: array<f32>;
#endif

//#include attention_common

var<workgroup> qs: array<vec4<f32>, {{QSZ}}>;
var<workgroup> dos: array<vec4<f32>, {{QSZ}}>;
var<workgroup> ks: array<vec4<f32>, {{KSZ}}>;
var<workgroup> vs: array<vec4<f32>, {{KSZ}}>;
var<workgroup> dss: array<f32, {{SSZ}}>;
#ifdef KV
var<workgroup> ps: array<f32, {{SSZ}}>;
#endif
#ifdef DSPLIT
var<workgroup> sp: array<f32, {{SPSZ}}>;
var<workgroup> gp: array<f32, {{SPSZ}}>;
#endif
var<workgroup> rlim: array<u32, R>;
var<workgroup> rls: array<f32, R>;
var<workgroup> rdd: array<f32, R>;

// Four elements of dout from element offset `o` (`n` of them valid).
#ifdef GV4
fn lddo(o: u32, n: u32) -> vec4<f32> {
    return dout[o / 4u];
}
#endif
#ifndef GV4
fn lddo(o: u32, n: u32) -> vec4<f32> {
    var x = vec4<f32>(dout[o], 0.0, 0.0, 0.0);
    if (n > 1u) { x.y = dout[o + 1u]; }
    if (n > 2u) { x.z = dout[o + 2u]; }
    if (n > 3u) { x.w = dout[o + 3u]; }
    return x;
}
#endif

// Rows f0 .. f0 + R of the query chunk into workgroup memory: q * scale,
// dout, lse, D and the key limit (token + 1; 0 for rows past the chunk).
fn load_rows(tid: u32, b: u32, kvl: u32, f0: u32) {
    let nrows = p.nt * p.group;
    if (tid < R) {
        let f = f0 + tid;
        var lim = 0u;
        var l = 0.0;
        var dl = 0.0;
        if (f < nrows) {
            lim = p.t0 + f / p.group + 1u;
            let li = b * p.lsb + (kvl * p.group + f % p.group) * p.n_new + f / p.group;
            l = lse[p.sl + li];
            dl = dd[p.sd + li];
        }
        rlim[tid] = lim;
        rls[tid] = l;
        rdd[tid] = dl;
    }
    for (var e = tid; e < R * HD4; e += NT) {
        let r = e / HD4;
        let d4 = e % HD4;
        let f = f0 + r;
        var x = vec4<f32>(0.0);
        var y = vec4<f32>(0.0);
        if (f < nrows) {
            let o = b * p.qsb + (f / p.group) * p.qst + (kvl * p.group + f % p.group) * HD + 4u * d4;
            let n = min(4u, HD - 4u * d4);
            x = ldq(p.sq + o, n) * p.scale;
            y = lddo(p.sdo + o, n);
        }
        qs[r * HP4 + d4] = x;
        dos[r * HP4 + d4] = y;
    }
}

// Keys kt .. kt + BK (absolute; valid below kend) into workgroup memory.
fn load_keys(tid: u32, b: u32, kvl: u32, kt: u32, kend: u32) {
    for (var e = tid; e < BK * HD4; e += NT) {
        let j = e / HD4;
        let d4 = e % HD4;
        var x = vec4<f32>(0.0);
        var y = vec4<f32>(0.0);
        if (kt + j < kend) {
            let o = b * p.ksb + (kt + j - p.k0) * p.kst + kvl * HD + 4u * d4;
            let n = min(4u, HD - 4u * d4);
            x = ldk(p.sk + o, n);
            y = ldv(p.sv + o, n);
        }
        ks[j * HP4 + d4] = x;
        vs[j * HP4 + d4] = y;
    }
}

// P and dS of entry (r, j) of the tile from the score s and g = dout . v.
fn put(r: u32, j: u32, s: f32, g: f32, kt: u32, kend: u32) {
    var pr = 0.0;
    if (kt + j < min(rlim[r], kend)) {
        pr = exp(s - rls[r]);
    }
#ifdef KV
    ps[r * BK + j] = pr;
#endif
    dss[r * BK + j] = pr * (g - rdd[r]);
}

// P and dS of the R x BK tile (keys from kt, valid below kend and causally).
// Contains a barrier: call from uniform control flow.
fn tile_grads(tid: u32, kt: u32, kend: u32) {
    let slot = tid / DS;
    let part = tid % DS;
    let sr = slot / SCOLS;
    let sc = slot % SCOLS;
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
        var y = 0.0;
        for (var pp = 0u; pp < DS; pp++) {
            x += sp[pp * R * BK + e];
            y += gp[pp * R * BK + e];
        }
        put(e / BK, e % BK, x, y, kt, kend);
    }
#endif
}

#ifdef KV
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let b = wg.z;
    let kvl = wg.y;
    let kb0 = p.k0 + wg.x * BK;
    let kbe = min(kb0 + BK, p.k0 + p.kn);
    let nrows = p.nt * p.group;
    load_keys(tid, b, kvl, kb0, kbe);
    var fs = 0u;
    if (kb0 > p.t0) {
        fs = (kb0 - p.t0) * p.group;
    }
    fs = (fs / R) * R;
    {{ACC_DECL}}
    let rg = tid / DL;
    let dl = tid % DL;
    // query rows go through registers, loaded one tile ahead of use
    {{PR_DECL}}
    {
        let fq = fs;
        {{PR_LOAD}}
    }
    for (var f0 = fs; f0 < nrows; f0 += R) {
        {{PR_STORE}}
        workgroupBarrier();
        tile_grads(tid, kb0, kbe);
        workgroupBarrier();
        {
            let fq = f0 + R;
            {{PR_LOAD}}
        }
        for (var r = 0u; r < R; r++) {
            {{ACC_BODY}}
        }
        workgroupBarrier();
    }
    {{OUT_STORE}}
}
#endif

#ifdef DQ
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let b = wg.z;
    let kvl = wg.y;
    let row0 = wg.x * R;
    let nrows = p.nt * p.group;
    let last = min(row0 + R, nrows) - 1u;
    let kend = min(p.k0 + p.kn, p.t0 + last / p.group + 1u);
    load_rows(tid, b, kvl, row0);
    {{ACC_DECL}}
    let rg = tid / DL;
    let dl = tid % DL;
    // K / V tiles go through registers, loaded one tile ahead of use
    {{PK_DECL}}
    {
        let kq = p.k0;
        {{PK_LOAD}}
    }
    for (var kt = p.k0; kt < kend; kt += BK) {
        {{PK_STORE}}
        workgroupBarrier();
        tile_grads(tid, kt, kend);
        workgroupBarrier();
        {
            let kq = kt + BK;
            {{PK_LOAD}}
        }
        for (var j = 0u; j < BK; j++) {
            {{ACC_BODY}}
        }
        workgroupBarrier();
    }
    {{OUT_STORE}}
}
#endif
