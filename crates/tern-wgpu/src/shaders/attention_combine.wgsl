// Merge of the per-split partial attention results (split-K decode):
// out = sum_c w_c out_c / sum_c w_c and lse = L + ln(sum_c w_c), with
// w_c = exp(lse_c - L), L = max_c lse_c (an empty split has lse_c = -3e38
// and weight 0; split 0 always holds key 0, so L is finite).
// One thread per output element; the thread of dim 0 writes the lse.
struct P {
    n: u32,
    hd: u32,
    nh: u32,
    n_new: u32,
    splits: u32,
    psb: u32,
    plb: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> po: array<f32>;
@group(0) @binding(2) var<storage, read> pl: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 256u + gid.x;
    if (i >= p.n) {
        return;
    }
    let d = i % p.hd;
    let row = i / p.hd;
    let h = row % p.nh;
    let bt = row / p.nh;
    let li = ((bt / p.n_new) * p.nh + h) * p.n_new + bt % p.n_new;
    var mx = pl[li];
    for (var c = 1u; c < p.splits; c++) {
        mx = max(mx, pl[c * p.plb + li]);
    }
    var z = 0.0;
    var y = 0.0;
    for (var c = 0u; c < p.splits; c++) {
        let w = exp(pl[c * p.plb + li] - mx);
        z += w;
        y += w * po[c * p.psb + i];
    }
    out[i] = y / z;
    if (d == 0u) {
        lse[li] = mx + log(z);
    }
}
