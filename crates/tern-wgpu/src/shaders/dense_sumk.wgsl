// SUMK: C = alpha sum_z part[z] + beta C (fixed order); with splits = 0 it
//   is `C = beta C` (k = 0), where beta = 0 writes zeros without reading C.
//#include gemm_params

// p.k: number of partial slices; p.sa: shift of the partials; p.zs: slice size.
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.y * nwg.x * 256u + gid.x;
    if (e >= p.m * p.n) {
        return;
    }
    let i = e / p.n;
    let j = e % p.n;
    var s = 0.0;
    for (var z = 0u; z < p.k; z++) {
        s += part[p.sa + z * p.zs + e];
    }
    let idx = p.sc + i * p.ldc + j;
    var o = p.alpha * s;
    if (p.beta != 0.0) {
        o = o + p.beta * c[idx];
    }
    c[idx] = o;
}
