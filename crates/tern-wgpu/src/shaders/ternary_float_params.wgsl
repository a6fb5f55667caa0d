// The parameters of the float ternary products (ternary_float.wgsl,
// ternary_float_bwd.wgsl, ternary_float_sumk.wgsl), `FloatParams` on the
// host.
struct P {
    // rows of the float operand (x or dy) and of the output in this dispatch
    nr: u32,
    // FWD: features; BWD: columns of dx
    nn: u32,
    // FWD: columns of x; BWD: features (the reduction length)
    nk: u32,
    // row stride of the float operand (x or dy)
    astride: u32,
    // row stride of the packed weights (words)
    wpr: u32,
    // row stride of the output
    os: u32,
    first: u32,
    sa: u32,
    sw: u32,
    sc: u32,
    so: u32,
    // split reduction (ternary_float_bwd.wgsl with SPLIT, and the sum of
    // its slices): features per slice (the sum: the number of slices),
    // elements per slice of the partial sums, their shift
    kchunk: u32,
    zs: u32,
    sp: u32,
}
@group(0) @binding(0) var<uniform> p: P;
