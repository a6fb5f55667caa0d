// Cross-entropy for rows longer than one binding, segment by segment.
// stat (one row's slots): [m_0, s_0, m_1, s_1, ..., x_target].
//   PART: one workgroup per segment: its max and sum of exp(x - max), and the
//     target logit when the target lies in it.
//   FIN: one thread per row: combines the segments, writes the loss and
//     leaves the row's max and sum in slots 0 and 1.
//   GSEG: the gradient over one segment from slots 0 and 1.
struct P {
    n: u32,
    c0: u32,
    sx: u32,
    st: u32,
    sp: u32,
    slot: u32,
    nseg: u32,
    sl: u32,
    sd: u32,
    gs: f32,
}
@group(0) @binding(0) var<uniform> p: P;

const MASK: u32 = 0xffffffffu;
const LOWEST: f32 = -3.4028235e38;

#ifdef PART
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> tg: array<u32>;
@group(0) @binding(3) var<storage, read_write> stat: array<f32>;
var<workgroup> tsh: u32;
//#include softmax_row
#endif
#ifdef FIN
@group(0) @binding(1) var<storage, read> tg: array<u32>;
@group(0) @binding(2) var<storage, read_write> stat: array<f32>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;
#endif
#ifdef GSEG
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> tg: array<u32>;
@group(0) @binding(3) var<storage, read> stat: array<f32>;
@group(0) @binding(4) var<storage, read_write> dl: array<f32>;
#endif

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let g = wg.y * nwg.x + wg.x;
#ifdef PART
    if (t == 0u) {
        tsh = tg[p.st];
    }
    let tgt = workgroupUniformLoad(&tsh);
    if (tgt == MASK) {
        return;
    }
    row_max_sum(t, p.sx, p.n);
    if (t == 0u) {
        stat[p.sp + p.slot] = rm[0];
        stat[p.sp + p.slot + 1u] = rs[0];
        if (tgt >= p.c0 && tgt - p.c0 < p.n) {
            stat[p.sp + 2u * p.nseg] = x[p.sx + tgt - p.c0];
        }
    }
#endif
#ifdef FIN
    if (g != 0u || t != 0u) {
        return;
    }
    let tgt = tg[p.st];
    if (tgt == MASK) {
        loss[p.sl] = 0.0;
        return;
    }
    var m = LOWEST;
    for (var q = 0u; q < p.nseg; q++) {
        m = max(m, stat[p.sp + 2u * q]);
    }
    var s = 0.0;
    for (var q = 0u; q < p.nseg; q++) {
        s += stat[p.sp + 2u * q + 1u] * exp(stat[p.sp + 2u * q] - m);
    }
    loss[p.sl] = (m - stat[p.sp + 2u * p.nseg]) + log(s);
    stat[p.sp] = m;
    stat[p.sp + 1u] = s;
#endif
#ifdef GSEG
    let i = g * 256u + t;
    if (i >= p.n) {
        return;
    }
    let tgt = tg[p.st];
    var d = 0.0;
    if (tgt != MASK) {
        d = p.gs * (exp(x[p.sx + i] - stat[p.sp]) * (1.0 / stat[p.sp + 1u]));
        if (p.c0 + i == tgt) {
            d = d - p.gs;
        }
    }
    dl[p.sd + i] = d;
#endif
}
