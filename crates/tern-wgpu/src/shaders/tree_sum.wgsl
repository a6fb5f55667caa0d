// A fixed-order sum over a 256-thread workgroup (RMSNorm's sum of squares:
// the unfused and the fused kernels reduce alike, bit for bit).
var<workgroup> red: array<f32, 256>;

#ifndef SG
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
#endif
#ifdef SG
// The includer's entry point sets these from its subgroup built-ins.
var<private> sg_lane: u32;
var<private> sg_index: u32;
var<private> sg_count: u32;

// Sum of `v` over the workgroup: each subgroup's sum, then those in
// subgroup order; every thread gets the result (two barriers, not nine).
fn tree_sum(t: u32, v: f32) -> f32 {
    let s = subgroupAdd(v);
    if (sg_lane == 0u) {
        red[sg_index] = s;
    }
    workgroupBarrier();
    var total = red[0];
    for (var i = 1u; i < sg_count; i++) {
        total += red[i];
    }
    workgroupBarrier();
    return total;
}
#endif
