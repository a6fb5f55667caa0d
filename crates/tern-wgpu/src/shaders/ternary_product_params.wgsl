// The parameters of the W1.58A8 product kernels (ternary_mv.wgsl,
// ternary_mm.wgsl), `ProductParams` on the host: one call site fills them
// for whichever kernel the shape picks.
struct P {
    no: u32,
    nr: u32,
    // vec4 (4 weight words) per weight row
    wpr4: u32,
    // weight words in this chunk (a multiple of 4)
    nk: u32,
    // vec4 per xq row (FUSED: per xs row; = nk)
    qs4: u32,
    // row stride of y and acc
    ys: u32,
    first: u32,
    last: u32,
    sw: u32,
    // xq shift (FUSED: the shift of x's view)
    sq: u32,
    ss: u32,
    sc: u32,
    sy: u32,
    sa: u32,
    // FUSED: columns of x, the 1e-5 bits
    cols: u32,
    eps: u32,
}
@group(0) @binding(0) var<uniform> p: P;
