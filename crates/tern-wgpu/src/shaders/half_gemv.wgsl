// f16 matvec: C rows <= MR against B stored [n, k] in f16, packed two per u32
// (the LM head at decode: one token against [vocab, hidden]). Memory bound:
// each workgroup takes 8 rows of B, 32 lanes per row streaming it once
// (coalesced), f32 accumulation, then a tree over the lanes in workgroup
// memory. C = alpha A Bᵀ + beta C.
//   V8: rows of B start at multiples of 8 halves and k % 8 == 0: each lane
//     reads a vec4<u32> (8 halves) and two vec4<f32> of A.
//   otherwise: one half per lane and step, any alignment (sb counts halves).
//#include gemm_params

#ifdef V8
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<u32>>;
#endif
#ifndef V8
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;

fn b_at(h: u32) -> f32 {
    let v = unpack2x16float(b[h >> 1u]);
    return select(v.x, v.y, (h & 1u) == 1u);
}
#endif
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const MR: u32 = {{MR}}u;
var<workgroup> red: array<f32, MR * 256u>;

fn write(i: u32, j: u32, v: f32) {
    let idx = p.sc + i * p.ldc + j;
    var o = p.alpha * v;
    if (p.beta != 0.0) {
        o = o + p.beta * c[idx];
    }
    c[idx] = o;
}

// The per-row accumulators are written out by the host (half.rs,
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
#ifdef V8
        let row = (p.sb + j * p.ldb) / 8u;
        for (var q = lane; q < p.k / 8u; q += 32u) {
            let w = b[row + q];
            let b0 = vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
            let b1 = vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w));
{{ACC}}        }
#endif
#ifndef V8
        let row = p.sb + j * p.ldb;
        for (var q = lane; q < p.k; q += 32u) {
            let b0 = b_at(row + q);
{{ACC}}        }
#endif
    }
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
