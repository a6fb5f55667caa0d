// Column sums over blocks of rows, for weight gradients without atomics:
// workgroup g handles 256 columns of row block blk; each thread adds its
// column over the block's rows in order, starting from d (acc = 1) or 0.
//   PROD: term = (dy x) rstd[row] (RMSNorm's dw)   PLAIN: term = x
struct P {
    rows: u32,
    cols: u32,
    ld: u32,
    rb: u32,
    sx: u32,
    sy: u32,
    sr: u32,
    sd: u32,
    ldd: u32,
    acc: u32,
    groups: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
#ifdef PROD
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> rstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> d: array<f32>;
#endif
#ifdef PLAIN
@group(0) @binding(2) var<storage, read_write> d: array<f32>;
#endif

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let g = wg.y * nwg.x + wg.x;
    if (g >= p.groups) {
        return;
    }
    let ncg = (p.cols + 255u) / 256u;
    let blk = g / ncg;
    let col = (g % ncg) * 256u + t;
    let r0 = blk * p.rb;
    if (col >= p.cols || r0 >= p.rows) {
        return;
    }
    let r1 = min(p.rows, r0 + p.rb);
    let di = p.sd + blk * p.ldd + col;
    var v = 0.0;
    if (p.acc != 0u) {
        v = d[di];
    }
    for (var r = r0; r < r1; r++) {
#ifdef PROD
        v = v + (dy[p.sy + r * p.ld + col] * x[p.sx + r * p.ld + col]) * rstd[p.sr + r];
#endif
#ifdef PLAIN
        v = v + x[p.sx + r * p.ld + col];
#endif
    }
    d[di] = v;
}
