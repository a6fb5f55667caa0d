// W1.58A8 product for a few activation rows (decode): memory bound on the
// packed weights. A workgroup owns 8 output features; 32 threads per feature
// stride over its packed row (consecutive threads read consecutive 16-byte
// groups of 64 codes), each against up to {{NR}} activation rows, then a
// workgroup-memory reduction.
//
// Weight word k of a row holds columns 16k..16k+15; column 16k + 4t + i sits
// in bits 8i + 2t as u = code + 1. So `(word >> 2t) & 0x03030303` is four
// unsigned bytes lined up with the int8 activations of xq word 4k + t, and
// dot4I8Packed gives Σ u·x; the row sum of x (from the quantizer) turns it
// into Σ code·x. Exact in i32.
//
// Chunks: this dispatch covers weight words [k0, k0 + nk) of its views; with
// `first` the partial sum starts from zero, otherwise from `acc`; with `last`
// the result `(acc - Σx) * w_scale / a` (exact conversion and division) goes
// to y, otherwise the partial sum goes back to `acc`.
struct P {
    no: u32,
    nr: u32,
    // vec4 (4 weight words) per weight row
    wpr4: u32,
    // weight words in this chunk (a multiple of 4)
    nk: u32,
    // vec4 per xq row
    qs4: u32,
    // row stride of y and acc
    ys: u32,
    first: u32,
    last: u32,
    sw: u32,
    sq: u32,
    ss: u32,
    sc: u32,
    sy: u32,
    sa: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> st: array<u32>;
@group(0) @binding(4) var<storage, read> wscale: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read_write> acc: array<i32>;

const NR: u32 = {{NR}}u;
const LANES: u32 = 32u;
const M2: u32 = 0x03030303u;

var<workgroup> red: array<i32, {{RED}}>;

fn dot16(wd: u32, xv: vec4<u32>) -> i32 {
    return dot4I8Packed(wd & M2, xv.x) + dot4I8Packed((wd >> 2u) & M2, xv.y)
        + dot4I8Packed((wd >> 4u) & M2, xv.z) + dot4I8Packed((wd >> 6u) & M2, xv.w);
}

// Σ u·x over 4 weight words (64 columns) against xq vec4 xb..xb + 3.
fn dot64(wv: vec4<u32>, xb: u32) -> i32 {
    return dot16(wv.x, xq[xb]) + dot16(wv.y, xq[xb + 1u]) + dot16(wv.z, xq[xb + 2u])
        + dot16(wv.w, xq[xb + 3u]);
}

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let g = t / LANES;
    let lane = t % LANES;
    let o = (wg.y * nwg.x + wg.x) * (256u / LANES) + g;
    var part: array<i32, NR>;
    for (var r = 0u; r < NR; r++) {
        part[r] = 0;
    }
    if (o < p.no) {
        let wb = p.sw + o * p.wpr4;
        let nk4 = p.nk / 4u;
        // two 16-byte weight loads in flight per thread
        var k = lane;
        for (; k + LANES < nk4; k += 2u * LANES) {
            let w0 = w[wb + k];
            let w1 = w[wb + k + LANES];
            for (var r = 0u; r < NR; r++) {
                if (r < p.nr) {
                    part[r] += dot64(w0, p.sq + r * p.qs4 + 4u * k)
                        + dot64(w1, p.sq + r * p.qs4 + 4u * (k + LANES));
                }
            }
        }
        if (k < nk4) {
            let w0 = w[wb + k];
            for (var r = 0u; r < NR; r++) {
                if (r < p.nr) {
                    part[r] += dot64(w0, p.sq + r * p.qs4 + 4u * k);
                }
            }
        }
    }
    for (var r = 0u; r < NR; r++) {
        red[r * 256u + t] = part[r];
    }
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s = s >> 1u) {
        if (lane < s) {
            for (var r = 0u; r < NR; r++) {
                red[r * 256u + t] += red[r * 256u + t + s];
            }
        }
        workgroupBarrier();
    }
    if (o < p.no && lane < p.nr) {
        let r = lane;
        var total = red[r * 256u + g * LANES];
        let yi = r * p.ys + o;
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
    }
}
