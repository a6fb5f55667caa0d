// A fixed-order sum over a 256-thread workgroup (RMSNorm's sum of squares:
// the unfused and the fused kernels reduce alike, bit for bit).
var<workgroup> red: array<f32, 256>;

// Sum of `v` over the workgroup (fixed tree); every thread gets the result.
fn tree_sum(t: u32, v: f32) -> f32 {
    red[t] = v;
    for (var s = 128u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (t < s) {
            red[t] += red[t + s];
        }
    }
    workgroupBarrier();
    return red[0];
}
