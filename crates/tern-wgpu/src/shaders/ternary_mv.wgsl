//#include exact
//#include ternary_dot
// W1.58A8 product for a few activation rows (decode): memory bound on the
// packed weights. A workgroup owns 8 output features; 32 threads per feature
// stride over its packed row (consecutive threads read consecutive 16-byte
// groups of 64 codes), each against up to {{NR}} activation rows, then a
// workgroup-memory reduction. The per-row partial sums are named registers
// (`part{r}`, written out by ternary.rs).
//
// Weight word k of a row holds columns 16k..16k+15; column 16k + 4t + i sits
// in bits 8i + 2t as u = code + 1. So `(word >> 2t) & 0x03030303` is four
// unsigned bytes lined up with the int8 activations of packed word 4k + t,
// and dot4I8Packed gives Σ u·x; the row sum of x turns it into Σ code·x.
// Exact in i32.
//
// Two variants:
// - default: the activations were quantized by `ternary_quant` into xq (and
//   the stats st). Chunks: this dispatch covers weight words [k0, k0 + nk) of
//   its views; with `first` the partial sum starts from zero, otherwise from
//   `acc`; with `last` the result `(acc - Σx) * w_scale / a` (exact
//   conversion and division) goes to y, otherwise the partial sum goes back
//   to `acc`.
// - FUSED: one dispatch for the whole product (no chunks): every workgroup
//   quantizes the f32 activation rows itself, exactly as `ternary_quant`
//   does (row absmax, a = 127 / max(absmax, 1e-5), round half to even,
//   clamp), into workgroup memory, then takes the dot products from there.
//   The packed words are stored so that lane k of a feature reads vec4 j of
//   its weight vec4 k at xs[row * qs4 + j * nk4 + k] (consecutive lanes,
//   consecutive 16 bytes). Max and Σ q use workgroup atomics (exact integer
//   and bit maxima, so the order does not matter).
//#include ternary_product_params
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
#ifdef FUSED
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> wscale: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
#endif
#ifndef FUSED
@group(0) @binding(2) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> st: array<u32>;
@group(0) @binding(4) var<storage, read> wscale: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read_write> acc: array<i32>;
#endif

const NR: u32 = {{NR}}u;
const LANES: u32 = 32u;

#ifdef FUSED
// 16 KiB in all: the packed activations (reused for the reduction) and the
// per-row max bits and Σ q.
const XSV: u32 = {{XSV}}u;
var<workgroup> xs: array<vec4<u32>, XSV>;
var<workgroup> amax: array<atomic<u32>, 8>;
var<workgroup> qsum: array<atomic<i32>, 8>;

fn rd(i: u32) -> i32 {
    return bitcast<i32>(xs[i >> 2u][i & 3u]);
}

fn wr(i: u32, v: i32) {
    xs[i >> 2u][i & 3u] = bitcast<u32>(v);
}

// Packed vec4 j (0..4) of weight vec4 k of row r.
fn xv(r: u32, k: u32, j: u32) -> vec4<u32> {
    return xs[r * p.qs4 + j * (p.qs4 / 4u) + k];
}
#endif
#ifndef FUSED
var<workgroup> red: array<i32, {{RED}}>;

fn rd(i: u32) -> i32 {
    return red[i];
}

fn wr(i: u32, v: i32) {
    red[i] = v;
}

fn xv(r: u32, k: u32, j: u32) -> vec4<u32> {
    return xq[p.sq + r * p.qs4 + 4u * k + j];
}
#endif


@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let g = t / LANES;
    let lane = t % LANES;
    let o = (wg.y * nwg.x + wg.x) * (256u / LANES) + g;
#ifdef FUSED
    if (t < 8u) {
        atomicStore(&amax[t], 0u);
        atomicStore(&qsum[t], 0);
    }
    workgroupBarrier();
    // Row max |x| as bits (the unsigned max of the bits is the float max and
    // keeps NaN, whose bits exceed infinity's).
    for (var r = 0u; r < p.nr; r++) {
        let xb = p.sq + r * p.cols;
        var m = 0u;
        for (var c = t; c < p.cols; c += 256u) {
            m = max(m, bitcast<u32>(x[xb + c]) & 0x7fffffffu);
        }
        atomicMax(&amax[r], m);
    }
    workgroupBarrier();
    let xk4 = p.qs4 / 4u;
    for (var r = 0u; r < p.nr; r++) {
        // clamp_min(max, 1e-5) on the bits: NaN stays NaN.
        let a = fdiv(127.0, bitcast<f32>(max(atomicLoad(&amax[r]), p.eps)));
        let xb = p.sq + r * p.cols;
        var sum = 0i;
        // packed word wi holds columns 4wi..4wi+3
        for (var wi = t; wi < 4u * p.qs4; wi += 256u) {
            var word = 0u;
            for (var i = 0u; i < 4u; i++) {
                let c = 4u * wi + i;
                if (c < p.cols) {
                    // NaN (a NaN row, or inf * 0) gives code 0, as `NaN as i8`.
                    let v = x[xb + c] * a;
                    var q = 0i;
                    if ((bitcast<u32>(v) & 0x7fffffffu) <= 0x7f800000u) {
                        q = i32(clamp(round(v), -128.0, 127.0));
                    }
                    sum += q;
                    word |= (bitcast<u32>(q) & 0xffu) << (8u * i);
                }
            }
            // vec4 v = wi / 4 of the row is vec4 j = v % 4 of weight vec4 k = v / 4
            let v = wi / 4u;
            xs[r * p.qs4 + (v % 4u) * xk4 + v / 4u][wi % 4u] = word;
        }
        atomicAdd(&qsum[r], sum);
    }
    workgroupBarrier();
#endif
{{DECL}}    if (o < p.no) {
        let wb = p.sw + o * p.wpr4;
        let nk4 = p.nk / 4u;
        // two 16-byte weight loads in flight per thread
        var k = lane;
        for (; k + LANES < nk4; k += 2u * LANES) {
            let w0 = w[wb + k];
            let w1 = w[wb + k + LANES];
{{STEP2}}        }
        if (k < nk4) {
            let w0 = w[wb + k];
{{STEP1}}        }
    }
#ifdef FUSED
    // xs is reused for the reduction
    workgroupBarrier();
#endif
{{PUT}}    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s = s >> 1u) {
        if (lane < s) {
{{REDUCE}}        }
        workgroupBarrier();
    }
    if (o < p.no && lane < p.nr) {
        let r = lane;
        var total = rd(r * 256u + g * LANES);
        let yi = r * p.ys + o;
#ifdef FUSED
        let a = fdiv(127.0, bitcast<f32>(max(atomicLoad(&amax[r]), p.eps)));
        let sx = atomicLoad(&qsum[r]);
        y[p.sy + yi] = fdiv(exact_i2f(total - sx) * wscale[p.sc], a);
#endif
#ifndef FUSED
        if (p.first == 0u) {
            total += acc[p.sa + yi];
        }
        if (p.last == 1u) {
            let si = p.ss + r * 4u;
            let a = bitcast<f32>(st[si + 1u]);
            let sx = bitcast<i32>(st[si + 2u]);
            y[p.sy + yi] = fdiv(exact_i2f(total - sx) * wscale[p.sc], a);
        } else {
            acc[p.sa + yi] = total;
        }
#endif
    }
}
