// Greedy choice per row (Backend::argmax): one workgroup per row; each
// thread scans its strided columns in increasing order, then a tree keeps
// the better of two candidates: a number beats NaN, the larger value wins,
// the smaller index on a tie (a row of NaN gives its last index). The same
// result as the sequential scan `x > best || best.is_nan()`.
//
// A row longer than one binding goes segment by segment in column order
// (`c0`: the segment's first column): each dispatch compares its winner with
// the candidate the previous segment left in `cand` (value bits, index) and
// leaves the better one there, or writes the result after the last segment.
struct P {
    rows: u32,
    // columns of this segment, the row stride of x's view
    cols: u32,
    ld: u32,
    c0: u32,
    first: u32,
    last: u32,
    sx: u32,
    so: u32,
    sh: u32,
    hist: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
@group(0) @binding(3) var<storage, read_write> hist: array<u32>;
@group(0) @binding(4) var<storage, read_write> cand: array<u32>;

var<workgroup> bv: array<f32, 256>;
var<workgroup> bi: array<u32, 256>;

fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// Whether candidate (v, i) beats (w, j).
fn better(v: f32, i: u32, w: f32, j: u32) -> bool {
    if (is_nan(w)) {
        return !is_nan(v) || i > j;
    }
    if (is_nan(v)) {
        return false;
    }
    return v > w || (v == w && i < j);
}

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = wg.y * nwg.x + wg.x;
    if (row >= p.rows) {
        return;
    }
    let base = p.sx + row * p.ld;
    // threads past the row's end start from a NaN at index 0, which loses to
    // any candidate that has a number or a larger index
    var v = bitcast<f32>(0x7fc00000u);
    var i = 0u;
    // eight loads in flight per thread, in named registers (the choice does
    // not depend on the order candidates are met: `better` is a strict total
    // order)
    var c = t;
    for (; c + 1792u < p.cols; c += 2048u) {
{{EIGHT}}    }
    for (; c < p.cols; c += 256u) {
        let xv = x[base + c];
        if (better(xv, p.c0 + c, v, i)) {
            v = xv;
            i = p.c0 + c;
        }
    }
    bv[t] = v;
    bi[t] = i;
    for (var s = 128u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (t < s && better(bv[t + s], bi[t + s], bv[t], bi[t])) {
            bv[t] = bv[t + s];
            bi[t] = bi[t + s];
        }
    }
    if (t == 0u) {
        var wv = bv[0];
        var wi = bi[0];
        if (p.first == 0u) {
            let cv = bitcast<f32>(cand[2u * row]);
            let ci = cand[2u * row + 1u];
            if (better(cv, ci, wv, wi)) {
                wv = cv;
                wi = ci;
            }
        }
        if (p.last == 0u) {
            cand[2u * row] = bitcast<u32>(wv);
            cand[2u * row + 1u] = wi;
        } else {
            out[p.so + row] = wi;
            if (p.hist != 0u) {
                hist[p.sh + row] = wi;
            }
        }
    }
}
