//#include exact
// Absmean re-ternarization on the device (tern_tensor::quant::absmean_ternary).
//
// The sum of |W| must be rounded to f32 once, from (at least) f64
// precision. WGSL has no f64, so the sum is taken EXACTLY in integers: a
// finite nonzero |w| is m * 2^(E - 149) with a 24-bit integer m and
// E = max(biased exponent, 1) - 1 in [0, 253]. Values are binned by E: bin E
// holds Σ m as a 64-bit integer (two u32 words, lo then hi; a carry out of lo
// bumps hi), added with atomics, first in workgroup memory, then into the
// global bins `g` (an integer sum does not depend on the order, so the result
// is deterministic). FINAL expands the bins into a 320-bit fixed-point
// integer (units of 2^-149, room for 2^32 values of up to 2^128), rounds it
// to f32 half to even, and derives `mean = sum / n`, `s = 1 / max(mean,
// 1e-5)` and `w_scale = 1 / s` with exact divisions. Infinities and NaN are
// tracked in a flag word (the sum is then inf or NaN, as in f64).
// The exact sum can differ from the CPU's sequential f64 sum rounded to f32
// only when that f64 sum's own rounding error (about n * 2^-53 relative)
// straddles an f32 rounding boundary.
//
// Scratch layout (u32): [2E] lo and [2E + 1] hi of bin E, [512] flags
// (1: an infinity, 2: a NaN), [513] s as f32 bits.
//
// - CLEAR: zero the scratch.
// - SUM: bin one window of the latent weights.
// - FINAL: one thread; writes s and the weight scale.
// - CODES: one thread per packed word of one chunk of words of each row:
//   code = 1 if w * s > 0.5, -1 if w * s < -0.5, else 0 (exactly
//   clamp(round_half_even(w * s), -1, 1), NaN giving 0), stored as u = code + 1
//   with column 16k + 4t + i of word k in bits 8i + 2t.
struct P {
    n: u32,
    sx: u32,
    sg: u32,
    // CODES: rows, words per chunk, first word, first latent column of x's
    // view, columns, words per row, shift of the codes view
    nr: u32,
    nw: u32,
    w0: u32,
    xc0: u32,
    cols: u32,
    wpr: u32,
    sc: u32,
    // FINAL: n as f32 bits, the 1e-5 clamp bits
    count: u32,
    eps: u32,
}
@group(0) @binding(0) var<uniform> p: P;
#ifdef CLEAR
@group(0) @binding(1) var<storage, read_write> g: array<u32>;
#endif
#ifdef SUM
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> g: array<atomic<u32>>;
#endif
#ifdef FINAL
@group(0) @binding(1) var<storage, read_write> g: array<u32>;
@group(0) @binding(2) var<storage, read_write> wscale: array<f32>;
#endif
#ifdef CODES
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> codes: array<u32>;
@group(0) @binding(3) var<storage, read> g: array<u32>;
#endif

// Latent elements per workgroup of SUM.
const PER_WG: u32 = {{PER_WG}}u;

#ifdef SUM
var<workgroup> bins: array<atomic<u32>, 512>;
var<workgroup> wflags: atomic<u32>;
#endif

#ifdef FINAL
// 320-bit accumulator, least significant limb first.
var<private> limb: array<u32, 10>;

fn add_at(i0: u32, v: u32) {
    var i = i0;
    var c = v;
    while (c != 0u && i < 10u) {
        let s = limb[i] + c;
        c = select(0u, 1u, s < c);
        limb[i] = s;
        i += 1u;
    }
}

fn bit_at(pos: u32) -> u32 {
    return (limb[pos / 32u] >> (pos % 32u)) & 1u;
}

// Whether any bit below `pos` is set.
fn any_below(pos: u32) -> bool {
    let l = pos / 32u;
    for (var i = 0u; i < l; i++) {
        if (limb[i] != 0u) {
            return true;
        }
    }
    let s = pos % 32u;
    return s != 0u && (limb[l] & ((1u << s) - 1u)) != 0u;
}

// The exact sum rounded to f32 (bits).
fn round_sum() -> u32 {
    var top = -1;
    for (var i = 9; i >= 0; i--) {
        if (limb[i] != 0u) {
            top = i;
            break;
        }
    }
    if (top < 0) {
        return 0u;
    }
    let lead = u32(top) * 32u + 31u - countLeadingZeros(limb[top]);
    if (lead <= 23u) {
        // below 2^24 units: exact, and the bits of value * 2^-149 are the value
        return limb[0];
    }
    let shift = lead - 23u;
    if (shift >= 254u) {
        return EXACT_INF;
    }
    // 24 significand bits from `shift` up
    let l = shift / 32u;
    let s = shift % 32u;
    var m = limb[l] >> s;
    if (s > 8u) {
        m |= limb[l + 1u] << (32u - s);
    }
    m &= 0xffffffu;
    if (bit_at(shift - 1u) == 1u && (any_below(shift - 1u) || (m & 1u) == 1u)) {
        m += 1u;
    }
    // biased exponent shift + 1 plus the significand: a carry steps the
    // exponent, and overflow lands on the infinity bits
    return min((shift << 23u) + m, EXACT_INF);
}
#endif

@compute @workgroup_size({{WGS}})
fn main(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
#ifdef CLEAR
    for (var i = t; i < 514u; i += 256u) {
        g[p.sg + i] = 0u;
    }
#endif
#ifdef SUM
    atomicStore(&bins[t], 0u);
    atomicStore(&bins[t + 256u], 0u);
    if (t == 0u) {
        atomicStore(&wflags, 0u);
    }
    workgroupBarrier();
    let base = (wg.y * nwg.x + wg.x) * PER_WG;
    for (var i = t; i < PER_WG; i += 256u) {
        let k = base + i;
        if (k < p.n) {
            let b = bitcast<u32>(x[p.sx + k]) & 0x7fffffffu;
            let e = b >> 23u;
            if (e == 255u) {
                atomicOr(&wflags, select(1u, 2u, b > EXACT_INF));
            } else if (b != 0u) {
                var m = b & 0x7fffffu;
                if (e > 0u) {
                    m |= 0x800000u;
                }
                let bin = 2u * (max(e, 1u) - 1u);
                let old = atomicAdd(&bins[bin], m);
                if (old + m < old) {
                    atomicAdd(&bins[bin + 1u], 1u);
                }
            }
        }
    }
    workgroupBarrier();
    if (t < 254u) {
        let lo = atomicLoad(&bins[2u * t]);
        let hi = atomicLoad(&bins[2u * t + 1u]);
        if (lo != 0u) {
            let old = atomicAdd(&g[p.sg + 2u * t], lo);
            if (old + lo < old) {
                atomicAdd(&g[p.sg + 2u * t + 1u], 1u);
            }
        }
        if (hi != 0u) {
            atomicAdd(&g[p.sg + 2u * t + 1u], hi);
        }
    }
    if (t == 0u) {
        let f = atomicLoad(&wflags);
        if (f != 0u) {
            atomicOr(&g[p.sg + 512u], f);
        }
    }
#endif
#ifdef FINAL
    for (var i = 0u; i < 10u; i++) {
        limb[i] = 0u;
    }
    for (var e = 0u; e < 254u; e++) {
        let lo = g[p.sg + 2u * e];
        let hi = g[p.sg + 2u * e + 1u];
        let l = e / 32u;
        let s = e % 32u;
        if (s == 0u) {
            add_at(l, lo);
            add_at(l + 1u, hi);
        } else {
            add_at(l, lo << s);
            add_at(l + 1u, (lo >> (32u - s)) | (hi << s));
            add_at(l + 2u, hi >> (32u - s));
        }
    }
    let flags = g[p.sg + 512u];
    var sum: f32;
    if ((flags & 2u) != 0u) {
        sum = bitcast<f32>(EXACT_QNAN);
    } else if ((flags & 1u) != 0u) {
        sum = bitcast<f32>(EXACT_INF);
    } else {
        sum = bitcast<f32>(round_sum());
    }
    let mean = fdiv(sum, bitcast<f32>(p.count));
    // clamp_min(mean, 1e-5) on the bits (mean >= 0 or NaN; NaN stays NaN)
    let s = fdiv(1.0, bitcast<f32>(max(bitcast<u32>(mean), p.eps)));
    g[p.sg + 513u] = bitcast<u32>(s);
    wscale[p.sc] = fdiv(1.0, s);
#endif
#ifdef CODES
    let idx = (wg.y * nwg.x + wg.x) * 256u + t;
    if (idx >= p.nr * p.nw) {
        return;
    }
    let lr = idx / p.nw;
    let lw = idx % p.nw;
    let s = bitcast<f32>(g[p.sg + 513u]);
    let xb = p.sx + lr * p.cols - p.xc0;
    let c0 = 16u * (p.w0 + lw);
    var word = 0u;
    for (var j = 0u; j < 16u; j++) {
        let c = c0 + j;
        var u = 1u;
        if (c < p.cols) {
            let v = x[xb + c] * s;
            if (v > 0.5) {
                u = 2u;
            } else if (v < -0.5) {
                u = 0u;
            }
        }
        word |= u << (8u * (j % 4u) + 2u * (j / 4u));
    }
    codes[p.sc + lr * p.wpr + lw] = word;
#endif
}
