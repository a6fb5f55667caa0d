// The online maximum and sum of exp over a row segment, shared by the
// cross-entropy kernels (dense_loss.wgsl, dense_loss_seg.wgsl, which bind
// the logits as `x`): each thread takes every 256th element of
// x[base .. base + n) (its sum rescaled when its maximum grows), then a tree
// over the threads leaves the maximum in rm[0] and the sum of exp(x - max)
// in rs[0]. Contains barriers: call from uniform control flow.
var<workgroup> rm: array<f32, 256>;
var<workgroup> rs: array<f32, 256>;

fn row_max_sum(t: u32, base: u32, n: u32) {
    var m = LOWEST;
    var s = 0.0;
    for (var i = t; i < n; i += 256u) {
        let v = x[base + i];
        if (v > m) {
            s = s * exp(m - v) + 1.0;
            m = v;
        } else {
            s += exp(v - m);
        }
    }
    rm[t] = m;
    rs[t] = s;
    for (var h = 128u; h > 0u; h >>= 1u) {
        workgroupBarrier();
        if (t < h) {
            let m1 = rm[t];
            let m2 = rm[t + h];
            let mm = max(m1, m2);
            rs[t] = rs[t] * exp(m1 - mm) + rs[t + h] * exp(m2 - mm);
            rm[t] = mm;
        }
    }
}
