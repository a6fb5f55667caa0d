// The parameters of the dense product kernels (dense_gemm.wgsl,
// dense_gemv.wgsl, dense_sumk.wgsl), `GemmParams` on the host: C is [m, n],
// the reduction k long; leading dimensions and window shifts of A, B and C;
// `C = alpha op(A) op(B) + beta C`; with split-K, `kchunk` reduction
// elements per slice and `zs` elements per slice of the partial sums.
struct P {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    sa: u32,
    sb: u32,
    sc: u32,
    alpha: f32,
    beta: f32,
    kchunk: u32,
    zs: u32,
}
@group(0) @binding(0) var<uniform> p: P;
