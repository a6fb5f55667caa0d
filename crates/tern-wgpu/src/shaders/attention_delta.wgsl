// Attention backward, first pass: D = rowsum(dout * out) per query row, in
// the lse layout [batch, n_heads, n_new]. One thread per (batch, token, head)
// row of the window (nb batches x nt tokens x nhw heads).
struct P {
    n: u32,
    nt: u32,
    nhw: u32,
    n_new: u32,
    hd: u32,
    sdo: u32,
    so: u32,
    sd: u32,
    qsb: u32,
    qst: u32,
    lsb: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> dout: array<f32>;
@group(0) @binding(2) var<storage, read> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> dd: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.y * nwg.x * 64u + gid.x;
    if (row >= p.n) {
        return;
    }
    let h = row % p.nhw;
    let bt = row / p.nhw;
    let t = bt % p.nt;
    let b = bt / p.nt;
    let o = b * p.qsb + t * p.qst + h * p.hd;
    var s = 0.0;
    for (var d = 0u; d < p.hd; d++) {
        s += dout[p.sdo + o + d] * out[p.so + o + d];
    }
    dd[p.sd + b * p.lsb + h * p.n_new + t] = s;
}
