//#include exact
// Per-row absmax int8 quantization of activations (BitNet's ActQuant):
// `a = 127 / max(max|x|, 1e-5)`, `q = clamp(round_half_even(x * a), -128, 127)`.
//
// One workgroup per row of this dispatch, over one chunk of 4-column words
// `[w0, w0 + nw)` of every row (a row longer than one binding is processed
// chunk by chunk). Variants:
// - ROWMAX: the row's max |x| as f32 bits (an unsigned max of the bits is the
//   float max for non-negative values and propagates NaN, whose bits are
//   larger than infinity's) into st[4r] (first chunk writes, others combine).
// - QUANT + XQ: packed int8 codes (4 per u32, column 4k + i in byte i) into
//   xq, and per row st[4r + 1] = a, st[4r + 2] = Σ q (the chunks add up).
// - QUANT + FQ: the fake-quantized `q / a` (exact division) into y.
// - FUSED (with QUANT): the whole row is one chunk; the max is taken here.
//
// x's view starts at row r0, column xc0 (<= 4 * w0); the output views start at
// row r0, word w0 (XQ) or column xc0 (FQ).
struct P {
    rows: u32,
    cols: u32,
    // row stride of the output (u32 words for XQ, columns for FQ)
    os: u32,
    w0: u32,
    nw: u32,
    xc0: u32,
    first: u32,
    eps: u32,
    sx: u32,
    ss: u32,
    so: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> st: array<u32>;
#ifdef XQ
@group(0) @binding(3) var<storage, read_write> xq: array<u32>;
#endif
#ifdef FQ
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#endif

var<workgroup> red: array<u32, 256>;

fn reduce_max(t: u32, v: u32) -> u32 {
    red[t] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (t < s) {
            red[t] = max(red[t], red[t + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_add(t: u32, v: i32) -> i32 {
    red[t] = bitcast<u32>(v);
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (t < s) {
            red[t] = bitcast<u32>(bitcast<i32>(red[t]) + bitcast<i32>(red[t + s]));
        }
        workgroupBarrier();
    }
    let r = bitcast<i32>(red[0]);
    workgroupBarrier();
    return r;
}

// Max |x| bits over this chunk of row `lr`.
fn chunk_absmax(lr: u32, t: u32) -> u32 {
    let xb = p.sx + lr * p.cols - p.xc0;
    let c_end = min(4u * (p.w0 + p.nw), p.cols);
    var m = 0u;
    for (var c = 4u * p.w0 + t; c < c_end; c += 256u) {
        m = max(m, bitcast<u32>(x[xb + c]) & 0x7fffffffu);
    }
    return reduce_max(t, m);
}

// round_half_even(v) clamped to [-128, 127]; NaN stays NaN.
fn quant_f(v: f32) -> f32 {
    if ((bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u) {
        return v;
    }
    return clamp(round(v), -128.0, 127.0);
}

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let lr = wg.y * nwg.x + wg.x;
    if (lr >= p.rows) {
        return;
    }
    let si = p.ss + lr * 4u;
#ifdef ROWMAX
    let m = chunk_absmax(lr, t);
    if (t == 0u) {
        if (p.first == 1u) {
            st[si] = m;
        } else {
            st[si] = max(st[si], m);
        }
    }
#endif
#ifdef FUSED
    let mb = chunk_absmax(lr, t);
#endif
#ifdef SPLIT
    let mb = st[si];
#endif
#ifdef QUANT
    // clamp_min(max, 1e-5) on the bits: NaN stays NaN.
    let a = fdiv(127.0, bitcast<f32>(max(mb, p.eps)));
    let xb = p.sx + lr * p.cols - p.xc0;
    if (t == 0u && p.first == 1u) {
        st[si + 1u] = bitcast<u32>(a);
    }
#endif
#ifdef XQ
    var sum = 0i;
    for (var w = t; w < p.nw; w += 256u) {
        let c0 = 4u * (p.w0 + w);
        var word = 0u;
        for (var i = 0u; i < 4u; i++) {
            let c = c0 + i;
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
        xq[p.so + lr * p.os + w] = word;
    }
    sum = reduce_add(t, sum);
    if (t == 0u) {
        if (p.first == 1u) {
            st[si + 2u] = bitcast<u32>(sum);
        } else {
            st[si + 2u] = bitcast<u32>(bitcast<i32>(st[si + 2u]) + sum);
        }
    }
#endif
#ifdef FQ
    let yb = p.so + lr * p.os - p.xc0;
    let c_end = min(4u * (p.w0 + p.nw), p.cols);
    for (var c = 4u * p.w0 + t; c < c_end; c += 256u) {
        y[yb + c] = fdiv(quant_f(x[xb + c] * a), a);
    }
#endif
}
