//#include exact
//#include ternary_dot
//#include rope_phase
//#include tree_sum
// The fused inference step of a block (tern_backend::fused): RMSNorm, the
// int8 quantizer and up to three W1.58A8 products in one dispatch, with an
// epilogue per variant:
// - QKV: q, k and v of x; RoPE on q and k; k and v written into the caches
//   (their views start at the first new row), q into y0.
// - GATE with SILU or RELU2: act(gate) * up into y0.
// - RESID: res + W n into y0.
//
// Every workgroup normalizes and quantizes the (at most {{NR}}) activation
// rows itself, exactly as `dense/rms` followed by `ternary/mv/fused` do (the
// same sum of squares in the same order, (x r) w, the row absmax, round half
// to even), then takes 8 output features, 32 lanes each, as
// `ternary_mv.wgsl` does. The features of a workgroup are chosen so that its
// epilogue has what it needs: for QKV, 4 rotation pairs (i, i + hd/2) of one
// head of q or k (or 8 rows of v); for GATE, rows j..j+4 of gate and of up.
// A batch's first weight words are loaded before the work that precedes it
// (the prologue, the previous batch's reduction), so that their latency
// overlaps it.
//
// With SG (subgroup operations): the 32 lanes of a feature are consecutive
// invocations of one subgroup (or whole subgroups, when subgroups are
// smaller), their integer sums are added by subgroup shuffles and, for
// subgroups under 32, through workgroup memory; the norm's sum is
// tree_sum's subgroup form. Integer sums are exact in any order, so the
// products are the same in both forms.
struct P {
    fr: array<vec4<u32>, 7>,
    // per segment (weight 0, 1, 2): view shifts of the packed weights (in
    // vec4), of the scales and of the outputs, output row strides, features
    sw: vec4<u32>,
    sc: vec4<u32>,
    sy: vec4<u32>,
    ys: vec4<u32>,
    ns: vec4<u32>,
    // first workgroup of segments 1 and 2 (QKV)
    wg: vec4<u32>,
    cols: u32,
    nr: u32,
    // vec4 per weight row; weight words holding columns (a multiple of 4)
    wpr4: u32,
    nk: u32,
    sx: u32,
    sn: u32,
    // feature batches per workgroup, and the workgroups of the dispatch:
    // workgroup id takes batches id, id + vs, id + 2 vs, ...
    nb: u32,
    vs: u32,
    half: u32,
    hd: u32,
    eps: f32,
    // 1e-5 as f32 bits
    qeps: u32,
}
// sy.w: the residual's view shift (RESID); sc.w: the positions' (QKV).
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> nw: array<f32>;
@group(0) @binding(3) var<storage, read> w0: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> s0: array<f32>;
#ifdef RESID
@group(0) @binding(5) var<storage, read> res: array<f32>;
@group(0) @binding(6) var<storage, read_write> y0: array<f32>;
#endif
#ifdef GATE
@group(0) @binding(5) var<storage, read> w1: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> s1: array<f32>;
@group(0) @binding(7) var<storage, read_write> y0: array<f32>;
#endif
#ifdef QKV
@group(0) @binding(5) var<storage, read> w1: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> s1: array<f32>;
@group(0) @binding(7) var<storage, read> w2: array<vec4<u32>>;
@group(0) @binding(8) var<storage, read> s2: array<f32>;
@group(0) @binding(9) var<storage, read> pos: array<u32>;
@group(0) @binding(10) var<storage, read_write> y0: array<f32>;
@group(0) @binding(11) var<storage, read_write> y1: array<f32>;
@group(0) @binding(12) var<storage, read_write> y2: array<f32>;
#endif

const NR: u32 = {{NR}}u;
const LANES: u32 = 32u;
const XSV: u32 = {{XSV}}u;
// The packed activations, the lanes' partial sums, per-row max bits, Σ q,
// inverse RMS, and the 8 features' values per row.
var<workgroup> xs: array<vec4<u32>, XSV>;
var<workgroup> part: array<i32, {{RED}}>;
var<workgroup> amax: array<atomic<u32>, 8>;
var<workgroup> qsum: array<atomic<i32>, 8>;
var<workgroup> rstd: array<f32, 8>;
var<workgroup> vals: array<f32, 64>;

fn rd(i: u32) -> i32 {
    return part[i];
}

#ifdef SG
// Lanes of a feature in one subgroup: min(subgroup size, 32).
var<private> sg_m: u32;

// Σ x over the sg_m lanes of a feature inside one subgroup.
fn lane_sum(x: i32) -> i32 {
    var s = x;
    for (var o = 1u; o < sg_m; o <<= 1u) {
        s += subgroupShuffleXor(s, o);
    }
    return s;
}

// Σ of feature group g's lanes for row r (one entry per subgroup piece).
fn lanes_total(r: u32, g: u32) -> i32 {
    var s = 0i;
    for (var i = 0u; i < LANES / sg_m; i++) {
        s += rd(r * 256u + g * LANES + i);
    }
    return s;
}
#endif
#ifndef SG
fn lanes_total(r: u32, g: u32) -> i32 {
    return rd(r * 256u + g * LANES);
}
#endif

fn wr(i: u32, v: i32) {
    part[i] = v;
}

// Packed vec4 j (0..4) of weight vec4 k of row r.
fn xv(r: u32, k: u32, j: u32) -> vec4<u32> {
    return xs[r * p.nk + j * (p.nk / 4u) + k];
}


// Weight vec4 i (relative to its row block) of segment sg, and its scale.
fn wload(sg: u32, i: u32) -> vec4<u32> {
#ifndef RESID
    if (sg == 1u) {
        return w1[p.sw.y + i];
    }
#endif
#ifdef QKV
    if (sg == 2u) {
        return w2[p.sw.z + i];
    }
#endif
    return w0[p.sw.x + i];
}

fn wscale(sg: u32) -> f32 {
#ifndef RESID
    if (sg == 1u) {
        return s1[p.sc.y];
    }
#endif
#ifdef QKV
    if (sg == 2u) {
        return s2[p.sc.z];
    }
#endif
    return s0[p.sc.x];
}

// Weight vec4 k of feature f = (segment, feature), or zeros past the
// features or the row (zero codes add nothing to Σ u·x).
fn wpre(f: vec2<u32>, k: u32) -> vec4<u32> {
    if (f.y < p.ns[f.x] && k < p.nk / 4u) {
        return wload(f.x, f.y * p.wpr4 + k);
    }
    return vec4<u32>(0u);
}

// (segment, feature) of feature group g of workgroup `id`.
fn feature(id: u32, g: u32) -> vec2<u32> {
#ifdef QKV
    if (id >= p.wg.z) {
        return vec2<u32>(2u, (id - p.wg.z) * 8u + g);
    }
    var sg = 0u;
    var wl = id;
    if (id >= p.wg.y) {
        sg = 1u;
        wl = id - p.wg.y;
    }
    // 4 rotation pairs of one head: features i and i + hd/2
    let blocks = p.half / 4u;
    let i = (wl % blocks) * 4u + g % 4u;
    return vec2<u32>(sg, (wl / blocks) * p.hd + i + (g / 4u) * p.half);
#endif
#ifdef GATE
    return vec2<u32>(g / 4u, id * 4u + g % 4u);
#endif
#ifdef RESID
    return vec2<u32>(0u, id * 8u + g);
#endif
}

// The gate's activation (dense/gate: act(g) * u).
#ifdef SILU
fn act(gv: f32) -> f32 {
    return gv / (1.0 + exp(-gv));
}
#endif
#ifdef RELU2
fn act(gv: f32) -> f32 {
    let r = max(gv, 0.0);
    return r * r;
}
#endif

// The int8 code of a scaled value: round half to even, clamp; NaN (a NaN
// row, or inf * 0) gives 0, as `NaN as i8`.
fn quant(v: f32) -> i32 {
    if ((bitcast<u32>(v) & 0x7fffffffu) <= 0x7f800000u) {
        return i32(clamp(round(v), -128.0, 127.0));
    }
    return 0;
}

// Row r's normalized value at column c (dense/rms: (x r) w).
fn normed(r: u32, c: u32) -> f32 {
    return (x[p.sx + r * p.cols + c] * rstd[r]) * nw[p.sn + c];
}

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
#ifdef SG
    @builtin(subgroup_invocation_id) sgi: u32,
    @builtin(subgroup_id) sid: u32,
    @builtin(num_subgroups) nsg: u32,
    @builtin(subgroup_size) sgs: u32,
#endif
) {
#ifdef SG
    sg_lane = sgi;
    sg_index = sid;
    sg_count = nsg;
    sg_m = min(sgs, LANES);
    // the products' thread index: consecutive within a subgroup
    let v = sid * sgs + sgi;
#endif
#ifndef SG
    let v = t;
#endif
    let g = v / LANES;
    let lane = v % LANES;
    let id = wg.y * nwg.x + wg.x;
    var a0 = wpre(feature(id, g), lane);
    var a1 = wpre(feature(id, g), lane + LANES);
    if (t < 8u) {
        atomicStore(&amax[t], 0u);
        atomicStore(&qsum[t], 0);
    }
    // RMSNorm: the inverse RMS of each row
    for (var r = 0u; r < p.nr; r++) {
        let xb = p.sx + r * p.cols;
        // four loads in flight, summed in the order of the plain loop
        var acc = 0.0;
        var i = t;
        for (; i + 768u < p.cols; i += 1024u) {
            let v0 = x[xb + i];
            let v1 = x[xb + i + 256u];
            let v2 = x[xb + i + 512u];
            let v3 = x[xb + i + 768u];
            acc += v0 * v0;
            acc += v1 * v1;
            acc += v2 * v2;
            acc += v3 * v3;
        }
        for (; i < p.cols; i += 256u) {
            let v = x[xb + i];
            acc += v * v;
        }
        let ss = tree_sum(t, acc);
        if (t == 0u) {
            rstd[r] = 1.0 / sqrt(ss / f32(p.cols) + p.eps);
        }
        workgroupBarrier();
    }
    // Row max |n| as bits (NaN's bits exceed infinity's: NaN is kept)
    for (var r = 0u; r < p.nr; r++) {
        var m = 0u;
        var c = t;
        for (; c + 768u < p.cols; c += 1024u) {
            let n0 = normed(r, c);
            let n1 = normed(r, c + 256u);
            let n2 = normed(r, c + 512u);
            let n3 = normed(r, c + 768u);
            m = max(m, max(max(bitcast<u32>(n0) & 0x7fffffffu, bitcast<u32>(n1) & 0x7fffffffu),
                max(bitcast<u32>(n2) & 0x7fffffffu, bitcast<u32>(n3) & 0x7fffffffu)));
        }
        for (; c < p.cols; c += 256u) {
            m = max(m, bitcast<u32>(normed(r, c)) & 0x7fffffffu);
        }
        atomicMax(&amax[r], m);
    }
    workgroupBarrier();
    let xk4 = p.nk / 4u;
    for (var r = 0u; r < p.nr; r++) {
        let a = fdiv(127.0, bitcast<f32>(max(atomicLoad(&amax[r]), p.qeps)));
        var sum = 0i;
        for (var wi = t; wi < 4u * p.nk; wi += 256u) {
            var word = 0u;
            let c = 4u * wi;
            if (c + 3u < p.cols) {
                // a whole word: the four values loaded before any is used
                let v = vec4<f32>(normed(r, c), normed(r, c + 1u), normed(r, c + 2u),
                    normed(r, c + 3u)) * a;
                let q = vec4<i32>(quant(v.x), quant(v.y), quant(v.z), quant(v.w));
                sum += q.x + q.y + q.z + q.w;
                word = bitcast<u32>(pack4xI8(q));
            } else {
                for (var i = 0u; i < 4u; i++) {
                    if (c + i < p.cols) {
                        let q = quant(normed(r, c + i) * a);
                        sum += q;
                        word |= (bitcast<u32>(q) & 0xffu) << (8u * i);
                    }
                }
            }
            let v = wi / 4u;
            xs[r * p.nk + (v % 4u) * xk4 + v / 4u][wi % 4u] = word;
        }
        atomicAdd(&qsum[r], sum);
    }
    workgroupBarrier();
    for (var b = 0u; b < p.nb; b++) {
        let vid = id + b * p.vs;
        let f = feature(vid, g);
        let sg = f.x;
        let o = f.y;
        let live = o < p.ns[sg];
{{DECL}}    if (live) {
            let nk4 = p.nk / 4u;
            var k = lane;
            loop {
                let w0 = a0;
                let w1 = a1;
{{STEP2}}            k += 2u * LANES;
                if (k >= nk4) {
                    break;
                }
                a0 = wpre(f, k);
                a1 = wpre(f, k + LANES);
            }
        }
        // the next batch's first weights
        let fnext = feature(vid + p.vs, g);
        a0 = wpre(fnext, lane);
        a1 = wpre(fnext, lane + LANES);
{{PUT}}    workgroupBarrier();
#ifndef SG
        for (var s = LANES / 2u; s > 0u; s = s >> 1u) {
            if (lane < s) {
{{REDUCE}}        }
            workgroupBarrier();
        }
#endif
        if (live && lane < p.nr) {
            let r = lane;
            let total = lanes_total(r, g);
            let a = fdiv(127.0, bitcast<f32>(max(atomicLoad(&amax[r]), p.qeps)));
            let sx = atomicLoad(&qsum[r]);
            vals[r * 8u + g] = fdiv(exact_i2f(total - sx) * wscale(sg), a);
        }
        workgroupBarrier();
        // epilogue: thread t takes row t / 8 of feature group t % 8
        let r = t / 8u;
        let ge = t % 8u;
        let fe = feature(vid, ge);
        if (r < p.nr && fe.y < p.ns[fe.x]) {
        let val = vals[t];
#ifdef RESID
        let yi = r * p.ys.x + fe.y;
        y0[p.sy.x + yi] = val + res[p.sy.w + yi];
#endif
#ifdef GATE
        if (ge < 4u) {
            y0[p.sy.x + r * p.ys.x + fe.y] = act(val) * vals[t + 4u];
        }
#endif
#ifdef QKV
        if (fe.x == 2u) {
            y2[p.sy.z + r * p.ys.z + fe.y] = val;
        } else if (ge < 4u) {
            let cs = rope_cs(fe.y % p.hd, pos[p.sc.w + r]);
            let c = cs.x;
            let s = cs.y;
            let x1 = val;
            let x2 = vals[t + 4u];
            let o1 = x1 * c - x2 * s;
            let o2 = x2 * c + x1 * s;
            if (fe.x == 0u) {
                y0[p.sy.x + r * p.ys.x + fe.y] = o1;
                y0[p.sy.x + r * p.ys.x + fe.y + p.half] = o2;
            } else {
                y1[p.sy.y + r * p.ys.y + fe.y] = o1;
                y1[p.sy.y + r * p.ys.y + fe.y + p.half] = o2;
            }
        }
#endif
        }
        // vals and part are reused by the next batch
        workgroupBarrier();
    }
}
