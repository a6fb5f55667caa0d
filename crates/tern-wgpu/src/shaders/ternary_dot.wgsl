// The matvec kernels' dot products (ternary_mv.wgsl, ternary_fused.wgsl):
// Σ u·x of one packed weight word against four packed int8 words, and of a
// weight vec4 (64 columns) against the activations the includer's
// `xv(r, k, j)` returns (packed vec4 j of weight vec4 k of row r).
const M2: u32 = 0x03030303u;

fn dot16(wd: u32, xw: vec4<u32>) -> i32 {
    return dot4I8Packed(wd & M2, xw.x) + dot4I8Packed((wd >> 2u) & M2, xw.y)
        + dot4I8Packed((wd >> 4u) & M2, xw.z) + dot4I8Packed((wd >> 6u) & M2, xw.w);
}

// Σ u·x over weight vec4 k (4 words, 64 columns) of row r.
fn dot64(wv: vec4<u32>, r: u32, k: u32) -> i32 {
    return dot16(wv.x, xv(r, k, 0u)) + dot16(wv.y, xv(r, k, 1u)) + dot16(wv.z, xv(r, k, 2u))
        + dot16(wv.w, xv(r, k, 3u));
}
