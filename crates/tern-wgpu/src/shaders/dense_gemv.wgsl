// GEMV: C rows <= MR with B stored [n, k]: 32 lanes per row of B stream it
//   once (coalesced), then a tree over the lanes in workgroup memory.
//   With CT the result is written transposed (C[j, i]): the host computes
//   a product with few columns, C = A op(B), as Cᵀ = op(B)ᵀ Aᵀ.
//#include gemm_params

#ifndef V4
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
#endif
#ifdef V4
// A and B rows start at multiples of 4 elements and k % 4 == 0.
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
#endif
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const MR: u32 = {{MR}}u;
var<workgroup> red: array<f32, MR * 256u>;

fn write(i: u32, j: u32, v: f32) {
#ifndef CT
    let idx = p.sc + i * p.ldc + j;
#endif
#ifdef CT
    let idx = p.sc + j * p.ldc + i;
#endif
    var o = p.alpha * v;
    if (p.beta != 0.0) {
        o = o + p.beta * c[idx];
    }
    c[idx] = o;
}

#ifdef TA
fn a_at(i: u32, q: u32) -> f32 {
    return a[p.sa + q * p.lda + i];
}
#endif
#ifdef NA
fn a_at(i: u32, q: u32) -> f32 {
    return a[p.sa + i * p.lda + q];
}
#endif

// The per-row accumulators are written out by the host (dense.rs,
// `gemv_source`) as named variables.
@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let lane = t % 32u;
    let j = (wg.y * nwg.x + wg.x) * 8u + t / 32u;
{{DECL}}
    if (j < p.n) {
{{LOOP}}    }
{{STORE}}
    for (var s = 16u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (lane < s) {
            for (var i = 0u; i < MR; i++) {
                red[i * 256u + t] += red[i * 256u + t + s];
            }
        }
    }
    workgroupBarrier();
    if (lane == 0u && j < p.n) {
        for (var i = 0u; i < MR; i++) {
            write(i, j, red[i * 256u + t]);
        }
    }
}
