// Fused softmax cross-entropy, one workgroup per row of logits:
// an online max / sum of exp per thread (rescaled when the max grows),
// combined over a tree; loss = (max - x[t]) + log(sum); with GRAD,
// dlogits = gs (exp(x - max) / sum) - gs onehot. Masked rows (target
// u32::MAX) get loss 0 and a zero gradient.
struct P {
    rows: u32,
    vocab: u32,
    sx: u32,
    st: u32,
    sl: u32,
    sd: u32,
    gs: f32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> tg: array<u32>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;
#ifdef GRAD
@group(0) @binding(4) var<storage, read_write> dl: array<f32>;
#endif

const MASK: u32 = 0xffffffffu;
const LOWEST: f32 = -3.4028235e38;

//#include softmax_row
var<workgroup> tsh: u32;

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = wg.y * nwg.x + wg.x;
    if (row >= p.rows) {
        return;
    }
    if (t == 0u) {
        tsh = tg[p.st + row];
    }
    let tgt = workgroupUniformLoad(&tsh);
    let bx = p.sx + row * p.vocab;
    if (tgt == MASK) {
        if (t == 0u) {
            loss[p.sl + row] = 0.0;
        }
#ifdef GRAD
        for (var i = t; i < p.vocab; i += 256u) {
            dl[p.sd + row * p.vocab + i] = 0.0;
        }
#endif
        return;
    }
    row_max_sum(t, bx, p.vocab);
    workgroupBarrier();
    let mx = rm[0];
    let sum = rs[0];
    if (t == 0u) {
        loss[p.sl + row] = (mx - x[bx + min(tgt, p.vocab - 1u)]) + log(sum);
    }
#ifdef GRAD
    let inv = 1.0 / sum;
    let bd = p.sd + row * p.vocab;
    for (var i = t; i < p.vocab; i += 256u) {
        var d = p.gs * (exp(x[bx + i] - mx) * inv);
        if (i == tgt) {
            d = d - p.gs;
        }
        dl[bd + i] = d;
    }
#endif
}
