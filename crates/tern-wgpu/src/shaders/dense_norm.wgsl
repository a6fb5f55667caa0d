// RMSNorm forward and backward.
//   RMS: one workgroup per row: y = x r w, rstd[row] = r = 1 / sqrt(mean(x^2) + eps).
//   RMSB: one workgroup per row: dx = r w dy - c x, c = (sum x dy w) r^3 / dim.
// Rows longer than one binding go through per-segment passes: partial sums
// (dense_reduce.wgsl) into `part`, then RMS_FIN / RMSB_FIN per row (one
// thread) and RMS_APPLY / RMSB_APPLY per segment.
struct P {
    rows: u32,
    dim: u32,
    sx: u32,
    sw: u32,
    sy: u32,
    sr: u32,
    sdy: u32,
    sdx: u32,
    sp: u32,
    nseg: u32,
    n: u32,
    eps: f32,
}
@group(0) @binding(0) var<uniform> p: P;

#ifdef RMS
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;
#endif
#ifdef RMS_FIN
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> rstd: array<f32>;
#endif
#ifdef RMS_APPLY
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> rstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
#endif
#ifdef RMSB
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> rstd: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;
#endif
#ifdef RMSB_FIN
@group(0) @binding(1) var<storage, read> rstd: array<f32>;
@group(0) @binding(2) var<storage, read_write> part: array<f32>;
#endif
#ifdef RMSB_APPLY
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> rstd: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read> part: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;
#endif

//#include tree_sum

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
#ifdef SG
    @builtin(subgroup_invocation_id) sgi: u32,
    @builtin(subgroup_id) sid: u32,
    @builtin(num_subgroups) nsg: u32,
#endif
) {
#ifdef SG
    sg_lane = sgi;
    sg_index = sid;
    sg_count = nsg;
#endif
    let row = wg.y * nwg.x + wg.x;
#ifdef RMS
    if (row >= p.rows) {
        return;
    }
    let bx = p.sx + row * p.dim;
    var acc = 0.0;
    for (var i = t; i < p.dim; i += 256u) {
        let v = x[bx + i];
        acc += v * v;
    }
    let ss = tree_sum(t, acc);
    let r = 1.0 / sqrt(ss / f32(p.dim) + p.eps);
    if (t == 0u) {
        rstd[p.sr + row] = r;
    }
    let by = p.sy + row * p.dim;
    for (var i = t; i < p.dim; i += 256u) {
        y[by + i] = (x[bx + i] * r) * w[p.sw + i];
    }
#endif
#ifdef RMS_FIN
    if (row != 0u || t != 0u) {
        return;
    }
    var ss = 0.0;
    for (var s = 0u; s < p.nseg; s++) {
        ss += part[p.sp + s];
    }
    rstd[p.sr] = 1.0 / sqrt(ss / f32(p.dim) + p.eps);
#endif
#ifdef RMS_APPLY
    let i = row * 256u + t;
    if (i >= p.n) {
        return;
    }
    y[p.sy + i] = (x[p.sx + i] * rstd[p.sr]) * w[p.sw + i];
#endif
#ifdef RMSB
    if (row >= p.rows) {
        return;
    }
    let bx = p.sx + row * p.dim;
    let bd = p.sdy + row * p.dim;
    var acc = 0.0;
    for (var i = t; i < p.dim; i += 256u) {
        acc += (x[bx + i] * dy[bd + i]) * w[p.sw + i];
    }
    let dot = tree_sum(t, acc);
    let r = rstd[p.sr + row];
    let c = dot * (r * r * r) / f32(p.dim);
    let bo = p.sdx + row * p.dim;
    for (var i = t; i < p.dim; i += 256u) {
        dx[bo + i] = (r * w[p.sw + i]) * dy[bd + i] - c * x[bx + i];
    }
#endif
#ifdef RMSB_FIN
    if (row != 0u || t != 0u) {
        return;
    }
    var dot = 0.0;
    for (var s = 0u; s < p.nseg; s++) {
        dot += part[p.sp + s];
    }
    let r = rstd[p.sr];
    part[p.sp] = dot * (r * r * r) / f32(p.dim);
#endif
#ifdef RMSB_APPLY
    let i = row * 256u + t;
    if (i >= p.n) {
        return;
    }
    let r = rstd[p.sr];
    dx[p.sdx + i] = (r * w[p.sw + i]) * dy[p.sdy + i] - part[p.sp] * x[p.sx + i];
#endif
}
