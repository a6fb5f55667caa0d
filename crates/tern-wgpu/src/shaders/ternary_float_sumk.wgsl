// The sum of the split partial products of `ternary_float_bwd.wgsl`:
// dx = w_scale * Σ_z part[z] (z in order, so the result does not depend on
// the scheduling), written (`first`) or added to dx.
//#include ternary_float_params
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read> wscale: array<f32>;
@group(0) @binding(3) var<storage, read_write> o: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.y * nwg.x * 256u + gid.x;
    if (e >= p.nr * p.nn) {
        return;
    }
    var s = 0.0;
    for (var z = 0u; z < p.kchunk; z++) {
        s += part[p.sp + z * p.zs + e];
    }
    let idx = p.so + (e / p.nn) * p.os + e % p.nn;
    let v = s * wscale[p.sc];
    if (p.first == 1u) {
        o[idx] = v;
    } else {
        o[idx] = o[idx] + v;
    }
}
